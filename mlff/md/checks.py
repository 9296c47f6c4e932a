"""Checks the batched engine runs while it integrates: rotational covariance and blow-ups.

Both work per system on device tensors and return one small tensor per system, so the runner
reads them at its (rare) synchronisation points only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mlff.covariance import FORCE_SCALE_FLOOR, default_tolerances
from mlff.md.forces import BatchedModel, ForceResult
from mlff.md.settings import MAX_STEP_DISPLACEMENT_A
from mlff.md.state import SystemBatch, max_per_system, sum_per_system


def random_rotations(n: int, generator: torch.Generator, device, reflect: bool = False):
    """(n, 3, 3) float64 uniformly random rotations (QR of Gaussian matrices), optionally
    times an inversion."""
    gaussian = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64, device=device)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    flip = torch.linalg.det(q) < 0
    q[:, :, 0] = torch.where(flip[:, None], -q[:, :, 0], q[:, :, 0])
    return -q if reflect else q


@dataclass
class BatchCovariance:
    """Per-system errors of one covariance check, held to the tolerances of the model's dtype."""

    force_error: torch.Tensor  # (n_systems,) relative: max|F(Rx) - R F(x)| / max(max|F|, floor)
    energy_error_per_atom: torch.Tensor  # (n_systems,) eV/atom
    force_tolerance: float
    energy_tolerance: float

    def passed(self) -> torch.Tensor:
        """(n_systems,) bool."""
        return (self.force_error <= self.force_tolerance) & (
            self.energy_error_per_atom <= self.energy_tolerance
        )


def check_covariance(
    model: BatchedModel,
    state: SystemBatch,
    reference: ForceResult,
    edge_index: torch.Tensor,
    edge_shifts: torch.Tensor,
    generator: torch.Generator,
    force_tolerance: float | None = None,
) -> BatchCovariance:
    """Evaluate a copy of the batch with every system rotated by its own random R (cell too)
    and compare with ``reference`` at the unrotated state. The pair list is reused: rotating
    positions and cell together leaves pairs and image shifts unchanged."""
    rotations = random_rotations(state.n_systems, generator, state.device)
    per_atom = rotations[state.system]
    rotated = replace(
        state,
        positions=torch.einsum("nij,nj->ni", per_atom, state.positions),
        cell=torch.einsum("sij,skj->ski", rotations, state.cell),
    )
    moved = model(rotated, edge_index, edge_shifts)
    expected = torch.einsum("nij,nj->ni", per_atom, reference.forces)
    difference = (moved.forces - expected).abs().amax(dim=-1)
    n = state.n_systems
    scale = max_per_system(reference.forces.abs().amax(dim=-1), state.system, n)
    force_error = max_per_system(difference, state.system, n) / scale.clamp(min=FORCE_SCALE_FLOOR)
    energy_error = (moved.energy - reference.energy).abs() / state.n_atoms_per_system
    default_force, default_energy = default_tolerances(model.dtype)
    return BatchCovariance(
        force_error=force_error,
        energy_error_per_atom=energy_error,
        force_tolerance=default_force if force_tolerance is None else float(force_tolerance),
        energy_tolerance=default_energy,
    )


# reasons a system is stopped, as bits of the code that unstable_systems returns
NOT_FINITE, OUTRAN_SKIN, JUMPED = 1, 2, 4
REASONS = {
    NOT_FINITE: "a non-finite energy, force or position",
    OUTRAN_SKIN: "an atom outran the neighbour-list skin between rebuilds; a larger --skin helps",
    JUMPED: f"an atom moved more than {MAX_STEP_DISPLACEMENT_A} Å in one step",
}


def step_jump(before: torch.Tensor, after: torch.Tensor, system: torch.Tensor, n: int):
    """(n_systems,) Å: the largest displacement of an atom between two positions (n_atoms, 3)."""
    return max_per_system(torch.linalg.vector_norm(after - before, dim=-1), system, n)


def unstable_systems(
    state: SystemBatch,
    result: ForceResult,
    max_displacement: torch.Tensor,
    skin: float,
    largest_jump: torch.Tensor,
) -> torch.Tensor:
    """(n_systems,) long: a sum of reason bits, 0 for a sound system. NOT_FINITE: a non-finite
    energy, force or position; OUTRAN_SKIN: an atom moved more than ``skin / 2`` (Å) from where
    the neighbour list was built (pairs may be missing); JUMPED: ``largest_jump`` (n_systems,) Å,
    the largest one-step displacement since the last check, exceeds MAX_STEP_DISPLACEMENT_A."""
    n = state.n_systems
    bad_atoms = ~(torch.isfinite(result.forces).all(-1) & torch.isfinite(state.positions).all(-1))
    not_finite = sum_per_system(bad_atoms.long(), state.system, n) > 0
    not_finite = not_finite | ~torch.isfinite(result.energy)
    outran = max_displacement > 0.5 * skin
    jumped = largest_jump > MAX_STEP_DISPLACEMENT_A
    return NOT_FINITE * not_finite.long() + OUTRAN_SKIN * outran.long() + JUMPED * jumped.long()


def describe(code: int) -> str:
    """The reasons in an :func:`unstable_systems` code, in words."""
    return "; ".join(text for bit, text in REASONS.items() if code & bit)
