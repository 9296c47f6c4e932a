"""The EGNN's layers with each layer's edge sums in the fused CPU kernel (:mod:`.fused`).

Used by :meth:`~mlff.potentials.egnn.EGNN.forward` for inference on a CPU (frozen weights, fixed
coordinates, eager evaluation): the radial basis, envelope and harmonics are computed once per
call as per-edge tensors (edges sorted by centre, any neighbour counts, no padding) and shared
by all layers; the per-atom work (the first layer's ``h_i``/``h_j`` blocks, the densities'
``psi``, their invariants and the node update) stays in torch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import fused, kernels
from .blocks import NeighbourBlocks


def fused_applies(egnn, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether ``egnn`` evaluates through the fused kernel now: enabled on the model
    (``use_fused``), fixed coordinates, eager (not traced), frozen weights and no
    :func:`~.fused.reference_path` (inference: the kernels give no weight gradients and no
    second derivatives), and a width, dtype and device the kernels serve."""
    return (
        getattr(egnn, "use_fused", False)  # an EGNN (other potentials have no fused path)
        and egnn.shared_geometry
        and not egnn.traceable
        and not torch.compiler.is_compiling()
        and not fused.reference_only()
        and not any(p.requires_grad for p in egnn.parameters())
        and egnn.features in fused.FEATURES
        and kernels.available(dtype, device)
        and egnn.envelope.cutoff == egnn.radial_basis.cutoff
    )


def fused_layers(
    egnn,
    h: torch.Tensor,
    edge_features: torch.Tensor | None,
    edge_index: torch.Tensor,
    edge_vectors: torch.Tensor,
    edge_lengths: torch.Tensor,
    blocks: NeighbourBlocks,
) -> Iterator[torch.Tensor]:
    """Yield ``h`` (n_atoms, F) after each of ``egnn``'s layers; edges (2, n_edges) sorted by
    centre, vectors (n_edges, 3) and lengths (n_edges,) in Å; ``blocks``: their layout as
    :meth:`~.egnn.EGNN.forward` read it (its CSR ``offsets``)."""
    radial, envelope, harmonics = fused.edge_geometry(
        edge_vectors,
        edge_lengths,
        egnn.radial_basis,
        egnn.envelope,
        egnn.harmonic_matrix if egnn.angular_channels else None,
    )
    if edge_features is not None:
        radial = torch.cat([radial, edge_features], dim=-1)
    ptr = blocks.offsets
    cuts = fused.thread_ranges(ptr)  # the same for every layer
    neighbour = edge_index[1].contiguous()
    for layer in egnn.layers:
        aggregated, summed = fused.edge_sums(
            layer.centre_linear(h),
            layer.neighbour_linear(h),
            radial,
            envelope,
            harmonics,
            ptr,
            neighbour,
            layer.radial_linear.weight,
            layer.message_mlp[1],
            layer.gate,
            cuts,
        )
        scale = egnn.inv_avg_neighbors
        angular = None
        if layer.angular_linear is not None and summed is not None:
            angular = layer.invariants(layer.densities(summed * scale))
        h = layer.node_update(h, aggregated * scale, angular)
        yield h
