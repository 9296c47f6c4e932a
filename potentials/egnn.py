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

Angular channels (``angular_channels = C > 0``, ``angular_order = L``): each layer also sums
the messages along the edge directions, in real spherical harmonics of degree l = 1..L,

    A_i,l = sum_j Y_l(r̂_ij) psi_l(m_ij) / n          (2l + 1 components, C channels)

and feeds their rotation invariants ``|A_i,l|² = sum_jk psi_l(m_ij) psi_l(m_ik) P_l(cos θ_jik)``
(three-body terms, the ACE/MACE B-basis of correlation order 2) to the node update. ``m_ij``
carries the envelope, so these terms vanish smoothly at the cutoff; the energy still depends on
invariants only. With ``layer_readouts=True`` the energy is the sum of a linear readout of
``h`` after every layer and the final MLP readout (as in MACE), which lets the first layers
learn the short-range part early in training.

Speed: the first linear layer of ``phi_e`` acts on ``[h_i, h_j, rbf, a]``; its ``h_i`` and ``h_j``
blocks are applied per atom and gathered, not per edge, which saves most of the edge FLOPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .layers import BesselBasis, PolynomialEnvelope, mlp, scatter_sum


def real_harmonics(unit: torch.Tensor, order: int) -> torch.Tensor:
    """Real spherical harmonics of degrees 1..``order`` (<= 3) of unit vectors (n, 3).

    Returns (n, 3), (n, 8) or (n, 15) columns, degree by degree, normalised so that the squares
    of each degree's components sum to 1 (``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)``).
    """
    x, y, z = unit.unbind(-1)
    columns = [x, y, z]
    if order >= 2:
        s3 = math.sqrt(3.0)
        columns += [
            s3 * x * y,
            s3 * y * z,
            0.5 * (3.0 * z * z - 1.0),
            s3 * x * z,
            0.5 * s3 * (x * x - y * y),
        ]
    if order >= 3:
        a, b, c = math.sqrt(5.0 / 8.0), math.sqrt(15.0), math.sqrt(3.0 / 8.0)
        zz = 5.0 * z * z - 1.0
        columns += [
            a * y * (3.0 * x * x - y * y),
            b * x * y * z,
            c * y * zz,
            0.5 * z * (5.0 * z * z - 3.0),
            c * x * zz,
            0.5 * b * z * (x * x - y * y),
            a * x * (x * x - 3.0 * y * y),
        ]
    return torch.stack(columns, dim=-1)


