"""The accuracy-per-CPU-minute table over every reference set: MACE, then mlff at MACE's
training time and at a third of it.

    python benchmarks/accuracy_table.py --mace-python /path/macevenv/bin/python
        [--sets ethanol,cu,aspirin,...] [--work bench_accuracy] [--markdown]
    python benchmarks/accuracy_table.py --from-json ethanol.json aspirin.json ... [--markdown]

For each set it runs ``benchmarks/train_ethanol.py --match-mace-time --fractions 1,0.333`` (MACE
first on the 2 cores, then ``mlff train`` with its defaults for MACE's time and a third of it,
one after another, nothing else running) and keeps that run's JSON in ``--work``. ``--from-json``
prints the table from such files (``train_ethanol.py --json-out``) without training. The sets:
the shared ethanol (the issue's random split) and Cu (the first 50 training frames of a random
400/400 split: MACE's 20 epochs on all 400 would take most of an hour), and the generated sets
in ``data/`` (``benchmarks/make_reference_data.py``; test set: the last trajectory). Expect
about two and a half hours for all of them on a 2-core CPU.

Columns: MACE's training time (s) and test force / energy MAE (meV/Å, meV/atom), then mlff's
test force / energy MAE at MACE's time and its force MAE over MACE's, then the same at a third
of the time. Record results in docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from mace_worker import die_with_parent  # benchmarks/
from train_ethanol import DATA  # the shared ethanol set

ROOT = Path(__file__).resolve().parents[1]
# name -> (data file, extra train_ethanol.py arguments)
SETS = {
    "ethanol": (DATA, []),
    "cu": (DATA.with_name("cu_emt.extxyz"), ["--max-train", "50"]),
    "paracetamol": (ROOT / "data" / "paracetamol_gfn2_500K.extxyz", []),
    "aspirin": (ROOT / "data" / "aspirin_gfn2_500K.extxyz", []),
    "naphthalene": (ROOT / "data" / "naphthalene_gfn2_500K.extxyz", []),
    "cuau": (ROOT / "data" / "cuau_emt.extxyz", ["--max-train", "105"]),
}


def run_set(name: str, work: Path, mace_python: Path) -> Path:
    """Train MACE and mlff on set ``name``; returns the path of the run's JSON."""
    data, extra = SETS[name]
    if not data.is_file():
        sys.exit(f"--sets {name}: {data} not found")
    out = work / f"{name}.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "train_ethanol.py"), "--data", str(data),
        "--work", str(work / name), "--mace-python", str(mace_python), "--match-mace-time",
        "--fractions", "1,0.333", "--quiet", "--json-out", str(out), *extra,
    ]  # fmt: skip
    print("running:", " ".join(command), flush=True)
    # stopping this script stops the run and, through it, MACE's training
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, preexec_fn=die_with_parent)
    return out


def table_rows(name: str, payload: dict) -> list[str]:
    """The table's cells for one set from a ``train_ethanol.py`` JSON payload."""
    mace = payload.get("mace")
    if not mace:
        sys.exit(f"{name}: the run has no MACE result (run it with --mace-python)")
    by_thirds = {}  # 3 (MACE's time) or 1 (a third of it), whatever the exact clock
    for result in payload["results"]:
        by_thirds[round(3 * result["training_time_s"] / mace["training_time_s"])] = result
    m = mace["test"]
    cells = [name, f"{mace['training_time_s']:.0f}", f"{m['forces_mae_mev_per_a']:.2f}",
             f"{m['energy_mae_mev_per_atom']:.2f}"]  # fmt: skip
    for thirds in (3, 1):
        result = by_thirds.get(thirds)
        if result is None:
            cells += ["-", "-", "-"]
            continue
        t = result["test_model_pt"]
        ratio = t["forces_mae_mev_per_a"] / m["forces_mae_mev_per_a"]
        cells += [f"{t['forces_mae_mev_per_a']:.2f}", f"{t['energy_mae_mev_per_atom']:.2f}",
                  f"{ratio:.2f}"]  # fmt: skip
    return cells


HEADER = ["set", "MACE s", "MACE F", "MACE E", "F @1", "E @1", "F/MACE @1", "F @1/3",
          "E @1/3", "F/MACE @1/3"]  # fmt: skip


def print_table(rows: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADER)]
    for row in [HEADER, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print("(test MAE: forces meV/Å, energy meV/atom; @1: mlff at MACE's time, @1/3: a third)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated of " + ", ".join(SETS)
    )
    parser.add_argument("--work", type=Path, default=Path("bench_accuracy"))
    parser.add_argument("--mace-python", type=Path, help="python of a venv with mace-torch")
    parser.add_argument("--from-json", type=Path, nargs="+", help="train_ethanol.py JSON files")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = parser.parse_args()
    if args.from_json:
        paths = args.from_json
    else:
        if args.mace_python is None or not args.mace_python.is_file():
            sys.exit("--mace-python: a python with mace-torch is needed (or use --from-json)")
        names = [n.strip() for n in args.sets.split(",") if n.strip()]
        unknown = [n for n in names if n not in SETS]
        if unknown:
            sys.exit(f"--sets: unknown {', '.join(unknown)}; choose from {', '.join(SETS)}")
        args.work.mkdir(parents=True, exist_ok=True)
        paths = [run_set(name, args.work, args.mace_python) for name in names]
    rows = []
    for path in paths:
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            sys.exit(f"{path}: not a train_ethanol.py JSON file ({error})")
        rows.append(table_rows(Path(path).stem, payload))
    print_table(rows, args.markdown)


if __name__ == "__main__":
    main()
