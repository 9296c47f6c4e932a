"""``mlff md run`` (molecular dynamics with a runtime covariance check) and ``mlff md analyze``."""

from __future__ import annotations

import sys
import time

import click
from mlff.workflows.common import (
    SIGNAL_EXIT_CODES,
    cli_errors,
    emit_json,
    finite,
    load_calculator,
    read_checked,
    read_structures,
    resolve_compile_mode,
    runtime_options,
)
from mlff.workflows.md_analyze import analyze

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover", "bussi")
BAROSTATS = ("isotropic", "full")


@click.group()
def md() -> None:
    """Run molecular dynamics (md run) or analyse a trajectory (md analyze)."""


class _Progress:
    """A click progress bar on stderr showing steps/s and ns/day; silent when not wanted."""

    def __init__(self, steps: int, timestep_fs: float, enabled: bool) -> None:
        self.timestep_fs = timestep_fs
        self.bar = None
        self._shown = 0
        self._last_update = 0.0
        if enabled and steps > 0:
            self.bar = click.progressbar(
                length=steps,
                label="md",
                file=sys.stderr,
                show_eta=True,
                item_show_func=lambda text: text,
            )
            self.bar.__enter__()

    def __call__(self, steps_done: int, elapsed: float) -> None:
        if self.bar is None:
            return
        now = time.monotonic()
        if now - self._last_update < 0.2 and steps_done < self.bar.length:
            return
        self._last_update = now
        rate = steps_done / elapsed if elapsed > 0 else 0.0
        ns_day = rate * self.timestep_fs * 1e-6 * 86400.0
        self.bar.update(steps_done - self._shown, f"{rate:.1f} steps/s, {ns_day:.3g} ns/day")
        self._shown = steps_done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _summary_lines(summary, settings, n_atoms: int) -> list[str]:
    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"{summary.steps} steps ({settings.ensemble}, {n_atoms} atoms, dt {settings.timestep_fs} "
        f"fs): steps {summary.first_step} -> {summary.last_step}",
        f"speed: {summary.steps_per_second:.2f} steps/s, {summary.ns_per_day:.4g} ns/day",
        f"mean temperature: {fmt(summary.mean_temperature_k, '.2f')} K",
        f"energy drift: {fmt(summary.energy_drift_mev_per_atom_per_ps, '.3g')} meV/atom/ps",
        f"covariance checks: {summary.covariance_checks}, max relative force error "
        f"{fmt(summary.covariance_max_rel_error, '.2e')}, failures {summary.covariance_failures}",
    ]
    if summary.stopped_by:
        lines.append(f"stopped by {summary.stopped_by} after step {summary.last_step}")
    return lines


