"""Bad input ends in one line naming the file, frame, atom or step, and loses nothing written."""

from __future__ import annotations

import ase.io
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner
from mlff.workflows.cli import cli

import mlff.calculator

COMMANDS_ON_ONE_STRUCTURE = {
    "md run": ["md", "run", "{model}", "{structure}", "--steps", "2"],
    "relax": ["relax", "{model}", "{structure}"],
    "check": ["check", "{model}", "{structure}"],
    "bench": ["bench", "{model}", "{structure}", "--steps", "2"],
}


def invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result) -> str:
    """The last line of a failed command, after checking that it failed without a traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output, result.output
    assert not isinstance(result.exception, (AssertionError, TypeError, IndexError, RuntimeError))
    return result.output.strip().splitlines()[-1]


def _run_each(model, structure):
    for name, args in COMMANDS_ON_ONE_STRUCTURE.items():
        filled = [a.format(model=model, structure=structure) for a in args]
        yield name, invoke(filled)


def _overlapping_ethanol(tmp_path, distance: float = 0.0):
    atoms = molecule("CH3CH2OH")
    atoms.positions[1] = atoms.positions[0] + [distance, 0.0, 0.0]
    path = tmp_path / "overlap.xyz"
    ase.io.write(path, atoms)
    return path


@pytest.mark.parametrize("distance", [0.0, 0.05])
def test_overlapping_atoms_are_refused_by_every_command(model_file, tmp_path, distance):
    path = _overlapping_ethanol(tmp_path, distance)
    for name, result in _run_each(model_file, path):
        line = one_line_error(result)
        assert "overlap.xyz, frame" in line, name
        assert f"atoms 0 (C) and 1 (C) are {distance:.3g} Å apart" in line, (name, line)


def test_two_atoms_on_one_periodic_site_are_refused(model_file, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    atoms.positions[3] = atoms.positions[0] + atoms.cell[0]  # the same site, one cell over
    path = tmp_path / "cu.extxyz"
    ase.io.write(path, atoms)
    for name, result in _run_each(model_file, path):
        line = one_line_error(result)
        assert "atoms 0 (Cu) and 3 (Cu) are 0 Å apart through the periodic boundary" in line, name
    assert "converged" not in invoke(["relax", model_file, path, "--cell"]).output


def test_eval_and_train_refuse_overlapping_atoms_in_labelled_data(model_file, tmp_path):
    frames = []
    for k in range(4):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.01, seed=k)
        if k == 2:
            atoms.positions[5] = atoms.positions[4]
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=atoms.positions * 0)
        frames.append(atoms)
    path = tmp_path / "labelled.extxyz"
    ase.io.write(path, frames)
    for args in (
        ["eval", model_file, path],
        ["train", path, "--out", tmp_path / "run", "--epochs", "1"],
    ):
        line = one_line_error(invoke(args))
        assert "labelled.extxyz, frame 2: atoms 4 (H) and 5 (H) are 0 Å apart" in line


def test_atoms_spread_over_an_absurd_box_are_refused(model_file, tmp_path):
    atoms = molecule("CH3CH2OH")
    atoms.positions[3] = [1e9, 0.0, 0.0]  # a cell list over this box would not fit in memory
    path = tmp_path / "far.xyz"
    ase.io.write(path, atoms)
    line = one_line_error(invoke(["md", "run", model_file, path, "--steps", "2"]))
    assert "far.xyz, frame -1: atoms" in line and "1e+09 Å apart" in line


@pytest.mark.parametrize("content", [b"hello\n", b""])
def test_a_file_that_is_no_model_is_refused_in_one_line(ethanol_file, tmp_path, content):
    path = tmp_path / "notamodel.pt"
    path.write_bytes(content)
    for name, result in _run_each(path, ethanol_file):
        assert "notamodel.pt: not an mlff model file" in one_line_error(result), name


def test_too_few_frames_to_split_names_the_file(tmp_path):
    atoms = molecule("CH3CH2OH")
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=atoms.positions * 0)
    path = tmp_path / "one.extxyz"
    ase.io.write(path, atoms)
    line = one_line_error(invoke(["train", path, "--out", tmp_path / "run"]))
    assert str(path) in line and "cannot be split" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(model_file, ethanol_file):
    line = one_line_error(invoke(["md", "run", model_file, ethanol_file, "--device", "cuda"]))
    assert "device 'cuda'" in line and "no CUDA GPU" in line


def test_an_atom_that_jumps_stops_the_run_naming_the_step(model_file, ethanol_file, tmp_path):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.csv"
    args = ["md", "run", model_file, ethanol_file, "--timestep", "20", "--temperature", "3000"]
    result = invoke([*args, "--seed", "1", "--traj", traj, "--log", log, "--steps", "50"])
    line = one_line_error(result)
    assert line.startswith("Error: step 1: atom") and "in one step" in line, line
    assert len(ase.io.read(traj, ":")) == 1  # the starting state, readable


def _forces_turn_nan_after(monkeypatch, calls: int) -> None:
    """Make the model's forces NaN from the ``calls``-th evaluation on (a blow-up on cue)."""
    evaluate, count = mlff.calculator.evaluate, [0]

    def failing(model, graph, **kwargs):
        out = evaluate(model, graph, **kwargs)
        count[0] += 1
        if count[0] >= calls:
            out["forces"] = out["forces"] * float("nan")
        return out

    monkeypatch.setattr(mlff.calculator, "evaluate", failing)


