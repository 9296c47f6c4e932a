"""``mlff check``: symmetry tests of a model on a structure, through the shared physics checks."""

from __future__ import annotations

import json

import ase.io
import pytest
from ase.build import bulk, molecule
from click.testing import CliRunner
from mlff.workflows.cli import cli

TEST_KEYS = {
    "test",
    "energy_error_per_atom",
    "force_error",
    "stress_error",
    "energy_tolerance",
    "force_tolerance",
    "stress_tolerance",
    "passed",
}


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_check(*args, expect: int = 0) -> dict:
    """``mlff check ... --json``: assert the exit status, return the JSON payload."""
    result = invoke(["check", *args, "--json"])
    assert result.exit_code == expect, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] is (expect == 0)
    for test in payload["tests"]:
        assert set(test) == TEST_KEYS
    return payload


@pytest.fixture
def fcc_file(tmp_path):
    """A perfect fcc Cu crystal: every force vanishes by symmetry."""
    path = tmp_path / "fcc.extxyz"
    ase.io.write(path, bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2))
    return path


@pytest.fixture
def rattled_ethanol_file(tmp_path):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.1, seed=2)
    path = tmp_path / "rattled.xyz"
    ase.io.write(path, atoms)
    return path


def test_check_passes_for_an_equivariant_model(model_file, cu_cif):
    payload = run_check(model_file, cu_cif)
    names = [t["test"] for t in payload["tests"]]
    assert names[:3] == ["rotation 1", "rotation 2", "rotation 3"]
    assert any(n.startswith("reflection") for n in names)
    assert sum(n.startswith("translation") for n in names) == 2
    assert sum(n.startswith("permutation") for n in names) == 2
    assert payload["dtype"] == "float64" and payload["n_atoms"] == 31
    for test in payload["tests"]:
        assert test["passed"] and test["force_tolerance"] == 1e-8
        assert test["energy_tolerance"] == 1e-9
        assert test["force_error"] < 1e-10
        # a periodic cell: the stress is compared too, to the same relative tolerance
        assert test["stress_error"] < 1e-10 and test["stress_tolerance"] == 1e-8


def test_check_passes_for_an_equivariant_model_on_a_rattled_molecule(
    model_file, rattled_ethanol_file
):
    payload = run_check(model_file, rattled_ethanol_file, "--rattle", 0.05, "--rotations", 2)
    assert payload["rattle_a"] == 0.05 and len(payload["tests"]) == 2 + 1 + 2 + 2
    for test in payload["tests"]:
        assert test["force_error"] < 1e-10 and test["energy_error_per_atom"] < 1e-12
        assert test["stress_error"] is None and test["stress_tolerance"] is None


def test_check_passes_for_an_equivariant_model_on_a_perfect_crystal(model_file, fcc_file):
    # as given: forces ~ 1e-16 are measured against the 0.01 eV/Å floor, not against themselves
    payload = run_check(model_file, fcc_file, "--rattle", 0)
    assert payload["rattle_a"] == 0
    assert all(t["force_error"] < 1e-10 for t in payload["tests"])
    # by default the crystal is rattled first (its forces could reveal nothing) and still passes
    result = invoke(["check", model_file, fcc_file, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rattle_a"] == 0.05
    assert "forces vanish" in result.stderr and "rattled by 0.05" in result.stderr


def test_check_float32_uses_its_tolerance(model_file, rattled_ethanol_file):
    payload = run_check(model_file, rattled_ethanol_file, "--dtype", "float32")
    assert payload["dtype"] == "float32"
    assert {t["force_tolerance"] for t in payload["tests"]} == {2e-3}
    assert {t["energy_tolerance"] for t in payload["tests"]} == {1e-4}


def test_check_catches_the_broken_model(use_broken_model, model_file, rattled_ethanol_file):
    result = invoke(["check", model_file, rattled_ethanol_file, "--json"])
    assert result.exit_code == 1, result.output
    assert "symmetry tests failed" in result.output.strip().splitlines()[-1]
    payload = json.loads(result.stdout)
    assert payload["passed"] is False
    tests = {t["test"]: t for t in payload["tests"]}
    for name in ("rotation 1", "rotation 2", "rotation 3", "reflection (rotation x inversion)"):
        assert not tests[name]["passed"]
        assert tests[name]["force_error"] > 1e3 * tests[name]["force_tolerance"]
    # the broken term is invariant under translations and permutations: those still pass
    assert tests["translation 1"]["passed"] and tests["permutation 1"]["passed"]


def test_check_catches_the_broken_model_in_a_cell_by_its_stress(
    use_broken_model, model_file, cu_cif
):
    payload = run_check(model_file, cu_cif, expect=1)
    rotation = payload["tests"][0]
    assert rotation["test"] == "rotation 1" and not rotation["passed"]
    assert rotation["stress_error"] > 1e3 * rotation["stress_tolerance"]


def test_check_bad_structure_is_a_one_line_error(model_file, tmp_path):
    (tmp_path / "bad.cif").write_text("not a cif\n")
    result = invoke(["check", model_file, tmp_path / "bad.cif"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "bad.cif" in result.output.strip().splitlines()[-1]
