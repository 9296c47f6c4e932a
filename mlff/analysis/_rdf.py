"""Pair-distance histograms h(r), radial distribution functions g(r), peaks and shells."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np

from mlff.analysis._frames import Frames
from mlff.neighbours import neighbour_list


def max_rdf_range(cells: np.ndarray) -> float:
    """Half the narrowest perpendicular width of ``cells`` (n_frames, 3, 3) Å, in Å.

    Below it every pair has exactly one image (the minimum image) closer than r, and no atom
    sees its own images.
    """
    cells = np.asarray(cells, dtype=float).reshape(-1, 3, 3)
    volumes = np.abs(np.linalg.det(cells))
    areas = np.linalg.norm(np.cross(cells[:, [1, 2, 0]], cells[:, [2, 0, 1]]), axis=-1)
    return float(np.min(volumes[:, None] / areas)) / 2.0


@dataclass(frozen=True)
class PairHistogram:
    """Pair-distance counts summed over frames.

    ``edges`` (bins + 1,) Å from 0 to r_max; ``total`` (bins,) counts of all pairs i < j;
    ``by_pair`` {"A-B": (bins,) counts}, element symbols in alphabetical order; ``n_pairs``
    {"A-B": number of distinct atom pairs of that kind}; ``n_frames`` frames summed over.
    """

    edges: np.ndarray
    total: np.ndarray
    by_pair: dict[str, np.ndarray]
    n_pairs: dict[str, int]
    n_frames: int

    @property
    def centres(self) -> np.ndarray:
        """(bins,) Å."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])


