"""``mlff pretrain`` and ``mlff train --init`` end to end through the CLI, on tiny data:
outputs, resume, fine-tuning modes, auxiliary denoising, periodic cells, and bad input as one
clear line."""

from __future__ import annotations

import csv
from pathlib import Path

import ase.io
import pytest
import torch
from ase import Atoms
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import load_model
from mlff.pretraining.files import load_pretrained
from mlff.training.checkpoint import load_checkpoint
from tests.training import labelled

ENCODER = ["--features", "8", "--pair-features", "4", "--num-layers", "1", "--num-heads", "2",
           "--threads", "1", "--progress", "lines", "--time-limit", "0",
           "--batch-size", "4"]  # fmt: skip
TRAIN = ["--features", "8", "--num-layers", "1", "--batch-size", "4", "--progress", "lines",
         "--threads", "1", "--workers", "1", "--time-limit", "0", "--epochs", "1",
         "--encoder", "unimol"]  # fmt: skip


def _mlff(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pretraining")
    molecules = labelled.molecules(12, seed=3)
    copper = labelled.copper(6, seed=4)
    unlabelled = [Atoms(a.numbers, a.positions) for a in molecules]  # labels stripped
    paths = {
        "molecules": labelled.write(folder / "molecules.extxyz", molecules),
        "unlabelled": folder / "unlabelled.xyz",
        "copper": labelled.write(folder / "copper.extxyz", copper),
    }
    ase.io.write(paths["unlabelled"], unlabelled, format="extxyz")
    runner_out = folder / "pre"
    result = _mlff("pretrain", paths["unlabelled"], "--out", runner_out, "--epochs", 2, *ENCODER)
    assert result.exit_code == 0, result.output
    paths["pre"] = runner_out
    result = _mlff("pretrain", paths["copper"], "--out", folder / "pre_cu", "--epochs", 1,
                   "--cutoff", 4.0, *ENCODER)  # fmt: skip
    assert result.exit_code == 0, result.output
    paths["pre_cu"] = folder / "pre_cu"
    return paths


def test_pretrain_writes_its_outputs_and_resumes(files):
    out = files["pre"]
    for name in ("encoder.pt", "checkpoint_last.pt", "metrics.csv", "config.yaml",
                 "learning_curves.png", "summary.json"):  # fmt: skip
        assert (out / name).is_file(), name
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["train_coordinates_loss"]) > 0 for r in rows)
    assert all(0 <= float(r["valid_atoms_accuracy"]) <= 1 for r in rows)
    model = load_pretrained(out / "encoder.pt")
    assert model.elements == ["H", "C", "O"] and model.encoder.node_features_out == 8

    result = _mlff("pretrain", "--resume", out, "--epochs", 3)
    assert result.exit_code == 0, result.output
    with open(out / "metrics.csv", newline="") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    result = _mlff("pretrain", files["unlabelled"], "--out", out, *ENCODER)
    assert "already holds a pretraining run" in _one_line_error(result)


def test_train_init_freeze_keeps_the_pretrained_encoder(files, tmp_path):
    encoder_file = files["pre"] / "encoder.pt"
    result = _mlff("train", files["molecules"], "--out", tmp_path / "ft", "--init", encoder_file,
                   "--init-mode", "freeze", *TRAIN)  # fmt: skip
    assert result.exit_code == 0, result.output
    pretrained = load_pretrained(encoder_file).encoder.state_dict()
    model = load_model(tmp_path / "ft" / "model.pt")
    assert model.config["hyperparameters"]["encoder_features"] == 8
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, pretrained[name]), name


def test_train_init_finetunes_with_denoising_and_resumes(files, tmp_path):
    encoder_file = files["pre"] / "encoder.pt"
    out = tmp_path / "ft"
    result = _mlff("train", files["molecules"], "--out", out, "--init", encoder_file,
                   "--denoise-weight", 0.5, "--init-mode", "low-lr", *TRAIN)  # fmt: skip
    assert result.exit_code == 0, result.output
    pretrained = load_pretrained(encoder_file)
    model = load_model(out / "model.pt")  # a plain force field: no denoising head in it
    changed = [
        name
        for name, tensor in model.encoder.state_dict().items()
        if not torch.allclose(tensor, pretrained.encoder.state_dict()[name])
    ]
    assert changed  # low-lr still trains the encoder
    head = load_checkpoint(out / "checkpoint_last.pt")["denoiser"]
    assert set(head) == {f"head.{k}" for k in pretrained.coordinate_head.state_dict()}
    result = _mlff("train", "--resume", out, "--epochs", 2)
    assert result.exit_code == 0, result.output


