"""Where a structure becomes a graph: species, positions, cell and the edges within the cutoff.

An :class:`AtomicGraph` holds one structure or a batch of them as flat tensors. Edges are directed
pairs ``(i, j)`` within the cutoff, both directions present, with the integer periodic image
shift ``S`` of ``j`` so that the edge vector is ``x_j - x_i + S @ cell`` (Å).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import ase
import numpy as np
import torch
from ase.data import covalent_radii

from mlff.errors import StructureError
from mlff.neighbours import neighbour_list


@dataclass
class AtomicGraph:
    """A batch of ``n_graphs`` structures with ``n_atoms`` atoms and ``n_edges`` edges in total."""

    numbers: torch.Tensor  # (n_atoms,) long, atomic numbers
    positions: torch.Tensor  # (n_atoms, 3) Å
    cell: torch.Tensor  # (n_graphs, 3, 3) Å, rows are lattice vectors (zeros without a cell)
    pbc: torch.Tensor  # (n_graphs, 3) bool
    edge_index: torch.Tensor  # (2, n_edges) long, row 0 = centre i, row 1 = neighbour j
    edge_shifts: torch.Tensor  # (n_edges, 3) integer-valued image shifts of j, in cell vectors
    batch: torch.Tensor  # (n_atoms,) long, graph index of each atom
    n_atoms_per_graph: torch.Tensor  # (n_graphs,) long

    @property
    def n_graphs(self) -> int:
        return int(self.cell.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move to ``device``; floating tensors (positions, cell, shifts) are cast to ``dtype``."""
        moved = {}
        for field in fields(self):
            tensor = getattr(self, field.name)
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(device=device, dtype=dtype)
            else:
                tensor = tensor.to(device=device)
            moved[field.name] = tensor
        return AtomicGraph(**moved)

    def volumes(self) -> torch.Tensor:
        """(n_graphs,) cell volumes in Å³ (0 without a cell)."""
        return torch.linalg.det(self.cell).abs()


# the largest extent of a structure along a non-periodic direction: a cell list over a wider box
# would need more cells than memory holds (and past ~1e6 Å vesin fails outright)
MAX_SPAN_A = 1.0e5


def check_structure(atoms: ase.Atoms, where: str = "structure") -> None:
    """Raise :class:`StructureError` naming ``where`` if ``atoms`` cannot be turned into a graph."""
    if len(atoms) == 0:
        raise StructureError(f"{where}: has no atoms")
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        bad = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise StructureError(f"{where}: position of atom {bad} is not finite (NaN or inf)")
    if not np.all(atoms.pbc):
        span = np.ptp(positions, axis=0)
        if span.max() > MAX_SPAN_A:
            axis = int(np.argmax(span))
            low, high = int(np.argmin(positions[:, axis])), int(np.argmax(positions[:, axis]))
            raise StructureError(
                f"{where}: atoms {low} and {high} are {span[axis]:.3g} Å apart along axis {axis}, "
                f"more than the {MAX_SPAN_A:g} Å a structure without a periodic cell may span"
            )
    if np.any(atoms.pbc):
        cell = np.asarray(atoms.get_cell())
        if not np.all(np.isfinite(cell)):
            raise StructureError(f"{where}: cell is not finite (NaN or inf)")
        periodic_vectors = cell[np.asarray(atoms.pbc, dtype=bool)]
        lengths = np.linalg.norm(periodic_vectors, axis=1)
        if np.any(lengths < 1e-6):
            raise StructureError(
                f"{where}: periodic cell vector has zero length (pbc={atoms.pbc.tolist()})"
            )
        if np.all(atoms.pbc) and abs(np.linalg.det(cell)) < 1e-6:
            raise StructureError(f"{where}: periodic cell has zero volume")


# two atoms closer than this fraction of the sum of their covalent radii are not a physical
# structure (an H-H pair at 0.31 Å, a Cu-Cu pair at 1.32 Å): overlapping or duplicated atoms
MIN_DISTANCE_FRACTION = 0.5