def pair_histogram(frames: Frames, r_max: float, bins: int) -> PairHistogram:
    """Histogram of pair distances below ``r_max`` Å in ``bins`` equal bins, total and by pair.

    Periodic frames use the minimum image and need ``r_max <= max_rdf_range(cells)``; other
    frames use plain distances. A neighbour list keeps the cost linear in the number of atoms.
    """
    if not (math.isfinite(r_max) and r_max > 0):
        raise ValueError(f"r_max must be a positive distance in Å, got {r_max!r}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    if frames.periodic and r_max > max_rdf_range(frames.cells) * (1 + 1e-9):
        raise ValueError(
            f"r_max {r_max} Å exceeds half the narrowest cell width "
            f"({max_rdf_range(frames.cells):.4g} Å), where minimum images miss pairs"
        )
    kinds = sorted(set(frames.symbols))
    species = np.array([kinds.index(s) for s in frames.symbols], dtype=np.int64)
    n_kinds = len(kinds)
    index = np.arange(n_kinds)
    code = np.minimum.outer(index, index) * n_kinds + np.maximum.outer(index, index)  # symmetric
    counts = np.zeros((n_kinds * n_kinds, bins), dtype=np.int64)
    width = r_max / bins
    pbc = np.full(3, frames.periodic)
    for k in range(frames.n_frames):
        positions = frames.positions[k]
        cell = frames.cells[k] if frames.periodic else np.zeros((3, 3))
        i, j, shifts = neighbour_list(positions, cell, pbc, r_max)
        keep = i < j  # the full list holds (i, j, S) and (j, i, -S)
        i, j, shifts = i[keep], j[keep], shifts[keep]
        d = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
        b = np.minimum((d / width).astype(np.int64), bins - 1)
        flat = code[species[i], species[j]] * bins + b
        counts += np.bincount(flat, minlength=counts.size).reshape(counts.shape)
    number = np.bincount(species, minlength=n_kinds)
    by_pair, n_pairs = {}, {}
    for a in range(n_kinds):
        for c in range(a, n_kinds):
            pairs = number[a] * (number[a] - 1) // 2 if a == c else number[a] * number[c]
            if pairs > 0:
                name = f"{kinds[a]}-{kinds[c]}"
                by_pair[name], n_pairs[name] = counts[a * n_kinds + c], int(pairs)
    edges = np.linspace(0.0, r_max, bins + 1)
    return PairHistogram(edges, counts.sum(axis=0), by_pair, n_pairs, frames.n_frames)


def histogram_summary(histogram: PairHistogram) -> dict:
    """Bin width, shortest distance seen (first non-empty bin) and peak of h(r), all in Å."""
    centres, total = histogram.centres, histogram.total
    nonzero = np.flatnonzero(total)
    return {
        "bin_width_a": float(histogram.edges[1] - histogram.edges[0]),
        "min_distance_a": float(centres[nonzero[0]]) if nonzero.size else None,
        "peak_a": float(centres[int(np.argmax(total))]) if nonzero.size else None,
    }


def _normalise(
    edges: np.ndarray, counts: np.ndarray, n_pairs: int, inverse_volumes: float
) -> np.ndarray:
    """g = counts / ideal-gas counts, these n_pairs * shell volume * (sum over frames of 1/V)."""
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    ideal = n_pairs * shells * inverse_volumes
    return np.divide(counts, ideal, out=np.zeros(len(counts)), where=ideal > 0)


def partial_rdfs(histogram: PairHistogram, volumes: np.ndarray) -> dict[str, np.ndarray]:
    """g(r) per element pair {"A-B": (bins,)} from a histogram and the frames' volumes (Å^3).

    g_AB = counts / (n_pairs_AB * shell volume * sum over frames of 1/V): 1 for an ideal gas.
    n_pairs is N_A (N_A - 1) / 2 for A-A and N_A N_B for A-B.
    """
    volumes = np.broadcast_to(np.asarray(volumes, dtype=float), (histogram.n_frames,))
    inverse = float(np.sum(1.0 / volumes))
    return {
        name: _normalise(histogram.edges, counts, histogram.n_pairs[name], inverse)
        for name, counts in histogram.by_pair.items()
    }


def radial_distribution(
    frames: Frames | Sequence[ase.Atoms],
    r_max: float,
    bins: int,
    pair: str | None = None,
    volume: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial distribution function: (r Å (bins,), g (bins,)), averaged over frames.

    ``pair`` "A-B" gives the partial g_AB; None gives g over all atoms, normalised by the
    N (N - 1) / 2 pairs at density n/V. Periodic frames use their cells' volumes (minimum
    image, ``r_max <= max_rdf_range``). Frames without a cell have no density: give ``volume``
    (Å^3) to normalise as if the atoms filled it, else this raises ``ValueError``.
    """
    if not isinstance(frames, Frames):
        frames = Frames.from_atoms(frames)
    if volume is None and not frames.periodic:
        raise ValueError("frames have no periodic cell, so no density for g(r): give a volume")
    volumes = frames.volumes if volume is None else np.full(frames.n_frames, float(volume))
    histogram = pair_histogram(frames, r_max, bins)
    inverse = float(np.sum(1.0 / volumes))
    if pair is None:
        n_pairs = frames.n_atoms * (frames.n_atoms - 1) // 2
        return histogram.centres, _normalise(histogram.edges, histogram.total, n_pairs, inverse)
    name = "-".join(sorted(pair.split("-")))
    if name not in histogram.by_pair:
        raise ValueError(f"no {pair} pairs in these frames (pairs: {sorted(histogram.by_pair)})")
    return histogram.centres, partial_rdfs(histogram, volumes)[name]


def _runs_above(g: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, stop) index ranges where g > threshold."""
    above = np.concatenate([[False], np.asarray(g) > threshold, [False]])
    change = np.flatnonzero(above[1:] != above[:-1])
    return list(zip(change[::2].tolist(), change[1::2].tolist(), strict=True))


def rdf_peaks(r: np.ndarray, g: np.ndarray, threshold: float = 1.0) -> np.ndarray:
    """Peak positions (Å): the maximum of each run of bins where g > ``threshold``."""
    return np.array([r[s + int(np.argmax(g[s:e]))] for s, e in _runs_above(g, threshold)])


def first_peak(r: np.ndarray, g: np.ndarray, threshold: float = 1.0) -> tuple[float, float]:
    """(r Å, g) of the first peak above ``threshold``; the highest bin when g never exceeds it."""
    runs = _runs_above(g, threshold)
    s, e = runs[0] if runs else (0, len(g))
    k = s + int(np.argmax(g[s:e]))
    return float(r[k]), float(g[k])


def first_minimum(r: np.ndarray, g: np.ndarray, threshold: float = 1.0) -> float:
    """r (Å) of the lowest g between the first and second peaks (runs of g > ``threshold``).

    Up to r_max when there is no second peak. Raises ``ValueError`` when g never exceeds
    ``threshold`` or the first peak reaches r_max.
    """
    runs = _runs_above(g, threshold)
    if not runs or runs[0][1] == len(g):
        raise ValueError("no minimum after the first peak of g(r) below r_max")
    start = runs[0][1]
    stop = runs[1][0] if len(runs) > 1 else len(g)
    return float(r[start + int(np.argmin(g[start:stop]))])


def coordination_number(r: np.ndarray, g: np.ndarray, density: float, r_cut: float) -> float:
    """Mean number of neighbours closer than ``r_cut`` Å: density * sum of g * shell volume.

    ``r`` (bins,) equally spaced bin centres from 0 (as :func:`radial_distribution` returns);
    bins with centre < r_cut count. ``density`` in Å^-3 is that of the neighbours: N_B / V for
    g_AB, and (N - 1) / V for a one-element g (its normalisation counts N (N - 1) / 2 pairs).
    """
    r, g = np.asarray(r, dtype=float), np.asarray(g, dtype=float)
    if len(r) < 2:
        raise ValueError("need at least two bins")
    half = 0.5 * (r[1] - r[0])
    shells = 4.0 / 3.0 * np.pi * ((r + half) ** 3 - (r - half) ** 3)
    inside = r < r_cut
    return float(density * np.sum(g[inside] * shells[inside]))
