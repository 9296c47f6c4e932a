"""The runtime covariance check: it passes for equivariant models at the dtype's tolerance, and it
catches a model whose energy depends on absolute orientation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mlff import CovarianceError, MLFFCalculator
from mlff.covariance import (
    FORCE_SCALE_FLOOR,
    STRESS_SCALE_FLOOR,
    check_covariance,
    default_tolerances,
    random_rotation,
    relative_force_error,
    relative_stress_error,
)
from tests.conftest import ethanol, triclinic_cell
from tests.workflows.conftest import broken_model, randomised_model


@pytest.mark.parametrize("reflection", [False, True])
def test_random_rotation_is_orthogonal(reflection):
    rng = np.random.default_rng(0)
    for _ in range(5):
        rotation = random_rotation(rng, reflection)
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rotation) == pytest.approx(-1.0 if reflection else 1.0)


def test_errors_are_relative_to_the_largest_component_above_a_floor():
    forces = np.array([[0.0, -2.0, 0.5], [1.0, 0.0, 0.0]])
    assert relative_force_error(1e-3, forces) == pytest.approx(5e-4)
    assert relative_force_error(1e-3, 1e-9 * forces) == pytest.approx(1e-3 / FORCE_SCALE_FLOOR)
    assert relative_stress_error(1e-6, np.diag([0.02, -0.04, 0.0])) == pytest.approx(2.5e-5)
    assert relative_stress_error(1e-9, np.zeros((3, 3))) == pytest.approx(1e-9 / STRESS_SCALE_FLOOR)


def test_a_perfect_crystal_passes():
    """Forces that vanish by symmetry are measured against the floor, not against themselves:
    round-off over round-off is no error."""
    from ase.build import bulk

    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    model = randomised_model()
    rng = np.random.default_rng(2)
    for reflection in (False, True):
        result = check_covariance(model, crystal, rng=rng, reflection=reflection)
        assert result.passed, result.describe()


@pytest.mark.parametrize("structure", [ethanol(), triclinic_cell()], ids=["molecule", "cell"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equivariant_model_passes_within_dtype_tolerance(structure, dtype):
    model = randomised_model().to(dtype)
    rng = np.random.default_rng(1)
    for reflection in (False, True):
        result = check_covariance(model, structure, rng=rng, reflection=reflection)
        force_tolerance, energy_tolerance = default_tolerances(dtype)
        assert result.passed, result.describe()
        assert result.force_tolerance == force_tolerance
        assert result.energy_tolerance == energy_tolerance
        assert result.dtype == str(dtype).replace("torch.", "")
        assert result.reflection is reflection
    if dtype == torch.float64:
        assert result.force_error < 1e-10


def test_orientation_dependent_model_is_caught():
    model = broken_model()
    result = check_covariance(model, ethanol(), rng=np.random.default_rng(0))
    assert not result.passed
    assert result.force_error > 1e3 * result.force_tolerance
    assert "FAILED" in result.describe()


def test_a_fixed_rotation_about_x_does_not_hide_the_broken_term():
    # the broken term depends on x components only; rotating about x leaves it unchanged,
    # rotating about z does not: the check must see the difference
    angle = 0.7
    about_x = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    about_z = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    model = broken_model()
    assert check_covariance(model, ethanol(), rotation=about_x).passed
    assert not check_covariance(model, ethanol(), rotation=about_z).passed


def test_calculator_checks_every_n_calls_and_keeps_results():
    calculator = MLFFCalculator(randomised_model(), device="cpu", check_covariance_every=3, seed=0)
    atoms = ethanol()
    atoms.calc = calculator
    for _ in range(7):
        atoms.positions[0, 0] += 0.01
        atoms.get_forces()
    assert len(calculator.covariance_results) == 2  # calls 3 and 6
    assert all(r.passed for r in calculator.covariance_results)


def test_calculator_warns_or_raises_on_failure_as_asked():
    atoms = ethanol()
    atoms.calc = MLFFCalculator(broken_model(), device="cpu", check_covariance_every=1, seed=0)
    with pytest.warns(RuntimeWarning, match="covariance check .* FAILED"):
        atoms.get_forces()
    atoms = ethanol()
    atoms.calc = MLFFCalculator(
        broken_model(), device="cpu", check_covariance_every=1, on_covariance_failure="raise"
    )
    with pytest.raises(CovarianceError, match="FAILED"):
        atoms.get_forces()


def test_equivariant_model_never_warns_in_calculator():
    atoms = triclinic_cell()
    atoms.calc = MLFFCalculator(randomised_model(), device="cpu", check_covariance_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_forces()
    assert atoms.calc.covariance_results[0].passed
