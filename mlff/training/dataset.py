"""Frames turned into graphs once, and batches of them with their labels.

A :class:`GraphSet` holds the precomputed :class:`~mlff.graph.AtomicGraph` of every frame (the
neighbour list is built once; training moves no atoms) and the labels as tensors. A
:class:`Batch` is what one optimisation step sees.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlff.data import LabelledFrame
from mlff.graph import AtomicGraph, batch_graphs, graph_from_atoms


@dataclass
class Batch:
    """Graphs and labels of ``n_graphs`` structures (``n_atoms`` atoms in all)."""

    graph: AtomicGraph
    energy: torch.Tensor  # (n_graphs,) eV, float64
    forces: torch.Tensor  # (n_atoms, 3) eV/Å (zeros where unlabelled)
    stress: torch.Tensor  # (n_graphs, 3, 3) eV/Å³ (zeros where unlabelled)
    has_forces: torch.Tensor  # (n_atoms,) bool
    has_stress: torch.Tensor  # (n_graphs,) bool

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """Graph and force/stress labels in ``dtype`` on ``device``; energies stay float64."""
        return Batch(
            graph=self.graph.to(device, dtype),
            energy=self.energy.to(device),
            forces=self.forces.to(device, dtype),
            stress=self.stress.to(device, dtype),
            has_forces=self.has_forces.to(device),
            has_stress=self.has_stress.to(device),
        )


class GraphSet:
    """The graphs and labels of a list of frames, built with neighbour cutoff ``cutoff`` (Å)."""

    def __init__(self, frames: Sequence[LabelledFrame], cutoff: float) -> None:
        self.frames = list(frames)
        self.cutoff = float(cutoff)
        self.graphs = [graph_from_atoms(f.atoms, cutoff, f.where) for f in self.frames]
        self.energy = torch.tensor([f.energy for f in self.frames], dtype=torch.float64)
        self.forces = [
            torch.from_numpy(f.forces)
            if f.forces is not None
            else torch.zeros(len(f.atoms), 3, dtype=torch.float64)
            for f in self.frames
        ]
        self.has_forces = [f.forces is not None for f in self.frames]
        self.stress = torch.zeros(len(self.frames), 3, 3, dtype=torch.float64)
        for k, frame in enumerate(self.frames):
            if frame.stress is not None:
                self.stress[k] = torch.from_numpy(frame.stress)
        self.has_stress = torch.tensor([f.stress is not None for f in self.frames])

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def n_atoms(self) -> int:
        return sum(g.n_atoms for g in self.graphs)

    @property
    def any_forces(self) -> bool:
        return any(self.has_forces)

    @property
    def any_stress(self) -> bool:
        return bool(self.has_stress.any())

    def batch(self, indices: Sequence[int]) -> Batch:
        """The batch of frames ``indices``."""
        indices = [int(i) for i in indices]
        graph = batch_graphs([self.graphs[i] for i in indices])
        has_forces = torch.cat(
            [
                torch.full((self.graphs[i].n_atoms,), self.has_forces[i], dtype=torch.bool)
                for i in indices
            ]
        )
        index = torch.tensor(indices, dtype=torch.long)
        return Batch(
            graph=graph,
            energy=self.energy[index],
            forces=torch.cat([self.forces[i] for i in indices]),
            stress=self.stress[index],
            has_forces=has_forces,
            has_stress=self.has_stress[index],
        )

    def batches(
        self,
        batch_size: int,
        order: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
        trim: bool = True,
    ) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` frames in ``order`` (default: file order).

        With ``world_size > 1`` the batches are dealt round-robin and this rank gets every
        ``world_size``-th one. With ``trim`` the count is cut so that every rank makes the same
        number of steps (training: the cut tail, at most ``world_size - 1`` batches, is drawn anew
        next epoch); without it every frame is seen once (evaluation).
        """
        order = np.arange(len(self)) if order is None else np.asarray(order)
        chunks = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        if world_size > 1:
            if trim:
                chunks = chunks[: len(chunks) - len(chunks) % world_size]
            chunks = chunks[rank::world_size]
        for chunk in chunks:
            yield self.batch(chunk)

    def n_batches(self, batch_size: int, world_size: int = 1) -> int:
        """Steps per pass over the set for this batch size and number of ranks."""
        n = -(-len(self) // batch_size)
        return n // world_size if world_size > 1 else n
