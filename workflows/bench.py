"""``mlff bench``: MD speed (steps/s, µs per atom-step, ns/day) and peak memory of a model."""

from __future__ import annotations

import click
from mlff.workflows.common import (
    cli_errors,
    emit_json,
    finite,
    load_calculator,
    read_checked,
    runtime_options,
)


def peak_memory_mb(device) -> tuple[float, str]:
    """(peak memory in MiB, what was measured): CUDA's peak allocation on a GPU, else the process's
    peak resident set size (which includes Python and torch themselves)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes
    return (peak / 2**20 if sys.platform == "darwin" else peak / 2**10), "process_max_rss"


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("structure", type=click.Path(dir_okay=False))
@click.option("--index", default="-1", show_default=True, help="Frame of STRUCTURE (last).")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option(
    "--timestep",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    callback=finite,
    help="fs",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    callback=finite,
    help="K",
)
@click.option(
    "--engine",
    type=click.Choice(["ase", "batched"]),
    default="ase",
    show_default=True,
    help="The MD engine to time (batched: --replicas copies in one device batch).",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Copies of STRUCTURE in the batch (batched engine).",
)
@runtime_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@cli_errors
def bench(
    model,
    structure,
    index,
    steps,
    warmup,
    timestep,
    temperature,
    engine,
    replicas,
    device,
    dtype,
    threads,
    compile_mode,
    seed,
    as_json,
) -> None:
    """Time NVE MD (velocity Verlet) of STRUCTURE with MODEL on the chosen device.

    Reports steps/s, µs per atom-step, ns/day, the time of one calculator call, the peak memory
    and the number of edges at the start and the end (an untrained model lets a hot structure
    fly apart: use --temperature 0 to time it at its own geometry).
    """
    import time

    import torch

    from mlff.graph import graph_from_atoms
    from mlff.md.ase_engine import run_md
    from mlff.md.settings import MDSettings

    structures = read_checked(structure, index)[-1:]
    atoms = structures[0][1]
    calculator = load_calculator(
        model, structures, device=device, dtype=dtype, threads=threads, compile=compile_mode
    )
    if calculator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(calculator.device)
    settings = MDSettings(
        ensemble="nve",
        temperature_k=temperature,
        timestep_fs=timestep,
        steps=warmup,
        covariance_every=0,
        seed=seed,
    )
    if replicas > 1 and engine != "batched":
        raise click.BadParameter("--replicas needs --engine batched", param_hint="'--replicas'")
    edges_start = replicas * graph_from_atoms(atoms, calculator.model.cutoff).n_edges
    extra = {}
    if engine == "batched":
        summary, calculate_s, atoms = _time_batched(calculator.model, atoms, replicas, settings,
                                                    steps)  # fmt: skip
        extra = {
            "engine": "batched",
            "n_systems": replicas,
            "atom_steps_per_second": summary.atom_steps_per_second,
            "neighbour_builds": summary.neighbour_builds,
        }
        drifts = [r.energy_drift_mev_per_atom_per_ps for r in summary.systems]
        drift = max((d for d in drifts if d is not None), key=abs, default=None)
    else:
        if warmup:
            run_md(atoms, calculator, settings)
        settings.steps = steps
        summary = run_md(atoms, calculator, settings)
        # the calculator alone at the final structure (fastest of a few calls: the least
        # disturbed by other work on the machine): how much of a step is the network
        timings = []
        for _ in range(max(3, min(20, steps))):
            started = time.perf_counter()
            calculator.calculate(atoms, ["energy", "forces"], ["positions"])
            timings.append(time.perf_counter() - started)
        calculate_s = min(timings)
        drift = summary.energy_drift_mev_per_atom_per_ps
    edges_end = replicas * graph_from_atoms(atoms, calculator.model.cutoff).n_edges
    memory, memory_kind = peak_memory_mb(calculator.device)
    n_atoms = replicas * len(atoms)
    rate = summary.steps_per_second
    payload = {
        "structure": str(structure),
        "n_atoms": n_atoms,
        "n_edges_start": edges_start,
        "n_edges_end": edges_end,
        "device": str(calculator.device),
        "dtype": dtype,
        "compile": compile_mode,
        "threads": torch.get_num_threads(),
        "steps": summary.steps,
        "steps_per_second": rate,
        "us_per_atom_step": 1e6 / (rate * n_atoms) if rate > 0 else None,
        "ns_per_day": summary.ns_per_day,
        "calculator_ms": 1000.0 * calculate_s,
        "step_ms": 1000.0 / rate if rate > 0 else None,
        "peak_memory_mb": memory,
        "peak_memory_kind": memory_kind,
        "energy_drift_mev_per_atom_per_ps": drift,
        **extra,
    }
    lines = [
        f"{n_atoms} atoms, {edges_start} -> {edges_end} edges, {calculator.device} {dtype}, "
        f"{torch.get_num_threads()} thread(s), {summary.steps} steps",
        f"{rate:.2f} steps/s, {payload['us_per_atom_step'] or 0:.2f} µs/atom-step, "
        f"{summary.ns_per_day:.4g} ns/day",
        f"one step {payload['step_ms'] or 0:.2f} ms, of which the calculator "
        f"{payload['calculator_ms']:.2f} ms",
        f"peak memory {memory:.1f} MiB ({memory_kind})",
    ]
    for line in lines:
        click.echo(line, err=as_json)
    if as_json:
        emit_json(payload)


def _time_batched(model, atoms, replicas: int, settings, steps: int):
    """(summary, seconds per model call, the first system's final structure) of the batched
    engine on ``replicas`` copies of ``atoms``; the warm-up is ``settings.steps`` steps. The
    model is timed alone on the starting batch (fastest of a few calls)."""
    import time

    from mlff.md.forces import BatchedModel
    from mlff.md.neighbours import VerletList
    from mlff.md.runner import run_batched_md
    from mlff.md.state import SystemBatch

    if settings.steps:
        run_batched_md([atoms.copy() for _ in range(replicas)], model, settings)
    settings.steps = steps
    work = [atoms.copy() for _ in range(replicas)]
    summary = run_batched_md(work, model, settings)
    batch = SystemBatch.from_atoms(work, model.device)
    edge_index, edge_shifts = VerletList(model.cutoff).update(batch)
    wrapped = BatchedModel(model, batch.numbers)
    timings = []
    for _ in range(max(3, min(20, steps))):
        started = time.perf_counter()
        wrapped(batch, edge_index, edge_shifts)
        if model.device.type == "cuda":
            import torch

            torch.cuda.synchronize(model.device)
        timings.append(time.perf_counter() - started)
    return summary, min(timings), summary.final_structures[0] or atoms
