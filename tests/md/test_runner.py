"""The batched engine end to end: ``mlff md run --engine batched`` against the ASE engine."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import save_model
from tests.workflows.conftest import randomised_model


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _rows(path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(randomised_model(), path)
    return path


def _with_momenta(atoms, seed: int, temperature_k: float = 300.0):
    """``atoms`` with Maxwell-Boltzmann momenta at ``temperature_k`` and zero total momentum."""
    from ase import units

    rng = np.random.default_rng(seed)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_k)
    atoms.set_momenta(momenta - masses * momenta.sum(0) / masses.sum())
    return atoms


@pytest.fixture
def structures(tmp_path):
    """Two frames with momenta: ethanol and a rattled periodic Cu cell."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    cu.rattle(0.05, seed=2)
    frames = [_with_momenta(molecule("CH3CH2OH"), 1), _with_momenta(cu, 2)]
    path = tmp_path / "two.extxyz"
    ase.io.write(path, frames)
    return path, frames


@pytest.mark.parametrize("ensemble", ["nve", "nvt-nose-hoover"])
def test_batched_engine_follows_the_ase_engine(model_file, structures, tmp_path, ensemble):
    path, _ = structures
    extra = ["--ensemble", "nvt", "--thermostat", "nose-hoover"] if ensemble != "nve" else []
    common = ["--steps", "20", "--interval", "5", "--timestep", "0.5", *extra]
    batched = invoke(
        ["md", "run", model_file, path, "--index", ":", "--engine", "batched", *common,
         "--traj", tmp_path / "b.extxyz", "--log", tmp_path / "b.csv", "--json"]
    )  # fmt: skip
    assert batched.exit_code == 0, batched.output
    for k in range(2):
        single = invoke(
            ["md", "run", model_file, path, "--index", str(k), "--engine", "ase", *common,
             "--traj", tmp_path / f"a{k}.extxyz", "--log", tmp_path / f"a{k}.csv"]
        )  # fmt: skip
        assert single.exit_code == 0, single.output
        if k == 1:  # the periodic cell: the logged pressure (stress + ideal gas) agrees
            ours = [r for r in _rows(tmp_path / "b.csv") if r["system"] == "1"]
            theirs = _rows(tmp_path / "a1.csv")
            assert len(ours) == len(theirs) == 5
            for got, want in zip(ours, theirs, strict=True):
                assert abs(float(got["pressure_bar"]) - float(want["pressure_bar"])) < 1e-6
        reference = ase.io.read(tmp_path / f"a{k}.extxyz", ":")
        frames = ase.io.read(tmp_path / f"b_sys{k:03d}.extxyz", ":")
        assert [f.info["step"] for f in frames] == [f.info["step"] for f in reference]
        for got, want in zip(frames, reference, strict=True):
            np.testing.assert_allclose(got.positions, want.positions, atol=1e-8)
            np.testing.assert_allclose(got.get_momenta(), want.get_momenta(), atol=1e-8)


