"""MD speed of the ASE engine against the batched engine, in one run on the same cores.

    python benchmarks/md_engines.py [--device cpu] [--dtype float32] [--threads 2]
        [--cases ethanol,ethanol-x256,Cu-2048] [--steps 200] [--size medium]
        [--hyper '{"features": 64}'] [--compile inductor] [--json]

The model is ``mlff train``'s EGNN at ``--size`` (its default, medium: fixed coordinates, so
edges lay out in neighbour blocks), untrained; ``--size none`` takes build_model's defaults
(coordinate updates, per-edge sums), as this script did before 2026-12-05's fifth session.

For each case it runs the ASE engine (one structure through ASE's integrator and an eager
MLFFCalculator) and the batched engine (every replica in one batch, Verlet list with a 1 Å skin)
with the same model, NVT Langevin at 300 K, 1 fs, no output files, and prints steps/s, atom-steps/s
and the ratio. For the batched engine it also times the model's forward+backward alone on the
same batch and pairs, and reports the engine's overhead: the share of a step spent outside the
model (median of repeated calls; within a few per cent this is timing noise, and it can come out
negative). With ``--compile inductor`` the batched engine runs again with the compiled model
(``mlff md run --engine batched --compile inductor``); the compile time, paid once per run and
kind of input, is reported and not counted in steps/s. "ethanol-x256" runs 256 replicas in the
batched engine; its ASE figure is one replica, so the ratio compares atom-steps/s. Record
results in docs/measurements.md with command, date and machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from ase.build import bulk, molecule

from mlff import MLFFCalculator, build_model
from mlff.compiled import compile_model
from mlff.md.ase_engine import run_md
from mlff.md.forces import BatchedModel
from mlff.md.neighbours import VerletList
from mlff.md.runner import run_batched_md
from mlff.md.settings import MDSettings
from mlff.md.state import SystemBatch

CASES = {
    "ethanol": (lambda: molecule("CH3CH2OH"), 1, ["H", "C", "O"]),
    "ethanol-x256": (lambda: molecule("CH3CH2OH"), 256, ["H", "C", "O"]),
    "Cu-256": (lambda: bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4), 1, ["Cu"]),
    "Cu-2048": (lambda: bulk("Cu", "fcc", a=3.61, cubic=True) * (8, 8, 8), 1, ["Cu"]),
}


def settings(steps: int) -> MDSettings:
    return MDSettings(
        ensemble="nvt", temperature_k=300.0, timestep_fs=1.0, steps=steps, interval=steps,
        covariance_every=0, seed=0,
    )  # fmt: skip


def ase_engine(model, atoms, steps: int, args) -> float:
    """Steps per second of the ASE engine."""
    calculator = MLFFCalculator(model, device=args.device, dtype=args.dtype, compile="none")
    work = atoms.copy()
    run_md(work, calculator, settings(5))  # warm-up
    summary = run_md(work, calculator, settings(steps))
    return summary.steps_per_second


def batched_engine(model, structures, steps: int, args) -> tuple[float, float, int]:
    """(steps/s, model share of a step, neighbour-list builds) of the batched engine."""
    run_batched_md(structures, model, settings(5))  # warm-up
    summary = run_batched_md(structures, model, settings(steps))
    batch = SystemBatch.from_atoms(structures, model.device)
    verlet = VerletList(model.cutoff, 1.0)
    edge_index, edge_shifts = verlet.update(batch)
    wrapped = BatchedModel(model, batch.numbers)
    wrapped(batch, edge_index, edge_shifts)  # warm-up
    timings = []
    for _ in range(max(5, min(20, steps // 10))):
        _synchronise(model.device)
        started = time.perf_counter()
        wrapped(batch, edge_index, edge_shifts)
        _synchronise(model.device)
        timings.append(time.perf_counter() - started)
    model_s = sorted(timings)[len(timings) // 2]  # median: robust to other work on the machine
    step_s = 1.0 / summary.steps_per_second
    return summary.steps_per_second, model_s / step_s, summary.neighbour_builds


def compiled_engine(model, structures, steps: int, args) -> tuple[float, float]:
    """(steps/s, seconds of the compiling warm-up) of the batched engine, compiled model."""
    compiled = compile_model(copy.deepcopy(model).requires_grad_(False), args.compile)
    started = time.perf_counter()
    run_batched_md(structures, compiled, settings(5))  # compiles for these inputs
    compile_s = time.perf_counter() - started
    summary = run_batched_md(structures, compiled, settings(steps))
    return summary.steps_per_second, compile_s


def hyperparameters(args) -> dict:
    """The EGNN's build_model arguments: the ``--size`` preset, updated by ``--hyper``."""
    from calculator_speed import hyperparameters as preset_hyperparameters  # benchmarks/

    return preset_hyperparameters("egnn", args.size, args.hyper)


def _synchronise(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cases", default="ethanol,ethanol-x256,Cu-2048")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--size",
        default="medium",
        help="mlff train's size preset of the EGNN (small, medium or large; default medium, what "
        "mlff train builds), or 'none' for build_model's defaults",
    )
    parser.add_argument("--hyper", default="{}", help="build_model hyperparameters over --size")
    parser.add_argument("--compile", default="none", choices=["none", "inductor"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.cases.split(","):
        make, replicas, elements = CASES[name]
        torch.manual_seed(0)
        model = build_model("egnn", elements=elements, cutoff=5.0, **hyperparameters(args))
        model = model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
        atoms = make()
        n_atoms = len(atoms)
        steps = args.steps if n_atoms < 1000 else max(10, args.steps // 10)
        ase_rate = ase_engine(model, atoms, steps, args)
        rate, model_share, builds = batched_engine(
            model, [make() for _ in range(replicas)], steps, args
        )
        compiled_rate, compile_s = None, None
        if args.compile != "none":
            compiled_rate, compile_s = compiled_engine(
                model, [make() for _ in range(replicas)], steps, args
            )
        row = {
            "case": name,
            "atoms_per_system": n_atoms,
            "systems": replicas,
            "steps": steps,
            "ase_steps_per_s": ase_rate,
            "ase_atom_steps_per_s": ase_rate * n_atoms,
            "batched_steps_per_s": rate,
            "batched_atom_steps_per_s": rate * n_atoms * replicas,
            "atom_step_ratio": rate * replicas / ase_rate,
            "batched_overhead_share": 1.0 - model_share,
            "neighbour_builds": builds,
            "compiled_steps_per_s": compiled_rate,
            "compiled_atom_step_ratio": None
            if compiled_rate is None
            else compiled_rate * replicas / ase_rate,
            "compile_s": compile_s,
        }
        rows.append(row)
        overhead = 100 * row["batched_overhead_share"]
        print(
            f"{name:<13} ASE {ase_rate:8.1f} steps/s {ase_rate * n_atoms:10.4g} atom-steps/s | "
            f"batched {rate:8.1f} steps/s {row['batched_atom_steps_per_s']:10.4g} atom-steps/s | "
            f"ratio {row['atom_step_ratio']:6.2f} | overhead {overhead:4.1f}% | builds {builds}",
            flush=True,
        )
        if compiled_rate is not None:
            print(
                f"{'':<13} compiled batched {compiled_rate:8.1f} steps/s | ratio "
                f"{row['compiled_atom_step_ratio']:6.2f} | compile {compile_s:.0f} s",
                flush=True,
            )
    if args.json:
        print(json.dumps({"device": args.device, "dtype": args.dtype,
                          "threads": torch.get_num_threads(), "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
