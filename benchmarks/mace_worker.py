"""MACE side of the benchmarks, run by ``--mace-python`` in a separate environment with mace-torch.

``calculator_speed.py``, ``scaling.py`` and ``train_ethanol.py`` start this script with the
python given by ``--mace-python`` (a virtual environment holding mace-torch; it never imports
mlff), on the same machine, cores and threads as their own run, so every ratio they print comes
from one run:

    python3 -m venv /path/macevenv
    /path/macevenv/bin/pip install torch==2.13.0 mace-torch      # torch first: the CPU build
    python benchmarks/calculator_speed.py --mace-python /path/macevenv/bin/python

Subcommands (each prints one JSON object on its last stdout line):

* ``calls STRUCTURE... --dtypes float32,float64``: milliseconds per energy+forces call of an
  untrained MACE model built with ``mace_run_train``'s defaults (``--channels 32 --max-l 1``:
  hidden irreps 32x0e + 32x1o, correlation 3, two interactions, 8 Bessel functions, r_max 5 Å),
  timed by :func:`time_calls`, the same protocol as mlff's side (``--min-calls``,
  ``--min-seconds``, ``--max-calls`` as there). Each row also holds the process's resident memory
  right before the structure's first call and its peak after the last (``ru_maxrss``: a
  process-wide peak, so it is that structure's own only when the process times one structure, as
  ``benchmarks/scaling.py`` does), CUDA's peak allocation on a GPU, and with ``--flops`` the
  matmul FLOPs of one call and this process's GEMM throughput (:func:`count_flops`,
  :func:`gemm_gflops`). A structure that runs out of memory gives a row with ``error`` instead of
  ending the process.
* ``train TRAIN TEST --epochs 20``: runs ``python -m mace.cli.run_train`` on TRAIN (5 % held out
  for validation; batch 10, EMA, lr 0.01, loss weights energy 1 / forces 100, float32: the
  settings of the MACE reference in issue 3; with stress, MACE's ``stress`` loss at weight 1, as
  ``mlff train``'s) and reports its time (the whole process, data
  loading and statistics included) and the test-set errors of the model it wrote, in the units
  mlff's benchmarks use.

Only numpy is imported at module level (torch inside the functions), so the mlff side imports
the shared measurements from here too: :func:`time_calls`, :func:`count_flops`,
:func:`gemm_gflops`, :func:`rss_mb` and :func:`peak_rss_mb`; both codes are then measured by the
same code.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: on Linux the kernel sends it SIGTERM when the process
    that started it dies, so a stopped benchmark leaves no MACE training running behind it
    (which would share the cores, and the work folder, with the next run). Elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def call_times(
    atoms,
    calc,
    synchronize: Callable[[], None] | None = None,
    min_calls: int = 3,
    min_seconds: float = 2.0,
    max_calls: int = 50,
    stress: bool = False,
    warmups: int = 1,
) -> list[float]:
    """Seconds of each timed energy+forces call, each on a fresh rattle (0.02 Å) of ``atoms``.

    ``warmups`` warm-up calls first (not returned; the CPU allocator reaches its steady state
    in the first two calls of a large structure); then at least ``min_calls`` calls and
    ``min_seconds`` seconds, at most ``max_calls`` calls. ``synchronize`` (e.g.
    ``torch.cuda.synchronize``) ends each call. ``stress``: each call asks for the stress too
    (periodic cells), in one calculation, as an NPT integrator does (MACE's calculator computes
    it in every call).
    """
    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(0)
    base = atoms.get_positions()
    properties = ["energy", "forces"] + (["stress"] if stress and atoms.pbc.all() else [])
    for _ in range(warmups):
        atoms.set_positions(base + rng.normal(scale=0.02, size=base.shape))
        calc.calculate(atoms, properties, ["positions"])
    if synchronize is not None:
        synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        atoms.set_positions(base + rng.normal(scale=0.02, size=base.shape))
        tick = time.perf_counter()
        calc.calculate(atoms, properties, ["positions"])
        if synchronize is not None:
            synchronize()
        times.append(time.perf_counter() - tick)
        if len(times) >= max_calls:
            break
    return times


def time_calls(atoms, calc, synchronize: Callable[[], None] | None = None, **protocol) -> float:
    """Median seconds of one energy+forces call (:func:`call_times`' protocol and options)."""
    return float(np.median(call_times(atoms, calc, synchronize, **protocol)))


def count_flops(atoms, calc) -> tuple[float, dict[str, float]]:
    """FLOPs of one energy+forces call (forward and backward) and their split by operator.

    Counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products only
    (mm, addmm, bmm, einsum lowered to them, convolutions, attention); gathers, scatters and
    element-wise operations count zero. Run on a fresh rattle (0.02 Å), after timing.
    """
    from torch.utils.flop_counter import FlopCounterMode

    atoms = atoms.copy()
    calc.reset()  # else an unchanged structure is answered from the cache, counting nothing
    atoms.calc = calc
    rng = np.random.default_rng(1)
    atoms.set_positions(atoms.get_positions() + rng.normal(scale=0.02, size=(len(atoms), 3)))
    with FlopCounterMode(display=False) as counter:
        atoms.get_forces()
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def gemm_gflops(
    n: int = 2048, dtype: str = "float32", device: str = "cpu", min_seconds: float = 1.0
) -> float:
    """GFLOP/s of an (n, n) @ (n, n) matmul (2 n^3 FLOPs): median over repeats, after a warm-up.

    Runs on torch's current threads, so call it after ``torch.set_num_threads``. At least three
    repeats and ``min_seconds`` seconds.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator, dtype=torch_dtype).to(device)
    b = torch.randn(n, n, generator=generator, dtype=torch_dtype).to(device)
    out = torch.empty_like(a)
    synchronize = torch.cuda.synchronize if torch.device(device).type == "cuda" else None
    torch.mm(a, b, out=out)  # warm-up
    if synchronize is not None:
        synchronize()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < min_seconds:
        tick = time.perf_counter()
        torch.mm(a, b, out=out)
        if synchronize is not None:
            synchronize()
        times.append(time.perf_counter() - tick)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


def rss_mb() -> float | None:
    """This process's resident memory now, MB (Linux ``/proc/self/statm``; None elsewhere)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, MB (``ru_maxrss``: KiB on Linux, B on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def hidden_irreps(channels: int, max_l: int) -> str:
    """MACE's ``--num_channels/--max_L`` irreps: ``32x0e + 32x1o`` for 32 and 1."""
    return " + ".join(f"{channels}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(max_l + 1))


def build_mace(atomic_numbers: list[int], args: argparse.Namespace):
    """An untrained ScaleShiftMACE as ``mace_run_train --model MACE`` builds it (defaults)."""
    import ast

    import torch
    from e3nn import o3
    from mace import modules
    from mace.tools import build_default_arg_parser

    defaults = build_default_arg_parser().parse_args(["--name", "bench", "--train_file", "x"])
    heads = ["Default"]
    return modules.ScaleShiftMACE(
        r_max=args.r_max,
        num_bessel=defaults.num_radial_basis,
        num_polynomial_cutoff=defaults.num_cutoff_basis,
        max_ell=defaults.max_ell,
        interaction_cls=modules.interaction_classes[defaults.interaction],
        interaction_cls_first=modules.interaction_classes[defaults.interaction_first],
        num_interactions=defaults.num_interactions,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(hidden_irreps(args.channels, args.max_l)),
        MLP_irreps=o3.Irreps(defaults.MLP_irreps),
        atomic_energies=np.zeros((len(heads), len(atomic_numbers))),
        avg_num_neighbors=20.0,
        atomic_numbers=atomic_numbers,
        correlation=args.correlation,
        gate=modules.gate_dict[defaults.gate],
        radial_MLP=ast.literal_eval(defaults.radial_MLP),
        atomic_inter_scale=1.0,
        atomic_inter_shift=[0.0] * len(heads),
        heads=heads,
    ).to(torch.float64)


def calls(args: argparse.Namespace) -> dict:
    """Time MACE calls on each structure and dtype; rows keyed like calculator_speed's."""
    import ase.io
    import mace
    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cuda = torch.device(args.device).type == "cuda"
    synchronize = torch.cuda.synchronize if cuda else None
    protocol = {
        "min_calls": args.min_calls,
        "min_seconds": args.min_seconds,
        "max_calls": args.max_calls,
    }
    gemm: dict[str, float] = {}
    rows = []
    for path in args.structures:
        atoms, name = ase.io.read(path), Path(path).stem
        numbers = sorted(set(atoms.get_atomic_numbers().tolist()))
        model = build_mace(numbers, args)
        for dtype in args.dtypes.split(","):
            row = {"structure": name, "atoms": len(atoms), "dtype": dtype}
            try:
                calc = MACECalculator(
                    models=model.to(getattr(torch, dtype)), device=args.device, default_dtype=dtype
                )
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    gpu_before = torch.cuda.memory_allocated() / 2**20
                row["rss_before_mb"] = rss_mb()
                times = call_times(atoms, calc, synchronize, **protocol)
                row["ms_per_call"] = 1e3 * float(np.median(times))
                row["calls"] = len(times)
                row["peak_rss_mb"] = peak_rss_mb()
                if cuda:
                    row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
                    row["peak_gpu_above_start_mb"] = row["peak_gpu_mb"] - gpu_before
                if args.flops:
                    flops, by_op = count_flops(atoms, calc)
                    if dtype not in gemm:
                        gemm[dtype] = gemm_gflops(args.gemm_size, dtype, args.device)
                    row["gflop_per_call"] = flops / 1e9
                    row["flops_by_op"] = by_op
                    row["gemm_gflops"] = gemm[dtype]
                del calc
            except (MemoryError, RuntimeError) as error:  # torch's out-of-memory is a RuntimeError
                row["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                row["peak_rss_mb"] = peak_rss_mb()
                print(f"  MACE {name} {dtype}: failed, {row['error']}", file=sys.stderr)
            else:
                print(f"  MACE {name} {dtype}: {row['ms_per_call']:.2f} ms", file=sys.stderr)
            rows.append(row)
    return {
        "mace_version": mace.__version__,
        "torch_version": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "rows": rows,
    }


def errors(model_path: Path, test: Path, device: str, dtype: str) -> dict:
    """Test-set MAE/RMSE: forces in meV/Å over components, energies in meV/atom, stress (where
    labelled) in meV/Å³ over the 6 Voigt components, as mlff's evaluation reports them."""
    import ase.io
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model_path), device=device, default_dtype=dtype)
    df, de, ds = [], [], []
    for atoms in ase.io.read(str(test), index=":"):
        reference_e, reference_f = atoms.info["REF_energy"], atoms.arrays["REF_forces"]
        reference_s = atoms.info.get("REF_stress")
        atoms.calc = calc
        df.append((atoms.get_forces() - reference_f).ravel())
        de.append((atoms.get_potential_energy() - reference_e) / len(atoms))
        if reference_s is not None:
            ds.append(atoms.get_stress(voigt=True) - np.asarray(reference_s))
    df, de = 1e3 * np.concatenate(df), 1e3 * np.asarray(de)
    result = {
        "forces_mae_mev_per_a": float(np.abs(df).mean()),
        "forces_rmse_mev_per_a": float(np.sqrt((df**2).mean())),
        "energy_mae_mev_per_atom": float(np.abs(de).mean()),
        "energy_rmse_mev_per_atom": float(np.sqrt((de**2).mean())),
    }
    if ds:
        ds = 1e3 * np.concatenate(ds)
        result["stress_mae_mev_per_a3"] = float(np.abs(ds).mean())
        result["stress_rmse_mev_per_a3"] = float(np.sqrt((ds**2).mean()))
    return result


def with_ref_keys(source: Path, target: Path) -> tuple[Path, bool]:
    """Copy frames with energies, forces and (where every frame has one) the stress under MACE's
    REF_energy / REF_forces / REF_stress keys (stress in eV/Å³, ASE's sign, Voigt order).
    Returns the file and whether it holds stress."""
    import ase.io
    from ase.calculators.calculator import PropertyNotImplementedError

    frames = ase.io.read(str(source), index=":")
    with_stress = True
    for atoms in frames:
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        try:
            stress = atoms.get_stress(voigt=True)
        except (PropertyNotImplementedError, RuntimeError):
            stress, with_stress = None, False
        atoms.calc = None
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces
        if stress is not None:
            atoms.info["REF_stress"] = stress
    ase.io.write(str(target), frames)
    return target, with_stress


def train(args: argparse.Namespace) -> dict:
    """Run mace_run_train with the benchmark's settings; time it; evaluate the model on TEST."""
    import mace

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    train_file, with_stress = with_ref_keys(args.train, work / "train_ref.extxyz")
    test_file, _ = with_ref_keys(args.test, work / "test_ref.extxyz")
    command = [
        sys.executable, "-m", "mace.cli.run_train", "--name", "mace", "--model", "MACE",
        "--train_file", str(train_file), "--valid_fraction", "0.05",
        "--energy_key", "REF_energy", "--forces_key", "REF_forces", "--E0s", "average",
        "--num_channels", str(args.channels), "--max_L", str(args.max_l),
        "--correlation", str(args.correlation), "--r_max", str(args.r_max),
        "--batch_size", str(args.batch_size), "--max_num_epochs", str(args.epochs),
        "--default_dtype", args.dtype, "--device", args.device, "--seed", str(args.seed),
        "--ema", "--lr", "0.01", "--energy_weight", "1.0", "--forces_weight", "100.0",
    ]  # fmt: skip
    if with_stress:  # mlff train's stress weight (eV/Å³ squared errors) and MACE's stress loss
        command += ["--stress_key", "REF_stress", "--loss", "stress", "--stress_weight", "1.0"]
        command += ["--compute_stress", "True"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        command, cwd=work, env=env, check=True, stdout=sys.stderr, preexec_fn=die_with_parent
    )
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    model = work / "mace.model"
    return {
        "mace_version": mace.__version__,
        "command": " ".join(command),
        "threads": args.threads,
        "epochs": args.epochs,
        "wall_time_s": round(wall, 1),
        "cpu_time_s": round(cpu, 1),
        "test": errors(model, test_file, args.device, args.dtype),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("calls", "train"):
        p = sub.add_parser(name)
        p.add_argument("--channels", type=int, default=32)
        p.add_argument("--max-l", type=int, default=1)
        p.add_argument("--correlation", type=int, default=3)
        p.add_argument("--r-max", type=float, default=5.0, help="cutoff, Å")
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--device", default="cpu")
    p_calls = sub.choices["calls"]
    p_calls.add_argument("structures", nargs="+", help="ASE-readable files, one structure each")
    p_calls.add_argument("--dtypes", default="float32")
    p_calls.add_argument("--min-calls", type=int, default=3, help="timed calls, at least")
    p_calls.add_argument("--min-seconds", type=float, default=2.0, help="timing, at least")
    p_calls.add_argument("--max-calls", type=int, default=50, help="timed calls, at most")
    p_calls.add_argument(
        "--flops", action="store_true", help="also count FLOPs per call and time a GEMM"
    )
    p_calls.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM")
    p_train = sub.choices["train"]
    p_train.add_argument("train", type=Path)
    p_train.add_argument("test", type=Path)
    p_train.add_argument("--work", type=Path, required=True)
    p_train.add_argument("--epochs", type=int, default=20)
    p_train.add_argument("--batch-size", type=int, default=10)
    p_train.add_argument("--dtype", default="float32")
    p_train.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    result = calls(args) if args.command == "calls" else train(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
