"""The pretraining model: the Uni-Mol encoder with its masked-atom, coordinate and distance heads.

Heads (no losses here; :mod:`mlff.pretraining.losses` compares their outputs with the targets):

* :class:`AtomTypeHead`: node features ``(n_atoms, features)`` -> element logits
  ``(n_atoms, n_species)`` (masked-atom prediction).
* :class:`CoordinateHead`: Uni-Mol's SE(3)-equivariant coordinate update from the change of the
  pair representation between the first and the last layer::

      c_ij = W ReLU(U (z_ij^L - z_ij^0))                      (invariant, one number per edge)
      dx_i = sum_j (x_i - x_j) c_ij u(r_ij) / (1 + sum_j u(r_ij))   Å

  ``x_i - x_j`` is minus the edge vector (periodic image shift included), so ``dx`` rotates with
  the structure and ignores translations by construction; the envelope ``u`` keeps it smooth
  when a neighbour crosses the cutoff. Uni-Mol divides by the number of atoms; a local
  encoder divides by the smooth neighbour count ``1 + sum_j u``.
* :class:`DistanceHead`: ``(n_edges,)`` Å change of each pair distance, from ``z^L - z^0``.

:class:`PretrainingModel` holds the encoder (the part ``mlff train --init`` reuses), a learned
mask token and the three heads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from mlff.potentials.layers import mlp, scatter_sum
from mlff.potentials.unimol import UniMolEncoder, UniMolRepresentation


class AtomTypeHead(nn.Module):
    """Element logits ``(n_atoms, n_species)`` from node features ``(n_atoms, features)``."""

    def __init__(self, features: int, n_species: int) -> None:
        super().__init__()
        self.net = mlp([features, features, n_species])

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        return self.net(node_features)


class CoordinateHead(nn.Module):
    """Displacement ``(n_atoms, 3)`` Å from the pair representations; see the module docstring."""

    def __init__(self, pair_features: int, hidden: int | None = None) -> None:
        super().__init__()
        if pair_features < 1:
            raise ValueError(f"pair_features must be >= 1, got {pair_features!r}")
        hidden = hidden or pair_features
        self.U = nn.Linear(pair_features, hidden)
        self.W = nn.Linear(hidden, 1, bias=False)

    def forward(
        self,
        representation: UniMolRepresentation,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        n_atoms: int,
    ) -> torch.Tensor:
        """``edge_vectors`` (n_edges, 3) Å are ``x_j - x_i + S @ cell``, as in the graph."""
        change = representation.final_pairs - representation.initial_pairs
        weights = self.W(torch.relu(self.U(change))).squeeze(-1) * representation.envelope
        centre = edge_index[0]
        pushes = scatter_sum(-edge_vectors * weights.unsqueeze(-1), centre, n_atoms)
        count = 1.0 + scatter_sum(representation.envelope, centre, n_atoms)
        return pushes / count.unsqueeze(-1)


class DistanceHead(nn.Module):
    """Change of each pair distance ``(n_edges,)`` Å from the change of the pair representation."""

    def __init__(self, pair_features: int) -> None:
        super().__init__()
        self.net = mlp([pair_features, pair_features, 1])

    def forward(self, representation: UniMolRepresentation) -> torch.Tensor:
        change = representation.final_pairs - representation.initial_pairs
        return self.net(change).squeeze(-1)


class PretrainingOutput(NamedTuple):
    """What the pretraining model predicts for one (corrupted) batch."""

    atom_logits: torch.Tensor  # (n_atoms, n_species) element logits
    displacement: torch.Tensor  # (n_atoms, 3) Å, the predicted way back to the clean positions
    distance_change: torch.Tensor  # (n_edges,) Å, predicted clean minus noised pair distance


class PretrainingModel(nn.Module):
    """A Uni-Mol encoder with the pretraining heads.

    Args:
        elements: chemical symbols, in the order of the species index.
        cutoff: neighbour cutoff, Å.
        **encoder_hyperparameters: :class:`~mlff.potentials.unimol.UniMolEncoder` arguments
            (``features``, ``pair_features``, ``num_layers``, ``num_heads``, ``n_kernels``,
            ``ffn_factor``, ``envelope_p``, ``avg_num_neighbors``).
    """

    def __init__(self, elements: list[str], cutoff: float, **encoder_hyperparameters: Any) -> None:
        super().__init__()
        if isinstance(elements, str) or not elements:
            raise ValueError(f"elements must be a non-empty list of symbols, got {elements!r}")
        self.elements = list(elements)
        self.cutoff = float(cutoff)
        self.encoder_hyperparameters = dict(encoder_hyperparameters)
        self.encoder = UniMolEncoder(len(self.elements), self.cutoff, **encoder_hyperparameters)
        features = self.encoder.node_features_out
        pair_features = self.encoder.edge_features_out
        self.mask_token = nn.Parameter(0.02 * torch.randn(features))
        self.atom_head = AtomTypeHead(features, len(self.elements))
        self.coordinate_head = CoordinateHead(pair_features)
        self.distance_head = DistanceHead(pair_features)

    @property
    def config(self) -> dict[str, Any]:
        """Plain JSON values that rebuild this model (see :mod:`mlff.pretraining.files`)."""
        return {
            "encoder": "unimol",
            "elements": list(self.elements),
            "cutoff": self.cutoff,
            "hyperparameters": dict(self.encoder_hyperparameters),
        }

    @property
    def dtype(self) -> torch.dtype:
        return self.mask_token.dtype

    @property
    def device(self) -> torch.device:
        return self.mask_token.device

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        masked: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        """``species`` (n_atoms,) long, ``edge_index`` (2, n_edges), ``edge_vectors``
        (n_edges, 3) Å, ``masked`` (n_atoms,) bool: atoms whose element is hidden."""
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
        representation = self.encoder.represent(
            species, edge_index, lengths, masked=masked, mask_token=self.mask_token
        )
        return PretrainingOutput(
            atom_logits=self.atom_head(representation.node_features),
            displacement=self.coordinate_head(
                representation, edge_index, edge_vectors, species.shape[0]
            ),
            distance_change=self.distance_head(representation),
        )


class Denoiser(nn.Module):
    """The auxiliary denoising head of ``mlff train``: a coordinate head on a force field's
    (shared) Uni-Mol encoder. ``forward`` -> displacement (n_atoms, 3) Å."""

    def __init__(self, encoder: UniMolEncoder) -> None:
        super().__init__()
        if not isinstance(encoder, UniMolEncoder):
            raise ValueError(
                "denoising needs the Uni-Mol encoder (encoder unimol): its coordinate head reads "
                "the pair representation"
            )
        self.head = CoordinateHead(encoder.edge_features_out)

    def forward(
        self,
        encoder: UniMolEncoder,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
    ) -> torch.Tensor:
        lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
        representation = encoder.represent(species, edge_index, lengths)
        return self.head(representation, edge_index, edge_vectors, species.shape[0])
