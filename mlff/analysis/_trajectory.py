"""RMSD, and everything ``mlff md analyze`` reports on a trajectory at once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlff.analysis._frames import Frames
from mlff.analysis._rdf import (
    first_peak,
    histogram_summary,
    max_rdf_range,
    pair_histogram,
    partial_rdfs,
)


def rmsd(
    positions: np.ndarray, reference: np.ndarray | None = None, align: bool = True
) -> np.ndarray:
    """RMSD (Å) of each frame to ``reference`` (n_atoms, 3) Å, default the first frame.

    ``positions`` (n_frames, n_atoms, 3) Å; returns (n_frames,). With ``align`` each frame is
    first translated and rotated onto the reference (centroids matched, optimal proper rotation
    by the Kabsch SVD), as ``mdtraj.rmsd`` does. Positions are used as stored: atoms wrapped
    back into a periodic cell count as jumps.
    """
    x = np.asarray(positions, dtype=float)
    y = x[0] if reference is None else np.asarray(reference, dtype=float)
    if x.ndim != 3 or x.shape[2] != 3 or y.shape != x.shape[1:]:
        raise ValueError(f"positions {x.shape} and reference {y.shape} do not match")
    if align:
        x = x - x.mean(axis=1, keepdims=True)
        y = y - y.mean(axis=0)
        u, _, vt = np.linalg.svd(np.einsum("fai,aj->fij", x, y))
        u[:, :, 2] *= np.sign(np.linalg.det(u @ vt))[:, None]  # no reflections
        x = x @ (u @ vt)
    return np.sqrt(np.mean(np.sum((x - y) ** 2, axis=-1), axis=-1))


def series_summary(values: np.ndarray) -> dict:
    """{"final", "mean", "max"} of a (n_frames,) series."""
    return {
        "final": float(values[-1]),
        "mean": float(np.mean(values)),
        "max": float(np.max(values)),
    }


@dataclass(frozen=True)
class TrajectoryAnalysis:
    """What ``mlff md analyze`` reports: series to plot and a JSON-ready ``summary``.

    ``r`` (bins,) Å; ``h`` (bins,) pairs per frame per bin; ``rdf`` {"A-B": (bins,)} or None
    without a cell; ``rmsd`` (n_frames,) Å to the first frame, aligned.
    """

    r: np.ndarray
    h: np.ndarray
    rdf: dict[str, np.ndarray] | None
    rmsd: np.ndarray
    summary: dict


def analyse(frames: Frames, r_max: float, bins: int) -> TrajectoryAnalysis:
    """h(r), g(r) per element pair (periodic frames), RMSD, and their summary.

    For periodic frames ``r_max`` is lowered to :func:`max_rdf_range` when larger.
    """
    if frames.periodic:
        r_max = min(r_max, max_rdf_range(frames.cells))
    histogram = pair_histogram(frames, r_max, bins)
    r = histogram.centres
    rdf = partial_rdfs(histogram, frames.volumes) if frames.periodic else None
    peaks = None  # no cell, no volume to normalise by: see h(r)
    if rdf is not None:
        peaks = {}
        for name, g in rdf.items():
            r_peak, g_peak = first_peak(r, g)
            peaks[name] = {"first_peak_a": r_peak, "first_peak_g": g_peak}
    deviations = rmsd(frames.positions)
    summary = {
        "n_frames": frames.n_frames,
        "n_atoms": frames.n_atoms,
        "periodic": frames.periodic,
        "r_max_a": float(r_max),
        "h_r": histogram_summary(histogram),
        "rdf": peaks,
        "rmsd_a": series_summary(deviations),
    }
    return TrajectoryAnalysis(r, histogram.total / frames.n_frames, rdf, deviations, summary)
