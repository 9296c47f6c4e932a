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

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BlocksCache, NeighbourBlocks
from .layers import BesselBasis, PolynomialEnvelope, mlp, scatter_sum

# above this many edges a structure is evaluated in chunks of centre atoms (activation
# checkpointing), so memory stays linear in atoms with a small constant
MAX_CHUNK_EDGES = 1 << 20


def real_harmonics(unit: torch.Tensor, order: int) -> torch.Tensor:
    """Real spherical harmonics of degrees 1..``order`` (<= 3) of unit vectors (n, 3).

    Returns (n, 3), (n, 8) or (n, 15) columns, degree by degree, normalised so that the squares
    of each degree's components sum to 1 (``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)``). On unit
    vectors each harmonic is a homogeneous polynomial of its degree (1 = x² + y² + z²), so all
    are one matrix product of the monomials ``[u, u ⊗ u, u ⊗ u ⊗ u]`` (few, large operations).
    """
    monomials = [unit]
    if order >= 2:
        pairs = (unit.unsqueeze(-1) * unit.unsqueeze(-2)).flatten(-2)
        monomials.append(pairs)
    if order >= 3:
        monomials.append((pairs.unsqueeze(-1) * unit.unsqueeze(-2)).flatten(-2))
    matrix = _harmonic_matrix(order, unit.dtype, unit.device)
    return torch.cat(monomials, dim=-1) @ matrix


# each harmonic as {exponents (x, y, z): coefficient}, homogeneous in its degree
_S3, _A, _B, _C = math.sqrt(3.0), math.sqrt(5.0 / 8.0), math.sqrt(15.0), math.sqrt(3.0 / 8.0)
_HARMONICS = {
    1: [{(1, 0, 0): 1.0}, {(0, 1, 0): 1.0}, {(0, 0, 1): 1.0}],
    2: [
        {(1, 1, 0): _S3},
        {(0, 1, 1): _S3},
        {(0, 0, 2): 1.0, (2, 0, 0): -0.5, (0, 2, 0): -0.5},  # (3z² - 1) / 2
        {(1, 0, 1): _S3},
        {(2, 0, 0): 0.5 * _S3, (0, 2, 0): -0.5 * _S3},
    ],
    3: [
        {(2, 1, 0): 3.0 * _A, (0, 3, 0): -_A},
        {(1, 1, 1): _B},
        {(0, 1, 2): 4.0 * _C, (2, 1, 0): -_C, (0, 3, 0): -_C},  # c y (5z² - 1)
        {(0, 0, 3): 1.0, (2, 0, 1): -1.5, (0, 2, 1): -1.5},  # z (5z² - 3) / 2
        {(1, 0, 2): 4.0 * _C, (3, 0, 0): -_C, (1, 2, 0): -_C},  # c x (5z² - 1)
        {(2, 0, 1): 0.5 * _B, (0, 2, 1): -0.5 * _B},
        {(3, 0, 0): _A, (1, 2, 0): -3.0 * _A},
    ],
}


