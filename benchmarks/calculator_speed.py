"""Time per energy+forces call of MLFFCalculator on ethanol, Cu-256 and Cu-2048.

    python benchmarks/calculator_speed.py [--potential egnn] [--encoder none] [--threads 2]
        [--device cpu] [--json]

Prints one row per (system, dtype): milliseconds per call (median over repeated calls with a
fresh rattle each time, so nothing is cached), atoms, edges. For scale, MACE (32 channels, L=1,
float32, 2 threads) takes about 53 ms (ethanol), 0.62 s (Cu-256) and 11 s (Cu-2048) per call.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from ase.build import bulk, molecule

from mlff import MLFFCalculator, build_model
from mlff.graph import graph_from_atoms

MACE_SECONDS = {"ethanol": 0.053, "Cu-256": 0.62, "Cu-2048": 11.0}


def systems():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    return {
        "ethanol": (molecule("CH3CH2OH"), ["H", "C", "O"]),
        "Cu-256": (cu * (4, 4, 4), ["Cu"]),
        "Cu-2048": (cu * (8, 8, 8), ["Cu"]),
    }


def time_calls(atoms, calc, min_calls: int = 3, min_seconds: float = 2.0) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    base = atoms.get_positions()
    atoms.get_forces()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        atoms.set_positions(base + rng.normal(scale=0.02, size=base.shape))
        tick = time.perf_counter()
        atoms.get_forces()
        if calc.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tick)
        if len(times) >= 50:
            break
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default="egnn")
    parser.add_argument("--encoder", default="none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--hyper", default="{}", help="JSON dict of extra build_model arguments")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (atoms, elements) in systems().items():
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
            seconds = time_calls(atoms, calc)
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
                    "ms_per_call": 1e3 * seconds,
                    "speedup_vs_mace_fp32": MACE_SECONDS[name] / seconds,
                    "peak_gpu_mib": peak,
                }
            )
            if not args.json:
                row = rows[-1]
                print(
                    f"{name:8s} {len(atoms):5d} atoms {edges:7d} edges {dtype:8s} "
                    f"{row['ms_per_call']:9.2f} ms/call  "
                    f"x{row['speedup_vs_mace_fp32']:.1f} vs MACE",
                    flush=True,
                )
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
