"""Corrupting structures for pretraining: hidden elements and Gaussian noise on positions.

A :class:`Corruption` of a batch of graphs holds the noised graph (its neighbour list rebuilt for
the noised positions, periodic images included), the noise that was added and the atoms whose
element is hidden. The noise of each structure is centred (its mean over the structure's atoms
removed): a translation-invariant model cannot see a rigid shift, so it is not asked to undo one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mlff.errors import DataError
from mlff.graph import AtomicGraph
from mlff.neighbours import neighbour_list


@dataclass
class Corruption:
    """A corrupted batch; tensors on the CPU in float64 (move ``graph`` with ``.to``)."""

    graph: AtomicGraph  # the noised structures, edges within the cutoff of the noised positions
    noise: torch.Tensor  # (n_atoms, 3) Å, added to the clean positions (centred per structure)
    masked: torch.Tensor  # (n_atoms,) bool, atoms whose element is hidden
    clean_distances: torch.Tensor  # (n_edges,) Å, clean length of each edge of ``graph``
    sigma: float  # Å, standard deviation of the noise

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Corruption:
        """On ``device``; positions, noise and distances in ``dtype``."""
        return Corruption(
            graph=self.graph.to(device, dtype),
            noise=self.noise.to(device, dtype),
            masked=self.masked.to(device),
            clean_distances=self.clean_distances.to(device, dtype),
            sigma=self.sigma,
        )


def generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A torch generator fixed by ``(seed, stream, index)``: the same draws after a resume.

    Streams: 0 pretraining steps, 1 pretraining validation, 2 + rank denoising in ``mlff train``.
    """
    state = np.random.SeedSequence([seed, stream, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)


def check_corruption(sigma: float, mask_fraction: float, where: str = "options") -> None:
    """Raise :class:`DataError` for a noise ``sigma`` (Å) that is not > 0 or a mask fraction
    outside [0, 1)."""
    if not (math.isfinite(sigma) and sigma > 0):
        raise DataError(f"{where}: the noise sigma must be a length > 0 Å, got {sigma!r}")
    if not (math.isfinite(mask_fraction) and 0.0 <= mask_fraction < 1.0):
        raise DataError(f"{where}: the mask fraction must be in [0, 1), got {mask_fraction!r}")


def regraph(graph: AtomicGraph, positions: torch.Tensor, cutoff: float) -> AtomicGraph:
    """``graph`` with new ``positions`` (n_atoms, 3) Å and the edges within ``cutoff`` (Å) of
    them, found again structure by structure (cells and periodicity unchanged)."""
    counts = graph.n_atoms_per_graph.tolist()
    starts = np.cumsum([0] + counts[:-1])
    array = positions.detach().cpu().to(torch.float64).numpy()
    cells = graph.cell.detach().cpu().to(torch.float64).numpy()
    pbcs = graph.pbc.cpu().numpy()
    index, shifts = [], []
    for k, (start, count) in enumerate(zip(starts, counts, strict=True)):
        i, j, s = neighbour_list(array[start : start + count], cells[k], pbcs[k], cutoff)
        index.append(np.stack([i, j]) + start)
        shifts.append(s)
    return AtomicGraph(
        numbers=graph.numbers,
        positions=positions.detach().to(graph.positions.dtype),
        cell=graph.cell,
        pbc=graph.pbc,
        edge_index=torch.from_numpy(np.concatenate(index, axis=1).astype(np.int64)),
        edge_shifts=torch.from_numpy(np.concatenate(shifts).astype(np.float64)).to(
            graph.edge_shifts.dtype
        ),
        batch=graph.batch,
        n_atoms_per_graph=graph.n_atoms_per_graph,
    )


def edge_lengths(positions: torch.Tensor, graph: AtomicGraph) -> torch.Tensor:
    """(n_edges,) Å: ``|x_j - x_i + S @ cell|`` of ``graph``'s edges for ``positions``."""
    centre, neighbour = graph.edge_index[0], graph.edge_index[1]
    cells = graph.cell.to(positions.dtype)[graph.batch[centre]]
    images = torch.einsum("ek,ekl->el", graph.edge_shifts.to(positions.dtype), cells)
    return torch.linalg.vector_norm(positions[neighbour] - positions[centre] + images, dim=-1)


def corrupt(
    graph: AtomicGraph,
    cutoff: float,
    sigma: float,
    mask_fraction: float,
    generator: torch.Generator,
) -> Corruption:
    """Hide the element of each atom with probability ``mask_fraction`` (at least one atom of
    the batch when > 0) and add centred Gaussian noise of ``sigma`` Å to every position."""
    check_corruption(sigma, mask_fraction)
    graph = graph.to("cpu")
    n_atoms = graph.n_atoms
    noise = sigma * torch.randn(n_atoms, 3, generator=generator, dtype=torch.float64)
    mean = torch.zeros(graph.n_graphs, 3, dtype=torch.float64).index_add_(0, graph.batch, noise)
    mean = mean / graph.n_atoms_per_graph.to(torch.float64).unsqueeze(-1)
    noise = noise - mean[graph.batch]
    masked = torch.zeros(n_atoms, dtype=torch.bool)
    if mask_fraction > 0:
        masked = torch.rand(n_atoms, generator=generator) < mask_fraction
        if not bool(masked.any()):
            masked[int(torch.randint(n_atoms, (1,), generator=generator))] = True
    clean = graph.positions.to(torch.float64)
    noised = regraph(graph, clean + noise, cutoff)
    return Corruption(
        graph=noised,
        noise=noise,
        masked=masked,
        clean_distances=edge_lengths(clean, noised),
        sigma=float(sigma),
    )
