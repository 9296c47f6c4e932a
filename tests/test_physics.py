"""Physics every model must obey, run for every tiny model in ``MODEL_CONFIGS`` (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlff.covariance import random_rotation
from mlff.testing import (
    finite_difference_forces,
    finite_difference_stress,
    predict,
    predict_many,
    symmetry_errors,
)
from tests.conftest import ethanol, tiny_model, triclinic_cell

ENERGY_TOL = 1e-10  # eV/atom
FORCE_TOL = 1e-9  # eV/Å
STRESS_TOL = 1e-9  # eV/Å³


def test_model_gives_nontrivial_forces(model, structure):
    prediction = predict(model, structure)
    assert np.abs(prediction.forces).max() > 1e-3, "forces ~0: symmetry tests would prove nothing"


@pytest.mark.parametrize("reflection", [False, True], ids=["rotation", "reflection"])
def test_rotation_and_reflection(model, structure, reflection):
    rng = np.random.default_rng(7)
    for _ in range(2):
        rotation = random_rotation(rng, reflection=reflection)
        errors = symmetry_errors(model, structure, rotation=rotation)
        assert errors.energy < ENERGY_TOL
        assert errors.forces < FORCE_TOL
        assert errors.stress < STRESS_TOL


def test_translation(model, structure):
    errors = symmetry_errors(model, structure, translation=np.array([1.3, -7.2, 0.4]))
    assert errors.energy < ENERGY_TOL
    assert errors.forces < FORCE_TOL
    assert errors.stress < STRESS_TOL


def test_permutation(model, structure):
    permutation = np.random.default_rng(5).permutation(len(structure))
    errors = symmetry_errors(model, structure, permutation=permutation)
    assert errors.energy < ENERGY_TOL
    assert errors.forces < FORCE_TOL
    assert errors.stress < STRESS_TOL


def test_forces_match_finite_differences(model, structure):
    analytic = predict(model, structure).forces
    # central differences err by O(delta^2 F'''), large for randomised weights: a small delta
    numeric = finite_difference_forces(model, structure, delta=2e-6)
    np.testing.assert_allclose(analytic, numeric, atol=1e-6 * max(1.0, np.abs(analytic).max()))


def test_stress_matches_finite_strain(model):
    atoms = triclinic_cell()
    analytic = predict(model, atoms).stress
    numeric = finite_difference_stress(model, atoms, delta=1e-5)
    assert np.abs(analytic).max() > 1e-4
    np.testing.assert_allclose(analytic, numeric, atol=1e-7, rtol=0)
    np.testing.assert_allclose(analytic, analytic.T, atol=1e-12)


def test_supercell_is_extensive(model):
    atoms = triclinic_cell()
    single = predict(model, atoms)
    supercell = predict(model, atoms * (2, 2, 2))
    assert supercell.energy == pytest.approx(8 * single.energy, abs=1e-9 * len(atoms) * 8)
    np.testing.assert_allclose(supercell.forces[: len(atoms)], single.forces, atol=1e-9)
    np.testing.assert_allclose(supercell.stress, single.stress, atol=1e-10)


def test_batch_equals_one_by_one(model):
    structures = [ethanol(), triclinic_cell(), triclinic_cell(seed=4)]
    batched = predict_many(model, structures)
    for atoms, together in zip(structures, batched, strict=True):
        alone = predict(model, atoms)
        assert together.energy == pytest.approx(alone.energy, abs=1e-10)
        np.testing.assert_allclose(together.forces, alone.forces, atol=1e-10)
        if alone.stress is not None:
            np.testing.assert_allclose(together.stress, alone.stress, atol=1e-10)


def test_smooth_when_an_atom_crosses_the_cutoff(model):
    """Energy and forces are continuous as one atom leaves another's cutoff sphere."""
    atoms = ethanol()
    cutoff = model.cutoff
    # move the hydroxyl H along the line from the methyl C until it crosses the cutoff of C0
    carbon, hydrogen = 0, 8
    direction = atoms.positions[hydrogen] - atoms.positions[carbon]
    direction /= np.linalg.norm(direction)

    def at(distance):
        moved = atoms.copy()
        moved.positions[hydrogen] = moved.positions[carbon] + distance * direction
        return predict(model, moved)

    inside, outside = at(cutoff - 1e-7), at(cutoff + 1e-7)
    assert abs(inside.energy - outside.energy) < 1e-8
    assert np.abs(inside.forces - outside.forces).max() < 1e-5
    # ...and the pair does contribute well inside the cutoff (the test can fail)
    assert abs(at(cutoff - 0.5).energy - outside.energy) > 1e-6


def test_float32_agrees_with_float64(model_name):
    model64 = tiny_model(model_name)
    model32 = tiny_model(model_name).to(torch.float32)
    atoms = triclinic_cell()
    p64, p32 = predict(model64, atoms), predict(model32, atoms)
    assert p32.energy == pytest.approx(p64.energy, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(p32.forces, p64.forces, atol=1e-3 * np.abs(p64.forces).max())


def test_broken_model_is_caught():
    """The symmetry check catches a model whose energy depends on absolute orientation."""
    model = tiny_model("egnn")
    original = model.atomic_energies

    def oriented(species, edge_index, edge_vectors):
        return original(species, edge_index, edge_vectors) + 0.1 * edge_vectors[:, 0].pow(2).sum()

    model.atomic_energies = oriented
    rotation = random_rotation(np.random.default_rng(0))
    assert symmetry_errors(model, ethanol(), rotation=rotation).forces > 1e-3
