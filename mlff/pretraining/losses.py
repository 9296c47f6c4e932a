"""Pretraining losses, each dimensionless and 1 for a model that predicts nothing useful.

    atoms        cross-entropy of the hidden elements (nats; log(n_elements) for a uniform guess)
    coordinates  mean over atoms and components of ((dx̂ + ε) / σ)²: the predicted displacement
                 dx̂ must undo the noise ε (Å); predicting zero scores 1
    distances    mean over edges of ((Δd̂ - (d_clean - d_noised)) / σ)², Δd̂ the predicted change

and ``total = w_atoms atoms + w_coordinates coordinates + w_distances distances``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional

from mlff.pretraining.heads import PretrainingOutput
from mlff.pretraining.masking import Corruption, edge_lengths

TERMS = ("atoms", "coordinates", "distances")


@dataclass(frozen=True)
class PretrainingWeights:
    """Weights of the three pretraining terms (0 switches a term off)."""

    atoms: float = 1.0
    coordinates: float = 1.0
    distances: float = 0.0


def denoising_loss(displacement: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """``mean(((dx̂ + ε) / σ)²)``; ``displacement`` and ``noise`` (n_atoms, 3) Å."""
    return ((displacement + noise.to(displacement.dtype)) / sigma).pow(2).mean()


def pretraining_losses(
    output: PretrainingOutput,
    corruption: Corruption,
    species: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The unweighted terms (scalars) and ``atoms_accuracy`` (fraction of hidden elements
    guessed right, not differentiable). Tensors of ``corruption`` must be on the model's
    device; ``species`` (n_atoms,) are the true species indices."""
    masked = corruption.masked
    terms: dict[str, torch.Tensor] = {}
    if bool(masked.any()):
        logits, truth = output.atom_logits[masked], species[masked]
        terms["atoms"] = functional.cross_entropy(logits, truth)
        terms["atoms_accuracy"] = (logits.detach().argmax(-1) == truth).to(logits.dtype).mean()
    else:
        terms["atoms"] = output.atom_logits.new_zeros(())
    terms["coordinates"] = denoising_loss(output.displacement, corruption.noise, corruption.sigma)
    graph = corruption.graph
    if graph.n_edges:
        noised = edge_lengths(graph.positions.to(output.distance_change.dtype), graph)
        target = corruption.clean_distances.to(noised.dtype) - noised
        error = (output.distance_change - target) / corruption.sigma
        terms["distances"] = error.pow(2).mean()
    else:
        terms["distances"] = output.distance_change.new_zeros(())
    return terms


def total_pretraining_loss(
    terms: dict[str, torch.Tensor], weights: PretrainingWeights
) -> torch.Tensor:
    """The weighted sum of the :data:`TERMS` (a scalar in the terms' dtype)."""
    return (
        weights.atoms * terms["atoms"]
        + weights.coordinates * terms["coordinates"]
        + weights.distances * terms["distances"]
    )
