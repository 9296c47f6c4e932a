"""The model on a batch of systems: energies, forces and (when asked) stress, on the device.

Species are looked up once; each call builds edge vectors from the Verlet list's candidate pairs
(within cutoff + skin), keeps those shorter than the cutoff, and takes forces (and the stress
through a symmetric strain) from one autograd pass, as :mod:`mlff.forces` does for the calculator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mlff.compiled import compiled_forces
from mlff.forces import pair_vectors, strained, stress_from_strain
from mlff.md.state import SystemBatch
from mlff.runtime import SINGLE_THREAD_EDGES_EAGER, keep_freed_memory, single_thread_below


@dataclass
class ForceResult:
    """Model outputs for a batch."""

    energy: torch.Tensor  # (n_systems,) eV, float64
    forces: torch.Tensor  # (n_atoms, 3) eV/Å, float64
    stress: torch.Tensor | None  # (n_systems, 3, 3) eV/Å³, float64, ASE's sign; None unless asked


class BatchedModel:
    """Evaluate a :class:`~mlff.model.ForceField` on a :class:`SystemBatch`.

    Args:
        model: the force field, already on its device and in its dtype (eval mode).
        numbers: (n_atoms,) atomic numbers of the batch (looked up once, checked on the host).
        mask_edges: drop candidate pairs beyond the cutoff by boolean indexing (exact; on a GPU
            this costs a host sync per call). False keeps them: every edge term of mlff's
            potentials carries an envelope that is exactly zero at and beyond the cutoff, so the
            results are the same without the sync.
    """

    def __init__(self, model, numbers: torch.Tensor, mask_edges: bool | None = None) -> None:
        self.model = model
        self.cutoff = float(model.cutoff)
        self.dtype = model.dtype
        self.species = model.species_index(numbers.cpu()).to(model.device)
        self.mask_edges = (model.device.type == "cpu") if mask_edges is None else mask_edges
        if model.device.type == "cpu":
            keep_freed_memory()

    def __call__(
        self,
        state: SystemBatch,
        edge_index: torch.Tensor,
        edge_shifts: torch.Tensor,
        compute_stress: bool = False,
    ) -> ForceResult:
        """``edge_index`` (2, n_pairs) and ``edge_shifts`` (n_pairs, 3): candidate pairs with
        ``x_j - x_i + S @ cell`` their vectors (Å), as a Verlet list holds them."""
        dtype = self.dtype
        positions = state.positions.detach().to(dtype)
        cell = state.cell.to(dtype)
        system = state.system
        shifts = edge_shifts.to(dtype)
        if self.mask_edges:  # select on detached vectors: no gradient flows through the rest
            with torch.no_grad():
                inside = pair_vectors(positions, cell, system, edge_index, shifts).norm(dim=-1)
                inside = inside < self.cutoff
            edge_index, shifts = edge_index[:, inside], shifts[inside]
        compiled = compiled_forces(self.model)
        if compiled is not None and compiled.applies(
            len(positions), edge_index.shape[1], edge_index
        ):
            energies, forces, strain_derivative = compiled(
                self.species, edge_index, shifts, system, positions, cell, compute_stress
            )
        else:
            with single_thread_below(
                int(edge_index.shape[1]), SINGLE_THREAD_EDGES_EAGER, positions.device
            ):
                energies, forces, strain_derivative = self._eager(
                    positions, cell, system, edge_index, shifts, compute_stress
                )
        energy = torch.zeros(state.n_systems, dtype=torch.float64, device=energies.device)
        energy = energy.index_add(0, system, energies)
        stress = None
        if compute_stress:
            stress = stress_from_strain(strain_derivative.to(torch.float64), state.volumes())
        forces = forces.to(torch.float64)
        return ForceResult(energy=energy.detach(), forces=forces.detach(), stress=stress)

    def _eager(self, positions, cell, system, edge_index, shifts, compute_stress: bool):
        """Per-atom energies (n_atoms,) eV, forces (n_atoms, 3) eV/Å and dE/d(strain)
        (n_systems, 3, 3) eV or None, by one eager autograd pass."""
        positions = positions.requires_grad_(True)
        inputs = [positions]
        if compute_stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            inputs.append(strain)
            positions, cell = strained(positions, cell, strain, system)
        vectors = pair_vectors(positions, cell, system, edge_index, shifts)
        energies = self.model.atomic_energies(self.species, edge_index, vectors)
        gradients = torch.autograd.grad(energies.sum(), inputs, allow_unused=True)
        gradients = [
            torch.zeros_like(x) if g is None else g for g, x in zip(gradients, inputs, strict=True)
        ]
        return energies.detach(), -gradients[0], gradients[1] if compute_stress else None


class ForceFunction:
    """``state -> ForceResult`` for step functions: a model with a neighbour-list provider.

    ``pairs(state) -> (edge_index, edge_shifts)`` supplies candidate pairs within at least the
    cutoff (a Verlet list's ``update``, or :func:`exact_pairs` for reference runs).
    """

    def __init__(self, model: BatchedModel, pairs) -> None:
        self.model = model
        self.pairs = pairs

    def __call__(self, state: SystemBatch, compute_stress: bool = False) -> ForceResult:
        edge_index, edge_shifts = self.pairs(state)
        return self.model(state, edge_index, edge_shifts, compute_stress=compute_stress)


def exact_pairs(cutoff: float):
    """A pair provider that rebuilds the exact list on the host every call (reference runs)."""
    from mlff.neighbours import neighbour_list

    def pairs(state: SystemBatch) -> tuple[torch.Tensor, torch.Tensor]:
        positions = state.positions.detach().cpu().numpy()
        cells, pbcs = state.cell.cpu().numpy(), state.pbc.cpu().numpy()
        offsets = state.offsets().cpu().numpy()
        index, shifts = [], []
        for k in range(state.n_systems):
            part = slice(offsets[k], offsets[k + 1])
            i, j, s = neighbour_list(positions[part], cells[k], pbcs[k], cutoff)
            index.append(torch.from_numpy(np.stack([i, j]) + offsets[k]))
            shifts.append(torch.from_numpy(s.astype(np.float64)))
        return torch.cat(index, 1).to(state.device), torch.cat(shifts).to(state.device)

    return pairs
