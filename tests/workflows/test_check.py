"""``mlff check``: symmetry tests of a model on a structure."""

from __future__ import annotations

import json

from click.testing import CliRunner
from mlff.workflows.cli import cli


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_check_passes_for_an_equivariant_model(model_file, cu_cif):
    result = invoke(["check", model_file, cu_cif, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    names = [t["test"] for t in payload["tests"]]
    assert names[:3] == ["rotation 1", "rotation 2", "rotation 3"]
    assert any(n.startswith("reflection") for n in names)
    assert sum(n.startswith("translation") for n in names) == 2
    assert sum(n.startswith("permutation") for n in names) == 2
    assert payload["passed"] and payload["dtype"] == "float64"
    for test in payload["tests"]:
        assert test["passed"] and test["force_tolerance"] == 1e-8
        assert test["force_error"] < 1e-10


def test_check_float32_uses_its_tolerance(model_file, ethanol_file):
    result = invoke(["check", model_file, ethanol_file, "--dtype", "float32", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["passed"] and payload["dtype"] == "float32"
    assert {t["force_tolerance"] for t in payload["tests"]} == {2e-3}


def test_check_catches_the_broken_model(use_broken_model, model_file, ethanol_file):
    result = invoke(["check", model_file, ethanol_file, "--json"])
    assert result.exit_code == 1
    assert "symmetry tests failed" in result.output.strip().splitlines()[-1]
    tests = {t["test"]: t for t in json.loads(result.stdout)["tests"]}
    assert not tests["rotation 1"]["passed"]
    # the broken term is invariant under translations and permutations: those still pass
    assert tests["translation 1"]["passed"] and tests["permutation 1"]["passed"]


def test_check_bad_structure_is_a_one_line_error(model_file, tmp_path):
    (tmp_path / "bad.cif").write_text("not a cif\n")
    result = invoke(["check", model_file, tmp_path / "bad.cif"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "bad.cif" in result.output.strip().splitlines()[-1]


def test_check_rattles_a_perfect_crystal_whose_forces_vanish(model_file, tmp_path):
    import ase.io
    from ase.build import bulk

    ase.io.write(tmp_path / "fcc.extxyz", bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2))
    result = invoke(["check", model_file, tmp_path / "fcc.extxyz", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rattle_a"] == 0.05
    assert "forces vanish by symmetry" in result.stderr
    result = invoke(["check", model_file, tmp_path / "fcc.extxyz", "--rattle", 0, "--json"])
    assert result.exit_code == 1  # round-off over round-off: why the check rattles
