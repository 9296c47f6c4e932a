"""Time and memory of one energy+forces call against system size: fcc Cu from 256 to 10^5 atoms.

    python benchmarks/scaling.py [--sizes 256,2048,16384,100000] [--dtype float32] [--threads 2]
        [--device cpu] [--potential egnn] [--size medium] [--hyper '{}'] [--encoder none]
        [--timeout SECONDS] [--memory-limit-gb GB] [--json]
        [--mace-python /path/macevenv/bin/python]

Each size is fcc Cu (a = 3.61 Å, rattled 0.02 Å, seed 0): the near-cubic supercell of the
4-atom cubic cell (n×n×n, n×n×(n+1) or n×(n+1)×(n+1) cells) whose atom count is closest to the
size asked for, so 100000 becomes 29×29×30 cells, 100,920 atoms; the table prints the exact
count. The model is ``mlff train``'s: the ``--size`` preset of ``--potential`` (as
``calculator_speed.py`` builds it; ``--hyper`` overrides entries), untrained, 5 Å cutoff, called
through MLFFCalculator.

Every size runs in its own subprocess (this script again, with ``--one N``), so the memory
figures are that size's own. Timing: two warm-up calls, then at least 3 calls and 2 s below
50,000 atoms, exactly 2 calls from 50,000 atoms on; the median is reported, each call on a fresh
rattle. Columns:

* ``atoms``, ``cells`` (the supercell), ``edges`` (directed pairs within the cutoff);
* ``ms/call`` and ``µs/atom`` (the median call over the atom count);
* ``peak MB``: on CPU the child's peak resident memory (``ru_maxrss``) minus its resident memory
  right before the first call, that is what the calls added; ``abs MB`` its absolute peak
  (python, torch and the model included). On CUDA ``peak MB`` is
  ``torch.cuda.max_memory_allocated`` during the calls minus the allocation before them and
  ``abs MB`` the maximum itself; the CPU figures are in the JSON rows too.
* ``live MB`` (CPU, glibc): the peak of the bytes malloc has handed out and not yet freed during
  the calls, above those in use before them: the tensors' own memory. ``peak MB`` is higher by
  the freed memory that ``mlff.runtime.keep_freed_memory`` keeps for reuse (and fragmentation).

A size whose child fails (out of memory, killed, over ``--timeout`` seconds) is reported as
failed with the reason, and the table goes on; ``--memory-limit-gb`` (CPU) caps each child's
address space so that running out of memory is a clean error rather than the kernel's OOM
killer. With ``--mace-python`` (a python in a separate environment with mace-torch, see
``benchmarks/mace_worker.py``) every size is also run, in its own subprocess, for an untrained
MACE (32 channels, L=1, ``mace_run_train``'s defaults) on the same structure, dtype, device and
threads with the same protocol, and the table gains MACE's columns and MACE's time over mlff's;
MACE at 10^5 atoms may not fit in memory, which shows as failed.
``--json`` prints one JSON object on stdout instead of the table. Record results in
docs/measurements.md with the command, date and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CUTOFF = 5.0  # Å
LATTICE = 3.61  # Å, fcc Cu
LARGE = 50_000  # atoms: from here on, 2 warm-ups + 2 timed calls


def supercell(n_atoms: int) -> tuple[int, int, int]:
    """Near-cubic repeats of the 4-atom cubic fcc cell with the atom count closest to n_atoms."""
    edge = max(1, round((n_atoms / 4) ** (1 / 3)))
    shapes = [
        (a, b, c)
        for n in range(max(1, edge - 2), edge + 3)
        for (a, b, c) in ((n, n, n), (n, n, n + 1), (n, n + 1, n + 1))
    ]
    return min(shapes, key=lambda s: (abs(4 * s[0] * s[1] * s[2] - n_atoms), s))


def copper(n_atoms: int):
    """Rattled (0.02 Å, seed 0) fcc Cu of :func:`supercell`'s shape for ``n_atoms``."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True) * supercell(n_atoms)
    atoms.rattle(0.02, seed=0)
    return atoms


