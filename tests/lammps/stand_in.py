"""A stand-in for LAMMPS's ML-IAP data: one MPI rank's owned atoms, ghosts and pairs, from ASE.

The domains split a structure into slabs along x (fractional for a periodic cell). Each domain
owns the atoms of its slab; its ghost atoms are every other atom and periodic image within
``shell`` (Å) of an owned atom, as LAMMPS's ``comm_modify cutoff`` would give (LAMMPS takes a
box around the sub-domain, a superset). Pairs are full neighbour lists within the cutoff, for the
ghosts too unless ``ghost_lists`` is False (``pair_style mliap unified FILE 0``), in LAMMPS's
order (sorted by centre). :meth:`StandInData.update_pair_forces` does what LAMMPS's C++ does:
``f_i += f_ij``, ``f_j -= f_ij`` and the virial ``-r_ij ⊗ f_ij``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree


class StandInData:
    """The fields of LAMMPS's ``MLIAPDataPy`` that an ML-IAP unified model reads and writes."""

    def __init__(self, nlocal: int, elems, pair_i, pair_j, rij) -> None:
        self.nlocal = int(nlocal)
        self.nlistatoms = int(nlocal)
        self.iatoms = np.arange(nlocal, dtype=np.int32)
        self.elems = np.asarray(elems, dtype=np.int32)
        self.ntotal = int(self.elems.shape[0])
        self.pair_i = np.asarray(pair_i, dtype=np.int32)
        self.pair_j = np.asarray(pair_j, dtype=np.int32)
        self.rij = np.ascontiguousarray(rij, dtype=np.float64)
        self.npairs = int(self.pair_i.shape[0])
        self.eatoms: np.ndarray | None = None
        self.energy: float | None = None
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))  # eV, -sum r_ij ⊗ f_ij (LAMMPS's v_tally)

    def update_pair_forces(self, fij: np.ndarray) -> None:
        assert fij.dtype == np.float64 and fij.flags["C_CONTIGUOUS"]
        assert fij.shape == (self.npairs, 3)
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial -= self.rij.T @ fij


@dataclass
class Domain:
    """One rank: its data and, for each of its atoms, the atom of the structure it copies."""

    data: StandInData
    owner: np.ndarray  # (ntotal,) index into the structure


def _images(atoms: Atoms, shell: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3) Å and owners (n,) of the atoms and their images reaching ``shell``."""
    positions = atoms.get_positions()
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return positions, np.arange(len(atoms))
    cell = np.asarray(atoms.get_cell())
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # distances between planes
    reach = [int(np.ceil(shell / spacing[k])) + 1 if pbc[k] else 0 for k in range(3)]
    shifts = np.array(list(itertools.product(*[range(-r, r + 1) for r in reach])), dtype=float)
    shifts = shifts[np.argsort(np.abs(shifts).sum(axis=1), kind="stable")]  # (0, 0, 0) first
    images = (positions[None, :, :] + (shifts @ cell)[:, None, :]).reshape(-1, 3)
    return images, np.tile(np.arange(len(atoms)), len(shifts))


def domains(
    atoms: Atoms,
    elements: list[str],
    cutoff: float,
    shell: float,
    n_domains: int = 1,
    ghost_lists: bool = True,
) -> list[Domain]:
    """Split ``atoms`` into ``n_domains`` slabs along x; ``elements`` is the adapter's
    ``element_types`` (the stand-in's element index of each atom is its position there)."""
    atoms = atoms.copy()
    if np.any(atoms.pbc):
        atoms.wrap()
        slab_coordinate = atoms.get_scaled_positions()[:, 0]
    else:
        x = atoms.get_positions()[:, 0]
        slab_coordinate = (x - x.min()) / (np.ptp(x) + 1e-9)
    slab = np.minimum((slab_coordinate * n_domains).astype(int), n_domains - 1)
    images, owners = _images(atoms, shell)
    element_index = np.array([elements.index(s) for s in atoms.get_chemical_symbols()])
    result = []
    for d in range(n_domains):
        local = np.flatnonzero(slab == d)
        distance, _ = cKDTree(images[local]).query(images, distance_upper_bound=shell)
        # the first len(atoms) images are the atoms themselves: those of the slab are owned
        ghost = np.setdiff1d(np.flatnonzero(np.isfinite(distance)), local)
        chosen = np.concatenate([local, ghost])
        positions = images[chosen]
        pairs = np.array(sorted(cKDTree(positions).query_pairs(cutoff, output_type="set")))
        pairs = np.concatenate([pairs, pairs[:, ::-1]]) if len(pairs) else np.zeros((0, 2), int)
        if not ghost_lists:
            pairs = pairs[pairs[:, 0] < len(local)]
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        i, j = pairs[:, 0], pairs[:, 1]
        vectors = positions[j] - positions[i]
        data = StandInData(len(local), element_index[owners[chosen]], i, j, vectors)
        result.append(Domain(data, owners[chosen]))
    return result
