"""Unlabelled structures for pretraining: read, checked, turned into graphs once, batched.

Any labels in the files (energies, forces) are ignored. Every problem is one
:class:`~mlff.errors.DataError` line naming the file and frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import chemical_symbols

from mlff.errors import DataError, StructureError
from mlff.graph import AtomicGraph, batch_graphs, check_contacts, check_structure, graph_from_atoms


def read_unlabelled(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
) -> list[tuple[ase.Atoms, str]]:
    """Every frame of ``paths`` (any format ASE reads) as bare ``(atoms, "FILE, frame K")``."""
    import ase.io

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    structures = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            frames = ase.io.read(str(path), index=":")
        except Exception as error:  # ASE raises many types on unreadable input
            text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
            raise DataError(
                f"{path}: cannot read structures ({type(error).__name__}: {text})"
            ) from None
        frames = frames if isinstance(frames, list) else [frames]
        if not frames:
            raise DataError(f"{path}: no structures in file")
        for index, atoms in enumerate(frames):
            where = f"{path}, frame {index}"
            numbers = atoms.get_atomic_numbers()
            if np.any(numbers < 1) or np.any(numbers >= len(chemical_symbols)):
                raise DataError(f"{where}: holds atoms of no known element (atomic number 0)")
            try:
                check_structure(atoms, where)
                check_contacts(atoms, where)
            except StructureError as error:
                raise DataError(str(error)) from None
            bare = ase.Atoms(
                numbers=numbers, positions=atoms.get_positions(), cell=atoms.cell, pbc=atoms.pbc
            )
            structures.append((bare, where))
    return structures


def elements_in(structures: Sequence[tuple[ase.Atoms, str]]) -> list[str]:
    """The chemical symbols present, ordered by atomic number (as ``mlff train`` orders them)."""
    numbers = sorted({int(z) for atoms, _ in structures for z in atoms.get_atomic_numbers()})
    return [chemical_symbols[z] for z in numbers]


def check_elements(
    structures: Sequence[tuple[ase.Atoms, str]], elements: Sequence[str], name: str
) -> None:
    """Raise :class:`DataError` for the first structure holding an element not in ``elements``."""
    for atoms, where in structures:
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(elements))
        if unknown:
            raise DataError(
                f"{where}: {name} structure holds {', '.join(unknown)}, which the model is not "
                f"built for (elements {', '.join(elements)})"
            )


class StructureSet:
    """Precomputed graphs (cutoff Å) of unlabelled structures and their species indices."""

    def __init__(
        self, structures: Sequence[tuple[ase.Atoms, str]], cutoff: float, elements: Sequence[str]
    ) -> None:
        table = {symbol: k for k, symbol in enumerate(elements)}
        self.graphs = [graph_from_atoms(atoms, cutoff, where) for atoms, where in structures]
        self.species = [
            torch.tensor([table[s] for s in atoms.get_chemical_symbols()], dtype=torch.long)
            for atoms, _ in structures
        ]

    def __len__(self) -> int:
        return len(self.graphs)

    def average_neighbours(self) -> float:
        """Mean number of edges per atom (at least 1)."""
        edges = sum(g.n_edges for g in self.graphs)
        atoms = sum(g.n_atoms for g in self.graphs)
        return max(1.0, edges / max(atoms, 1))

    def batch(self, indices: Sequence[int]) -> tuple[AtomicGraph, torch.Tensor]:
        """The batched graph of structures ``indices`` and its species (n_atoms,) long."""
        indices = [int(i) for i in indices]
        graph = batch_graphs([self.graphs[i] for i in indices])
        return graph, torch.cat([self.species[i] for i in indices])

    def chunks(self, batch_size: int, order: np.ndarray | None = None) -> list[np.ndarray]:
        """Index arrays of ``batch_size`` structures in ``order`` (default: file order)."""
        order = np.arange(len(self)) if order is None else np.asarray(order)
        return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
