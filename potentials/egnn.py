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

Speed (exact reformulations, no approximation):

- the first linear layer of ``phi_e`` acts on ``[h_i, h_j, rbf, a]``; its ``h_i`` and ``h_j``
  blocks are applied per atom, not per edge; on per-edge tensors every layer's radial block is
  one matmul (in neighbour blocks, one per layer: a fused projection's gradient is a copy);
- edges are grouped by centre (:mod:`.blocks`). Where neighbour counts are even (bulk, liquids,
  same-size molecules) all edge tensors live in padded neighbour blocks (n_atoms, width, ...):
  sums over neighbours are sums over the width, with no gather of centres and no scatter;
  otherwise the per-edge layout is used;
- the densities ``A_i,l`` are one batched matmul per layer of the harmonics' blocks with the
  messages' blocks, (n_atoms, M, F), followed by the linear map ``psi_l`` on n_atoms * M rows
  (it commutes with the sum over neighbours), never an (edges, M, C) tensor;
- above ``max_chunk_edges`` edges the layers run chunks of ``chunk_edges`` edges (groups of
  centre atoms) one at a time under activation checkpointing, so memory grows linearly in
  atoms with a small constant;
- inference on a CPU (frozen weights, fixed coordinates, eager) runs each layer's edge sums,
  and the edge geometry, in fused C++ kernels (:mod:`.egnn_fused`, :mod:`.fused`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import BlocksCache, NeighbourBlocks
from .egnn_fused import fused_applies, fused_layers
from .harmonics import harmonic_matrix, real_harmonics

__all__ = ["EGNN", "EquivariantGraphConv", "real_harmonics"]
from .egnn_layer import EquivariantGraphConv
from .layers import BesselBasis, PolynomialEnvelope, gather, mlp

# above this many edges a structure is evaluated in chunks of centre atoms (activation
# checkpointing), so memory stays linear in atoms with a small constant
MAX_CHUNK_EDGES = 1 << 20
# edges per chunk once chunking starts (smaller chunks: less memory, same cost)
CHUNK_EDGES = 1 << 18
# neighbour blocks hold n_atoms x (largest neighbour count) slots; above this many slots per edge
# (uneven neighbour counts: molecules, surfaces, mixed batches) the per-edge layout is faster, for
# training steps and for energy + forces alike (docs/measurements.md, 2026-12-05)
MAX_PADDING = 1.1


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
        angular_invariants: "norms" (``|A_l|²`` per channel) or "many_body" (the channels'
            Gram matrices and the products ``Y_l(A_1) · A_l``), see
            :meth:`EquivariantGraphConv.invariants`.
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
        angular_invariants: str = "norms",
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
                angular_invariants,
            )
            for k in range(num_layers)
        )
        self.features = int(features)
        self.shared_geometry = not any(layer.coordinate_mlp is not None for layer in self.layers)
        self.max_chunk_edges = MAX_CHUNK_EDGES
        self.chunk_edges = CHUNK_EDGES
        self.max_padding = MAX_PADDING
        self.use_fused = True  # fused CPU kernels where they apply (egnn_fused.fused_applies)
        self._blocks = BlocksCache()
        # not cached globally: a tensor made while a compiler traces must not outlive the trace
        matrix = harmonic_matrix(self.angular_order) if self.angular_channels else None
        self.register_buffer("harmonic_matrix", matrix, persistent=False)
        # True while a compiler traces the model: no host reads of the edge list (per-edge
        # layout, one chunk); see mlff.compiled
        self.traceable = False
        self.readout = mlp([features, features // 2 or 1, 1])
        readouts = (nn.Linear(features, 1) for _ in range(num_layers - 1))
        self.layer_readouts = nn.ModuleList(readouts) if layer_readouts else None

    def _apply(self, fn, recurse=True):
        """Follow ``.to(dtype/device)``, but remake the harmonics' coefficients from their exact
        values: a model stored in float32 and run in float64 would otherwise carry float32-rounded
        coefficients, whose harmonics are no longer exactly a rotation's representation (forces
        then break rotational covariance at ~1e-7 relative instead of round-off)."""
        super()._apply(fn, recurse)
        for module in [self, *self.layers]:
            rounded = getattr(module, "harmonic_matrix", None)
            if rounded is not None:
                exact = harmonic_matrix(self.angular_order)
                module.harmonic_matrix = exact.to(device=rounded.device, dtype=rounded.dtype)
        return self

    def forward(
        self,
        node_features: torch.Tensor,
        edge_features: torch.Tensor | None,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
        blocks: NeighbourBlocks | None = None,
    ) -> torch.Tensor:
        """Per-atom energies (n_atoms,), dimensionless, of the graph's edges ((2, n_edges),
        vectors (n_edges, 3) and lengths (n_edges,) in Å). ``blocks``: a layout the caller made
        with :meth:`traced_layout` (edges already sorted by centre), for traced graphs."""
        n_atoms = node_features.shape[0]
        n_edges = edge_index.shape[1]
        laid_out = blocks is not None  # outside the trace: edges sorted, in neighbour blocks
        if not laid_out and self.traceable:  # no layout from the values of edge_index
            blocks = NeighbourBlocks.single_chunk(n_atoms, n_edges)
        elif not laid_out:
            chunk = n_edges if n_edges <= self.max_chunk_edges else self.chunk_edges
            blocks = self._blocks.get(edge_index, n_atoms, chunk)
        if blocks.order is not None:  # sorted by centre: chunks are contiguous edge ranges
            edge_index = edge_index[:, blocks.order]
            edge_vectors = gather(edge_vectors, blocks.order)
            edge_lengths = gather(edge_lengths, blocks.order)
            if edge_features is not None:
                edge_features = gather(edge_features, blocks.order)
        h = self.embed(node_features)
        # a caller's layout fits (traced_layout checked it): no guard on the symbolic sizes
        in_blocks = laid_out or self._fits_blocks(blocks, n_atoms, n_edges)
        layers = self._layers_in_blocks if in_blocks else self._layers_on_edges
        if not laid_out and n_edges and fused_applies(self, h.dtype, h.device):
            layers = self._layers_fused  # edges sorted by centre, any neighbour counts
        energies: torch.Tensor | None = None
        states = layers(h, edge_features, edge_index, edge_vectors, edge_lengths, blocks)
        for k, h in enumerate(states):  # noqa: B020 (h: the state after layer k)
            if self.layer_readouts is not None and k < len(self.layer_readouts):
                term = self.layer_readouts[k](h).squeeze(-1)
                energies = term if energies is None else energies + term
        final = self.readout(h).squeeze(-1)
        return final if energies is None else energies + final

    def _fits_blocks(self, blocks: NeighbourBlocks, n_atoms: int, n_edges: int) -> bool:
        """Whether the layers run in neighbour blocks: fixed coordinates, one chunk, and at most
        ``max_padding`` block slots per edge."""
        return (
            self.shared_geometry
            and blocks.slot is not None
            and len(blocks.chunks) == 1
            and n_atoms * blocks.width <= self.max_padding * n_edges
        )

    def traced_layout(self, edge_index: torch.Tensor, n_atoms: int) -> NeighbourBlocks | None:
        """The neighbour-block layout of ``edge_index`` (2, n_edges) for a traced graph, made
        eagerly (it reads the neighbour counts on the host), or None where this model would not
        run in blocks (moving coordinates, uneven neighbour counts, chunks). The caller sorts
        the edges by ``order`` and passes the layout, without ``order``, to :meth:`forward`."""
        n_edges = int(edge_index.shape[1])
        if not self.shared_geometry or n_edges == 0 or n_edges > self.max_chunk_edges:
            return None
        blocks = self._blocks.get(edge_index, n_atoms, n_edges)
        # a width of 1 would be specialised by the compiler (a graph of its own): per edge
        return blocks if blocks.width > 1 and self._fits_blocks(blocks, n_atoms, n_edges) else None

    def _layers_in_blocks(self, h, edge_features, edge_index, edge_vectors, edge_lengths, blocks):
        """Yield ``h`` after each layer, every edge tensor laid out in neighbour blocks (fixed
        coordinates, one chunk): the radial basis, envelope, neighbour indices and harmonics
        are put into blocks once and shared by all layers."""
        radial, harmonics = self._edge_basis(edge_features, edge_vectors, edge_lengths)
        radial = blocks.to_blocks(radial)
        n, width = radial.shape[:2]
        flat = radial.view(n * width, -1)
        # a matmul per layer: a stacked (layers, n, width, F) projection would need its gradient
        # gathered into one tensor, a copy as large as all layers' radial parts together
        radial_parts = [layer.radial_linear(flat).view(n, width, -1) for layer in self.layers]
        envelope = blocks.to_blocks(self.envelope(edge_lengths))
        neighbour = blocks.to_blocks(edge_index[1])
        harmonics_t = None if harmonics is None else blocks.to_blocks(harmonics).transpose(1, 2)
        for layer, radial_part in zip(self.layers, radial_parts, strict=True):
            aggregated, angular = layer.block_sums(
                layer.centre_linear(h),
                layer.neighbour_linear(h),
                radial_part,
                envelope,
                neighbour,
                harmonics_t,
                self.inv_avg_neighbors,
            )
            h = layer.node_update(h, aggregated, angular)
            yield h

    _layers_fused = fused_layers  # each layer's edge sums in the fused CPU kernel

    def _layers_on_edges(self, h, edge_features, edge_index, edge_vectors, edge_lengths, blocks):
        """Yield ``h`` after each layer, with per-edge tensors (any neighbour counts, moving
        coordinates, chunks)."""
        envelope = self.envelope(edge_lengths)
        displacement: torch.Tensor | None = None
        geometry: _EdgeGeometry | None = None
        for k, layer in enumerate(self.layers):
            if displacement is not None:
                centre, neighbour = edge_index[0], edge_index[1]
                moved = gather(displacement, neighbour) - gather(displacement, centre)
                edge_vectors = edge_vectors + moved
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
            yield h

    def _edge_basis(
        self,
        edge_features: torch.Tensor | None,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n_edges, n_basis + edge features): the Bessel basis with the encoder's pair features;
        (n_edges, M) or None: the harmonics of the edge directions."""
        radial = self.radial_basis(edge_lengths)
        if edge_features is not None:
            radial = torch.cat([radial, edge_features], dim=-1)
        if not self.angular_channels:
            return radial, None
        unit = edge_vectors / edge_lengths.unsqueeze(-1)
        return radial, real_harmonics(unit, self.angular_order, self.harmonic_matrix)

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
        radial, harmonics = self._edge_basis(edge_features, edge_vectors, edge_lengths)
        if len(blocks.chunks) > 1:  # computed per chunk, inside the checkpoint
            return _EdgeGeometry(radial, harmonics, None, None)
        harmonic_blocks = None
        if harmonics is not None and blocks.slot is not None:
            harmonic_blocks = blocks.to_blocks(harmonics)
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
                geometry.harmonics,
                geometry.harmonic_blocks,
                blocks,
                blocks.chunks[0],
                self.inv_avg_neighbors,
            )

        def chunk_sums(chunk, centre_part, neighbour_part, radial, harmonics, *edge):
            envelope, edge_index, edge_vectors, edge_lengths = edge
            harmonic_blocks = None if harmonics is None else blocks.to_blocks(harmonics, chunk)
            return layer.edge_sums(
                centre_part,
                neighbour_part,
                layer.radial_linear(radial),
                envelope,
                edge_index,
                edge_vectors,
                edge_lengths,
                harmonics,
                harmonic_blocks,
                blocks,
                chunk,
                self.inv_avg_neighbors,
            )

        outputs = []
        for chunk in blocks.chunks:
            e0, e1 = chunk[2:]
            edge = (envelope[e0:e1], edge_index[:, e0:e1], edge_vectors[e0:e1], edge_lengths[e0:e1])
            harmonics = None if geometry.harmonics is None else geometry.harmonics[e0:e1]
            args = (chunk, centre_part, neighbour_part, geometry.radial[e0:e1])
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
    harmonic_blocks: torch.Tensor | None  # (n_atoms, width, M); one chunk, blocks laid out
    radial_parts: dict[int, torch.Tensor] | None  # layer -> (n_edges, F); one chunk only
