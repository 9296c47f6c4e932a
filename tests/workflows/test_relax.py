"""``mlff relax`` and :mod:`mlff.relaxation`."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner
from mlff.workflows.cli import cli
from mlff.workflows.common import read_structures

from mlff import MLFFCalculator
from mlff.relaxation import relax, space_group
from tests.workflows.conftest import cu_vacancy


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:"), result.output
    for needle in needles:
        assert needle in last, result.output


def max_force(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


@pytest.mark.parametrize("optimizer", ["fire", "bfgs", "lbfgs"])
def test_relax_lowers_fmax_below_target_on_a_cu_vacancy(cu_model, optimizer):
    calculator = MLFFCalculator(cu_model, device="cpu")
    atoms = cu_vacancy()
    assert max_force(atoms, calculator) > 0.5  # far from relaxed to begin with
    result = relax(atoms, calculator, fmax=0.01, optimizer=optimizer, max_steps=300)
    assert result.converged and result.fmax < 0.01
    assert max_force(result.atoms, calculator) < 0.01
    assert result.energy < result.initial_energy
    assert result.steps > 0 and result.volume == pytest.approx(result.initial_volume)
    assert result.initial_spacegroup == "P1 (1)"
    assert result.spacegroup == "Pm-3m (221)"  # the vacancy cell's symmetry, recovered
    assert result.atoms.info["relaxed"] is True


def test_cell_relaxation_changes_the_volume(cu_model):
    calculator = MLFFCalculator(cu_model, device="cpu")
    stretched = cu_vacancy(a=3.68)
    result = relax(stretched, calculator, fmax=0.01, optimizer="lbfgs", cell=True, max_steps=200)
    assert result.converged and result.cell_relaxed
    assert result.volume_change_percent < -3.0  # 3.68 Å is well above EMT's 3.59 Å
    relaxed = result.atoms.copy()
    relaxed.calc = calculator
    assert np.abs(relaxed.get_stress()).max() < 0.01 * 31 / relaxed.get_volume() * 10


def test_unconverged_is_reported_not_relaxed(cu_model):
    result = relax(cu_vacancy(), MLFFCalculator(cu_model, device="cpu"), fmax=0.01, max_steps=2)
    assert not result.converged and result.fmax > 0.01 and result.steps == 2
    assert result.atoms.info["relaxed"] is False


def test_space_group_of_a_molecule_is_none():
    assert space_group(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])) is None
    assert space_group(cu_vacancy(rattle=0)) == "Pm-3m (221)"


def test_cli_cif_in_cif_out_with_json(cu_model_file, cu_cif, tmp_path):
    out = tmp_path / "relaxed.cif"
    result = invoke(["relax", cu_model_file, cu_cif, "--out", out, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    (entry,) = payload["structures"]
    for key in ("energy", "fmax", "steps", "converged", "initial_energy"):
        assert key in entry
    assert entry["converged"] and entry["fmax"] < 0.01
    assert entry["initial_spacegroup"] == "P1 (1)" and entry["spacegroup"] == "Pm-3m (221)"
    assert entry["volume_change_percent"] == pytest.approx(0.0, abs=1e-9)
    (relaxed,) = read_structures(out)
    assert len(relaxed) == 31
    calculator = MLFFCalculator(str(cu_model_file), device="cpu")
    assert max_force(relaxed, calculator) < 0.02  # CIF rounds coordinates
    assert "Pm-3m (221)" in result.stderr  # the table


def test_cli_many_structures_and_unconverged_ones(cu_model_file, cu_cif, tmp_path):
    frames = [cu_vacancy(seed=1), cu_vacancy(seed=2)]
    ase.io.write(tmp_path / "two.extxyz", frames)
    out = tmp_path / "out.extxyz"
    result = invoke(
        [
            "relax",
            cu_model_file,
            tmp_path / "two.extxyz",
            cu_cif,
            "--max-steps",
            3,
            "--optimizer",
            "BFGS",
            "--out",
            out,
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["total"] == 3 and payload["converged"] == 0 and payload["written"] == 0
    assert [s["label"] for s in payload["structures"]] == [
        f"{tmp_path / 'two.extxyz'}[0]",
        f"{tmp_path / 'two.extxyz'}[1]",
        str(cu_cif),
    ]
    assert not out.exists()  # nothing is written as relaxed
    assert result.stderr.count("NOT CONVERGED") == 3
    result = invoke(
        [
            "relax",
            cu_model_file,
            tmp_path / "two.extxyz",
            "--max-steps",
            3,
            "--out",
            out,
            "--keep-unconverged",
        ]
    )
    assert result.exit_code == 0, result.output
    kept = ase.io.read(out, ":")
    assert len(kept) == 2 and all(f.info["relaxed"] is False for f in kept)


def test_cli_cell_relaxation_and_poscar_out(cu_model_file, tmp_path):
    ase.io.write(tmp_path / "POSCAR", cu_vacancy(a=3.66), format="vasp")
    out = tmp_path / "CONTCAR"
    result = invoke(
        [
            "relax",
            cu_model_file,
            tmp_path / "POSCAR",
            "--cell",
            "--optimizer",
            "lbfgs",
            "--out",
            out,
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)["structures"]
    assert entry["converged"] and entry["cell_relaxed"] and entry["volume_change_percent"] < -1
    assert read_structures(out)[0].get_volume() == pytest.approx(entry["volume"], rel=1e-4)


def test_cli_bad_inputs_end_in_one_line_errors(cu_model_file, cu_cif, tmp_path):
    (tmp_path / "garbage.cif").write_text("data_x\n_cell_length_a nonsense\nloop_\n_atom\n")
    nan = cu_vacancy()
    nan.positions[3] = np.nan
    ase.io.write(tmp_path / "nan.extxyz", nan)
    ase.io.write(tmp_path / "mol.xyz", ase.Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]]))
    cases = [
        (["relax", cu_model_file, cu_cif, "--optimizer", "newton"], ["--optimizer"]),
        (["relax", cu_model_file, tmp_path / "garbage.cif"], ["garbage.cif"]),
        (["relax", cu_model_file, tmp_path / "nan.extxyz"], ["nan.extxyz", "not finite"]),
        (["relax", cu_model_file, tmp_path / "mol.xyz", "--cell"], ["mol.xyz", "--cell"]),
        (["relax", cu_model_file, cu_cif, "--fmax", -1], ["--fmax"]),
        (["relax", cu_model_file, cu_cif, "--max-steps", 0], ["--max-steps"]),
        (["relax", cu_model_file, cu_cif, cu_cif, "--out", tmp_path / "POSCAR"], ["POSCAR"]),
        (["relax", tmp_path / "missing.pt", cu_cif], ["missing.pt"]),
        (["relax", cu_model_file], ["STRUCTURES"]),
    ]
    for args, needles in cases:
        assert_one_line_error(invoke(args), *needles)


def test_only_cell_relaxations_compute_the_stress_at_every_step(cu_model, calculator_evaluations):
    calculator = MLFFCalculator(cu_model, device="cpu")
    fixed = relax(cu_vacancy(), calculator, fmax=0.01, max_steps=5)
    stress = [c["compute_stress"] for c in calculator_evaluations]
    # the initial structure and one per step, forces only; the stress once, added to the
    # relaxed structure's record without evaluating its forces again
    assert stress == [False] * (fixed.steps + 1) + [True]
    assert calculator_evaluations[-1]["compute_forces"] is False
    assert fixed.atoms.get_stress().shape == (6,)

    calculator_evaluations.clear()
    cell = relax(cu_vacancy(a=3.68), calculator, fmax=0.01, cell=True, max_steps=5)
    stress = [c["compute_stress"] for c in calculator_evaluations]
    # FrechetCellFilter reads the stress and the forces of each structure: one evaluation each
    # (the first adds the stress to the initial energy's)
    assert stress == [False] + [True] * (cell.steps + 1)
