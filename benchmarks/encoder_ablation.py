"""Encoder ablation: egnn/none, egnn/unimol, tfn/none, tfn/unimol at equal training time.

    python benchmarks/encoder_ablation.py [--minutes 4] [--parallel 2] [--datasets ethanol,cu]

For each dataset (the fixed splits of ../shared/data: ethanol 1,000 train / 1,000 test, Cu 600 /
200, from ``numpy.random.default_rng(42).permutation``) and each combination, runs
``mlff train --time-limit MINUTES --threads 1`` on the training half, then ``mlff eval --json`` on
the test half, and times one energy+forces call of the trained model on a test structure.
Prints a table and writes ``ablation.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from ase.io import read, write

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "ethanol": ("ethanol_gfn2_500K.extxyz", 1000),
    "cu": ("cu_emt.extxyz", 600),
}
COMBINATIONS = [("egnn", "none"), ("egnn", "unimol"), ("tfn", "none"), ("tfn", "unimol")]


def split(name: str, work: Path) -> tuple[Path, Path]:
    filename, n_train = DATASETS[name]
    frames = read(SHARED / filename, ":")
    order = np.random.default_rng(42).permutation(len(frames))
    train, test = work / f"{name}_train.extxyz", work / f"{name}_test.extxyz"
    write(train, [frames[i] for i in order[:n_train]], format="extxyz")
    write(test, [frames[i] for i in order[n_train:]], format="extxyz")
    return train, test


def time_call(model: Path, structure: Path) -> float:
    code = (
        "import time, torch; from ase.io import read; from mlff import MLFFCalculator\n"
        "torch.set_num_threads(1)\n"
        f"a = read({str(structure)!r}, 0); a.calc = MLFFCalculator({str(model)!r}, "
        "device='cpu', dtype='float32')\n"
        "a.get_forces(); t = []\n"
        "for k in range(20):\n"
        "    a.positions[0, 0] += 1e-3; s = time.perf_counter(); a.get_forces()\n"
        "    t.append(time.perf_counter() - s)\n"
        "t.sort(); print(t[len(t) // 2])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_one(dataset: str, potential: str, encoder: str, files, work: Path, minutes: float):
    train, test = files
    out = work / f"{dataset}_{potential}_{encoder}"
    start = time.perf_counter()
    subprocess.run(
        ["mlff", "train", str(train), "--out", str(out), "--potential", potential,
         "--encoder", encoder, "--time-limit", str(minutes), "--threads", "1",
         "--progress", "lines"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    evaluation = subprocess.run(
        ["mlff", "eval", str(out / "model.pt"), str(test), "--json"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    figures = json.loads(evaluation.stdout)
    return {
        "dataset": dataset,
        "potential": potential,
        "encoder": encoder,
        "train_minutes": minutes,
        "wall_s": wall,
        "forces_mae_mev_per_a": figures["forces_mae_mev_per_a"],
        "energy_mae_mev_per_atom": figures["energy_mae_mev_per_atom"],
        "stress_mae_mev_per_a3": figures.get("stress_mae_mev_per_a3"),
        "ms_per_call_fp32_1thread": 1e3 * time_call(out / "model.pt", test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--datasets", default="ethanol,cu")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = []
    for dataset in args.datasets.split(","):
        files = split(dataset, args.work)
        jobs += [(dataset, p, e, files) for p, e in COMBINATIONS]
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda job: run_one(*job, work=args.work, minutes=args.minutes), jobs))
    (args.work / "ablation.json").write_text(json.dumps(rows, indent=2))
    print(f"{'dataset':8s} {'potential':9s} {'encoder':7s} {'F MAE meV/Å':>12s} "
          f"{'E MAE meV/atom':>15s} {'ms/call':>8s}")  # fmt: skip
    for row in rows:
        print(
            f"{row['dataset']:8s} {row['potential']:9s} {row['encoder']:7s} "
            f"{row['forces_mae_mev_per_a']:12.2f} {row['energy_mae_mev_per_atom']:15.2f} "
            f"{row['ms_per_call_fp32_1thread']:8.2f}"
        )


if __name__ == "__main__":
    main()