@md.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("structure", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--index",
    default="-1",
    show_default=True,
    help="Frame(s) of STRUCTURE: -1 the last, : every frame (one system each, batched engine).",
)
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default="nve", show_default=True)
@click.option(
    "--thermostat",
    type=click.Choice(THERMOSTATS),
    default="langevin",
    show_default=True,
    help="NVT thermostat.",
)
@click.option(
    "--barostat",
    type=click.Choice(BAROSTATS),
    default="isotropic",
    show_default=True,
    help="NPT barostat (MTK): isotropic volume or full cell fluctuations.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    callback=finite,
    help="Temperature in K (initial velocities; NVT/NPT target).",
)
@click.option(
    "--pressure",
    type=float,
    default=1.01325,
    show_default=True,
    callback=finite,
    help="NPT pressure in bar.",
)
@click.option(
    "--timestep",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    callback=finite,
    help="Time step in fs.",
)
@click.option("--steps", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option(
    "--friction",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    callback=finite,
    help="Langevin friction in 1/ps; Nosé–Hoover and Bussi couple over 1/friction.",
)
@click.option(
    "--barostat-time",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    callback=finite,
    help="NPT barostat time in fs [default: 1000 time steps].",
)
@click.option("--seed", type=int, default=None, help="Seed of velocities, noise, rotations.")
@click.option(
    "--traj",
    type=click.Path(dir_okay=False),
    default=None,
    help="Trajectory: .extxyz/.xyz/.traj (ASE) or .dcd/.xtc/.h5 (mdtraj, with a topology PDB).",
)
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Steps between frames and log rows.",
)
@click.option("--log", type=click.Path(dir_okay=False), default=None, help="CSV log file.")
@click.option(
    "--restart",
    type=click.Path(dir_okay=False),
    default=None,
    help="Continue from this trajectory's last frame (positions, momenta, step).",
)
@click.option(
    "--covariance-every",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Steps between rotational covariance checks (0 = off).",
)
@click.option(
    "--covariance-tol",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    callback=finite,
    help="Relative force tolerance [default: by dtype].",
)
@click.option(
    "--on-covariance-failure",
    type=click.Choice(["warn", "stop"]),
    default="warn",
    show_default=True,
)
@click.option(
    "--engine",
    type=click.Choice(["auto", "ase", "batched"]),
    default="auto",
    show_default=True,
    help="ase: one structure through ASE's integrators (the reference; NPT, --restart). "
    "batched: every frame of --index x --replicas as one device batch. auto: batched on a GPU, "
    "for several systems or with --compile inductor, else ase.",
)
@click.option(
    "--replicas",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Copies of each structure, each with its own velocities (batched engine).",
)
@click.option(
    "--skin",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    callback=finite,
    help="Verlet neighbour-list skin in Å (batched engine).",
)
@runtime_options(auto_compile=True)
@click.option(
    "--progress/--no-progress", default=None, help="Progress bar [default: when on a terminal]."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout at the end.")
@cli_errors
def run(
    model,
    structure,
    index,
    ensemble,
    thermostat,
    barostat,
    temperature,
    pressure,
    timestep,
    steps,
    friction,
    barostat_time,
    seed,
    traj,
    interval,
    log,
    restart,
    covariance_every,
    covariance_tol,
    on_covariance_failure,
    engine,
    replicas,
    skin,
    device,
    dtype,
    threads,
    compile_mode,
    progress,
    as_json,
) -> None:
    """Run molecular dynamics of STRUCTURE with MODEL.

    STRUCTURE is any ASE-readable file, or CIF/POSCAR (read through pymatgen). Velocities are
    drawn from Maxwell-Boltzmann at --temperature with zero total momentum, unless the frame has
    momenta. With --restart, STRUCTURE may be left out: the run continues from the restart file's
    last frame, its momenta and step number, appending to --traj and --log when they exist
    (thermostat and barostat variables start afresh). Ctrl-C or SIGTERM stops after the current
    step, writes that state and leaves complete files (exit status 130 or 143).
    """
    from mlff.workflows.md_batched import choose_engine, run_batched

    from mlff.md.ase_engine import has_momenta, run_md
    from mlff.md.settings import MDSettings

    if ensemble != "nve" and temperature <= 0:
        raise click.BadParameter(
            f"{ensemble} needs a temperature above 0 K", param_hint="'--temperature'"
        )
    if structure is None and restart is None:
        raise click.UsageError("give a STRUCTURE file or --restart FILE")
    settings = MDSettings(
        ensemble=ensemble,
        thermostat=thermostat,
        barostat=barostat,
        temperature_k=temperature,
        pressure_bar=pressure,
        timestep_fs=timestep,
        steps=steps,
        friction_per_ps=friction,
        barostat_time_fs=barostat_time,
        interval=interval,
        covariance_every=covariance_every,
        seed=seed,
    )
    settings.validate()

    start_step, start_time_fs = 0, None
    if restart is not None:
        choose_engine(engine, replicas, device, ensemble, barostat, restart, compile_mode)
        where, atoms = read_checked(restart, -1)[-1]
        start_time_fs = atoms.info.get("time_fs")
        if "step" in atoms.info:
            start_step = int(atoms.info["step"])
        elif start_time_fs is not None:  # DCD/XTC/HDF5 keep the time, not the step
            start_step = round(start_time_fs / timestep)
        if structure is not None:
            reference = read_structures(structure, index)[-1]
            if list(reference.numbers) != list(atoms.numbers):
                raise click.UsageError(
                    f"--restart {restart} holds other atoms than STRUCTURE {structure}"
                )
        if not has_momenta(atoms):
            click.echo(
                f"warning: {restart} has no momenta; drawing velocities at {temperature} K",
                err=True,
            )
        compile_mode = resolve_compile_mode(compile_mode, model, [atoms], steps, device, dtype)
    else:
        inputs = read_checked(structure, index)
        structures = [atoms for _, atoms in inputs] * replicas
        compile_mode = resolve_compile_mode(compile_mode, model, structures, steps, device, dtype)
        engine = choose_engine(
            engine, len(inputs) * replicas, device, ensemble, barostat, restart, compile_mode
        )
        if engine == "batched":
            options = dict(
                device=device,
                dtype=dtype,
                threads=threads,
                compile=compile_mode,
                traj=traj,
                log=log,
                skin=skin,
                covariance_tol=covariance_tol,
                on_covariance_failure=on_covariance_failure,
                as_json=as_json,
            )
            show = sys.stderr.isatty() if progress is None else progress
            bar = _Progress(steps, timestep, bool(show))
            return run_batched(model, inputs, replicas, settings, options, bar)
        where, atoms = inputs[-1]
    calculator = load_calculator(
        model,
        [(where, atoms)],
        device=device,
        dtype=dtype,
        threads=threads,
        compile=compile_mode,
        covariance_tolerance=covariance_tol,
        on_covariance_failure="raise" if on_covariance_failure == "stop" else "warn",
        seed=seed,
    )
    append = restart is not None
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(steps, timestep, bool(show))
    try:
        summary = run_md(
            atoms,
            calculator,
            settings,
            trajectory=traj,
            log=log,
            append=append,
            start_step=start_step,
            start_time_fs=start_time_fs,
            progress=bar,
            on_warning=lambda message: click.echo(f"warning: {message}", err=True),
        )
    finally:
        bar.close()

    payload = {
        "steps": summary.steps,
        "steps_per_second": summary.steps_per_second,
        "ns_per_day": summary.ns_per_day,
        "mean_temperature_k": summary.mean_temperature_k,
        "energy_drift_mev_per_atom_per_ps": summary.energy_drift_mev_per_atom_per_ps,
        "covariance_checks": summary.covariance_checks,
        "covariance_max_rel_error": summary.covariance_max_rel_error,
        "covariance_failures": summary.covariance_failures,
        "first_step": summary.first_step,
        "last_step": summary.last_step,
        "stopped_by": summary.stopped_by,
        "ensemble": ensemble,
        "n_atoms": len(atoms),
        "timestep_fs": timestep,
        "device": str(calculator.device),
        "dtype": dtype,
        "compile": compile_mode,
        "trajectory": traj,
        "log": log,
    }
    lines = _summary_lines(summary, settings, len(atoms))
    if as_json:
        for line in lines:
            click.echo(line, err=True)
        emit_json(payload)
    else:
        for line in lines:
            click.echo(line)
    if summary.error:
        raise click.ClickException(summary.error)
    if summary.stopped_by in SIGNAL_EXIT_CODES:
        sys.exit(SIGNAL_EXIT_CODES[summary.stopped_by])


md.add_command(analyze)
