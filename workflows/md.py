"""``mlff md run`` (molecular dynamics with a runtime covariance check) and ``mlff md analyze``."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
from mlff.workflows.common import (
    check_elements,
    cli_errors,
    emit_json,
    finite,
    load_calculator,
    read_structures,
    runtime_options,
    set_threads,
)

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover", "bussi")
BAROSTATS = ("isotropic", "full")
MDTRAJ_SUFFIXES = {".dcd", ".xtc", ".h5"}
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@click.group()
def md() -> None:
    """Run molecular dynamics (md run) or analyse a trajectory (md analyze)."""


def _read_frames(path: str, index: str | int):
    """Frames of an ASE-readable/CIF/POSCAR file, or of a DCD/XTC/HDF5 file through mdtraj."""
    if Path(path).suffix.lower() in MDTRAJ_SUFFIXES:
        from mlff.workflows.common import _as_slice

        from mlff.dynamics import read_mdtraj_frames

        return read_mdtraj_frames(path, _as_slice(index))
    return read_structures(path, index)


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
@click.option("--index", default="-1", show_default=True, help="Frame of STRUCTURE (last).")
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
@runtime_options
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
    device,
    dtype,
    threads,
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
    from mlff.dynamics import MDSettings, has_momenta, run_md
    from mlff.graph import check_structure

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
        atoms = _read_frames(restart, -1)[-1]
        where = f"{restart}, last frame"
        check_structure(atoms, where)
        start_time_fs = atoms.info.get("time_fs")
        if "step" in atoms.info:
            start_step = int(atoms.info["step"])
        elif start_time_fs is not None:  # DCD/XTC/HDF5 keep the time, not the step
            start_step = round(start_time_fs / timestep)
        if structure is not None:
            reference = _read_frames(structure, index)[-1]
            if list(reference.numbers) != list(atoms.numbers):
                raise click.UsageError(
                    f"--restart {restart} holds other atoms than STRUCTURE {structure}"
                )
        if not has_momenta(atoms):
            click.echo(
                f"warning: {restart} has no momenta; drawing velocities at {temperature} K",
                err=True,
            )
    else:
        atoms = _read_frames(structure, index)[-1]
        where = f"{structure}, frame {index}"
        check_structure(atoms, where)
    atoms.calc = None
    set_threads(threads, len(atoms))

    calculator = load_calculator(
        model,
        device=device,
        dtype=dtype,
        covariance_tolerance=covariance_tol,
        on_covariance_failure="raise" if on_covariance_failure == "stop" else "warn",
        seed=seed,
    )
    check_elements(atoms, calculator, where)
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


# --------------------------------------------------------------------------- analyze


def _load_trajectory(path: Path, top: str | None, stride: int):
    """(mdtraj.Trajectory, ASE frames or None) of an mdtraj or ASE-readable trajectory file."""
    import mdtraj

    from mlff.dynamics import to_mdtraj, topology_path

    if path.suffix.lower() in MDTRAJ_SUFFIXES:
        topology = top or (None if path.suffix.lower() == ".h5" else topology_path(path))
        if topology is not None and not Path(topology).is_file():
            raise click.BadParameter(f"topology {topology} not found", param_hint="'--top'")
        try:
            if topology is None:
                trajectory = mdtraj.load(str(path), stride=stride)
            else:
                trajectory = mdtraj.load(str(path), top=str(topology), stride=stride)
        except Exception as error:  # mdtraj raises many types on garbage input
            first = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
            raise ValueError(f"{path}: cannot read trajectory ({first})") from None
        return trajectory, None
    frames = read_structures(path, f"::{stride}")
    return to_mdtraj(frames), frames


def _pair_labels(trajectory):
    symbols = [atom.element.symbol for atom in trajectory.topology.atoms]
    return symbols, sorted(set(symbols))


def distance_histograms(trajectory, r_max_a: float, bins: int, periodic: bool, chunk: int = 64):
    """Histograms of all pair distances (Å), total and per element pair, summed over frames.

    Distances use the minimum image when ``periodic``. Returns (edges Å, total counts,
    {"A-B": counts}, {"A-B": number of pairs}).
    """
    import mdtraj
    import numpy as np

    symbols, elements = _pair_labels(trajectory)
    n = len(symbols)
    i, j = np.triu_indices(n, 1)
    pairs = np.stack([i, j], axis=1)
    labels = np.array(["-".join(sorted((symbols[a], symbols[b]))) for a, b in pairs])
    edges = np.linspace(0.0, r_max_a, bins + 1)
    total = np.zeros(bins)
    per_pair = {}
    names = sorted(set(labels.tolist()))
    masks = {name: labels == name for name in names}
    for name in names:
        per_pair[name] = np.zeros(bins)
    # bounded memory: distances of a block of pairs for a block of frames at a time
    block = max(1, 2_000_000 // max(min(trajectory.n_frames, chunk), 1))
    for start in range(0, len(pairs), block):
        stop = min(start + block, len(pairs))
        for frame_start in range(0, trajectory.n_frames, chunk):
            sub = trajectory[frame_start : frame_start + chunk]
            d = mdtraj.compute_distances(sub, pairs[start:stop], periodic=periodic) * 10.0
            total += np.histogram(d, bins=edges)[0]
            for name in names:
                mask = masks[name][start:stop]
                if mask.any():
                    per_pair[name] += np.histogram(d[:, mask], bins=edges)[0]
    counts = {name: int(mask.sum()) for name, mask in masks.items()}
    return edges, total, per_pair, counts


def radial_distribution(edges, counts, n_pairs: int, n_frames: int, mean_volume: float):
    """g(r) of one pair type from its pair-distance histogram: counts / ideal-gas counts."""
    import numpy as np

    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = n_frames * n_pairs * shells / mean_volume
    return np.divide(counts, ideal, out=np.zeros_like(counts, dtype=float), where=ideal > 0)


def _thermo_from_log(path: Path):
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "time_ps" not in rows[0]:
        raise ValueError(f"{path}: not an mlff md log (no time_ps column)")

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    return {
        "time_ps": column("time_ps"),
        "temperature_k": column("temperature_k"),
        "potential_energy_ev": column("potential_energy_ev"),
        "total_energy_ev": column("total_energy_ev"),
    }


def _thermo_from_frames(frames):
    from ase import units

    traces = {"time_ps": [], "temperature_k": [], "potential_energy_ev": [], "total_energy_ev": []}
    for k, atoms in enumerate(frames):
        if atoms.calc is None or "energy" not in atoms.calc.results or not atoms.has("momenta"):
            return None
        kinetic = atoms.get_kinetic_energy()
        dof = max(3 * len(atoms) - 3, 1)
        potential = atoms.calc.results["energy"]
        traces["time_ps"].append(atoms.info.get("time_fs", k) / 1000.0)
        traces["temperature_k"].append(2.0 * kinetic / (dof * units.kB))
        traces["potential_energy_ev"].append(potential)
        traces["total_energy_ev"].append(potential + kinetic)
    return traces


def _plot(out_dir: Path, name: str, draw) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    draw(axes)
    figure.tight_layout()
    path = out_dir / name
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return str(path)


@md.command("analyze")
@click.argument("trajectory", type=click.Path(dir_okay=False))
@click.option("--top", type=click.Path(dir_okay=False), default=None, help="Topology (PDB).")
@click.option("--log", type=click.Path(dir_okay=False), default=None, help="md run CSV log.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for PNGs and summary.json [default: TRAJECTORY_analysis].",
)
@click.option(
    "--r-max",
    type=click.FloatRange(min=0, min_open=True),
    default=6.0,
    show_default=True,
    callback=finite,
    help="Largest distance in Å.",
)
@click.option("--bins", type=click.IntRange(min=10), default=200, show_default=True)
@click.option("--stride", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@cli_errors
def analyze(trajectory, top, log, out_dir, r_max, bins, stride, as_json) -> None:
    """Analyse a trajectory: RDFs, h(r), RMSD, temperature and energy.

    TRAJECTORY is a DCD/XTC/HDF5 file (mdtraj, with the topology PDB beside it or --top) or any
    ASE-readable file. Writes PNG plots and summary.json: radial distribution functions per
    element pair (periodic cells), the histogram h(r) of all interatomic distances, the RMSD to
    the first frame, and temperature/energy traces from the md run log (--log, or TRAJECTORY's
    name with .csv) or from the frames' energies and momenta.
    """
    import mdtraj
    import numpy as np

    path = Path(trajectory)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    traj, frames = _load_trajectory(path, top, stride)
    if traj.n_frames == 0:
        raise ValueError(f"{path}: trajectory has no frames")
    out = Path(out_dir) if out_dir else path.with_name(f"{path.stem}_analysis")
    out.mkdir(parents=True, exist_ok=True)

    volumes = traj.unitcell_volumes
    periodic = volumes is not None and bool(np.all(volumes > 0))
    if periodic:
        half_box = 10.0 * float(np.min(traj.unitcell_lengths)) / 2.0
        r_max = min(r_max, half_box)
    edges, total, per_pair, pair_counts = distance_histograms(traj, r_max, bins, periodic)
    centres = 0.5 * (edges[1:] + edges[:-1])
    plots = []
    summary: dict = {
        "trajectory": str(path),
        "n_frames": int(traj.n_frames),
        "n_atoms": int(traj.n_atoms),
        "periodic": periodic,
        "r_max_a": r_max,
    }

    h_r = total / traj.n_frames
    nonzero = np.nonzero(total)[0]
    summary["h_r"] = {
        "bin_width_a": float(edges[1] - edges[0]),
        "min_distance_a": float(centres[nonzero[0]]) if nonzero.size else None,
        "peak_a": float(centres[int(np.argmax(h_r))]) if nonzero.size else None,
    }
    plots.append(
        _plot(
            out,
            "distance_histogram.png",
            lambda ax: (
                ax.plot(centres, h_r),
                ax.set(xlabel="r (Å)", ylabel="pairs per frame per bin", title="h(r)"),
            ),
        )
    )

    if periodic:
        mean_volume = 1000.0 * float(np.mean(volumes))
        rdfs = {
            name: radial_distribution(
                edges, per_pair[name], pair_counts[name], traj.n_frames, mean_volume
            )
            for name in per_pair
        }
        summary["rdf"] = {
            name: {
                "first_peak_a": float(centres[int(np.argmax(g))]),
                "first_peak_g": float(np.max(g)),
            }
            for name, g in rdfs.items()
        }

        def draw_rdf(ax):
            for name, g in rdfs.items():
                ax.plot(centres, g, label=name)
            ax.set(xlabel="r (Å)", ylabel="g(r)", title="radial distribution functions")
            ax.legend()

        plots.append(_plot(out, "rdf.png", draw_rdf))
    else:
        summary["rdf"] = None  # no volume to normalise by: see h(r)

    rmsd = mdtraj.rmsd(traj, traj, 0) * 10.0
    # DCD keeps no time: mdtraj numbers its frames instead
    time_axis = np.asarray(traj.time, dtype=float)
    time_label = "frame" if path.suffix.lower() == ".dcd" else "time (ps)"
    summary["rmsd_a"] = {
        "final": float(rmsd[-1]),
        "mean": float(np.mean(rmsd)),
        "max": float(np.max(rmsd)),
    }
    plots.append(
        _plot(
            out,
            "rmsd.png",
            lambda ax: (
                ax.plot(time_axis, rmsd),
                ax.set(xlabel=time_label, ylabel="RMSD (Å)", title="RMSD to the first frame"),
            ),
        )
    )

    traces = None
    log_path = Path(log) if log else None
    if log_path is None:
        guess = path.with_suffix(".csv")
        log_path = guess if guess.is_file() else None
    if log_path is not None:
        if not log_path.is_file():
            raise click.BadParameter(f"{log_path} not found", param_hint="'--log'")
        traces = _thermo_from_log(log_path)
    elif frames is not None:
        traces = _thermo_from_frames(frames)
    if traces is not None:
        t = np.asarray(traces["time_ps"])
        temperature = np.asarray(traces["temperature_k"])
        total_energy = np.asarray(traces["total_energy_ev"])
        summary["thermo"] = {
            "source": str(log_path) if log_path else str(path),
            "mean_temperature_k": float(np.nanmean(temperature)),
            "std_temperature_k": float(np.nanstd(temperature)),
            "total_energy_range_ev": float(np.nanmax(total_energy) - np.nanmin(total_energy)),
        }

        def draw_thermo(ax):
            lines = ax.plot(t, temperature, color="tab:red", label="temperature")
            ax.set(xlabel="time (ps)", ylabel="temperature (K)", title="temperature and energy")
            twin = ax.twinx()
            lines += twin.plot(t, traces["potential_energy_ev"], label="E_pot", color="tab:blue")
            lines += twin.plot(t, total_energy, label="E_total", color="tab:green")
            twin.set_ylabel("energy (eV)")
            ax.legend(lines, [line.get_label() for line in lines], loc="best")

        plots.append(_plot(out, "thermo.png", draw_thermo))
    else:
        summary["thermo"] = None
    summary["plots"] = plots
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{traj.n_frames} frames, {traj.n_atoms} atoms; wrote {summary_path}")
        for plot in plots:
            click.echo(f"  {plot}")
