"""The state of many systems integrated together: flat per-atom tensors and per-system tensors.

Atoms of all systems are concatenated; ``system`` gives each atom's system index (sorted, so each
system's atoms are contiguous). Units are ASE's, so states convert to and from ``ase.Atoms``
without factors: positions Å, momenta amu·Å/(ASE time unit), masses amu, energies eV, cells Å,
time in ASE units (``dt = dt_fs * ase.units.fs``). Positions and momenta are float64 on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import ase
import numpy as np
import torch


def sum_per_system(values: torch.Tensor, system: torch.Tensor, n_systems: int) -> torch.Tensor:
    """(n_systems, ...) sums over each system's atoms of per-atom ``values`` (n_atoms, ...)."""
    total = values.new_zeros((n_systems, *values.shape[1:]))
    return total.index_add(0, system, values)


def max_per_system(values: torch.Tensor, system: torch.Tensor, n_systems: int) -> torch.Tensor:
    """(n_systems,) maxima over each system's atoms of per-atom ``values`` (n_atoms,)."""
    out = values.new_full((n_systems,), float("-inf"))
    return out.scatter_reduce(0, system, values, reduce="amax", include_self=True)


@dataclass
class SystemBatch:
    """``n_systems`` systems with ``n_atoms`` atoms in total."""

    positions: torch.Tensor  # (n_atoms, 3) Å, float64
    momenta: torch.Tensor  # (n_atoms, 3) amu·Å/ASE-time, float64
    masses: torch.Tensor  # (n_atoms,) amu, float64
    numbers: torch.Tensor  # (n_atoms,) long, atomic numbers
    system: torch.Tensor  # (n_atoms,) long, system index of each atom (sorted)
    cell: torch.Tensor  # (n_systems, 3, 3) Å, rows are lattice vectors (zeros without a cell)
    pbc: torch.Tensor  # (n_systems, 3) bool
    n_atoms_per_system: torch.Tensor  # (n_systems,) long

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def clone(self) -> SystemBatch:
        return replace(self, **{f.name: getattr(self, f.name).clone() for f in fields(self)})

    def to(self, device: torch.device | str) -> SystemBatch:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def offsets(self) -> torch.Tensor:
        """(n_systems + 1,) long: system k's atoms are ``offsets[k]:offsets[k + 1]``."""
        zero = torch.zeros(1, dtype=torch.long, device=self.device)
        return torch.cat([zero, torch.cumsum(self.n_atoms_per_system, 0)])

    def velocities(self) -> torch.Tensor:
        """(n_atoms, 3) Å/ASE-time."""
        return self.momenta / self.masses[:, None]

    def kinetic_energy(self) -> torch.Tensor:
        """(n_systems,) eV, float64."""
        per_atom = 0.5 * (self.momenta**2).sum(-1) / self.masses
        return sum_per_system(per_atom, self.system, self.n_systems)

    def volumes(self) -> torch.Tensor:
        """(n_systems,) Å³ (0 without a cell)."""
        return torch.linalg.det(self.cell).abs()

    @classmethod
    def from_atoms(
        cls, structures: Sequence[ase.Atoms], device: torch.device | str = "cpu"
    ) -> SystemBatch:
        """Concatenate ``structures`` (their momenta too; zeros where they have none)."""
        if not structures:
            raise ValueError("a batch needs at least one structure")

        def cat(arrays, dtype):
            return torch.from_numpy(np.concatenate(arrays).astype(dtype)).to(device)

        cells = [
            np.asarray(a.get_cell()) if np.any(a.pbc) else np.zeros((3, 3)) for a in structures
        ]
        counts = [len(a) for a in structures]
        return cls(
            positions=cat([a.get_positions() for a in structures], np.float64),
            momenta=cat([a.get_momenta() for a in structures], np.float64),
            masses=cat([a.get_masses() for a in structures], np.float64),
            numbers=cat([a.get_atomic_numbers() for a in structures], np.int64),
            system=cat([np.full(n, k) for k, n in enumerate(counts)], np.int64),
            cell=torch.from_numpy(np.stack(cells).astype(np.float64)).to(device),
            pbc=torch.from_numpy(np.stack([np.asarray(a.pbc, bool) for a in structures])).to(
                device
            ),
            n_atoms_per_system=torch.tensor(counts, dtype=torch.long, device=device),
        )

    def to_atoms(self) -> list[ase.Atoms]:
        """One ``ase.Atoms`` per system, with positions, momenta, cell and pbc (host copies)."""
        positions = self.positions.detach().cpu().numpy()
        momenta = self.momenta.detach().cpu().numpy()
        numbers = self.numbers.cpu().numpy()
        masses = self.masses.cpu().numpy()
        cells, pbcs = self.cell.detach().cpu().numpy(), self.pbc.cpu().numpy()
        offsets = self.offsets().cpu().numpy()
        structures = []
        for k in range(self.n_systems):
            part = slice(offsets[k], offsets[k + 1])
            atoms = ase.Atoms(
                numbers=numbers[part], positions=positions[part], cell=cells[k], pbc=pbcs[k]
            )
            atoms.set_masses(masses[part])
            atoms.set_momenta(momenta[part])
            structures.append(atoms)
        return structures

    def select(self, keep: torch.Tensor) -> SystemBatch:
        """The batch of the systems where ``keep`` (n_systems,) bool is True, renumbered."""
        keep = keep.to(self.device)
        atoms = keep[self.system]
        counts = self.n_atoms_per_system[keep]
        system = torch.repeat_interleave(torch.arange(len(counts), device=self.device), counts)
        return SystemBatch(
            positions=self.positions[atoms],
            momenta=self.momenta[atoms],
            masses=self.masses[atoms],
            numbers=self.numbers[atoms],
            system=system,
            cell=self.cell[keep],
            pbc=self.pbc[keep],
            n_atoms_per_system=counts,
        )
