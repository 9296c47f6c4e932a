"""Time per energy+forces call of MLFFCalculator on ethanol, Cu-256 and Cu-2048.

    python benchmarks/calculator_speed.py [--potential egnn] [--encoder none] [--threads 2]
        [--device cpu] [--systems ethanol,Cu-256,Cu-2048] [--json]
        [--mace-python /path/macevenv/bin/python]

Prints one row per (system, dtype): milliseconds per call (median over repeated calls with a
fresh rattle each time, so nothing is cached), atoms, edges. With ``--mace-python`` (a python in
a separate environment with mace-torch, see ``benchmarks/mace_worker.py``) it then times an
untrained MACE (32 channels, L=1, ``mace_run_train``'s defaults) on the same structures, dtypes,
device and threads, in a subprocess, and prints mlff's speed-up over it. Without it, only mlff's
figures are printed: no figure from another run or machine is ever shown. Record results in
docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
import torch
from ase import Atoms
from ase.build import bulk, molecule
from mace_worker import time_calls

from mlff import MLFFCalculator, build_model
from mlff.graph import graph_from_atoms


def systems(names: str = "ethanol,Cu-256,Cu-2048") -> dict[str, tuple[Atoms, list[str]]]:
    """``{name: (atoms, elements)}`` of the comma-separated ``names``."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    known = {
        "ethanol": (molecule("CH3CH2OH"), ["H", "C", "O"]),
        "Cu-256": (cu * (4, 4, 4), ["Cu"]),
        "Cu-2048": (cu * (8, 8, 8), ["Cu"]),
    }
    unknown = set(names.split(",")) - set(known)
    if unknown:
        sys.exit(f"--systems: unknown {sorted(unknown)}; choose from {list(known)}")
    return {name: known[name] for name in names.split(",")}


def mace_ms_per_call(args: argparse.Namespace) -> dict[tuple[str, str], float]:
    """``{(system, dtype): ms}`` of MACE, timed by mace_worker.py under ``--mace-python``."""
    with tempfile.TemporaryDirectory() as work:
        paths = []
        for name, (atoms, _) in systems(args.systems).items():
            paths.append(str(Path(work) / f"{name}.extxyz"))
            ase.io.write(paths[-1], atoms)
        command = [
            str(args.mace_python),
            str(Path(__file__).with_name("mace_worker.py")),
            "calls",
            *paths,
            "--dtypes",
            args.dtypes,
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        print(f"timing MACE: {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0 or not done.stdout.strip():
        sys.exit(f"--mace-python {args.mace_python}: mace_worker.py exited {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {(row["structure"], row["dtype"]): row["ms_per_call"] for row in result["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default="egnn")
    parser.add_argument("--encoder", default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--systems", default="ethanol,Cu-256,Cu-2048")
    parser.add_argument("--hyper", default="{}", help="JSON dict of extra build_model arguments")
    parser.add_argument(
        "--mace-python",
        type=Path,
        help="python of an environment with mace-torch: time MACE too and print the ratio",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.mace_python and not args.mace_python.is_file():
        sys.exit(f"--mace-python {args.mace_python}: no such file")
    torch.set_num_threads(args.threads)
    rows = []
    for name, (atoms, elements) in systems(args.systems).items():
        model = build_model(
            potential=args.potential,
            encoder=args.encoder,
            elements=elements,
            cutoff=5.0,
            **json.loads(args.hyper),
        )
        edges = graph_from_atoms(atoms, 5.0).n_edges
        for dtype in args.dtypes.split(","):
            calc = MLFFCalculator(model, device=args.device, dtype=dtype)
            sync = torch.cuda.synchronize if calc.device.type == "cuda" else None
            seconds = time_calls(atoms, calc, sync)
            peak = None
            if calc.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated() / 2**20
            rows.append(
                {
                    "system": name,
                    "atoms": len(atoms),
                    "edges": edges,
                    "potential": args.potential,
                    "encoder": args.encoder,
                    "dtype": dtype,
                    "device": str(calc.device),
                    "threads": args.threads,
                    "ms_per_call": 1e3 * seconds,
                    "peak_gpu_mib": peak,
                }
            )
            if not args.json:
                print(
                    f"{name:8s} {len(atoms):5d} atoms {edges:7d} edges {dtype:8s} "
                    f"{1e3 * seconds:9.2f} ms/call",
                    flush=True,
                )
    if args.mace_python:
        mace = mace_ms_per_call(args)
        for row in rows:
            row["mace_ms_per_call"] = mace[row["system"], row["dtype"]]
            row["speedup_vs_mace"] = row["mace_ms_per_call"] / row["ms_per_call"]
            if not args.json:
                print(
                    f"{row['system']:8s} {row['dtype']:8s} mlff {row['ms_per_call']:9.2f} ms  "
                    f"MACE {row['mace_ms_per_call']:9.2f} ms  x{row['speedup_vs_mace']:.2f}"
                )
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
