"""Time per energy+forces call of MLFFCalculator on ethanol, Cu-256 and Cu-2048, with its FLOPs.

    python benchmarks/calculator_speed.py [--potential egnn] [--size medium] [--hyper '{}']
        [--encoder none] [--threads 2] [--device cpu] [--dtypes float32,float64]
        [--systems ethanol,Cu-256,Cu-2048] [--gemm-size 2048] [--json]
        [--mace-python /path/macevenv/bin/python]

The model is the one ``mlff train`` builds: the ``--size`` preset (small, medium or large;
``mlff train``'s default is medium) of ``--potential``, resolved by
``mlff.training.config.TrainConfig.model_hyperparameters()``; ``--hyper`` (a JSON dict of
``build_model`` arguments) overrides single entries. Untrained weights (seed 0); the speed does
not depend on them.

Prints the resolved hyperparameters, then one row per (system, dtype): atoms, edges (5 Å
cutoff), milliseconds per call (median over repeated calls with a fresh rattle each time, so
nothing is cached; one warm-up call, at least 3 calls and 2 s), and the call against the
hardware: ``gflop_per_call`` (FLOPs of one call, forward and backward, counted by
``torch.utils.flop_counter.FlopCounterMode`` on the op-by-op reference path, which counts
matrix products only: gathers, scatters and element-wise work count zero, so this is a lower
bound of the arithmetic),
``achieved_gflops`` (those FLOPs over the median time), ``gemm_gflops`` (the throughput of a
timed ``--gemm-size`` square matmul on the same device, threads and dtype, in this process) and
``fraction_of_gemm`` (achieved over GEMM). ``--json`` prints one JSON object instead, with the
FLOPs split by operator too.

With ``--mace-python`` (a python in a separate environment with mace-torch, see
``benchmarks/mace_worker.py``) it then times an untrained MACE (32 channels, L=1,
``mace_run_train``'s defaults) on the same structures, dtypes, device and threads, in a
subprocess, counts its FLOPs and GEMM throughput the same way, and prints both codes side by side
with MACE's time over mlff's. Without it, only mlff's figures are printed: no figure from another
run or machine is ever shown. For the same comparison by system size, up to 10^5 atoms, see
``benchmarks/scaling.py``. Record results in docs/measurements.md with the command, date and
machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
import torch
from ase import Atoms
from ase.build import bulk, molecule
from mace_worker import count_flops, die_with_parent, gemm_gflops, time_calls
from mlff.potentials.fused import reference_path

from mlff import MLFFCalculator, build_model
from mlff.errors import DataError
from mlff.graph import graph_from_atoms
from mlff.training.config import TrainConfig

CUTOFF = 5.0  # Å, mlff train's default and MACE's r_max here
FLOPS_NOTE = (
    "FLOPs: matrix products only (torch.utils.flop_counter.FlopCounterMode, op-by-op reference "
    "path), forward + backward of one call; GEMM: a timed {n}x{n} matmul on the same device, "
    "threads and dtype"
)


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


def hyperparameters(potential: str, size: str, hyper: str) -> dict:
    """``mlff train``'s hyperparameters for ``potential`` at ``size`` (``"none"``: build_model's
    defaults), updated by JSON ``hyper``. A bad option exits with one line naming it."""
    resolved = {}
    try:
        if size != "none":
            resolved = TrainConfig(potential=potential, size=size).model_hyperparameters()
    except DataError as error:
        sys.exit(f"--size: {error}")
    try:
        extra = json.loads(hyper)
    except json.JSONDecodeError as error:
        sys.exit(f"--hyper: not a JSON dict ({error})")
    if not isinstance(extra, dict):
        sys.exit("--hyper: not a JSON dict")
    return {**resolved, **extra}


def mace_rows(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """``{(system, dtype): row}`` of MACE from mace_worker.py under ``--mace-python``.

    Empty, with a message, when the worker fails: mlff's rows are still printed.
    """
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
            "--flops",
            "--gemm-size",
            str(args.gemm_size),
        ]
        print(f"timing MACE: {' '.join(command)}", file=sys.stderr, flush=True)
        done = subprocess.run(
            command, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent
        )
    if done.returncode != 0 or not done.stdout.strip():
        print(f"--mace-python: mace_worker.py exited {done.returncode}", file=sys.stderr)
        return {}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {(row["structure"], row["dtype"]): row for row in result["rows"]}


def add_mace(row: dict, mace: dict | None) -> None:
    """Put MACE's figures for the row's system and dtype into ``row`` (``mace_`` keys)."""
    if mace is None or "error" in mace:
        row["mace_error"] = mace["error"] if mace else "no result from mace_worker.py"
        return
    row["mace_ms_per_call"] = mace["ms_per_call"]
    row["speedup_vs_mace"] = mace["ms_per_call"] / row["ms_per_call"]
    row["mace_gflop_per_call"] = mace["gflop_per_call"]
    row["mace_achieved_gflops"] = mace["gflop_per_call"] / (mace["ms_per_call"] / 1e3)
    row["mace_gemm_gflops"] = mace["gemm_gflops"]
    row["mace_fraction_of_gemm"] = row["mace_achieved_gflops"] / mace["gemm_gflops"]
    row["mace_flops_by_op"] = mace["flops_by_op"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The mlff model and runtime options both speed scripts take."""
    parser.add_argument("--potential", default="egnn")
    parser.add_argument("--encoder", default="none")
    parser.add_argument(
        "--size", default="medium", help="mlff train's size preset: small, medium or large"
    )
    parser.add_argument(
        "--hyper", default="{}", help="JSON dict of build_model arguments over the preset"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--compile", default="none", choices=["none", "inductor"], help="mlff's --compile"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--systems", default="ethanol,Cu-256,Cu-2048")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM")
    parser.add_argument(
        "--mace-python",
        type=Path,
        help="python of an environment with mace-torch: time MACE too and print the ratio",
    )
    parser.add_argument(
        "--stress",
        action="store_true",
        help="mlff computes the stress of periodic cells in every call too (MACE always does)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.mace_python and not args.mace_python.is_file():
        sys.exit(f"--mace-python {args.mace_python}: no such file")
    torch.set_num_threads(args.threads)
    hyper = hyperparameters(args.potential, args.size, args.hyper)
    config = {
        "potential": args.potential,
        "encoder": args.encoder,
        "size": args.size,
        "hyperparameters": hyper,
        "device": args.device,
        "threads": args.threads,
        "compile": args.compile,
        "mlff_stress_in_every_call": args.stress,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "flops": FLOPS_NOTE.format(n=args.gemm_size),
    }
    if not args.json:
        print(f"mlff {args.potential} (encoder {args.encoder}), size {args.size}: {hyper}")
        print(f"{args.device}, {args.threads} threads, torch {torch.__version__}")
        print(config["flops"])
        print(
            f"{'system':8s} {'atoms':>5s} {'edges':>7s} {'dtype':8s} {'ms/call':>9s} "
            f"{'GFLOP/call':>10s} {'GFLOP/s':>8s} {'GEMM GFLOP/s':>12s} {'of GEMM':>7s}",
            flush=True,
        )
    gemm: dict[str, float] = {}
    rows = []
    for name, (atoms, elements) in systems(args.systems).items():
        torch.manual_seed(0)
        model = build_model(
            potential=args.potential,
            encoder=args.encoder,
            elements=elements,
            cutoff=CUTOFF,
            **hyper,
        )
        edges = graph_from_atoms(atoms, CUTOFF).n_edges
        for dtype in args.dtypes.split(","):
            calc = MLFFCalculator(model, device=args.device, dtype=dtype, compile=args.compile)
            cuda = calc.device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync = torch.cuda.synchronize if cuda else None
            if args.compile != "none":  # compile (and recompile for new shapes) before timing
                time_calls(atoms, calc, sync, min_calls=2, min_seconds=0, stress=args.stress)
            seconds = time_calls(atoms, calc, sync, stress=args.stress)
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            # counted on the op-by-op reference path: a dispatch mode can watch neither a
            # compiled graph nor the fused CPU kernels (the same matrix products; the fused
            # backward pass recomputes the forward's, which is not counted)
            counting = (
                calc
                if args.compile == "none"
                else MLFFCalculator(model, args.device, dtype, compile="none")
            )
            with reference_path():
                flops, by_op = count_flops(atoms, counting)
            if dtype not in gemm:
                gemm[dtype] = gemm_gflops(args.gemm_size, dtype, str(calc.device))
            achieved = flops / 1e9 / seconds
            rows.append(
                {
                    "system": name,
                    "atoms": len(atoms),
                    "edges": edges,
                    "potential": args.potential,
                    "encoder": args.encoder,
                    "size": args.size,
                    "dtype": dtype,
                    "device": str(calc.device),
                    "threads": args.threads,
                    "ms_per_call": 1e3 * seconds,
                    "peak_gpu_mib": peak,
                    "gflop_per_call": flops / 1e9,
                    "achieved_gflops": achieved,
                    "gemm_gflops": gemm[dtype],
                    "fraction_of_gemm": achieved / gemm[dtype],
                    "flops_by_op": by_op,
                }
            )
            if not args.json:
                print(
                    f"{name:8s} {len(atoms):5d} {edges:7d} {dtype:8s} {1e3 * seconds:9.2f} "
                    f"{flops / 1e9:10.4f} {achieved:8.2f} {gemm[dtype]:12.1f} "
                    f"{achieved / gemm[dtype]:7.1%}",
                    flush=True,
                )
    if args.mace_python:
        mace = mace_rows(args)
        if not args.json:
            print(
                f"{'system':8s} {'dtype':8s} {'mlff ms':>9s} {'MACE ms':>9s} {'MACE/mlff':>9s} "
                f"{'mlff GFLOP':>10s} {'MACE GFLOP':>10s} {'mlff/GEMM':>9s} {'MACE/GEMM':>9s}"
            )
        for row in rows:
            add_mace(row, mace.get((row["system"], row["dtype"])))
            if args.json:
                continue
            if "mace_error" in row:
                print(f"{row['system']:8s} {row['dtype']:8s} MACE failed: {row['mace_error']}")
                continue
            print(
                f"{row['system']:8s} {row['dtype']:8s} {row['ms_per_call']:9.2f} "
                f"{row['mace_ms_per_call']:9.2f} {row['speedup_vs_mace']:9.2f} "
                f"{row['gflop_per_call']:10.4f} {row['mace_gflop_per_call']:10.4f} "
                f"{row['fraction_of_gemm']:9.1%} {row['mace_fraction_of_gemm']:9.1%}"
            )
    if args.json:
        print(json.dumps({"config": config, "rows": rows}))


if __name__ == "__main__":
    main()
