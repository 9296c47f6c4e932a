"""One E_GCL layer of the EGNN (:mod:`.egnn`), with its edge sums in two layouts.

``edge_sums`` takes per-edge tensors sorted by centre (any neighbour counts, a chunk of centre
atoms, moving coordinates); ``block_sums`` takes them in padded neighbour blocks (fixed
coordinates). Both give the same aggregated messages and angular invariants.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import NeighbourBlocks
from .harmonics import harmonic_matrix, real_harmonics
from .layers import gather, mlp, scatter_sum

# the rotation invariants of the direction densities fed to the node update (see
# EquivariantGraphConv.invariants)
ANGULAR_INVARIANTS = ("norms", "gram", "many_body")


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
        angular_invariants: str = "norms",
    ) -> None:
        super().__init__()
        if angular_invariants not in ANGULAR_INVARIANTS:
            raise ValueError(
                f"EGNN angular_invariants must be one of {ANGULAR_INVARIANTS}, "
                f"got {angular_invariants!r}"
            )
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
        self.gram = angular_invariants in ("gram", "many_body") and self.angular_channels > 0
        self.many_body = self.gram and angular_invariants == "many_body"
        n_invariants = n_angular
        if self.gram:
            rows, columns = torch.triu_indices(self.angular_channels, self.angular_channels)
            pairs = rows * self.angular_channels + columns  # c <= c' in a flattened C x C
            self.register_buffer("channel_pairs", pairs, persistent=False)
            n_invariants = self.angular_order * pairs.shape[0]
        if self.many_body:
            n_invariants += (self.angular_order - 1) * self.angular_channels
            # exact coefficients of the solid harmonics (remade by the EGNN after a dtype change)
            self.register_buffer(
                "harmonic_matrix", harmonic_matrix(self.angular_order), persistent=False
            )
        self.node_mlp = mlp([2 * features + n_invariants, features, features])
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
        harmonics: torch.Tensor | None,
        harmonic_blocks: torch.Tensor | None,
        blocks: NeighbourBlocks,
        chunk: tuple[int, int, int, int],
        inv_avg_neighbors: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The edge sums of centre atoms [first, end) of ``chunk = (first, end, first_edge,
        end_edge)`` (one of ``blocks.chunks``), from their sorted edges.

        ``centre_part``/``neighbour_part`` (n_atoms, F): the first message layer's ``h_i`` and
        ``h_j`` blocks applied per atom; ``radial_part`` (e, F) its radial block per edge.
        ``harmonic_blocks`` (end - first, width, M): the edge directions' harmonics in
        neighbour blocks; without blocks (``blocks.slot`` None) the per-edge ``harmonics``
        (e, M) are used instead, and the densities are summed per edge. Returns the aggregated
        messages (end - first, F), the angular invariants (end - first, order * C) or None, and
        the coordinate shift or None.
        """
        first, end = chunk[:2]
        centre, neighbour = edge_index[0], edge_index[1]
        local_centre = centre - first if first else centre
        n_local = end - first
        message = self.message(
            gather(centre_part, centre) + gather(neighbour_part, neighbour) + radial_part, envelope
        )
        aggregated = scatter_sum(message, local_centre, n_local) * inv_avg_neighbors
        angular = None
        if self.angular_linear is not None and harmonic_blocks is not None:
            angular = self._angular_invariants(
                message, harmonic_blocks, blocks, chunk, inv_avg_neighbors
            )
        elif self.angular_linear is not None and harmonics is not None:
            # (e, M, order * C) per edge: the layout for traced graphs, where a compiler fuses it
            terms = harmonics.unsqueeze(-1) * self.angular_linear(message).unsqueeze(-2)
            angular = self.invariants(scatter_sum(terms, local_centre, n_local) * inv_avg_neighbors)
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
        chunk: tuple[int, int, int, int],
        inv_avg_neighbors: float,
    ) -> torch.Tensor:
        """(n, order * C): ``|sum_j Y_l(r̂_ij) psi_l(m_ij)|²``, l = 1..order, per channel.

        Contracted per centre: the messages (e, F) go into neighbour blocks (n, width, F), one
        batched matmul with the harmonics' blocks (n, width, M) sums them along the edge
        directions, and ``psi`` follows (:meth:`densities`); no (edges, M, C) tensor is formed.
        """
        messages = blocks.to_blocks(message, chunk)
        summed = torch.bmm(harmonic_blocks.transpose(1, 2), messages) * inv_avg_neighbors
        return self.invariants(self.densities(summed))

    def densities(self, summed: torch.Tensor) -> torch.Tensor:
        """The densities ``A_l = psi_l(sum_j Y_l(r̂_ij) m_ij)`` (n, M, order * C) from the
        messages summed along the harmonics (n, M, F).

        ``psi`` is linear, so applying it after the sum over neighbours equals summing
        ``Y_l(r̂_ij) psi_l(m_ij)``, and costs n * M rows instead of one row per edge.
        """
        n, n_harmonics, features = summed.shape
        # 2-d, as everywhere in traced graphs (a 3-d linear input pins sizes to the trace)
        densities = self.angular_linear(summed.view(n * n_harmonics, features))
        return densities.view(n, n_harmonics, -1)

    def message(self, pre: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        """``m_ij = phi_e(pre) * sigmoid(phi_inf(.)) * u(r_ij)`` from the first linear layer's
        output ``pre`` (..., F) and the envelope (...)."""
        message = self.message_mlp(pre)
        if torch.compiler.is_compiling() and not self.gate.weight.requires_grad:
            # compiled inference: the gate's one output as a sum over features, which a compiler
            # fuses into the loop that makes the message, where a matrix product with one
            # column would read the (edges, F) messages once more. Eagerly the product is
            # faster; in compiled training steps (weights with gradients) the sum was no faster
            # (docs/measurements.md, "2026-12-05 (sixth session)")
            logit = (message * self.gate.weight[0]).sum(-1, keepdim=True) + self.gate.bias
        else:
            logit = self.gate(message)
        return message * (torch.sigmoid(logit) * envelope.unsqueeze(-1))

    def invariants(self, densities: torch.Tensor) -> torch.Tensor:
        """Rotation invariants of the densities ``A_l`` (n, M, order * C).

        ``"norms"``: (n, order * C) ``|A_i,l,c|²``, each degree's channels summed over that
        degree's components only (three-body terms). ``"gram"``: for every degree the channels'
        Gram matrix ``A_l,c · A_l,c'`` (c <= c'; three-body terms between channels),
        (n, order * C(C+1)/2). ``"many_body"``: the Gram matrices, then, per channel,
        ``Y_l(A_1,c) · A_l,c`` for l = 2..order with ``Y_l`` the solid harmonic of degree l
        evaluated on the vector density (four- and five-body terms, as in MACE's higher
        correlation orders); (n, order * C(C+1)/2 + (order - 1) * C).
        """
        if not self.gram:
            return (densities.pow(2) * self.degree_mask).sum(1)
        channels, first, parts, per_degree = self.angular_channels, 0, [], []
        for degree in range(1, self.angular_order + 1):
            span = slice((degree - 1) * channels, degree * channels)
            density = densities[:, first : first + 2 * degree + 1, span]  # (n, 2l + 1, C)
            first += 2 * degree + 1
            per_degree.append(density)
            gram = torch.bmm(density.transpose(1, 2), density).flatten(1)
            parts.append(gram.index_select(1, self.channel_pairs))
        if self.many_body and self.angular_order > 1:
            vector = per_degree[0].transpose(1, 2)  # (n, C, 3)
            solid = real_harmonics(vector, self.angular_order, self.harmonic_matrix)
            first = 3
            for degree in range(2, self.angular_order + 1):
                width = 2 * degree + 1
                product = solid[..., first : first + width] * per_degree[degree - 1].transpose(1, 2)
                parts.append(product.sum(-1))
                first += width
        return torch.cat(parts, dim=-1)

    def block_sums(
        self,
        centre_part: torch.Tensor,
        neighbour_part: torch.Tensor,
        radial_part: torch.Tensor,
        envelope: torch.Tensor,
        neighbour: torch.Tensor,
        harmonics_t: torch.Tensor | None,
        inv_avg_neighbors: float,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Aggregated messages (n, F) and angular invariants (n, order * C) or None of n centre
        atoms, with every edge tensor in neighbour blocks: ``radial_part`` (n, width, F),
        ``envelope`` and ``neighbour`` (n, width; zero in padding, so padded messages are
        exactly zero), ``harmonics_t`` (n, M, width). ``centre_part`` (n, F) and
        ``neighbour_part`` (n_atoms, F): the first message layer's ``h_i`` and ``h_j`` blocks
        applied per atom. No gather of the centres and no scatter: the sums over neighbours
        are sums over the block's width."""
        pre = centre_part.unsqueeze(1) + gather(neighbour_part, neighbour) + radial_part
        n, width, features = pre.shape
        # the linear layers act on (n * width, F): on a 3-d input a compiler specialises the
        # traced graph to the block width
        message = self.message(pre.reshape(n * width, features), envelope.reshape(n * width))
        aggregated = message.view(n, width, features).sum(1) * inv_avg_neighbors
        if self.angular_linear is None or harmonics_t is None:
            return aggregated, None
        # the harmonics meet the messages first (n, M, F), then psi (see densities)
        summed = torch.bmm(harmonics_t, message.view(n, width, features)) * inv_avg_neighbors
        return aggregated, self.invariants(self.densities(summed))

    def node_update(
        self, h: torch.Tensor, aggregated: torch.Tensor, angular: torch.Tensor | None
    ) -> torch.Tensor:
        """``h + phi_h([h, sum_j m_ij / n, angular invariants])`` (n_atoms, F)."""
        parts = [h, aggregated] if angular is None else [h, aggregated, angular]
        return h + self.node_mlp(torch.cat(parts, dim=-1))