def check_contacts(
    atoms: ase.Atoms, where: str = "structure", fraction: float = MIN_DISTANCE_FRACTION
) -> None:
    """Raise :class:`StructureError` naming the closest pair of atoms (periodic images included)
    that sits closer than ``fraction`` times the sum of their covalent radii (Å)."""
    numbers = atoms.get_atomic_numbers()
    radii = covalent_radii[numbers]
    reach = fraction * 2.0 * float(radii.max())
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.get_cell()) if pbc.any() else np.zeros((3, 3))
    positions = atoms.get_positions()
    i, j, shifts = neighbour_list(positions, cell, pbc, reach)
    if len(i) == 0:
        return
    distances = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
    minimum = fraction * (radii[i] + radii[j])
    ratio = distances / minimum
    worst = int(np.argmin(ratio))
    if ratio[worst] >= 1.0:
        return
    a, b, d = int(i[worst]), int(j[worst]), float(distances[worst])
    symbols = atoms.get_chemical_symbols()
    pair = (
        f"atom {a} ({symbols[a]}) is {d:.3g} Å from its own periodic image"
        if a == b
        else f"atoms {min(a, b)} ({symbols[min(a, b)]}) and {max(a, b)} ({symbols[max(a, b)]}) "
        f"are {d:.3g} Å apart" + (" through the periodic boundary" if np.any(shifts[worst]) else "")
    )
    raise StructureError(
        f"{where}: {pair}, closer than the physical minimum {minimum[worst]:.2f} Å "
        f"({fraction:g} x the sum of their covalent radii): overlapping or duplicated atoms"
    )


def graph_from_atoms(atoms: ase.Atoms, cutoff: float, where: str = "structure") -> AtomicGraph:
    """Build the graph of one structure with all edges shorter than ``cutoff`` (Å)."""
    check_structure(atoms, where)
    positions = atoms.get_positions()
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.get_cell()) if pbc.any() else np.zeros((3, 3))
    centres, neighbours, shifts = neighbour_list(positions, cell, pbc, cutoff)
    n = len(atoms)
    return AtomicGraph(
        numbers=torch.from_numpy(atoms.get_atomic_numbers().astype(np.int64)),
        positions=torch.from_numpy(np.ascontiguousarray(positions, dtype=np.float64)),
        cell=torch.from_numpy(np.ascontiguousarray(cell, dtype=np.float64)).unsqueeze(0),
        pbc=torch.from_numpy(pbc).unsqueeze(0),
        edge_index=torch.from_numpy(np.stack([centres, neighbours]).astype(np.int64)),
        edge_shifts=torch.from_numpy(shifts.astype(np.float64)),
        batch=torch.zeros(n, dtype=torch.long),
        n_atoms_per_graph=torch.tensor([n], dtype=torch.long),
    )


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one batch; atom indices in edges are offset per graph."""
    if len(graphs) == 0:
        raise ValueError("cannot batch an empty list of graphs")
    if len(graphs) == 1:
        return graphs[0]
    offsets = np.cumsum([0] + [g.n_atoms for g in graphs[:-1]])
    graph_offsets = np.cumsum([0] + [g.n_graphs for g in graphs[:-1]])
    return AtomicGraph(
        numbers=torch.cat([g.numbers for g in graphs]),
        positions=torch.cat([g.positions for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=torch.cat(
            [g.edge_index + int(o) for g, o in zip(graphs, offsets, strict=True)], dim=1
        ),
        edge_shifts=torch.cat([g.edge_shifts for g in graphs]),
        batch=torch.cat([g.batch + int(o) for g, o in zip(graphs, graph_offsets, strict=True)]),
        n_atoms_per_graph=torch.cat([g.n_atoms_per_graph for g in graphs]),
    )


def graphs_from_atoms(
    structures: Sequence[ase.Atoms], cutoff: float, where: str = "structures"
) -> AtomicGraph:
    """Build and batch the graphs of several structures (``where`` names them in errors)."""
    return batch_graphs(
        [graph_from_atoms(a, cutoff, f"{where}, frame {k}") for k, a in enumerate(structures)]
    )