def protocol(n_atoms: int) -> dict[str, float]:
    """Timed calls for a size: at least 3 and 2 s below LARGE atoms, exactly 2 from it on."""
    if n_atoms < LARGE:
        return {"min_calls": 3, "min_seconds": 2.0, "max_calls": 50, "warmups": 2}
    return {"min_calls": 2, "min_seconds": 0.0, "max_calls": 2, "warmups": 2}


def copper_model(args: argparse.Namespace, hyper: dict):
    """The untrained model of ``--potential`` and ``--encoder`` with the resolved
    hyperparameters ``hyper`` (``calculator_speed.hyperparameters``) for Cu, 5 Å cutoff,
    weights seeded (0)."""
    import torch

    from mlff import build_model

    torch.manual_seed(0)
    return build_model(
        potential=args.potential, encoder=args.encoder, elements=["Cu"], cutoff=CUTOFF, **hyper
    )


def one_size(args: argparse.Namespace) -> dict:
    """Child process: build, time and measure one size; the row as a dict."""
    import torch
    from calculator_speed import hyperparameters
    from live_memory import LiveMemory
    from mace_worker import call_times, peak_rss_mb, rss_mb

    from mlff import MLFFCalculator
    from mlff.graph import graph_from_atoms

    torch.set_num_threads(args.threads)
    atoms = copper(args.one)
    row: dict = {"atoms": len(atoms), "cells": "x".join(map(str, supercell(args.one)))}
    model = copper_model(args, hyperparameters(args.potential, args.size, args.hyper))
    try:
        calc = MLFFCalculator(model, device=args.device, dtype=args.dtype, compile=args.compile)
        if args.compile != "none":  # compile before timing
            call_times(atoms, calc, None, min_calls=2, min_seconds=0, max_calls=2)
        cuda = calc.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            gpu_before = torch.cuda.memory_allocated() / 2**20
        row["rss_before_mb"] = rss_mb()
        live = None if cuda else LiveMemory()
        times = call_times(
            atoms, calc, torch.cuda.synchronize if cuda else None, **protocol(len(atoms))
        )
        row["peak_rss_mb"] = peak_rss_mb()
        row["peak_live_mb"] = None if live is None else live.stop()
        if cuda:
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            row["peak_gpu_above_start_mb"] = row["peak_gpu_mb"] - gpu_before
        row["ms_per_call"] = 1e3 * float(np.median(times))
        row["calls"] = len(times)
        del calc
    except (MemoryError, RuntimeError) as error:  # torch's out-of-memory is a RuntimeError
        row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        row["peak_rss_mb"] = peak_rss_mb()
    # counted after the calls, so that the graph built here is not in the memory baseline
    try:
        row["edges"] = graph_from_atoms(atoms, CUTOFF).n_edges
    except MemoryError:
        row["edges"] = None
    return row


def run_child(command: list[str], args: argparse.Namespace, env: dict) -> tuple[dict | None, str]:
    """Run one child under ``--timeout`` and ``--memory-limit-gb``; its JSON or None, and why."""
    limit = None
    if args.memory_limit_gb:
        limit = int(args.memory_limit_gb * 2**30)

    from mace_worker import die_with_parent  # benchmarks/

    def prepare_child() -> None:  # in the child, before it starts python
        die_with_parent()  # a stopped benchmark takes its children (10^5 atoms: minutes) along
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    timeout = args.timeout
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            preexec_fn=prepare_child,
        )
    except subprocess.TimeoutExpired as expired:
        sys.stderr.write(_text(expired.stderr))
        return None, f"timed out after {timeout:g} s"
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        if done.returncode < 0:
            name = signal.Signals(-done.returncode).name
            why = f"killed by {name}"
            if name == "SIGKILL":
                why += " (out of memory?)"
            return None, why
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        return None, f"exited {done.returncode}" + (f" ({last[0].strip()})" if last else "")
    lines = done.stdout.strip().splitlines()
    if not lines:
        return None, "printed nothing"
    return json.loads(lines[-1]), ""


