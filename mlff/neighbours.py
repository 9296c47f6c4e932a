"""Neighbour lists with periodic images: all (i, j, S) with ``|x_j - x_i + S @ cell| < cutoff``.

vesin (a C++ cell-list code) does the work; ASE's ``primitive_neighbor_list`` is the fallback for
what vesin refuses. Both give full lists (both directions), an atom's own images included when the
cell is smaller than the cutoff.
"""

from __future__ import annotations

import numpy as np
from ase.neighborlist import primitive_neighbor_list

try:
    from vesin import NeighborList as _VesinNeighborList
except ImportError:  # pragma: no cover - vesin is a declared dependency
    _VesinNeighborList = None

_VESIN_CACHE: dict[float, object] = {}


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float):
    """Replace non-periodic cell vectors that are degenerate by long orthogonal ones.

    Along a non-periodic direction the cell vector only defines the box a cell list bins into;
    it must be non-zero and independent of the others, nothing more.
    """
    cell = cell.copy()
    if np.all(pbc) or abs(np.linalg.det(cell)) > 1e-9:
        return cell
    extent = float(np.ptp(positions, axis=0).max()) + 2.0 * cutoff + 1.0
    for axis in range(3):
        if pbc[axis]:
            continue
        others = [cell[k] for k in range(3) if k != axis and np.linalg.norm(cell[k]) > 1e-9]
        candidate = np.zeros(3)
        for trial in np.eye(3):
            vector = trial.copy()
            for other in others:
                unit = other / np.linalg.norm(other)
                vector -= vector.dot(unit) * unit
            if np.linalg.norm(vector) > 1e-3:
                candidate = vector / np.linalg.norm(vector)
                break
        cell[axis] = candidate * extent
    return cell


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(i, j, shifts)``: centres, neighbours and integer image shifts (n_edges, 3).

    ``positions`` (n, 3) Å, ``cell`` (3, 3) Å with lattice vectors as rows, ``pbc`` (3,) bool.
    Self-pairs ``i == j`` appear only for periodic images (``S != 0``).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any():
        cell = np.zeros((3, 3))
    else:
        cell = _complete_cell(np.asarray(cell, dtype=np.float64), pbc, positions, cutoff)
    if _VesinNeighborList is not None:
        try:
            calculator = _VESIN_CACHE.get(cutoff)
            if calculator is None:
                calculator = _VesinNeighborList(cutoff=cutoff, full_list=True)
                _VESIN_CACHE[cutoff] = calculator
            i, j, shifts = calculator.compute(
                points=positions, box=cell, periodic=pbc.tolist(), quantities="ijS", copy=True
            )
            return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
        except (RuntimeError, ValueError):
            pass  # fall through to ASE, which accepts every cell ASE itself accepts
    i, j, shifts = primitive_neighbor_list(
        "ijS", pbc, cell, positions, cutoff, self_interaction=False
    )
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
