"""The training loss: energy per atom, forces and stress, each a mean of squared (or Huber) errors.

    loss = w_E * mean_s ρ((E_s - Ê_s) / N_s) + w_F * mean_{i,α} ρ(F_iα - F̂_iα)
           + w_S * mean_{s,αβ} ρ(σ_sαβ - σ̂_sαβ)

with ρ(x) = x² (``"mse"``) or the Huber function with threshold ``huber_delta`` (``"huber"``),
errors in eV/atom, eV/Å and eV/Å³. Means run over the labelled items only; a term with no
labelled item in the batch is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional

from mlff.training.dataset import Batch

LOSSES = ("mse", "huber")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the energy (per atom), force and stress terms."""

    energy: float = 1.0
    forces: float = 100.0
    stress: float = 1.0


def _penalty(error: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if error.numel() == 0:
        return error.new_zeros(())
    if kind == "huber":
        return functional.huber_loss(error, torch.zeros_like(error), delta=delta)
    return error.pow(2).mean()


def loss_terms(
    predicted: dict[str, torch.Tensor], batch: Batch, kind: str = "mse", huber_delta: float = 0.01
) -> dict[str, torch.Tensor]:
    """Unweighted ``energy``, ``forces`` and ``stress`` terms (scalars) for one batch."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    n_atoms = batch.graph.n_atoms_per_graph.to(predicted["energy"].dtype)
    terms = {"energy": _penalty((predicted["energy"] - batch.energy) / n_atoms, kind, huber_delta)}
    if "forces" in predicted:
        mask = batch.has_forces
        error = predicted["forces"][mask] - batch.forces[mask]
        terms["forces"] = _penalty(error, kind, huber_delta)
    if "stress" in predicted:
        mask = batch.has_stress
        error = predicted["stress"][mask] - batch.stress[mask]
        terms["stress"] = _penalty(error, kind, huber_delta)
    return terms


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """Weighted sum of :func:`loss_terms` (float64 scalar)."""
    total = terms["energy"].to(torch.float64) * weights.energy
    if "forces" in terms:
        total = total + terms["forces"].to(torch.float64) * weights.forces
    if "stress" in terms:
        total = total + terms["stress"].to(torch.float64) * weights.stress
    return total