def _text(output: str | bytes | None) -> str:
    """A timed-out child's captured output as text."""
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def memory_columns(row: dict, prefix: str = "") -> None:
    """Fill ``{prefix}peak_mb`` (the calls' own) and ``{prefix}peak_abs_mb`` from a child's row."""
    if "peak_gpu_mb" in row:
        peak, absolute = row["peak_gpu_above_start_mb"], row["peak_gpu_mb"]
    elif row.get("rss_before_mb") is not None and "peak_rss_mb" in row:
        peak, absolute = row["peak_rss_mb"] - row["rss_before_mb"], row["peak_rss_mb"]
    else:
        peak, absolute = None, row.get("peak_rss_mb")
    row[f"{prefix}peak_mb"], row[f"{prefix}peak_abs_mb"] = peak, absolute


def mlff_size(n: int, args: argparse.Namespace, env: dict) -> dict:
    """mlff's row for size ``n`` from a child process of this script."""
    command = [
        sys.executable, __file__, "--one", str(n), "--dtype", args.dtype,
        "--threads", str(args.threads), "--device", args.device, "--potential", args.potential,
        "--encoder", args.encoder, "--size", args.size, "--hyper", args.hyper,
        "--compile", args.compile,
    ]  # fmt: skip
    print(f"mlff, {n} atoms asked: {' '.join(command)}", file=sys.stderr, flush=True)
    result, why = run_child(command, args, env)
    if result is None:
        atoms = copper_count(n)
        return {"atoms": atoms, "cells": "x".join(map(str, supercell(n))), "error": why}
    if "error" not in result:
        result["us_per_atom"] = 1e3 * result["ms_per_call"] / result["atoms"]
    memory_columns(result)
    return result


def copper_count(n: int) -> int:
    """Atom count of :func:`copper` for ``n`` without building it."""
    a, b, c = supercell(n)
    return 4 * a * b * c


def mace_size(n: int, args: argparse.Namespace, env: dict, work: Path) -> dict:
    """MACE's figures for size ``n`` (``mace_`` keys) from mace_worker.py in its own process."""
    import ase.io

    path = work / f"Cu-{copper_count(n)}.extxyz"
    ase.io.write(path, copper(n))
    spec = protocol(copper_count(n))
    command = [
        str(args.mace_python), str(Path(__file__).with_name("mace_worker.py")), "calls",
        str(path), "--dtypes", args.dtype, "--threads", str(args.threads),
        "--device", args.device, "--min-calls", str(spec["min_calls"]),
        "--min-seconds", str(spec["min_seconds"]), "--max-calls", str(spec["max_calls"]),
    ]  # fmt: skip
    print(f"MACE, {n} atoms asked: {' '.join(command)}", file=sys.stderr, flush=True)
    result, why = run_child(command, args, env)
    path.unlink()
    if result is None:
        return {"mace_error": why}
    row = result["rows"][0]
    if "error" in row:
        return {"mace_error": row["error"], "mace_version": result["mace_version"]}
    memory_columns(row)
    return {
        "mace_version": result["mace_version"],
        "mace_ms_per_call": row["ms_per_call"],
        "mace_us_per_atom": 1e3 * row["ms_per_call"] / row["atoms"],
        "mace_calls": row["calls"],
        "mace_peak_mb": row["peak_mb"],
        "mace_peak_abs_mb": row["peak_abs_mb"],
    }


def fmt(value, spec: str, width: int) -> str:
    """``value`` formatted, or ``-`` when it is missing."""
    return f"{value:{width}{spec}}" if value is not None else f"{'-':>{width}s}"


def header(mace: bool) -> str:
    """The table's column names."""
    line = (
        f"{'atoms':>7s} {'cells':>9s} {'edges':>9s} {'ms/call':>10s} {'µs/atom':>8s} "
        f"{'peak MB':>8s} {'abs MB':>8s} {'live MB':>8s}"
    )
    if mace:
        line += f" | {'MACE ms':>10s} {'µs/atom':>8s} {'peak MB':>8s} {'abs MB':>8s}"
        line += f" {'MACE/mlff':>9s}"
    return line


