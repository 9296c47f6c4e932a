"""Neighbour lists and graphs against a brute-force reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from mlff.errors import StructureError
from mlff.graph import batch_graphs, graph_from_atoms
from tests.conftest import triclinic_cell


def brute_force_edges(atoms: Atoms, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    """Every (i, j, S) with 0 < |x_j - x_i + S cell| < cutoff, by looping over image shifts."""
    cell = np.asarray(atoms.get_cell())
    positions = atoms.get_positions()
    ranges = []
    for axis in range(3):
        if atoms.pbc[axis]:
            # images needed: cutoff over the distance between lattice planes, plus one
            normal = np.cross(cell[(axis + 1) % 3], cell[(axis + 2) % 3])
            if np.linalg.norm(normal) > 1e-9:
                spacing = abs(np.dot(cell[axis], normal)) / np.linalg.norm(normal)
            else:  # the other cell vectors are zero: a lone periodic axis
                spacing = np.linalg.norm(cell[axis])
            n = int(np.ceil(cutoff / spacing)) + 1
            ranges.append(range(-n, n + 1))
        else:
            ranges.append(range(0, 1))
    edges = set()
    for shift in itertools.product(*ranges):
        offset = np.array(shift) @ cell
        vectors = positions[None, :, :] + offset - positions[:, None, :]
        distances = np.linalg.norm(vectors, axis=-1)
        for i, j in zip(*np.nonzero((distances < cutoff) & (distances > 1e-8)), strict=True):
            edges.add((int(i), int(j), *shift))
    return edges


def graph_edges(atoms: Atoms, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    graph = graph_from_atoms(atoms, cutoff)
    shifts = graph.edge_shifts.round().long().tolist()
    pairs = graph.edge_index.T.tolist()
    edges = {(i, j, *s) for (i, j), s in zip(pairs, shifts, strict=True)}
    assert len(edges) == graph.n_edges, "duplicate edges"
    return edges


def slab() -> Atoms:
    atoms = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    atoms.rattle(0.05, seed=2)
    return atoms


def small_cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, cell much smaller than the cutoff
    atoms.set_cell(np.asarray(atoms.get_cell()) @ np.array([[1, 0.05, 0], [0, 1, 0], [0, 0.1, 1]]))
    return atoms


STRUCTURES = {
    "molecule": lambda: molecule("CH3CH2OH"),
    "triclinic": triclinic_cell,
    "slab-mixed-pbc": slab,
    "cell-smaller-than-cutoff": small_cell,
    "wire-one-periodic-axis": lambda: Atoms(
        "CuCu", positions=[[0, 0, 0], [1.3, 0.4, 0.2]], cell=[2.5, 0, 0], pbc=[True, False, False]
    ),
}


@pytest.mark.parametrize("name", sorted(STRUCTURES))
@pytest.mark.parametrize("cutoff", [2.9, 5.0])
def test_edges_match_brute_force(name, cutoff):
    atoms = STRUCTURES[name]()
    expected = brute_force_edges(atoms, cutoff)
    assert expected, "reference found no edges: the test would prove nothing"
    assert graph_edges(atoms, cutoff) == expected


def test_small_cell_sees_its_own_images():
    atoms = small_cell()
    graph = graph_from_atoms(atoms, 5.0)
    assert graph.n_atoms == 1
    assert graph.n_edges > 12
    assert bool((graph.edge_index[0] == graph.edge_index[1]).all())


def test_edge_vectors_are_within_cutoff():
    atoms = triclinic_cell()
    graph = graph_from_atoms(atoms, 4.0)
    centre, neighbour = graph.edge_index
    vectors = (
        graph.positions[neighbour] - graph.positions[centre] + graph.edge_shifts @ graph.cell[0]
    )
    lengths = vectors.norm(dim=-1)
    assert float(lengths.max()) < 4.0
    assert float(lengths.min()) > 0.0


def test_batch_offsets_indices():
    first, second = graph_from_atoms(molecule("H2O"), 3.0), graph_from_atoms(triclinic_cell(), 3.0)
    batch = batch_graphs([first, second])
    assert batch.n_graphs == 2
    assert batch.n_atoms == first.n_atoms + second.n_atoms
    torch.testing.assert_close(batch.edge_index[:, : first.n_edges], first.edge_index)
    torch.testing.assert_close(batch.edge_index[:, first.n_edges :], second.edge_index + 3)
    assert batch.batch.tolist() == [0] * 3 + [1] * 6
    assert batch.n_atoms_per_graph.tolist() == [3, 6]


@pytest.mark.parametrize(
    "atoms, message",
    [
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "atom 1 is not finite"),
        (Atoms("H2", positions=[[0, 0, 0], [0, np.inf, 0]]), "atom 1 is not finite"),
        (
            Atoms(
                "H2",
                positions=[[0, 0, 0], [1, 0, 0]],
                cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]],
                pbc=True,
            ),
            "zero volume",
        ),
        (Atoms("H", cell=[0, 0, 0], pbc=True), "zero length"),
        (Atoms(), "no atoms"),
    ],
)
def test_bad_structures_are_refused_with_a_clear_message(atoms, message):
    with pytest.raises(StructureError, match=message) as info:
        graph_from_atoms(atoms, 3.0, where="input.xyz, frame 4")
    assert str(info.value).startswith("input.xyz, frame 4:")
    assert "\n" not in str(info.value)


def test_check_contacts_refuses_pairs_below_half_the_covalent_radii():
    from ase.data import covalent_radii

    from mlff.graph import MIN_DISTANCE_FRACTION, check_contacts

    minimum = MIN_DISTANCE_FRACTION * (covalent_radii[1] + covalent_radii[8])
    for distance, refused in ((1.001 * minimum, False), (0.999 * minimum, True)):
        atoms = Atoms("OH", positions=[[0, 0, 0], [distance, 0, 0]])
        if refused:
            with pytest.raises(StructureError, match=r"w: atoms 0 \(O\) and 1 \(H\) are"):
                check_contacts(atoms, "w")
        else:
            check_contacts(atoms, "w")


def test_check_contacts_sees_periodic_images():
    from mlff.graph import check_contacts

    with pytest.raises(
        StructureError, match="atom 0 \\(Cu\\) is 0.5 Å from its own periodic image"
    ):
        check_contacts(Atoms("Cu", cell=[0.5, 4, 4], pbc=True), "w")
    check_contacts(Atoms("Cu", cell=[0.5, 4, 4], pbc=[False, True, True]), "w")


def test_structures_wider_than_a_cell_list_can_hold_are_refused():
    from mlff.graph import MAX_SPAN_A, check_structure

    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 2 * MAX_SPAN_A]])
    with pytest.raises(StructureError, match="atoms 0 and 1 are 2e\\+05 Å apart along axis 2"):
        check_structure(atoms, "w")