def test_replicas_log_json_and_one_file_per_system(model_file, structures, tmp_path):
    path, _ = structures
    log = tmp_path / "md.csv"
    result = invoke(
        ["md", "run", model_file, path, "--index", ":", "--replicas", "3", "--ensemble", "nvt",
         "--temperature", "400", "--steps", "12", "--interval", "4", "--covariance-every", "6",
         "--seed", "3", "--traj", tmp_path / "md.extxyz", "--log", log, "--json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["engine"] == "batched" and payload["n_systems"] == 6
    assert payload["covariance_checks"] == 12 and payload["covariance_failures"] == 0
    assert payload["covariance_max_rel_error"] < 1e-8
    assert len(payload["systems"]) == 6
    for k in range(6):
        frames = ase.io.read(tmp_path / f"md_sys{k:03d}.extxyz", ":")
        assert [f.info["step"] for f in frames] == [0, 4, 8, 12]
    rows = log.read_text().strip().splitlines()
    assert rows[0].startswith("system,step,")
    assert len(rows) == 1 + 6 * 4


def test_seeded_batched_runs_are_reproducible(model_file, structures, tmp_path):
    path, _ = structures
    outputs = []
    for name in ("one", "two"):
        result = invoke(
            ["md", "run", model_file, path, "--index", ":", "--replicas", "2", "--ensemble",
             "nvt", "--steps", "10", "--seed", "7", "--traj", tmp_path / f"{name}.extxyz"]
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs.append(ase.io.read(tmp_path / f"{name}_sys003.extxyz", "-1").positions)
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_a_blow_up_stops_only_that_system(model_file, tmp_path):
    calm = _with_momenta(molecule("CH3CH2OH"), 1)
    wild = _with_momenta(molecule("CH3CH2OH"), 2, temperature_k=3e6)  # atoms fly apart
    path = tmp_path / "two.extxyz"
    ase.io.write(path, [calm, wild])
    result = invoke(
        ["md", "run", model_file, path, "--index", ":", "--engine", "batched", "--steps", "30",
         "--interval", "5", "--traj", tmp_path / "md.extxyz"]
    )  # fmt: skip
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert "1 of 2 systems stopped early" in last and "system 1: step" in last, result.output
    calm_frames = ase.io.read(tmp_path / "md_sys000.extxyz", ":")
    assert calm_frames[-1].info["step"] == 30  # the other system went on
    ase.io.read(tmp_path / "md_sys001.extxyz", ":")  # what was written stays readable


def test_engine_choices_are_checked(model_file, structures):
    path, _ = structures
    result = invoke(["md", "run", model_file, path, "--index", ":", "--engine", "ase"])
    assert result.exit_code == 2 and "need --engine batched" in result.output


def test_batched_relax_equals_the_ase_engine(model_file, tmp_path):
    frames = []
    for k in range(3):
        atoms = bulk("Cu", "fcc", a=3.55 + 0.05 * k, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    path = tmp_path / "cells.extxyz"
    ase.io.write(path, frames)
    reports = {}
    for engine in ("ase", "batched"):
        args = ["relax", model_file, path, "--engine", engine, "--cell", "--fmax", "1e-4"]
        result = invoke([*args, "--max-atoms-per-batch", "16", "--json"])
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(result.stdout.strip().splitlines()[-1])["structures"]
    for ours, theirs in zip(reports["batched"], reports["ase"], strict=True):
        assert ours["steps"] == theirs["steps"] and ours["converged"]
        assert abs(ours["energy"] - theirs["energy"]) < 1e-8


def test_the_gpu_defaults_give_the_same_run_on_cpu(model_file, structures, monkeypatch):
    """A lazy Verlet list (rebuild decided one step late) and the skin's pairs kept in the model,
    as on CUDA, reproduce the CPU defaults' trajectory through several rebuilds."""
    import functools

    import mlff.md.runner as runner
    from mlff import load_model
    from mlff.md.settings import MDSettings

    _, frames = structures
    model = load_model(model_file)
    settings = MDSettings(ensemble="nve", timestep_fs=1.0, steps=40, interval=40, seed=0)
    positions, builds = {}, {}
    for name, lazy in (("default", None), ("gpu-like", True)):
        if lazy:
            keep_pairs = functools.partial(runner.BatchedModel, mask_edges=False)
            monkeypatch.setattr(runner, "BatchedModel", keep_pairs)
        captured = []
        monkeypatch.setattr(runner, "take_snapshot", _capture(runner.take_snapshot, captured))
        work = [a.copy() for a in frames]
        summary = runner.run_batched_md(work, model, settings, skin=0.3, lazy_neighbours=lazy)
        positions[name], builds[name] = captured[-1], summary.neighbour_builds
    assert builds["gpu-like"] >= 3  # rebuilds happened, decided one step late
    np.testing.assert_allclose(positions["gpu-like"], positions["default"], atol=1e-10)


def _capture(take_snapshot, captured: list):
    def wrapper(step, time_fs, systems, tensors):
        captured.append(tensors["positions"].detach().clone().numpy())
        return take_snapshot(step, time_fs, systems, tensors)

    return wrapper


def test_sigterm_stops_a_batched_run_after_the_step_with_valid_files(model_file, tmp_path):
    import os
    import signal

    from mlff import load_model
    from mlff.md.runner import run_batched_md
    from mlff.md.settings import MDSettings

    def progress(steps_done, elapsed):
        if steps_done == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    structures = [_with_momenta(molecule("CH3CH2OH"), k) for k in range(2)]
    settings = MDSettings(ensemble="nve", steps=50, interval=10, seed=0)
    traj = tmp_path / "md.extxyz"
    summary = run_batched_md(
        structures, load_model(model_file), settings, trajectory=traj, progress=progress
    )
    assert summary.stopped_by == "SIGTERM" and summary.steps == 3
    for k in range(2):
        frames = ase.io.read(tmp_path / f"md_sys{k:03d}.extxyz", ":")
        assert [f.info["step"] for f in frames] == [0, 3]  # the state it stopped at, written
