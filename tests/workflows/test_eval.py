"""``mlff eval``: figures on labelled data, the --json contract, parity plots, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import build_model, save_model
from tests.training import labelled

KEYS = {
    "energy_mae_mev_per_atom",
    "energy_rmse_mev_per_atom",
    "forces_mae_mev_per_a",
    "forces_rmse_mev_per_a",
    "stress_mae_mev_per_a3",
    "n_structures",
    "n_atoms",
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("egnn", elements=["H", "C", "O", "Cu"], cutoff=3.5, features=8,
                        num_layers=1)  # fmt: skip
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(model, path)
    return path


def _eval(*args):
    return CliRunner().invoke(cli, ["eval", *map(str, args)])


def test_json_has_the_documented_keys(model_path, tmp_path):
    frames = labelled.molecules(5)
    data = labelled.write(tmp_path / "m.extxyz", frames)
    result = _eval(model_path, data, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip())
    assert set(report) == KEYS
    assert report["n_structures"] == 5
    assert report["n_atoms"] == sum(len(a) for a in frames)
    assert report["stress_mae_mev_per_a3"] is None
    assert report["forces_rmse_mev_per_a"] >= report["forces_mae_mev_per_a"] > 0


def test_stress_is_reported_for_periodic_data_and_parity_is_drawn(model_path, tmp_path):
    data = labelled.write(tmp_path / "cu.extxyz", labelled.copper(3))
    result = _eval(model_path, data, "--json", "--parity", tmp_path / "parity.png")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["stress_mae_mev_per_a3"] > 0
    assert (tmp_path / "parity.png").stat().st_size > 1000
    text = _eval(model_path, data)
    assert "meV/atom" in text.output and "meV/Å" in text.output and "meV/Å³" in text.output


def test_eval_refuses_unknown_elements_and_bad_files(model_path, tmp_path):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms("NH3", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    atoms.calc = SinglePointCalculator(atoms, energy=1.0, forces=[[0, 0, 0]] * 4)
    data = labelled.write(tmp_path / "n.extxyz", [atoms])
    result = _eval(model_path, data)
    assert result.exit_code != 0
    assert "n.extxyz, frame 0" in result.output and "N" in result.output
    result = _eval(tmp_path / "absent.pt", data)
    assert result.exit_code != 0 and "absent.pt" in result.output


def test_stress_is_computed_only_for_batches_with_stress_labels(model_path, tmp_path, monkeypatch):
    from ase.calculators.singlepoint import SinglePointCalculator

    import mlff.training.evaluation

    asked = []
    evaluate = mlff.training.evaluation.evaluate

    def recording(model, graph, **kwargs):
        asked.append(kwargs["compute_stress"])
        return evaluate(model, graph, **kwargs)

    monkeypatch.setattr(mlff.training.evaluation, "evaluate", recording)
    unlabelled = []  # periodic cells with energy and forces, no stress
    for atoms in labelled.copper(2, seed=1):
        labels = atoms.calc.results
        atoms.calc = SinglePointCalculator(atoms, energy=labels["energy"], forces=labels["forces"])
        unlabelled.append(atoms)
    files = [
        labelled.write(tmp_path / "cu_no_stress.extxyz", unlabelled),
        labelled.write(tmp_path / "molecules.extxyz", labelled.molecules(2)),
        labelled.write(tmp_path / "cu.extxyz", labelled.copper(2)),
    ]
    result = _eval(model_path, *files, "--json", "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert asked == [False, False, True]  # batches in file order
    assert json.loads(result.output.strip())["stress_mae_mev_per_a3"] > 0
    asked.clear()
    assert _eval(model_path, files[0], "--json").exit_code == 0
    assert asked == [False]  # periodic, but no stress label: no stress
