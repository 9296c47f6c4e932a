"""``mlff md run --engine batched``: many systems (frames x replicas) in one device batch."""

from __future__ import annotations

import click
from mlff.workflows.common import SIGNAL_EXIT_CODES, emit_json, load_calculator


def choose_engine(
    engine: str,
    n_systems: int,
    device: str,
    ensemble: str,
    barostat: str,
    restart,
    compile_mode: str = "none",
) -> str:
    """Resolve ``--engine auto`` and refuse combinations an engine cannot run.

    auto: batched on a GPU, for several systems, or with a compiled model (on a CPU the compiled
    batched engine outruns the ASE engine from one ethanol to Cu-2048, benchmarks/md_engines.py;
    eager, one system runs as fast in either); else ase.
    """
    from mlff.runtime import resolve_device

    if engine == "auto":
        if restart is not None:
            engine = "ase"
        else:
            on_gpu = resolve_device(device).type == "cuda"
            compiled = compile_mode != "none"
            engine = "batched" if on_gpu or n_systems > 1 or compiled else "ase"
    if engine == "ase" and n_systems > 1:
        raise click.UsageError(
            f"{n_systems} systems (frames x --replicas) need --engine batched; "
            "the ASE engine runs one structure"
        )
    if engine == "batched" and restart is not None:
        raise click.BadParameter(
            "--restart continues ASE-engine runs; use --engine ase", param_hint="'--engine'"
        )
    return engine


def run_batched(
    model_path,
    inputs: list,
    replicas: int,
    settings,
    options: dict,
    progress,
) -> None:
    """Run ``inputs`` ((where, atoms) pairs) x ``replicas`` in one batch and report.

    ``options``: device, dtype, threads, compile, traj, log, skin, covariance_tol,
    on_covariance_failure, as_json.
    """
    from mlff.md.runner import run_batched_md

    calculator = load_calculator(
        model_path,
        inputs,
        device=options["device"],
        dtype=options["dtype"],
        threads=options["threads"],
        compile=options.get("compile", "none"),
    )
    structures = [atoms.copy() for _, atoms in inputs for _ in range(replicas)]
    summary = run_batched_md(
        structures,
        calculator.model,
        settings,
        trajectory=options["traj"],
        log=options["log"],
        skin=options["skin"],
        covariance_tolerance=options["covariance_tol"],
        stop_on_covariance_failure=options["on_covariance_failure"] == "stop",
        progress=progress,
        on_warning=lambda message: click.echo(f"warning: {message}", err=True),
    )
    progress.close()
    reports = summary.systems
    temperatures = [r.mean_temperature_k for r in reports if r.mean_temperature_k is not None]
    drifts = [
        r.energy_drift_mev_per_atom_per_ps
        for r in reports
        if r.energy_drift_mev_per_atom_per_ps is not None
    ]
    errors = [r.covariance_max_rel_error for r in reports if r.covariance_max_rel_error]
    n_atoms = sum(len(a) for a in structures)
    payload = {
        "engine": "batched",
        "n_systems": len(structures),
        "steps": summary.steps,
        "steps_per_second": summary.steps_per_second,
        "atom_steps_per_second": summary.atom_steps_per_second,
        "ns_per_day": summary.ns_per_day,
        "mean_temperature_k": sum(temperatures) / len(temperatures) if temperatures else None,
        "energy_drift_mev_per_atom_per_ps": max(drifts, key=abs) if drifts else None,
        "covariance_checks": sum(r.covariance_checks for r in reports),
        "covariance_max_rel_error": max(errors) if errors else None,
        "covariance_failures": sum(r.covariance_failures for r in reports),
        "neighbour_builds": summary.neighbour_builds,
        "first_step": 0,
        "last_step": max(r.last_step for r in reports),
        "stopped_by": summary.stopped_by,
        "ensemble": settings.ensemble,
        "n_atoms": n_atoms,
        "timestep_fs": settings.timestep_fs,
        "device": str(calculator.device),
        "dtype": options["dtype"],
        "compile": options.get("compile", "none"),
        "trajectory": options["traj"],
        "log": options["log"],
        "systems": [vars(r) for r in reports],
    }
    lines = [
        f"{summary.steps} steps of {len(structures)} systems ({settings.ensemble}, {n_atoms} "
        f"atoms, dt {settings.timestep_fs} fs, batched engine on {calculator.device})",
        f"speed: {summary.steps_per_second:.2f} steps/s, "
        f"{summary.atom_steps_per_second:.4g} atom-steps/s, {summary.ns_per_day:.4g} ns/day "
        f"per system; {summary.neighbour_builds} neighbour-list builds",
    ]
    if temperatures:
        lines.append(f"mean temperature over systems: {payload['mean_temperature_k']:.2f} K")
    lines.append(
        f"covariance checks: {payload['covariance_checks']}, max relative force error "
        f"{payload['covariance_max_rel_error'] or 0:.2e}, failures {payload['covariance_failures']}"
    )
    failed = [r for r in reports if r.error]
    lines += [f"stopped: {r.error}" for r in failed]
    if summary.stopped_by:
        lines.append(f"stopped by {summary.stopped_by} after {summary.steps} steps")
    for line in lines:
        click.echo(line, err=options["as_json"])
    if options["as_json"]:
        emit_json(payload)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(reports)} systems stopped early; first: {failed[0].error}"
        )
    if summary.stopped_by in SIGNAL_EXIT_CODES:
        raise SystemExit(SIGNAL_EXIT_CODES[summary.stopped_by])
