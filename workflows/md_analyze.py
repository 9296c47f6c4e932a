"""``mlff md analyze``: g(r), h(r), RMSD and thermodynamic traces of a trajectory; the
computations are in :mod:`mlff.analysis`, the plots in :mod:`mlff.workflows.plots`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from mlff.workflows.common import (
    MDTRAJ_SUFFIXES,
    cli_errors,
    emit_json,
    finite,
    read_structures,
)


@click.command("analyze")
@click.argument("trajectory", type=click.Path(dir_okay=False))
@click.option("--top", type=click.Path(dir_okay=False), default=None, help="Topology (PDB).")
@click.option(
    "--log", type=click.Path(dir_okay=False, exists=True), default=None, help="md run CSV log."
)
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
    help="Largest distance in Å (at most half the narrowest cell width).",
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
    name with .csv) or from the frames' energies and momenta. The computations are in
    :mod:`mlff.analysis`.
    """
    import numpy as np
    from mlff.workflows.plots import analysis_plots

    from mlff import analysis

    path = Path(trajectory)
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    atoms = None
    if path.suffix.lower() in MDTRAJ_SUFFIXES:
        frames = analysis.read_mdtraj(path, top, stride)
    else:
        atoms = read_structures(path, f"::{stride}")
        frames = analysis.Frames.from_atoms(atoms, where=str(path))
    log_path = Path(log) if log else path.with_suffix(".csv")
    if log_path.is_file():
        thermo = analysis.read_thermo_log(log_path, _system_number(path))
    else:
        log_path, thermo = None, analysis.thermo_from_frames(atoms) if atoms else None
    out = Path(out_dir) if out_dir else path.with_name(f"{path.stem}_analysis")
    out.mkdir(parents=True, exist_ok=True)

    result = analysis.analyse(frames, r_max, bins)
    summary = {"trajectory": str(path), **result.summary, "thermo": None}
    if thermo is not None:
        source = {"source": str(log_path or path)}
        summary["thermo"] = {**source, **analysis.thermo_summary(thermo)}
    if frames.time_ps is None:  # DCD keeps no time: number the frames of the file
        time, time_label = np.arange(frames.n_frames) * stride, "frame"
    else:
        time, time_label = frames.time_ps, "time (ps)"
    summary["plots"] = analysis_plots(out, result, time, time_label, thermo)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"{frames.n_frames} frames, {frames.n_atoms} atoms; wrote {summary_path}")
        for plot in summary["plots"]:
            click.echo(f"  {plot}")


def _system_number(path: Path) -> int | None:
    """The system of a batched run's trajectory (``md_sys003.extxyz`` -> 3), else None."""
    import re

    match = re.search(r"_sys(\d+)$", path.stem)
    return int(match.group(1)) if match else None
