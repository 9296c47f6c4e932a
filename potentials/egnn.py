"""EGNN potential (Satorras, Hoogeboom & Welling 2021): E(n)-equivariant graph convolutions.

Each :class:`EquivariantGraphConv` (the paper's E_GCL) computes, for every edge ``i <- j``,

    m_ij = phi_e(h_i, h_j, rbf(d_ij), a_ij) * sigmoid(phi_inf(m_ij)) * u(r_ij)

with ``rbf`` a Bessel expansion of the current distance, ``a_ij`` optional edge attributes (the
encoder's pair features), and ``u`` the polynomial cutoff envelope of the *input* distance, so
every edge term vanishes smoothly at the cutoff. Nodes update as
``h_i += phi_h(h_i, sum_j m_ij / n)`` with ``n`` the average neighbour count. With
``coordinate_updates=True`` positions move as
``x_i += sum_j (x_i - x_j) / (d_ij + 1) * phi_x(m_ij) / n`` (normalised as in EDM); the moved
positions only change the distances the next layer sees, and the energy is read from the
invariant ``h`` alone, so it stays E(3)-invariant.

Speed: the first linear layer of ``phi_e`` acts on ``[h_i, h_j, rbf, a]``; its ``h_i`` and ``h_j``
blocks are applied per atom and gathered, not per edge, which saves most of the edge FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import BesselBasis, PolynomialEnvelope, mlp, scatter_sum


class EquivariantGraphConv(nn.Module):
    """One E_GCL layer acting on invariant features ``h`` and (optionally) coordinates."""

    def __init__(
        self,
        features: int,
        n_basis: int,
        edge_features_in: int,
        coordinate_updates: bool,
    ) -> None:
        super().__init__()
        self.centre_linear = nn.Linear(features, features, bias=True)
        self.neighbour_linear = nn.Linear(features, features, bias=False)
        self.radial_linear = nn.Linear(n_basis + edge_features_in, features, bias=False)
        self.message_mlp = nn.Sequential(nn.SiLU(), nn.Linear(features, features), nn.SiLU())
        self.gate = nn.Linear(features, 1)
        self.node_mlp = mlp([2 * features, features, features])
        self.coordinate_mlp = mlp([features, features, 1]) if coordinate_updates else None

    def forward(
        self,
        h: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        inv_avg_neighbors: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return updated ``h`` (n_atoms, F) and the coordinate shift (n_atoms, 3) or None."""
        centre, neighbour = edge_index[0], edge_index[1]
        pre = (
            self.centre_linear(h)[centre]
            + self.neighbour_linear(h)[neighbour]
            + self.radial_linear(radial)
        )
        message = self.message_mlp(pre)
        message = message * (torch.sigmoid(self.gate(message)) * envelope.unsqueeze(-1))
        aggregated = scatter_sum(message, centre, h.shape[0]) * inv_avg_neighbors
        h = h + self.node_mlp(torch.cat([h, aggregated], dim=-1))
        if self.coordinate_mlp is None:
            return h, None
        # (x_i - x_j) = -edge_vectors; EDM normalisation by (d_ij + 1)
        # phi_x(0) != 0, so the envelope must multiply here too, or an edge leaving the cutoff
        # would still pull its atoms
        weights = self.coordinate_mlp(message) * (
            envelope.unsqueeze(-1) / (edge_lengths.unsqueeze(-1) + 1.0)
        )
        shift = scatter_sum(-edge_vectors * weights, centre, h.shape[0]) * inv_avg_neighbors
        return h, shift


class EGNN(nn.Module):
    """EGNN energy model: invariant node features in, per-atom energies (dimensionless) out.

    Args:
        node_features_in: width of the encoder's node features.
        edge_features_in: width of the encoder's pair features (0 for none).
        cutoff: radial cutoff in Å (the envelope reaches zero there).
        avg_num_neighbors: mean edges per atom; messages are summed and divided by it.
        features: hidden width F of node features and messages.
        num_layers: number of E_GCL layers.
        n_basis: size of the Bessel radial expansion.
        coordinate_updates: move coordinates between layers as in the EGNN paper.
        envelope_p: order of the polynomial cutoff envelope.
    """

    def __init__(
        self,
        node_features_in: int,
        edge_features_in: int,
        cutoff: float,
        avg_num_neighbors: float = 10.0,
        features: int = 64,
        num_layers: int = 3,
        n_basis: int = 8,
        coordinate_updates: bool = True,
        envelope_p: int = 6,
    ) -> None:
        super().__init__()
        for name, value in (("features", features), ("num_layers", num_layers)):
            if int(value) < 1:
                raise ValueError(f"EGNN {name} must be >= 1, got {value!r}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors!r}")
        self.inv_avg_neighbors = 1.0 / float(avg_num_neighbors)
        self.envelope = PolynomialEnvelope(cutoff, envelope_p)
        self.radial_basis = BesselBasis(cutoff, n_basis)
        self.embed = nn.Linear(node_features_in, features)
        self.layers = nn.ModuleList(
            EquivariantGraphConv(
                features,
                n_basis,
                edge_features_in,
                # the last layer's coordinates would feed nothing
                coordinate_updates and k < num_layers - 1,
            )
            for k in range(num_layers)
        )
        self.readout = mlp([features, features // 2 or 1, 1])

    def forward(
        self,
        node_features: torch.Tensor,
        edge_features: torch.Tensor | None,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> torch.Tensor:
        envelope = self.envelope(edge_lengths)
        h = self.embed(node_features)
        centre, neighbour = edge_index[0], edge_index[1]
        displacement: torch.Tensor | None = None
        for layer in self.layers:
            if displacement is not None:
                edge_vectors = edge_vectors + displacement[neighbour] - displacement[centre]
                edge_lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
            radial = self.radial_basis(edge_lengths)
            if edge_features is not None:
                radial = torch.cat([radial, edge_features], dim=-1)
            h, shift = layer(
                h,
                radial,
                envelope,
                edge_index,
                edge_vectors,
                edge_lengths,
                self.inv_avg_neighbors,
            )
            if shift is not None:
                displacement = shift if displacement is None else displacement + shift
        return self.readout(h).squeeze(-1)