class EquivariantGraphConv(nn.Module):
    """One E_GCL layer acting on invariant features ``h`` and (optionally) coordinates."""

    def __init__(
        self,
        features: int,
        n_basis: int,
        edge_features_in: int,
        coordinate_updates: bool,
        angular_channels: int = 0,
        angular_order: int = 1,
    ) -> None:
        super().__init__()
        self.centre_linear = nn.Linear(features, features, bias=True)
        self.neighbour_linear = nn.Linear(features, features, bias=False)
        self.radial_linear = nn.Linear(n_basis + edge_features_in, features, bias=False)
        self.message_mlp = nn.Sequential(nn.SiLU(), nn.Linear(features, features), nn.SiLU())
        self.gate = nn.Linear(features, 1)
        self.angular_channels = int(angular_channels)
        self.angular_order = int(angular_order)
        n_angular = self.angular_channels * self.angular_order
        self.angular_linear = (
            nn.Linear(features, n_angular, bias=False) if self.angular_channels else None
        )
        degrees = [d for d in range(1, self.angular_order + 1) for _ in range(2 * d + 1)]
        self.register_buffer(
            "component_to_degree",
            nn.functional.one_hot(torch.tensor(degrees) - 1, self.angular_order).float(),
            persistent=False,
        )
        self.node_mlp = mlp([2 * features + n_angular, features, features])
        self.coordinate_mlp = mlp([features, features, 1]) if coordinate_updates else None

    def _angular_invariants(
        self,
        message: torch.Tensor,
        centre: torch.Tensor,
        harmonics: torch.Tensor,
        n_atoms: int,
        inv_avg_neighbors: float,
    ) -> torch.Tensor:
        """(n_atoms, order * C): ``|sum_j Y_l(r̂_ij) psi_l(m_ij)|²``, l = 1..order, per channel.

        ``harmonics``: (n_edges, M) :func:`real_harmonics` of the edge directions, M >= the
        components of this layer's order (extra columns are ignored).
        """
        n_edges, c, order = message.shape[0], self.angular_channels, self.angular_order
        coefficients = self.angular_linear(message).view(n_edges, order, 1, c)
        # (n_edges, M, C): each degree's components times that degree's channel weights
        densities = torch.cat(
            [
                harmonics[:, l * l - 1 : (l + 1) * (l + 1) - 1].unsqueeze(-1)
                * coefficients[:, l - 1]
                for l in range(1, order + 1)
            ],
            dim=1,
        )
        densities = scatter_sum(densities, centre, n_atoms) * inv_avg_neighbors
        invariants = torch.einsum("nmc,ml->nlc", densities.pow(2), self.component_to_degree)
        return invariants.reshape(n_atoms, order * c)

    def forward(
        self,
        h: torch.Tensor,
        radial: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        inv_avg_neighbors: float,
        harmonics: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return updated ``h`` (n_atoms, F) and the coordinate shift (n_atoms, 3) or None.

        ``harmonics`` (n_edges, M): the edge directions' :func:`real_harmonics`, computed here
        when not given (the caller computes them once for layers that share the geometry).
        """
        centre, neighbour = edge_index[0], edge_index[1]
        pre = (
            self.centre_linear(h)[centre]
            + self.neighbour_linear(h)[neighbour]
            + self.radial_linear(radial)
        )
        message = self.message_mlp(pre)
        message = message * (torch.sigmoid(self.gate(message)) * envelope.unsqueeze(-1))
        aggregated = scatter_sum(message, centre, h.shape[0]) * inv_avg_neighbors
        parts = [h, aggregated]
        if self.angular_linear is not None:
            if harmonics is None:
                unit = edge_vectors / edge_lengths.unsqueeze(-1)
                harmonics = real_harmonics(unit, self.angular_order)
            parts.append(
                self._angular_invariants(message, centre, harmonics, h.shape[0], inv_avg_neighbors)
            )
        h = h + self.node_mlp(torch.cat(parts, dim=-1))
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
        angular_channels: channels C of the direction densities whose invariants feed the
            node update (0: none, the original EGNN).
        angular_order: highest degree l of the direction channels (1, 2 or 3).
        layer_readouts: add a linear energy readout of every layer but the last.
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
        angular_channels: int = 0,
        angular_order: int = 1,
        layer_readouts: bool = False,
    ) -> None:
        super().__init__()
        if int(angular_channels) < 0:
            raise ValueError(f"EGNN angular_channels must be >= 0, got {angular_channels!r}")
        if int(angular_order) not in (1, 2, 3):
            raise ValueError(f"EGNN angular_order must be 1, 2 or 3, got {angular_order!r}")
        for name, value in (("features", features), ("num_layers", num_layers)):
            if int(value) < 1:
                raise ValueError(f"EGNN {name} must be >= 1, got {value!r}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors!r}")
        self.inv_avg_neighbors = 1.0 / float(avg_num_neighbors)
        self.angular_channels = int(angular_channels)
        self.angular_order = int(angular_order)
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
                int(angular_channels),
                int(angular_order),
            )
            for k in range(num_layers)
        )
        self.readout = mlp([features, features // 2 or 1, 1])
        self.layer_readouts = (
            nn.ModuleList(nn.Linear(features, 1) for _ in range(num_layers - 1))
            if layer_readouts
            else None
        )

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
        energies: torch.Tensor | None = None
        radial: torch.Tensor | None = None
        harmonics: torch.Tensor | None = None
        for k, layer in enumerate(self.layers):
            if displacement is not None:
                edge_vectors = edge_vectors + displacement[neighbour] - displacement[centre]
                edge_lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
                radial = None  # the distances moved
            if radial is None:
                radial = self.radial_basis(edge_lengths)
                if edge_features is not None:
                    radial = torch.cat([radial, edge_features], dim=-1)
                if self.angular_order and self.angular_channels:
                    unit = edge_vectors / edge_lengths.unsqueeze(-1)
                    harmonics = real_harmonics(unit, self.angular_order)
            h, shift = layer(
                h,
                radial,
                envelope,
                edge_index,
                edge_vectors,
                edge_lengths,
                self.inv_avg_neighbors,
                harmonics,
            )
            if shift is not None:
                displacement = shift if displacement is None else displacement + shift
            if self.layer_readouts is not None and k < len(self.layer_readouts):
                term = self.layer_readouts[k](h).squeeze(-1)
                energies = term if energies is None else energies + term
        final = self.readout(h).squeeze(-1)
        return final if energies is None else energies + final
