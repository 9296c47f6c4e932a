"""``mlff train``: outputs, reproduction from config.yaml, exact resume, signals, bad input, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import MLFFCalculator, load_model
from mlff.training.checkpoint import load_checkpoint
from tests.training import labelled

SMALL = ["--features", "8", "--num-layers", "1", "--batch-size", "4", "--progress", "lines",
         "--threads", "1", "--workers", "1"]  # fmt: skip
TINY = [*SMALL, "--time-limit", "0"]
OUTPUTS = (
    "model.pt",
    "checkpoint_last.pt",
    "checkpoint_best.pt",
    "metrics.csv",
    "config.yaml",
    "learning_curves.png",
    "parity_valid.png",
    "parity_test.png",
    "summary.json",
)

# metrics.csv columns that must be finite and positive in every row
POSITIVE_COLUMNS = (
    "train_loss",
    "valid_loss",
    "lr",
    "wall_time_s",
    "train_energy_mae_mev_per_atom",
    "train_forces_mae_mev_per_a",
    "valid_energy_rmse_mev_per_atom",
    "valid_forces_rmse_mev_per_a",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    return {
        "train": labelled.write(folder / "train.extxyz", labelled.molecules(16, seed=0)),
        "test": labelled.write(folder / "test.extxyz", labelled.molecules(4, seed=1)),
        "ref": labelled.write(
            folder / "ref.extxyz", labelled.with_ref_keys(labelled.molecules(8, seed=2))
        ),
    }


def _train(*args) -> object:
    result = CliRunner().invoke(cli, ["train", *map(str, args)])
    return result


def _rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_short_run_writes_every_output_and_config_reproduces_it(data, tmp_path):
    out = tmp_path / "run"
    result = _train(data["train"], "--out", out, "--epochs", 2, "--test", data["test"],
                    "--valid-fraction", 0.25, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        for column in POSITIVE_COLUMNS:
            # a random-start model on EMT labels errs by eV: every figure is finite and > 0
            assert np.isfinite(float(row[column])) and float(row[column]) > 0, (column, row)
    assert float(rows[1]["wall_time_s"]) > float(rows[0]["wall_time_s"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "epochs" and summary["test"]["n_structures"] == 4
    assert summary["optimizer"] == "muon"  # auto: an EGNN on molecules
    # the reported test figures are those of model.pt, recomputed here frame by frame
    expected = _errors_of(out / "model.pt", data["test"])
    for name, value in expected.items():
        assert summary["test"][name] == pytest.approx(value, rel=1e-4), name
    assert "test: energy MAE" in result.output and "model:" in result.output

    atoms = labelled.molecules(1)[0]
    atoms.calc = MLFFCalculator(str(out / "model.pt"))
    assert np.isfinite(atoms.get_potential_energy())
    model = load_model(out / "model.pt")
    assert model.config["hyperparameters"]["features"] == 8
    assert model.reference_energies.abs().sum() > 0  # E0 fitted and stored

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["valid_fraction"] == 0.25
    again = _train("--config", out / "config.yaml", "--out", tmp_path / "again")
    assert again.exit_code == 0, again.output
    first, second = _rows(out), _rows(tmp_path / "again")
    assert [r["valid_loss"] for r in first] == [r["valid_loss"] for r in second]


def _errors_of(model_path: Path, data_path: Path) -> dict[str, float]:
    """MAE/RMSE of the model on labelled frames through the ASE calculator, in the units of
    ``summary.json``: energy per atom meV/atom, force components meV/Å."""
    import ase.io

    dtype = str(load_model(model_path).dtype).removeprefix("torch.")
    calculator = MLFFCalculator(str(model_path), device="cpu", dtype=dtype)
    energy_errors, force_errors = [], []
    for atoms in ase.io.read(data_path, ":"):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - energy) / len(atoms))
        force_errors.append((atoms.get_forces() - forces).ravel())
    energy_errors, force_errors = np.array(energy_errors), np.concatenate(force_errors)
    return {
        "energy_mae_mev_per_atom": 1e3 * np.abs(energy_errors).mean(),
        "energy_rmse_mev_per_atom": 1e3 * np.sqrt((energy_errors**2).mean()),
        "forces_mae_mev_per_a": 1e3 * np.abs(force_errors).mean(),
        "forces_rmse_mev_per_a": 1e3 * np.sqrt((force_errors**2).mean()),
    }


def test_resume_continues_exactly_where_it_stopped(data, tmp_path):
    from mlff.training import run_training
    from mlff.training.config import config_from_dict

    options = {"data": [str(data["train"])], "epochs": 3, "features": 8, "num_layers": 1,
               "batch_size": 4, "time_limit": 0, "threads": 1, "progress": "lines"}  # fmt: skip
    straight = run_training(config_from_dict({**options, "out": str(tmp_path / "a")}),
                            log=lambda m: None)  # fmt: skip
    assert straight.epochs == 3
    losses = [float(r["valid_loss"]) for r in _rows(tmp_path / "a")]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]  # the training trains

    def interrupt_after_first_epoch(loop):
        if loop.progress.epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = run_training(
        config_from_dict({**options, "out": str(tmp_path / "b")}),
        log=lambda m: None,
        monitors=[interrupt_after_first_epoch],
    )
    assert stopped.stopped == "SIGTERM"
    progress = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["progress"]
    assert (progress["epoch"], progress["batch"]) == (1, 1)  # stopped after one more step
    assert (tmp_path / "b" / "model.pt").is_file()

    result = _train("--resume", tmp_path / "b")
    assert result.exit_code == 0, result.output
    a = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert b["progress"]["epoch"] == 3 and b["progress"]["step"] == a["progress"]["step"]
    for key, value in a["model"]["state_dict"].items():
        torch.testing.assert_close(b["model"]["state_dict"][key], value, rtol=0, atol=1e-6)
    for key, value in a["ema"]["weights"].items():
        torch.testing.assert_close(b["ema"]["weights"][key], value, rtol=0, atol=1e-6)
    assert [r["epoch"] for r in _rows(tmp_path / "b")] == ["1", "2", "3"]

    again = _train("--resume", tmp_path / "b", "--epochs", 4, "--compile", "none")
    assert again.exit_code == 0, again.output
    assert [r["epoch"] for r in _rows(tmp_path / "b")] == ["1", "2", "3", "4"]


def test_label_keys_are_detected_and_can_be_named(data, tmp_path):
    # two files, a validation file, float64 training
    result = _train(data["ref"], data["test"], "--valid", data["train"], "--out", tmp_path / "ref",
                    "--epochs", 1, "--dtype", "float64", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())
    assert summary["valid"]["forces_mae_mev_per_a"] is not None
    assert summary["valid"]["n_structures"] == 16
    assert load_model(tmp_path / "ref" / "model.pt").dtype == torch.float64
    named = _train(data["ref"], "--out", tmp_path / "named", "--epochs", 1,
                   "--energy-key", "REF_energy", "--forces-key", "REF_forces", *TINY)  # fmt: skip
    assert named.exit_code == 0, named.output


def test_time_limit_stops_cleanly_and_saves(data, tmp_path):
    out = tmp_path / "timed"
    result = _train(data["train"], "--out", out, "--epochs", 100000, "--time-limit", 0.04, *SMALL)
    assert result.exit_code == 0, result.output
    assert "stopped (time limit)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "time limit" and summary["training_time_s"] < 10
    assert (out / "model.pt").is_file() and (out / "learning_curves.png").is_file()


def _bad_files(folder: Path) -> dict[str, Path]:
    frames = labelled.molecules(6)
    no_energy = [a.copy() for a in frames]
    for atoms, original in zip(no_energy, frames, strict=True):
        atoms.calc = original.calc
    no_energy[3].calc = None
    nan = labelled.molecules(6)
    from ase.calculators.singlepoint import SinglePointCalculator

    nan[4].calc = SinglePointCalculator(nan[4], energy=float("nan"), forces=nan[4].get_forces())
    return {
        "no_energy": labelled.write(folder / "no_energy.extxyz", no_energy),
        "nan": labelled.write(folder / "nan.extxyz", nan),
    }


@pytest.mark.parametrize(
    "case, expected",
    [
        ("no_energy", ["no_energy.extxyz, frame 3", "no energy label", "keys found"]),
        ("nan", ["nan.extxyz, frame 4", "NaN"]),
        ("unknown_key", ["train.extxyz, frame 0", "'DFT_E'", "keys found"]),
        ("missing_file", ["absent.extxyz", "not found"]),
        ("bad_config", ["unknown option(s) widht"]),
        ("resume_nothing", ["no checkpoint_last.pt"]),
        ("no_data", ["give the training DATA"]),
        ("bad_e0", ["lacks element(s)"]),
    ],
)
def test_bad_input_ends_in_one_clear_line(case, expected, data, tmp_path):
    bad = _bad_files(tmp_path)
    out = ["--out", tmp_path / "out", *TINY]
    if case in bad:
        args = [bad[case], *out]
    elif case == "unknown_key":
        args = [data["train"], "--energy-key", "DFT_E", *out]
    elif case == "missing_file":
        args = [tmp_path / "absent.extxyz", *out]
    elif case == "bad_config":
        (tmp_path / "c.yaml").write_text("widht: 3\n")
        args = [data["train"], "--config", tmp_path / "c.yaml", *out]
    elif case == "resume_nothing":
        args = ["--resume", tmp_path]
    elif case == "bad_e0":
        (tmp_path / "e0.json").write_text('{"H": -1.0}')
        args = [data["train"], "--e0", tmp_path / "e0.json", *out]
    else:
        args = out
    result = _train(*args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    message = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(message) == 1, result.output
    for text in expected:
        assert text in message[0], message[0]


def _command(*args) -> list[str]:
    return [sys.executable, "-m", "mlff.workflows.train", *map(str, args)]


def _environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_cleanly_and_leaves_a_usable_model(data, tmp_path, workers):
    out = tmp_path / "run"
    (tmp_path / "tmp").mkdir()  # where the workers' job folder goes
    process = subprocess.Popen(
        _command(data["train"], "--out", out, "--epochs", 100000, *TINY, "--workers", workers),
        env={**_environment(), "TMPDIR": str(tmp_path / "tmp")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 60
    while not (out / "checkpoint_last.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # to rank 0 alone: the workers hear it from rank 0
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    assert "interrupted (SIGTERM)" in output and "--resume" in output
    assert output.count("stopped (SIGTERM)") == 1
    assert load_model(out / "model.pt").elements == ["H", "C", "O"]
    assert load_checkpoint(out / "checkpoint_last.pt")["progress"]["stopped"] == "SIGTERM"
    # the workers are gone, and their folder too
    assert [p for p in (tmp_path / "tmp").iterdir() if p.name.startswith("mlff-workers")] == []


def test_two_workers_train_and_write_what_one_writes(data, tmp_path):
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"workers{workers}"
        result = _train(data["train"], "--out", out, "--epochs", 2, "--test", data["test"],
                        "--valid-fraction", 0.25, *TINY, "--workers", workers)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.output.count("model:") == 1 and "test: energy MAE" in result.output
        outputs[workers] = (out, result.output)
    (one, one_log), (two, two_log) = outputs[1], outputs[2]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert "2 processes" in two_log and "processes" not in one_log
    rows_one, rows_two = _rows(one), _rows(two)
    assert list(rows_two[0]) == list(rows_one[0]) and len(rows_two) == len(rows_one) == 2
    # 12 training frames in batches of 4: 3 steps an epoch, or 1 each for 2 workers
    assert [r["step"] for r in rows_one] == ["3", "6"]
    assert [r["step"] for r in rows_two] == ["1", "2"]
    losses = [float(r["valid_loss"]) for r in rows_two]
    assert np.isfinite(losses).all() and losses[1] < losses[0]  # the workers train
    summaries = [json.loads((out / "summary.json").read_text()) for out in (one, two)]
    assert summaries[1].keys() == summaries[0].keys() and summaries[1]["stopped"] == "epochs"
    assert summaries[1]["test"].keys() == summaries[0]["test"].keys()
    configs = [yaml.safe_load((out / "config.yaml").read_text()) for out in (one, two)]
    assert (configs[0]["workers"], configs[1]["workers"]) == (1, 2)
    assert {k for k in configs[0] if configs[0][k] != configs[1][k]} == {"out", "workers"}
    model = load_model(two / "model.pt")
    assert model.config["hyperparameters"]["features"] == 8
    checkpoint = load_checkpoint(two / "checkpoint_last.pt")
    assert checkpoint["progress"]["step"] == 2 and checkpoint["progress"]["epoch"] == 2


@pytest.mark.slow
def test_two_process_ddp_on_cpu(data, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "mlff.workflows.train", str(data["train"]), "--out", str(out), "--epochs", "2",
        "--valid-fraction", "0.25", *map(str, TINY),
    ]  # fmt: skip
    result = subprocess.run(
        command, env=_environment(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("model.pt", "checkpoint_last.pt", "metrics.csv", "summary.json"):
        assert (out / name).is_file(), name
    rows = _rows(out)
    # 12 training frames in batches of 4 = 3 batches, dealt to 2 processes: 1 step each epoch
    assert [r["step"] for r in rows] == ["1", "2"]
    assert result.stdout.count("model:") == 1  # only rank 0 reports
