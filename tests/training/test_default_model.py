"""The model ``mlff train`` builds by default respects the physics (float64, tiny widths)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from mlff import build_model
from mlff.testing import finite_difference_forces, predict, symmetry_errors
from mlff.training.config import TrainConfig
from tests.conftest import randomise


@pytest.fixture(scope="module")
def model():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    options = TrainConfig(data=["x"]).model_hyperparameters()
    options.update(features=16, angular_channels=4)  # small, same structure
    torch.manual_seed(0)
    built = build_model("egnn", elements=["H", "C", "O"], cutoff=4.0, **options)
    # frozen, as inference runs it (on a CPU: the fused kernels)
    yield randomise(built.double(), seed=1).eval().requires_grad_(False)
    torch.set_num_threads(threads)


@pytest.fixture
def ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    return atoms


def test_default_options_use_the_angular_egnn():
    options = TrainConfig(data=["x"]).model_hyperparameters()
    assert options["angular_channels"] > 0 and options["angular_order"] == 3


def test_energy_is_invariant_and_forces_rotate(model, ethanol):
    reference = predict(model, ethanol)
    assert np.abs(reference.forces).max() > 0.1
    for rotation in (Rotation.random(random_state=3).as_matrix(), -np.eye(3)):
        errors = symmetry_errors(model, ethanol, rotation=rotation, reference=reference)
        assert errors.energy < 1e-12 and errors.forces < 1e-10


def test_forces_match_finite_differences(model, ethanol):
    numerical = finite_difference_forces(model, ethanol, delta=1e-5)
    np.testing.assert_allclose(predict(model, ethanol).forces, numerical, atol=1e-6)