def table_row(row: dict, mace: bool) -> str:
    """One size's line of the table; a failed code shows its reason instead of figures."""
    line = f"{row['atoms']:7d} {row['cells']:>9s} {fmt(row.get('edges'), 'd', 9)} "
    if "error" in row:
        line += f"failed: {row['error']}"
    else:
        line += (
            f"{row['ms_per_call']:10.1f} {row['us_per_atom']:8.1f} "
            f"{fmt(row['peak_mb'], '.0f', 8)} {fmt(row['peak_abs_mb'], '.0f', 8)} "
            f"{fmt(row.get('peak_live_mb'), '.0f', 8)}"
        )
    if not mace:
        return line
    if "mace_error" in row:
        return line + f" | MACE failed: {row['mace_error']}"
    return line + (
        f" | {row['mace_ms_per_call']:10.1f} {row['mace_us_per_atom']:8.1f} "
        f"{fmt(row['mace_peak_mb'], '.0f', 8)} {fmt(row['mace_peak_abs_mb'], '.0f', 8)} "
        f"{fmt(row.get('speedup_vs_mace'), '.2f', 9)}"
    )


def main() -> None:
    from calculator_speed import add_model_arguments, hyperparameters

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,2048,16384,100000", help="atom counts asked")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    add_model_arguments(parser)
    parser.add_argument(
        "--timeout", type=float, help="seconds one size's child may run (each code); none if unset"
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        help="CPU only: cap each child's address space (RLIMIT_AS) so that running out of memory "
        "is a clean failure rather than the kernel's OOM killer; it counts virtual memory, "
        "about 1 GB above resident with torch loaded",
    )
    parser.add_argument(
        "--mace-python",
        type=Path,
        help="python of an environment with mace-torch: run MACE on each size too",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child: one size, JSON out
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args)))
        return
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",")]  # 1e5 too
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        sys.exit(f"--sizes: comma-separated atom counts, got {args.sizes!r}")
    if args.memory_limit_gb and args.device != "cpu":
        sys.exit("--memory-limit-gb: CPU only (CUDA reserves more address space than it uses)")
    if args.mace_python and not args.mace_python.is_file():
        sys.exit(f"--mace-python {args.mace_python}: no such file")
    import torch

    hyper = hyperparameters(args.potential, args.size, args.hyper)  # checked before any child
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    config = {
        "potential": args.potential,
        "encoder": args.encoder,
        "size": args.size,
        "hyperparameters": hyper,
        "dtype": args.dtype,
        "device": args.device,
        "threads": args.threads,
        "cutoff": CUTOFF,
        "structure": f"fcc Cu, a = {LATTICE} Å, rattled 0.02 Å",
        "protocol": f"2 warm-ups; >= 3 calls and 2 s below {LARGE} atoms, else 2 calls; median",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    if not args.json:
        print(f"mlff {args.potential} (encoder {args.encoder}), size {args.size}: {hyper}")
        print(f"{args.dtype}, {args.device}, {args.threads} threads; {config['protocol']}")
        if args.mace_python:
            print("MACE: 32 channels, L=1, correlation 3, r_max 5 Å (mace_run_train defaults)")
        print(header(bool(args.mace_python)), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in sizes:
            row = mlff_size(n, args, env)
            if args.mace_python:
                row.update(mace_size(n, args, env, Path(work)))
                if "error" not in row and "mace_error" not in row:
                    row["speedup_vs_mace"] = row["mace_ms_per_call"] / row["ms_per_call"]
            rows.append(row)
            if not args.json:
                print(table_row(row, bool(args.mace_python)), flush=True)
    if args.json:
        print(json.dumps({"config": config, "rows": rows}))


if __name__ == "__main__":
    main()