@functools.lru_cache(maxsize=16)
def _harmonic_matrix(order: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(3 + 9 + 27 up to ``order``, components) coefficients of the harmonics in the monomials
    ``u_a``, ``u_a u_b`` (row 3 + 3a + b), ``u_a u_b u_c`` (row 12 + 9a + 3b + c)."""
    if order not in _HARMONICS:
        raise ValueError(f"real harmonics are implemented for orders 1..3, got {order!r}")
    rows = {1: 3, 2: 12, 3: 39}[order]
    matrix = torch.zeros(rows, sum(2 * l + 1 for l in range(1, order + 1)), dtype=torch.float64)
    column, first_row = 0, 0
    for degree in range(1, order + 1):
        for polynomial in _HARMONICS[degree]:
            for exponents, coefficient in polynomial.items():
                axes = [axis for axis, power in enumerate(exponents) for _ in range(power)]
                row = first_row + sum(a * 3 ** (degree - 1 - k) for k, a in enumerate(axes))
                matrix[row, column] = coefficient
            column += 1
        first_row += 3**degree
    return matrix.to(dtype=dtype, device=device)


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
        # (M, order * C): 1 where a harmonic's degree is the channel block's degree
        degree = torch.tensor(
            [l for l in range(1, self.angular_order + 1) for _ in range(2 * l + 1)]
        )
        channel_degree = torch.arange(1, self.angular_order + 1).repeat_interleave(
            self.angular_channels
        )
        self.register_buffer(
            "degree_mask", (degree[:, None] == channel_degree[None, :]).float(), persistent=False
        )
        self.node_mlp = mlp([2 * features + n_angular, features, features])
        self.coordinate_mlp = mlp([features, features, 1]) if coordinate_updates else None

    def edge_sums(
        self,
        centre_part: torch.Tensor,
        neighbour_part: torch.Tensor,
        radial_part: torch.Tensor,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        harmonic_blocks: torch.Tensor | None,
        blocks: NeighbourBlocks,
        atoms: tuple[int, int],
        inv_avg_neighbors: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The edge sums of centre atoms ``atoms = (first, end)``, from their sorted edges.

        ``centre_part``/``neighbour_part`` (n_atoms, F): the first message layer's ``h_i`` and
        ``h_j`` blocks applied per atom; ``radial_part`` (e, F) its radial block per edge.
        ``harmonic_blocks`` (end - first, width, M): the edge directions' harmonics in
        neighbour blocks. Returns the aggregated messages (end - first, F), the angular
        invariants (end - first, order * C) or None, and the coordinate shift or None.
        """
        first, end = atoms
        centre, neighbour = edge_index[0], edge_index[1]
        local_centre = centre - first if first else centre
        n_local = end - first
        message = self.message_mlp(centre_part[centre] + neighbour_part[neighbour] + radial_part)
        message = message * (torch.sigmoid(self.gate(message)) * envelope.unsqueeze(-1))
        aggregated = scatter_sum(message, local_centre, n_local) * inv_avg_neighbors
        angular = None
        if self.angular_linear is not None and harmonic_blocks is not None:
            angular = self._angular_invariants(
                message, harmonic_blocks, blocks, atoms, inv_avg_neighbors
            )
        shift = None
        if self.coordinate_mlp is not None:
            # (x_i - x_j) = -edge_vectors; EDM normalisation by (d_ij + 1). phi_x(0) != 0, so
            # the envelope must multiply here too, or an edge leaving the cutoff would pull
            weights = self.coordinate_mlp(message) * (
                envelope.unsqueeze(-1) / (edge_lengths.unsqueeze(-1) + 1.0)
            )
            shift = scatter_sum(-edge_vectors * weights, local_centre, n_local) * inv_avg_neighbors
        return aggregated, angular, shift

    def _angular_invariants(
        self,
        message: torch.Tensor,
        harmonic_blocks: torch.Tensor,
        blocks: NeighbourBlocks,
        atoms: tuple[int, int],
        inv_avg_neighbors: float,
    ) -> torch.Tensor:
        """(n, order * C): ``|sum_j Y_l(r̂_ij) psi_l(m_ij)|²``, l = 1..order, per channel.

        Contracted per centre: the coefficients ``psi`` (e, order * C) go into neighbour blocks
        (n, width, order * C) and one batched matmul with the harmonics' blocks (n, width, M)
        gives every centre's densities (n, M, order * C); no (edges, M, C) tensor is formed.
        """
        coefficients = blocks.to_blocks(self.angular_linear(message), *atoms)
        densities = torch.bmm(harmonic_blocks.transpose(1, 2), coefficients) * inv_avg_neighbors
        # each degree's channels summed over that degree's components only
        return (densities.pow(2) * self.degree_mask).sum(1)

    def node_update(
        self, h: torch.Tensor, aggregated: torch.Tensor, angular: torch.Tensor | None
    ) -> torch.Tensor:
        """``h + phi_h([h, sum_j m_ij / n, angular invariants])`` (n_atoms, F)."""
        parts = [h, aggregated] if angular is None else [h, aggregated, angular]
        return h + self.node_mlp(torch.cat(parts, dim=-1))


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
        self.features = int(features)
        self.shared_geometry = not any(layer.coordinate_mlp is not None for layer in self.layers)
        self.max_chunk_edges = MAX_CHUNK_EDGES
        self._blocks = BlocksCache()
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
        n_atoms = node_features.shape[0]
        blocks = self._blocks.get(edge_index, n_atoms, self.max_chunk_edges)
        if blocks.order is not None:  # sorted by centre: chunks are contiguous edge ranges
            edge_index, edge_vectors = edge_index[:, blocks.order], edge_vectors[blocks.order]
            edge_lengths = edge_lengths[blocks.order]
            if edge_features is not None:
                edge_features = edge_features[blocks.order]
        envelope = self.envelope(edge_lengths)
        h = self.embed(node_features)
        displacement: torch.Tensor | None = None
        energies: torch.Tensor | None = None
        geometry: _EdgeGeometry | None = None
        for k, layer in enumerate(self.layers):
            if displacement is not None:
                centre, neighbour = edge_index[0], edge_index[1]
                edge_vectors = edge_vectors + displacement[neighbour] - displacement[centre]
                edge_lengths = torch.linalg.vector_norm(edge_vectors, dim=-1)
                geometry = None  # the distances moved
            if geometry is None:
                geometry = self._geometry(edge_features, edge_vectors, edge_lengths, blocks, k)
            aggregated, angular, shift = self._edge_sums(
                layer, k, h, geometry, envelope, edge_index, edge_vectors, edge_lengths, blocks
            )
            h = layer.node_update(h, aggregated, angular)
            if shift is not None:
                displacement = shift if displacement is None else displacement + shift
            if self.layer_readouts is not None and k < len(self.layer_readouts):
                term = self.layer_readouts[k](h).squeeze(-1)
                energies = term if energies is None else energies + term
        final = self.readout(h).squeeze(-1)
        return final if energies is None else energies + final

    def _geometry(
        self,
        edge_features: torch.Tensor | None,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        blocks: NeighbourBlocks,
        first_layer: int,
    ) -> _EdgeGeometry:
        """Radial basis, harmonics and (one chunk) their blocks and every later layer's radial
        projection in one matrix multiply, for the layers from ``first_layer`` on."""
        radial = self.radial_basis(edge_lengths)
        if edge_features is not None:
            radial = torch.cat([radial, edge_features], dim=-1)
        harmonics = None
        if self.angular_channels:
            harmonics = real_harmonics(
                edge_vectors / edge_lengths.unsqueeze(-1), self.angular_order
            )
        if len(blocks.chunks) > 1:  # computed per chunk, inside the checkpoint
            return _EdgeGeometry(radial, harmonics, None, None)
        harmonic_blocks = None if harmonics is None else blocks.to_blocks(harmonics)
        # layers that see these distances: all when coordinates stay, else this one
        layers = self.layers[first_layer:] if self.shared_geometry else [self.layers[first_layer]]
        weight = torch.cat([layer.radial_linear.weight for layer in layers], dim=0)
        projections = nn.functional.linear(radial, weight).split(self.features, dim=-1)
        radial_parts = dict(
            zip(range(first_layer, first_layer + len(layers)), projections, strict=True)
        )
        return _EdgeGeometry(radial, harmonics, harmonic_blocks, radial_parts)

    def _edge_sums(
        self,
        layer: EquivariantGraphConv,
        k: int,
        h: torch.Tensor,
        geometry: _EdgeGeometry,
        envelope: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        blocks: NeighbourBlocks,
    ):
        """Layer ``k``'s edge sums over all atoms: in one go, or chunk by chunk of centre atoms
        under activation checkpointing (each chunk's edge activations are recomputed in the
        backward pass instead of kept), which bounds the memory of large structures."""
        centre_part, neighbour_part = layer.centre_linear(h), layer.neighbour_linear(h)
        if len(blocks.chunks) == 1:
            return layer.edge_sums(
                centre_part,
                neighbour_part,
                geometry.radial_parts[k],
                envelope,
                edge_index,
                edge_vectors,
                edge_lengths,
                geometry.harmonic_blocks,
                blocks,
                (0, h.shape[0]),
                self.inv_avg_neighbors,
            )

        def chunk_sums(first, end, e0, e1, centre_part, neighbour_part, radial, harmonics, *edge):
            envelope, edge_index, edge_vectors, edge_lengths = edge
            harmonic_blocks = None if harmonics is None else blocks.to_blocks(harmonics, first, end)
            return layer.edge_sums(
                centre_part,
                neighbour_part,
                layer.radial_linear(radial),
                envelope,
                edge_index,
                edge_vectors,
                edge_lengths,
                harmonic_blocks,
                blocks,
                (first, end),
                self.inv_avg_neighbors,
            )

        outputs = []
        for first, end, e0, e1 in blocks.chunks:
            edge = (envelope[e0:e1], edge_index[:, e0:e1], edge_vectors[e0:e1], edge_lengths[e0:e1])
            harmonics = None if geometry.harmonics is None else geometry.harmonics[e0:e1]
            args = (first, end, e0, e1, centre_part, neighbour_part, geometry.radial[e0:e1])
            if torch.is_grad_enabled():
                out = checkpoint(chunk_sums, *args, harmonics, *edge, use_reentrant=False)
            else:
                out = chunk_sums(*args, harmonics, *edge)
            outputs.append(out)
        return tuple(
            None if parts[0] is None else torch.cat(parts, dim=0)
            for parts in zip(*outputs, strict=True)
        )


@dataclass
class _EdgeGeometry:
    """Per-call edge tensors shared by the layers that see the same distances."""

    radial: torch.Tensor  # (n_edges, n_basis + edge features)
    harmonics: torch.Tensor | None  # (n_edges, M)
    harmonic_blocks: torch.Tensor | None  # (n_atoms, width, M); one chunk only
    radial_parts: dict[int, torch.Tensor] | None  # layer -> (n_edges, F); one chunk only
