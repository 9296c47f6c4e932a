"""PNG figures of ``mlff md analyze`` (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mlff.analysis import TrajectoryAnalysis


def _save(path: Path, draw: Callable) -> str:
    """Draw on one 6x4 inch axes with ``draw(axes)``, write ``path`` at 120 dpi, return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    try:
        draw(axes)
        figure.tight_layout()
        figure.savefig(path, dpi=120)
    finally:
        plt.close(figure)
    return str(path)


def analysis_plots(
    out: Path,
    result: TrajectoryAnalysis,
    time: np.ndarray,
    time_label: str,
    thermo: dict[str, np.ndarray] | None,
) -> list[str]:
    """Write distance_histogram.png, rdf.png (periodic only), rmsd.png and thermo.png (with
    ``thermo`` traces) into ``out``; ``time`` (n_frames,) is the RMSD axis. Returns the paths."""

    def draw_h(ax) -> None:
        ax.plot(result.r, result.h)
        ax.set(xlabel="r (Å)", ylabel="pairs per frame per bin", title="h(r)")

    def draw_rdf(ax) -> None:
        for name, g in result.rdf.items():
            ax.plot(result.r, g, label=name)
        ax.set(xlabel="r (Å)", ylabel="g(r)", title="radial distribution functions")
        ax.legend()

    def draw_rmsd(ax) -> None:
        ax.plot(time, result.rmsd)
        ax.set(xlabel=time_label, ylabel="RMSD (Å)", title="RMSD to the first frame")

    def draw_thermo(ax) -> None:
        t = thermo["time_ps"]
        lines = ax.plot(t, thermo["temperature_k"], color="tab:red", label="temperature")
        ax.set(xlabel="time (ps)", ylabel="temperature (K)", title="temperature and energy")
        twin = ax.twinx()
        lines += twin.plot(t, thermo["potential_energy_ev"], label="E_pot", color="tab:blue")
        lines += twin.plot(t, thermo["total_energy_ev"], label="E_total", color="tab:green")
        twin.set_ylabel("energy (eV)")
        ax.legend(lines, [line.get_label() for line in lines], loc="best")

    plots = [_save(out / "distance_histogram.png", draw_h)]
    if result.rdf is not None:
        plots.append(_save(out / "rdf.png", draw_rdf))
    plots.append(_save(out / "rmsd.png", draw_rmsd))
    if thermo is not None:
        plots.append(_save(out / "thermo.png", draw_thermo))
    return plots
