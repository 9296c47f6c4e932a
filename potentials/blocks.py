"""Edges grouped by their centre atom: sorted order, padded neighbour blocks, atom-range chunks.

A potential that contracts per centre (``sum_j f(r_ij) ⊗ g(m_ij)``) can lay the edges out as
``(n_atoms, width, ...)`` blocks, one row per centre and ``width`` = the largest neighbour count,
padded with zeros, and contract with a batched matrix multiply instead of materialising an
``edges × a × b`` tensor. Chunks are ranges of centre atoms whose edges are contiguous once the
edges are sorted by centre; a model evaluates one chunk at a time to bound its memory.

Building a layout reads the neighbour counts on the host (one synchronisation). The layout of the
last ``edge_index`` seen is kept, so a caller that passes the same tensor again (an MD engine
between neighbour-list rebuilds) pays nothing, on the host or the device.
"""

from __future__ import annotations

import bisect
import weakref
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NeighbourBlocks:
    """Layout of a directed edge list grouped by centre (``edge_index[0]``).

    order:  (n_edges,) long, a stable permutation that sorts the edges by centre (None when they
            already are sorted).
    slot:   (n_edges,) long, for the *sorted* edges: ``centre * width + rank among its centre``
            (None: no blocks, see :meth:`single_chunk`).
    width:  the largest neighbour count (block width), >= 1.
    chunks: ``[(first_atom, end_atom, first_edge, end_edge), ...]`` covering all atoms and all
            sorted edges, each with at most ``max_edges`` edges unless one atom alone has more.
    offsets: (n_atoms + 1,) long, where each centre's sorted edges start, then n_edges (CSR
            offsets); None where the layout was not read from the edges.
    """

    order: torch.Tensor | None
    slot: torch.Tensor | None
    width: int
    n_atoms: int
    chunks: tuple[tuple[int, int, int, int], ...]
    offsets: torch.Tensor | None = None

    @classmethod
    def single_chunk(cls, n_atoms: int, n_edges: int) -> NeighbourBlocks:
        """No layout read from the edges (``slot`` None: no blocks): one chunk of all atoms and
        edges in their given order, for per-edge sums that need no host read (tracing)."""
        return cls(None, None, 1, n_atoms, ((0, n_atoms, 0, n_edges),))

    def to_blocks(self, values: torch.Tensor, chunk: tuple[int, int, int, int] | None = None):
        """Sorted per-edge ``values`` (e, ...) of the atoms of ``chunk`` (one of ``chunks``; all
        atoms when None) -> (atoms in the chunk, width, ...) blocks, zero where an atom has fewer
        neighbours."""
        first_atom, end_atom, first_edge, end_edge = chunk or (0, self.n_atoms, 0, len(self.slot))
        n_local = end_atom - first_atom
        slot = self.slot[first_edge:end_edge] - first_atom * self.width
        flat = values.new_zeros((n_local * self.width,) + tuple(values.shape[1:]))
        flat = flat.index_copy(0, slot, values)
        return flat.view((n_local, self.width) + tuple(values.shape[1:]))


def build_blocks(edge_index: torch.Tensor, n_atoms: int, max_edges: int) -> NeighbourBlocks:
    """Layout of ``edge_index`` (2, n_edges) over ``n_atoms`` atoms; chunks of <= ``max_edges``."""
    centre = edge_index[0]
    n_edges = int(centre.shape[0])
    device = centre.device
    counts = torch.bincount(centre, minlength=n_atoms) if n_edges else centre.new_zeros(n_atoms)
    host_counts = counts.cpu()  # the one synchronisation: block width and chunk bounds
    width = max(int(host_counts.max()) if n_atoms else 0, 1)
    already_sorted = n_edges < 2 or bool((centre[1:] >= centre[:-1]).all())
    order = None if already_sorted else torch.argsort(centre, stable=True)
    sorted_centre = centre if order is None else centre[order]
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    rank = torch.arange(n_edges, device=device) - offsets[:-1][sorted_centre]
    slot = sorted_centre * width + rank
    chunks = _chunks(host_counts, max_edges)
    return NeighbourBlocks(order, slot, width, n_atoms, chunks, offsets)


def _chunks(counts: torch.Tensor, max_edges: int) -> tuple[tuple[int, int, int, int], ...]:
    """Consecutive atom ranges whose edges total at most ``max_edges`` (one atom at least)."""
    n_atoms = int(counts.shape[0])
    total = int(counts.sum())
    if total <= max_edges or n_atoms == 0:
        return ((0, n_atoms, 0, total),)
    ends = torch.cumsum(counts, 0).tolist()  # ends[a]: edges of atoms 0..a
    chunks, first_atom, first_edge = [], 0, 0
    while first_atom < n_atoms:
        # the last atom whose edges still fit, but at least one atom
        end_atom = max(bisect.bisect_right(ends, first_edge + max_edges), first_atom + 1)
        end_atom = min(end_atom, n_atoms)
        chunks.append((first_atom, end_atom, first_edge, ends[end_atom - 1]))
        first_atom, first_edge = end_atom, ends[end_atom - 1]
    return tuple(chunks)


class BlocksCache:
    """Remembers the layout of the last edge list seen (the same tensor, unmodified)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._edge_index: weakref.ref | None = None
        self._blocks: NeighbourBlocks | None = None

    @torch.compiler.disable  # reads counts on the host: runs eagerly, outside compiled graphs
    def get(self, edge_index: torch.Tensor, n_atoms: int, max_edges: int) -> NeighbourBlocks:
        key = (edge_index._version, tuple(edge_index.shape), n_atoms, max_edges)
        cached = self._edge_index() if self._edge_index is not None else None
        if cached is edge_index and self._key == key and self._blocks is not None:
            return self._blocks
        blocks = build_blocks(edge_index, n_atoms, max_edges)
        self._key, self._edge_index, self._blocks = key, weakref.ref(edge_index), blocks
        return blocks
