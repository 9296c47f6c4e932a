"""MLFFCalculator: ASE properties, numeric checks, optimisers and MD, errors at the boundary."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

from mlff import MLFFCalculator, StructureError, UnknownElementError, build_model, save_model
from mlff.errors import MLFFError
from tests.conftest import ethanol, tiny_model, triclinic_cell


@pytest.fixture
def calc():
    return MLFFCalculator(tiny_model("egnn"), device="cpu", dtype="float64")


def test_readme_example_runs_from_a_saved_file(tmp_path):
    model = build_model(potential="egnn", encoder="none", elements=["H", "C", "O"], cutoff=5.0)
    save_model(model, tmp_path / "model.pt")
    atoms = molecule("CH3CH2OH")
    atoms.calc = MLFFCalculator(str(tmp_path / "model.pt"))
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (9, 3)


def test_properties_are_consistent(calc):
    atoms = triclinic_cell()
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, abs=1e-10)
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_stress(voigt=False).shape == (3, 3)


def test_forces_pass_ase_numeric_check(calc):
    atoms = ethanol()
    atoms.calc = calc
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    np.testing.assert_allclose(atoms.get_forces(), numeric, atol=1e-6)


def test_stress_passes_ase_numeric_check(calc):
    atoms = triclinic_cell()
    atoms.calc = calc
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(atoms.get_stress(), numeric, atol=1e-7)


def test_stress_of_a_molecule_is_a_clear_error(calc):
    atoms = ethanol()
    atoms.calc = calc
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


def test_unknown_element_names_it_and_the_model_elements(calc):
    atoms = Atoms("CuH", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = calc
    with pytest.raises(UnknownElementError, match="Cu not known.*H, C, O"):
        atoms.get_potential_energy()


def test_nan_positions_and_zero_volume_are_clear_errors(calc):
    atoms = ethanol()
    atoms.positions[3, 1] = np.nan
    atoms.calc = calc
    with pytest.raises(StructureError, match="atom 3 is not finite"):
        atoms.get_potential_energy()
    flat = Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=[[2, 0, 0], [0, 2, 0], [0, 0, 0]])
    flat.pbc = True
    flat.calc = calc
    with pytest.raises(StructureError, match="zero length|zero volume"):
        flat.get_potential_energy()


def test_bad_options():
    model = tiny_model("egnn")
    with pytest.raises(ValueError, match="dtype"):
        MLFFCalculator(model, dtype="float16")
    with pytest.raises(ValueError, match="on_covariance_failure"):
        MLFFCalculator(model, on_covariance_failure="ignore")
    with pytest.raises(MLFFError, match="compile must be one of auto, none, inductor"):
        MLFFCalculator(model, compile="fast")


def test_auto_compile_waits_for_the_eager_time_then_compiles_a_copy(monkeypatch):
    """compile="auto" (the default) stays eager until the eager calls have taken
    AUTO_COMPILE_COST_S, then compiles its own copy; results agree with eager to round-off."""
    import mlff.calculator as calculator_module
    from mlff.compiled import compile_model, is_compiled

    # the test traces with aot_eager (the same graph, no kernels to build) after 0.01 s of calls
    monkeypatch.setattr(calculator_module, "AUTO_COMPILE_COST_S", 0.01)
    monkeypatch.setattr(
        calculator_module,
        "compile_model",
        lambda model, mode: compile_model(model, mode, backend="aot_eager"),
    )
    model = tiny_model("egnn")
    reference = MLFFCalculator(model, compile="none")
    calc = MLFFCalculator(model)
    assert calc.model is model and not is_compiled(calc.model)
    atoms = ethanol()
    expected = []
    for _ in range(50):
        atoms.positions[0, 0] += 0.001
        expected.append(reference.get_forces(atoms))
        np.testing.assert_allclose(calc.get_forces(atoms), expected[-1], atol=1e-10)
        if is_compiled(calc.model):
            break
    assert is_compiled(calc.model) and calc.model is not model and not is_compiled(model)
    atoms.positions[1, 1] += 0.02
    np.testing.assert_allclose(calc.get_forces(atoms), reference.get_forces(atoms), atol=1e-10)


def test_auto_compile_leaves_the_tfn_eager(monkeypatch):
    import mlff.calculator as calculator_module
    from mlff.compiled import is_compiled

    monkeypatch.setattr(calculator_module, "AUTO_COMPILE_COST_S", 0.0)
    calc = MLFFCalculator(tiny_model("tfn-l1"))
    atoms = ethanol()
    atoms.calc = calc
    atoms.get_forces()
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert not is_compiled(calc.model)


def test_calculator_does_not_change_the_users_model():
    model = tiny_model("egnn")
    MLFFCalculator(model, dtype="float32")
    assert model.dtype.is_floating_point and str(model.dtype) == "torch.float64"


def test_float32_calculator_close_to_float64():
    model = tiny_model("egnn")
    atoms = triclinic_cell()
    atoms.calc = MLFFCalculator(model, dtype="float64")
    f64 = atoms.get_forces()
    atoms.calc = MLFFCalculator(model, dtype="float32")
    f32 = atoms.get_forces()
    assert f32.dtype == np.float64
    np.testing.assert_allclose(f32, f64, atol=1e-3 * np.abs(f64).max())


def test_works_with_ase_optimiser_and_md():
    atoms = ethanol()
    atoms.calc = MLFFCalculator(tiny_model("egnn", cutoff=3.0, seed=2))
    start = np.abs(atoms.get_forces()).max()
    BFGS(atoms, logfile=None).run(fmax=1e-9, steps=5)
    assert np.abs(atoms.get_forces()).max() < start
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.calc = MLFFCalculator(build_model(elements=["Cu"], cutoff=4.0, features=8, num_layers=1))
    VelocityVerlet(cu, timestep=1.0 * units.fs, logfile=None).run(5)
    assert np.isfinite(cu.get_potential_energy())


def test_covariance_check_every_n_calls():
    atoms = ethanol()
    calc = MLFFCalculator(tiny_model("egnn"), check_covariance_every=2, seed=0)
    atoms.calc = calc
    for step in range(4):
        atoms.positions[0, 0] += 0.01 * step
        atoms.get_forces()
    assert len(calc.covariance_results) == 2
    assert all(result.passed for result in calc.covariance_results)
    assert calc.covariance_results[0].force_tolerance == 1e-8


def _cu_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=2)
    return atoms


def _stress_asked(calls) -> list[bool]:
    return [bool(c.get("compute_stress")) for c in calls]


@pytest.fixture
def cu_calc():
    return MLFFCalculator(tiny_model("egnn", elements=("Cu",)), device="cpu", dtype="float64")


def test_forces_of_a_periodic_cell_skip_the_stress(cu_calc, calculator_evaluations):
    atoms = _cu_cell()
    atoms.calc = cu_calc
    atoms.get_forces()
    atoms.get_potential_energy()
    assert _stress_asked(calculator_evaluations) == [False]
    assert "stress" not in cu_calc.results


def test_stress_after_forces_adds_it_in_one_more_evaluation(cu_calc, calculator_evaluations):
    atoms = _cu_cell()
    atoms.calc = cu_calc
    forces = atoms.get_forces()
    energy = atoms.get_potential_energy()
    stress = atoms.get_stress()
    assert _stress_asked(calculator_evaluations) == [False, True]
    assert calculator_evaluations[1]["compute_forces"] is False  # the forces are kept
    # nothing is lost or recomputed: energy, forces and stress are all served from the results
    assert atoms.get_potential_energy() == energy
    np.testing.assert_array_equal(atoms.get_forces(), forces)
    np.testing.assert_array_equal(atoms.get_stress(), stress)
    assert len(calculator_evaluations) == 2 and cu_calc.n_calculations == 1
    fresh = _cu_cell()
    fresh.calc = MLFFCalculator(cu_calc.model, device="cpu", dtype="float64")
    np.testing.assert_allclose(fresh.get_stress(), stress, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fresh.get_forces(), forces, rtol=1e-12, atol=1e-15)
    assert np.abs(stress).max() > 1e-4  # a stress that could differ
    # a moved structure starts afresh, without the stress
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert _stress_asked(calculator_evaluations) == [False, True, True, False]


def test_stress_first_or_included_costs_one_evaluation(cu_calc, calculator_evaluations):
    atoms = _cu_cell()
    atoms.calc = cu_calc
    atoms.get_stress()
    atoms.get_forces()
    assert _stress_asked(calculator_evaluations) == [True]
    cu_calc.include_stress = True
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    atoms.get_stress()
    assert _stress_asked(calculator_evaluations) == [True, True]
    molecule_atoms = ethanol()  # include_stress concerns periodic cells only
    molecule_atoms.calc = MLFFCalculator(tiny_model("egnn"), device="cpu", include_stress=True)
    molecule_atoms.get_forces()
    assert _stress_asked(calculator_evaluations) == [True, True, False]


def test_cpu_calculator_keeps_freed_memory_for_reuse():
    """glibc's malloc is told to serve large blocks from the heap and keep them (no page faults
    on every call of a large structure); the opt-out leaves it alone."""
    import subprocess
    import sys

    code = "import sys, ctypes; from mlff import runtime; print(runtime.keep_freed_memory())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    expected = "True" if sys.platform == "linux" else "False"
    assert done.stdout.strip() == expected, done.stderr
    env = {**__import__("os").environ, "MLFF_KEEP_FREED_MEMORY": "0"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.stdout.strip() == "False", done.stderr