def test_a_blow_up_keeps_what_was_written_and_restarts(
    model_file, ethanol_file, tmp_path, monkeypatch
):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.csv"
    common = ["--traj", traj, "--log", log, "--interval", "2", "--covariance-every", "0"]
    _forces_turn_nan_after(monkeypatch, 8)  # the 8th force call is step 7
    line = one_line_error(invoke(["md", "run", model_file, ethanol_file, "--steps", "20", *common]))
    assert line == (
        "Error: step 7: the force on atom 0 is not finite "
        "(the simulation blew up; try a smaller time step)"
    )
    frames = ase.io.read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 2, 4, 6]
    assert log.read_text().strip().splitlines()[-1].startswith("6,")
    monkeypatch.undo()
    result = invoke(["md", "run", model_file, "--restart", traj, "--steps", "4", *common])
    assert result.exit_code == 0, result.output
    assert [f.info["step"] for f in ase.io.read(traj, ":")] == [0, 2, 4, 6, 8, 10]
    steps = [int(row.split(",")[0]) for row in log.read_text().strip().splitlines()[1:]]
    assert steps == [0, 2, 4, 6, 8, 10]


def test_a_restart_never_overwrites_a_log_of_other_columns(model_file, ethanol_file, tmp_path):
    traj, log = tmp_path / "md.extxyz", tmp_path / "md.csv"
    result = invoke(["md", "run", model_file, ethanol_file, "--steps", "2", "--traj", traj])
    assert result.exit_code == 0, result.output
    log.write_text("time,something_else\n1,2\n")
    line = one_line_error(
        invoke(["md", "run", model_file, "--restart", traj, "--steps", "2", "--log", log])
    )
    assert "md.csv: the log to continue has columns" in line
    assert log.read_text() == "time,something_else\n1,2\n"


def test_trajectory_and_log_on_one_path_are_refused(model_file, ethanol_file, tmp_path):
    path = tmp_path / "both.extxyz"
    args = ["md", "run", model_file, ethanol_file, "--traj", path, "--log", path]
    assert "two outputs would be written to the same file" in one_line_error(invoke(args))
    assert not path.exists()


def test_a_model_file_given_as_a_structure_is_named(model_file):
    line = one_line_error(invoke(["md", "analyze", model_file]))
    assert "tiny.pt: not a structure file" in line


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "{data}", "--lr", "nan"], "lr must be a finite number"),
        (["eval", "{model}", "{data}", "--batch-size", "0"], "'--batch-size'"),
    ],
)
def test_option_values_out_of_range_name_the_option(model_file, tmp_path, args, needle):
    atoms = molecule("CH3CH2OH")
    frames = []
    for k in range(3):
        frame = atoms.copy()
        frame.rattle(0.01, seed=k)
        frame.calc = SinglePointCalculator(frame, energy=-1.0, forces=frame.positions * 0)
        frames.append(frame)
    data = tmp_path / "data.extxyz"
    ase.io.write(data, frames)
    filled = [a.format(model=model_file, data=data) for a in args]
    if filled[0] == "train":
        filled += ["--out", str(tmp_path / "run")]
    assert needle in one_line_error(invoke(filled))


def test_an_unwritable_log_truncates_no_trajectory(model_file, ethanol_file, tmp_path):
    traj = tmp_path / "md.extxyz"
    traj.write_text("earlier frames\n")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    args = ["md", "run", model_file, ethanol_file, "--traj", traj, "--log", blocker / "md.csv"]
    assert "a_file is a file, not a folder" in one_line_error(invoke(args))
    assert traj.read_text() == "earlier frames\n"
