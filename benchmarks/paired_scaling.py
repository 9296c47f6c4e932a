"""Cost per atom of a large cell over a small one, both timed in turn in one process.

    python benchmarks/paired_scaling.py [--sizes 256,16384] [--rounds 5] [--compile none]
        [--dtype float32] [--threads 2] [--potential egnn] [--size medium] [--hyper '{}']
        [--encoder none] [--json]

``scaling.py`` times every size in its own process, one after the other, minutes apart. On a
shared host whose memory bandwidth drifts over minutes (other tenants on the same socket), two
such figures can differ by more than the ratio asked of them. Here one process builds both
cells (:func:`scaling.copper`: rattled fcc Cu) and one calculator (:func:`scaling.copper_model`:
the preset, untrained, 5 Å cutoff), then alternates: each round times the small cell (one warm-up,
then at least 3 calls and 1 s, median) and right after it the large one (one warm-up, then 2
calls, median), each call on a fresh rattle. A round's ratio is its large µs/atom over its
small µs/atom, so drift slower than a round cancels. Printed: every round and the median, least
and largest ratio over the rounds. ``--compile inductor`` compiles both sizes before the first
round. No memory figures (``scaling.py`` gives those). ``--json``: one JSON object on stdout.
Record results in docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys

import numpy as np


def per_atom_us(atoms, calc, min_calls: int, min_seconds: float, max_calls: int) -> float:
    """Median µs per atom of energy+forces calls on fresh rattles, after one warm-up call."""
    from mace_worker import call_times  # benchmarks/

    times = call_times(
        atoms, calc, None, min_calls=min_calls, min_seconds=min_seconds, max_calls=max_calls
    )
    return 1e6 * float(np.median(times)) / len(atoms)


def main() -> None:
    from calculator_speed import add_model_arguments, hyperparameters
    from scaling import copper, copper_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,16384", help="small,large atom counts asked")
    parser.add_argument("--rounds", type=int, default=5, help="small-then-large rounds")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    try:
        small, large = (int(float(s)) for s in args.sizes.split(","))
    except ValueError:
        sys.exit(f"--sizes: two comma-separated atom counts, got {args.sizes!r}")
    if not 0 < small < large:
        sys.exit(f"--sizes: a small and a larger atom count, got {args.sizes!r}")
    if args.rounds < 1:
        sys.exit(f"--rounds: at least 1, got {args.rounds}")
    hyper = hyperparameters(args.potential, args.size, args.hyper)
    import torch

    from mlff import MLFFCalculator

    torch.set_num_threads(args.threads)
    model = copper_model(args, hyper)
    calc = MLFFCalculator(model, device=args.device, dtype=args.dtype, compile=args.compile)
    cells = {"small": copper(small), "large": copper(large)}
    if args.compile != "none":  # compile both before timing
        for atoms in cells.values():
            per_atom_us(atoms, calc, 1, 0.0, 1)
    if not args.json:
        counts = ", ".join(f"{len(a)}" for a in cells.values())
        print(f"mlff {args.potential} {args.size}, {args.dtype}, {args.threads} threads, "
              f"compile {args.compile}; Cu {counts} atoms")  # fmt: skip
        print(" round   small µs/atom   large µs/atom   ratio", flush=True)
    rounds = []
    for k in range(args.rounds):
        row = {
            "small_us_per_atom": per_atom_us(cells["small"], calc, 3, 1.0, 50),
            "large_us_per_atom": per_atom_us(cells["large"], calc, 2, 0.0, 2),
        }
        row["ratio"] = row["large_us_per_atom"] / row["small_us_per_atom"]
        rounds.append(row)
        if not args.json:
            print(f"{k + 1:6d} {row['small_us_per_atom']:15.1f} {row['large_us_per_atom']:15.1f}"
                  f" {row['ratio']:7.3f}", flush=True)  # fmt: skip
    ratios = [r["ratio"] for r in rounds]
    summary = {
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
    }
    config = {
        "atoms": [len(a) for a in cells.values()],
        "potential": args.potential,
        "size": args.size,
        "hyperparameters": hyper,
        "dtype": args.dtype,
        "compile": args.compile,
        "threads": args.threads,
        "device": args.device,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps({"config": config, "rounds": rounds, **summary}))
        return
    print(f"ratio over {len(rounds)} rounds: median {summary['median_ratio']:.3f}, "
          f"least {summary['min_ratio']:.3f}, largest {summary['max_ratio']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
