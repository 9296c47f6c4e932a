"""LAMMPS's pair list as mlff's graph: which pairs and atoms a local energy needs, and checks.

LAMMPS numbers the atoms of one MPI rank ``0 .. ntotal-1``: the ``nlocal`` atoms it owns first,
then the ghost atoms (copies of atoms owned elsewhere, periodic images included). Each directed
pair ``(i, j)`` comes with ``r_ij = x_j - x_i`` (Å), the same convention as
:class:`mlff.graph.AtomicGraph`'s edges, so the pair list is the graph's edge list as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlff.errors import LAMMPSError


@dataclass
class PairList:
    """One rank's atoms and pairs, as numpy arrays (copied out of LAMMPS's buffers).

    nlocal: atoms this rank owns (indices ``0 .. nlocal-1``); the rest are ghosts.
    elements: (ntotal,) int, index into the adapter's ``element_types`` (-1: type not mapped).
    pair_i, pair_j: (npairs,) int, centre and neighbour of each directed pair.
    vectors: (npairs, 3) float64 Å, ``x_j - x_i``.
    list_atoms: (nlistatoms,) int, the atom of each slot of LAMMPS's per-atom energy array.
    """

    nlocal: int
    elements: np.ndarray
    pair_i: np.ndarray
    pair_j: np.ndarray
    vectors: np.ndarray
    list_atoms: np.ndarray

    @classmethod
    def from_data(cls, data) -> PairList:
        """Read an ML-IAP data object (``MLIAPDataPy`` or a stand-in with the same fields)."""
        npairs = int(data.npairs)
        nlocal = int(data.nlocal)
        nlistatoms = int(data.nlistatoms)
        ntotal = int(data.ntotal)
        iatoms = getattr(data, "iatoms", None)
        list_atoms = np.arange(nlistatoms) if iatoms is None else np.asarray(iatoms)[:nlistatoms]
        if npairs:
            pair_i, pair_j = np.asarray(data.pair_i), np.asarray(data.pair_j)
            vectors = np.asarray(data.rij, dtype=np.float64)
        else:
            pair_i = pair_j = np.zeros(0, dtype=np.int64)
            vectors = np.zeros((0, 3))
        return cls(
            nlocal=nlocal,
            elements=np.array(data.elems if ntotal else [], dtype=np.int64)[:ntotal],
            pair_i=pair_i[:npairs].astype(np.int64),
            pair_j=pair_j[:npairs].astype(np.int64),
            vectors=np.array(vectors[:npairs], dtype=np.float64),
            list_atoms=list_atoms.astype(np.int64),
        )

    @property
    def ntotal(self) -> int:
        return int(self.elements.shape[0])

    def counted(self) -> np.ndarray:
        """(ntotal,) bool: the atoms whose energies this rank adds (owned and mapped)."""
        owned = np.arange(self.ntotal) < self.nlocal
        return owned & (self.elements >= 0)

    def check(self, n_elements: int, cutoff: float) -> np.ndarray:
        """Raise :class:`LAMMPSError` for pairs the model cannot take; return (npairs,) bool,
        the pairs shorter than ``cutoff`` (Å), which are all the model sees."""
        if self.elements.size and self.elements.max() >= n_elements:
            raise LAMMPSError(
                f"LAMMPS element index {int(self.elements.max())} is outside the element map "
                f"of the model file ({n_elements} element(s)): pair_coeff names elements the "
                "file was not exported for"
            )
        unmapped = (self.elements[self.pair_i] < 0) | (self.elements[self.pair_j] < 0)
        if unmapped.any():
            raise LAMMPSError(
                f"atom {int(self.pair_i[unmapped][0])} is in a pair with an atom type mapped to "
                "NULL in pair_coeff: every type within the cutoff needs an element"
            )
        return np.einsum("ek,ek->e", self.vectors, self.vectors) < cutoff * cutoff

    def hops(self, depth: int, keep: np.ndarray) -> np.ndarray:
        """(ntotal,) int: pair hops from the nearest counted atom, ``depth + 1`` beyond ``depth``.

        Messages flow from neighbour ``j`` to centre ``i``; a counted atom's energy needs the
        pairs whose centre is at most ``depth - 1`` hops away and the atoms within ``depth``.
        """
        far = depth + 1
        hop = np.where(self.counted(), 0, far)
        pair_i, pair_j = self.pair_i[keep], self.pair_j[keep]
        for step in range(depth):
            frontier = hop[pair_i] == step
            reached = pair_j[frontier]
            hop[reached[hop[reached] > step + 1]] = step + 1
        return hop

    def check_ghost_lists(self, hop: np.ndarray, depth: int, keep: np.ndarray) -> None:
        """Raise :class:`LAMMPSError` when an atom whose neighbours the model needs (at most
        ``depth - 1`` hops away) is another atom's neighbour more often than it has neighbours
        itself: LAMMPS built no neighbour lists for the ghost atoms (ghostneigh 0)."""
        if depth < 2:
            return
        n = self.ntotal
        out_degree = np.bincount(self.pair_i[keep], minlength=n)
        in_degree = np.bincount(self.pair_j[keep], minlength=n)
        bad = np.flatnonzero((hop <= depth - 1) & (out_degree != in_degree))
        if bad.size:
            atom = int(bad[0])
            kind = "local" if atom < self.nlocal else "ghost"
            raise LAMMPSError(
                f"{kind} atom {atom} has {int(out_degree[atom])} neighbour pair(s) but is the "
                f"neighbour of {int(in_degree[atom])}: ghost atoms lack neighbour lists, and this "
                f"model passes messages over {depth} hops; use 'pair_style mliap unified FILE 1'"
            )
