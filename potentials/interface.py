"""The declared interface between ``mlff`` and the modules in ``mlff.potentials``.

An **encoder** turns species and local geometry into invariant features::

    encoder(species, edge_index, edge_vectors, edge_lengths) -> (node_features, edge_features)

    species        (n_atoms,)      long, index into the model's element list (0 .. n_species-1)
    edge_index     (2, n_edges)    long, row 0 = centre i (receives), row 1 = neighbour j (sends)
    edge_vectors   (n_edges, 3)    Å, x_j - x_i including the periodic image shift
    edge_lengths   (n_edges,)      Å, norm of edge_vectors (> 0)
    node_features  (n_atoms, encoder.node_features_out)    invariant
    edge_features  (n_edges, encoder.edge_features_out) invariant; None if edge_features_out == 0

A **potential** turns those features and the geometry into per-atom energies::

    potential(node_features, edge_features, edge_index, edge_vectors, edge_lengths) -> (n_atoms,)

The per-atom energies are dimensionless (the ForceField multiplies them by its energy scale, adds
the shift and the per-element reference energies). Every edge term must be multiplied by a smooth
cutoff envelope so that energies and forces are continuous when a neighbour crosses the cutoff.
Constructors take plain ``int``/``float``/``bool``/``str`` keyword arguments only, so that a model
is rebuilt from its saved JSON config; ``node_features_in`` and ``edge_features_in`` are supplied
by the builder from the encoder's ``node_features_out``/``edge_features_out``, and
``avg_num_neighbors`` (float, mean number of edges per atom) from the training data when known.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Encoder(Protocol):
    node_features_out: int
    edge_features_out: int

    def __call__(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class Potential(Protocol):
    def __call__(
        self,
        node_features: torch.Tensor,
        edge_features: torch.Tensor | None,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> torch.Tensor: ...


class SpeciesEmbedding(nn.Module):
    """The plain encoder (``encoder="none"``): a learned vector per element, no edge features."""

    def __init__(self, n_species: int, cutoff: float, features: int = 64) -> None:
        super().__init__()
        if n_species < 1:
            raise ValueError(f"n_species must be >= 1, got {n_species!r}")
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features!r}")
        self.embedding = nn.Embedding(n_species, features)
        self.node_features_out = int(features)
        self.edge_features_out = 0

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.embedding(species), None
