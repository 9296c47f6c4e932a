"""Auxiliary denoising during ``mlff train`` (``--denoise-weight``; DeNS-style, without force
encoding).

Each step, the batch's positions get centred Gaussian noise of ``denoise_sigma`` Å (neighbour
lists rebuilt for the noised positions, periodic images included), and a coordinate head on the
model's own Uni-Mol encoder predicts the way back; the loss
``denoise_weight * mean(((dx̂ + ε) / σ)²)`` is added to the energy/force loss. The head is
trained with the model but is not part of ``model.pt``; it lives in the checkpoints so a resumed
run continues it. With ``--init`` it starts from the pretrained coordinate head.
"""

from __future__ import annotations

import torch
from torch import nn

from mlff.forces import edge_vectors
from mlff.graph import AtomicGraph
from mlff.pretraining.heads import Denoiser
from mlff.pretraining.losses import denoising_loss
from mlff.pretraining.masking import Corruption, corrupt, generator

__all__ = ["Denoiser", "DenoisingStep", "denoising_loss", "noised_batch"]


class DenoisingStep(nn.Module):
    """A step module (``forward(graph) -> results``) and the denoiser, as one module call (what
    DDP wraps, so the head's gradients are averaged over processes too).

    ``forward(graph, noised)`` returns ``step(graph)`` and, under ``denoise``, the denoiser's
    displacement (n_atoms, 3) Å for the noised structures.
    """

    def __init__(self, step: nn.Module, denoiser: Denoiser) -> None:
        super().__init__()
        self.step = step
        self.denoiser = denoiser

    def forward(self, graph: AtomicGraph, noised: AtomicGraph) -> dict[str, torch.Tensor]:
        results = dict(self.step(graph))
        model = self.step.model
        species = model.species_index(noised.numbers)
        vectors = edge_vectors(noised.positions, noised.cell, noised)
        results["denoise"] = self.denoiser(model.encoder, species, noised.edge_index, vectors)
        return results


def noised_batch(
    graph: AtomicGraph,
    cutoff: float,
    sigma: float,
    seed: int,
    rank: int,
    step: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Corruption:
    """``graph``'s structures with centred Gaussian noise of ``sigma`` Å, drawn from a stream
    fixed by (seed, rank, step), on ``device`` in ``dtype``."""
    corruption = corrupt(graph, cutoff, sigma, 0.0, generator(seed, 2 + rank, step))
    return corruption.to(device, dtype)