def test_periodic_copper_pretrains_and_fine_tunes(files, tmp_path):
    result = _mlff("train", files["copper"], "--out", tmp_path / "cu", "--cutoff", 4.0,
                   "--init", files["pre_cu"] / "encoder.pt", "--denoise-weight", 1.0,
                   "--valid-fraction", 0.2, *TRAIN)  # fmt: skip
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "cu" / "model.pt")
    assert model.elements == ["Cu"]


def test_a_pretrained_file_is_no_force_field(files):
    encoder_file = files["pre"] / "encoder.pt"
    for command in (["eval", encoder_file, files["molecules"]],
                    ["md", "run", encoder_file, files["unlabelled"], "--steps", 1],
                    ["check", encoder_file, files["unlabelled"]]):  # fmt: skip
        line = _one_line_error(_mlff(*command))
        assert str(encoder_file) in line and "pretrained encoder" in line
        assert "--init" in line


def test_bad_pretraining_input_is_one_clear_line(files, tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    dummy = tmp_path / "dummy.xyz"
    ase.io.write(dummy, Atoms("XH", positions=[[0, 0, 0], [0, 0, 1.0]]), format="extxyz")
    unknown = tmp_path / "unknown.xyz"
    unknown.write_text("2\n\nQq 0 0 0\nH 0 0 1\n")
    cases = {
        "no structures|cannot read": [empty],
        "no known element": [dummy],
        "cannot read structures": [unknown],
        "noise must be a length > 0": [files["unlabelled"], "--noise", 0],
        "mask_fraction must be in \\(0, 1\\)": [files["unlabelled"], "--mask-fraction", 1.0],
    }
    import re

    for pattern, args in cases.items():
        line = _one_line_error(_mlff("pretrain", *args, "--out", tmp_path / "x", *ENCODER))
        assert re.search(pattern, line), (pattern, line)
    line = _one_line_error(
        _mlff("pretrain", files["unlabelled"], "--out", tmp_path / "x", "--mask-fraction", 0)
    )
    assert "mask_fraction" in line


def test_bad_init_files_are_one_clear_line(files, tmp_path):
    model_file = tmp_path / "model.pt"
    from mlff import build_model, save_model

    save_model(build_model(encoder="unimol"), model_file)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "mlff-pretrained-encoder", "evil": Path("x")}, pickled)
    cases = {
        "force-field model file, not a pretrained encoder": ["--init", model_file],
        "pickled": ["--init", pickled],
        "not found": ["--init", tmp_path / "missing.pt"],
        "pretrained for elements Cu": ["--init", files["pre_cu"] / "encoder.pt", "--cutoff", 4],
        "pretrained with cutoff 5 Å": ["--init", files["pre"] / "encoder.pt", "--cutoff", 4],
        "needs a pretrained encoder": ["--init-mode", "freeze"],
    }
    for text, args in cases.items():
        line = _one_line_error(
            _mlff("train", files["molecules"], "--out", tmp_path / "t", *TRAIN, *args)
        )
        assert text in line, (text, line)
    no_unimol = [a for a in TRAIN if a not in ("--encoder", "unimol")]
    line = _one_line_error(_mlff("train", files["molecules"], "--out", tmp_path / "t",
                                 *no_unimol, "--init", files["pre"] / "encoder.pt"))  # fmt: skip
    assert "needs --encoder unimol" in line
    line = _one_line_error(_mlff("train", files["molecules"], "--out", tmp_path / "t",
                                 *no_unimol, "--denoise-weight", 1))  # fmt: skip
    assert "needs --encoder unimol" in line
