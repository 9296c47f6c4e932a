"""An mlff model as a LAMMPS ML-IAP ``unified`` object: pair list in, energies and pair forces out.

LAMMPS (``pair_style mliap unified``) calls :meth:`MLIAPAdapter.compute_forces` with each rank's
atoms, owned and ghost, and its directed pairs ``(i, j, r_ij)``. The adapter builds mlff's graph
from the pairs, evaluates the per-atom energies, and returns

    eatoms[k]   energy of list atom k (eV), owned atoms only
    energy      their sum (eV)
    f_ij        dE/dr_ij (eV/Å) per pair, through ``data.update_pair_forces``

LAMMPS adds ``f_ij`` to atom ``i`` and subtracts it from ``j``, sends the forces on ghosts back
to their owners (``newton on``), and tallies the virial ``-sum r_ij ⊗ f_ij``. Because the energy
depends on positions only through the pair vectors, that virial is exact, ghosts included.

Several layers across ranks: a ghost shell, not feature exchange
-----------------------------------------------------------------
A model of depth ``D`` (message-passing hops) gives atom ``i`` an energy that depends on all atoms
within ``D x cutoff``. There are two ways to make that exact on many ranks: (a) exchange the node
features of ghost atoms with their owners after every layer (forward), and the gradients back
(reverse); or (b) give every rank a ghost shell of ``D x cutoff`` (+ skin) with neighbour lists
for the ghosts, and recompute the ghosts' features redundantly. mlff takes (b), because:

- the plain (non-Kokkos) ML-IAP data, which is what a CPU LAMMPS has, offers no exchange at all;
  it has pair vectors (no positions) and, with ``pair_style mliap unified FILE 1``, neighbour
  pairs for ghost atoms too (``pair_i >= nlocal``). Forward/reverse exchange exists only in the
  Kokkos data of recent LAMMPS releases (used by MACE's ``LAMMPS_MP`` autograd function), not in
  the 4Feb2025 release, whose Kokkos library Debian's source does not even ship;
- (b) needs nothing from the model: the potentials stay plain modules over one graph, with no
  hook between layers, and one autograd pass gives every pair force;
- it is what LAMMPS documents for ``ghostneigh`` (``comm_modify cutoff`` = layers x cutoff +
  skin). Its cost is the redundant work on ghosts. Only the pairs whose centre lies within
  ``D - 1`` hops of an owned atom are evaluated (:meth:`~mlff.lammps.pairs.PairList.hops`), and
  that pruning is exact; but every layer runs on the whole shell, so on small domains the
  overhead is large (several times one whole-cell evaluation for an 864-atom Cu cell;
  docs/measurements.md, 2026-12-05). It shrinks as domains grow (the shell is a surface term);
  (a) would avoid it with a Kokkos LAMMPS that has the exchange (not measured).

Checks: the element map against the model's, pair atoms of unmapped types, and missing ghost
neighbour lists (an atom that the model needs is another atom's neighbour more often than it has
neighbours: a full neighbour list is symmetric). The width of the ghost shell cannot be measured
from the pairs (no positions, no communication cutoff); :mod:`mlff.lammps.driver` sets it.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mlff.calculator import prepare_model
from mlff.forces import pair_forces
from mlff.lammps.files import read_lammps_file, settings_for
from mlff.lammps.pairs import PairList
from mlff.lammps.settings import LAMMPSSettings
from mlff.model import ForceField


class MLIAPAdapter:
    """LAMMPS's ``MLIAPUnified`` interface for an mlff :class:`~mlff.model.ForceField`.

    Duck-typed (LAMMPS reads the attributes and calls the methods, it never checks the class),
    so that mlff imports and tests it without LAMMPS.

    Args:
        model: the force field (a copy is moved to ``device`` and ``dtype``).
        settings: element map and cutoff (default: the model's elements, one type each).
        device: "cpu", "cuda" or "auto".
        dtype: "float64" (default) or "float32"; LAMMPS always gets float64.
    """

    def __init__(
        self,
        model: ForceField,
        settings: LAMMPSSettings | None = None,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> None:
        self.settings = settings if settings is not None else settings_for(model)
        self.model = prepare_model(model, device, dtype)
        # the attributes of lammps.mliap.mliap_unified_abc.MLIAPUnified that LAMMPS reads
        self.interface = None  # set by LAMMPS
        self.element_types = self.settings.element_types
        self.ndescriptors = 1
        self.nparams = 1
        # LAMMPS's pair cutoff is (radius_i + radius_j) * rcutfac, every radius being 1
        self.rcutfac = 0.5 * self.settings.cutoff
        species = [self.model.elements.index(symbol) for symbol in self.element_types]
        self._species = torch.tensor(species, dtype=torch.long, device=self.model.device)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "float64"
    ) -> MLIAPAdapter:
        """Build from a file of ``mlff export-lammps`` (read with ``weights_only=True``)."""
        model, settings = read_lammps_file(path)
        return cls(model, settings, device=device, dtype=dtype)

    def compute_descriptors(self, data) -> None:
        """Nothing to do: the model computes its own features in :meth:`compute_forces`."""

    def compute_gradients(self, data) -> None:
        """Nothing to do: forces come from :meth:`compute_forces`."""

    def compute_forces(self, data) -> None:
        """Energies and pair forces of one rank's atoms, written into LAMMPS's ``data``."""
        pairs = PairList.from_data(data)
        if pairs.list_atoms.size == 0:  # a rank without atoms (LAMMPS's arrays may be NULL)
            data.energy = 0.0
            return
        energies, gradients = self.evaluate(pairs)
        data.eatoms = np.ascontiguousarray(energies[pairs.list_atoms])
        data.energy = float(energies.sum())
        if gradients.shape[0]:
            data.update_pair_forces(np.ascontiguousarray(gradients))

    def evaluate(self, pairs: PairList) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom energies (ntotal,) eV (zero on ghosts) and dE/dr_ij (npairs, 3) eV/Å."""
        depth = self.settings.depth
        keep = pairs.check(len(self.element_types), self.settings.cutoff)
        hop = pairs.hops(depth, keep)
        pairs.check_ghost_lists(hop, depth, keep)
        needed_pairs = keep & (hop[pairs.pair_i] <= depth - 1)
        atoms = np.flatnonzero(hop <= depth)  # the atoms the owned energies depend on
        index = np.full(pairs.ntotal, -1, dtype=np.int64)
        index[atoms] = np.arange(atoms.size)

        device = self.model.device
        edge_index = np.stack(
            [index[pairs.pair_i[needed_pairs]], index[pairs.pair_j[needed_pairs]]]
        )
        elements = torch.from_numpy(np.maximum(pairs.elements[atoms], 0)).to(device)
        out = pair_forces(
            self.model,
            self._species[elements],
            torch.from_numpy(edge_index).to(device),
            torch.from_numpy(pairs.vectors[needed_pairs]).to(device),
            torch.from_numpy(pairs.counted()[atoms]).to(device),
        )
        energies = np.zeros(pairs.ntotal)
        energies[atoms] = out["energies"].cpu().numpy()
        gradients = np.zeros((pairs.pair_i.shape[0], 3))
        gradients[needed_pairs] = out["pair_gradients"].detach().cpu().double().numpy()
        return energies, gradients
