"""The pretraining heads: the coordinate head is equivariant by construction, masking hides the
element, and the heads see periodic images."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from mlff.forces import edge_vectors
from mlff.graph import graph_from_atoms
from mlff.pretraining.heads import PretrainingModel

TOLERANCE = 1e-10  # float64


def _model(elements: list[str]) -> PretrainingModel:
    torch.manual_seed(0)
    model = PretrainingModel(elements, 4.0, features=16, pair_features=8, num_layers=2)
    # a random coordinate head so that its output is far from zero
    for parameter in model.parameters():
        parameter.data.normal_(0.0, 0.5)
    return model.double()


def _structures():
    ethanol = molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=1)
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)
    copper.rattle(0.05, seed=2)
    return {"ethanol": (ethanol, ["H", "C", "O"]), "copper": (copper, ["Cu"])}


def _predict(model: PretrainingModel, atoms, masked=None):
    graph = graph_from_atoms(atoms, model.cutoff)
    table = {s: k for k, s in enumerate(model.elements)}
    species = torch.tensor([table[s] for s in atoms.get_chemical_symbols()])
    vectors = edge_vectors(graph.positions, graph.cell, graph)
    return model(species, graph.edge_index, vectors, masked)


@pytest.mark.parametrize("name", ["ethanol", "copper"])
def test_the_predicted_displacement_rotates_with_the_structure(name):
    atoms, elements = _structures()[name]
    model = _model(elements)
    before = _predict(model, atoms)
    assert before.displacement.abs().max() > 1e-3  # not trivially zero
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    rotated.cell = atoms.cell.array @ rotation.T
    after = _predict(model, rotated)
    expected = before.displacement @ torch.from_numpy(rotation.T)
    assert torch.allclose(after.displacement, expected, atol=TOLERANCE)
    # the element logits and distance changes are invariant
    assert torch.allclose(after.atom_logits, before.atom_logits, atol=TOLERANCE)


@pytest.mark.parametrize("name", ["ethanol", "copper"])
def test_the_predicted_displacement_ignores_translations(name):
    atoms, elements = _structures()[name]
    model = _model(elements)
    before = _predict(model, atoms)
    moved = atoms.copy()
    moved.positions += [0.7, -1.3, 2.1]
    after = _predict(model, moved)
    assert torch.allclose(after.displacement, before.displacement, atol=TOLERANCE)


def test_a_masked_atom_s_element_changes_no_prediction():
    atoms, elements = _structures()["ethanol"]
    model = _model(elements)
    masked = torch.zeros(len(atoms), dtype=torch.bool)
    masked[2] = True  # the oxygen of ase's CH3CH2OH
    assert atoms.get_chemical_symbols()[2] == "O"
    hidden = _predict(model, atoms, masked)
    swapped = atoms.copy()
    swapped.symbols[2] = "C"
    other = _predict(model, swapped, masked)
    assert torch.allclose(hidden.atom_logits, other.atom_logits, atol=TOLERANCE)
    assert torch.allclose(hidden.displacement, other.displacement, atol=TOLERANCE)
    # without the mask, the element is seen
    assert not torch.allclose(_predict(model, swapped).atom_logits, hidden.atom_logits)


def test_the_encoder_s_forward_is_its_representation():
    atoms, elements = _structures()["copper"]
    model = _model(elements)
    graph = graph_from_atoms(atoms, model.cutoff)
    species = torch.zeros(len(atoms), dtype=torch.long)
    vectors = edge_vectors(graph.positions, graph.cell, graph)
    lengths = vectors.norm(dim=-1)
    nodes, edges = model.encoder(species, graph.edge_index, vectors, lengths)
    representation = model.encoder.represent(species, graph.edge_index, lengths)
    assert torch.equal(nodes, representation.node_features)
    assert torch.equal(edges, representation.edge_features)
    assert not torch.allclose(representation.initial_pairs, representation.final_pairs)
