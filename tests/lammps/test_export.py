"""``mlff export-lammps``: the file round trip, the printed input lines, and bad input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlff.workflows.cli import cli

import mlff.lammps.files
from mlff import save_model
from mlff.errors import LAMMPSError, ModelFileError
from mlff.lammps import MLIAPAdapter, configure, export_lammps, read_lammps_file, register
from tests.lammps.stand_in import domains
from tests.lammps.test_adapter import CUTOFF, copper, model_named


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    save_model(model_named("tfn-3"), path)
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_export_prints_the_lammps_lines_and_round_trips(model_file, tmp_path):
    out = tmp_path / "model.mliap.pt"
    result = run("export-lammps", model_file, "-o", out, "--elements", "Cu", "--skin", "1.0")
    assert result.exit_code == 0, result.output
    assert "pair_style mliap unified EXISTS 1" in result.output
    assert "pair_coeff * * Cu" in result.output
    assert "comm_modify cutoff 10" in result.output  # 3 hops x 3 Å + skin 1 Å
    loaded = MLIAPAdapter.from_file(out)
    assert loaded.element_types == ["Cu"] and loaded.settings.depth == 3
    direct = MLIAPAdapter(model_named("tfn-3"), loaded.settings)
    from_file, in_memory = (domains(copper(), ["Cu"], CUTOFF, 9.5)[0].data for _ in range(2))
    loaded.compute_forces(from_file)
    direct.compute_forces(in_memory)
    assert from_file.energy == in_memory.energy
    assert np.array_equal(from_file.f, in_memory.f)


def test_elements_are_given_in_any_spelling(model_file, tmp_path):
    out = tmp_path / "m.pt"
    for spelling in (["Cu,H"], ["Cu H"], ["Cu", "--elements", "H"]):
        assert run("export-lammps", model_file, "-o", out, "--elements", *spelling).exit_code == 0
        assert read_lammps_file(out)[1].type_elements == ("Cu", "H")
    run("export-lammps", model_file, "-o", out)  # default: the model's own elements
    assert read_lammps_file(out)[1].type_elements == ("H", "C", "O", "Cu")


@pytest.mark.parametrize(
    ("elements", "message"),
    [
        ("Au", "element map Au does not match the model: Au not among its elements H C O Cu"),
        ("Cu,Qq", "element map Cu Qq: Qq is not an element symbol"),
    ],
)
def test_a_bad_element_map_is_one_line(model_file, tmp_path, elements, message):
    out = tmp_path / "m.pt"
    result = run("export-lammps", model_file, "-o", out, "--elements", elements)
    assert result.exit_code != 0
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"Error: {message}")
    assert not out.exists()


def test_a_missing_model_is_one_line(tmp_path):
    result = run("export-lammps", tmp_path / "none.pt", "-o", tmp_path / "m.pt")
    assert result.exit_code != 0 and result.output.strip().endswith("model file not found")


def test_an_interrupted_export_leaves_no_file(model_file, tmp_path, monkeypatch):
    out = tmp_path / "m.pt"

    def half_written(payload, path):
        with open(path, "wb") as handle:
            handle.write(b"PK half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(mlff.lammps.files.torch, "save", half_written)
    with pytest.raises(KeyboardInterrupt):
        export_lammps(model_file, out)
    assert list(tmp_path.iterdir()) == [model_file]


def test_a_file_with_pickled_code_is_refused_before_it_runs(tmp_path):
    path = tmp_path / "unified.pt"
    torch.save({"format": "mlff-lammps", "object": Exception("x")}, path)
    with pytest.raises(ModelFileError, match="refused"):
        MLIAPAdapter.from_file(path)


def test_a_plain_model_file_is_not_a_lammps_file(model_file):
    with pytest.raises(ModelFileError, match="not an mlff LAMMPS file"):
        MLIAPAdapter.from_file(model_file)


def test_a_file_asking_for_a_shorter_cutoff_is_refused(model_file, tmp_path):
    out = tmp_path / "m.pt"
    export_lammps(model_file, out)
    payload = torch.load(out, weights_only=True)
    payload["cutoff"] = 2.0
    torch.save(payload, out)
    with pytest.raises(LAMMPSError, match="do not match the model's 3 Å and 3 hop"):
        MLIAPAdapter.from_file(out)


def test_settings_check_the_ghost_shell():
    settings = mlff.lammps.files.settings_for(model_named("egnn-3"), ["Cu"])
    settings.check_comm_cutoff(11.0, skin=2.0)
    with pytest.raises(LAMMPSError, match=r"ghost shell 5 Å is too small.*comm_modify cutoff 11"):
        settings.check_comm_cutoff(5.0, skin=2.0)


@pytest.fixture
def fake_lammps(monkeypatch):
    """A stand-in ``lammps`` package: what mlff.lammps.driver hands to it is recorded."""
    import types

    handed, activated = [], []
    package = types.ModuleType("lammps")
    mliap = types.ModuleType("lammps.mliap")
    mliap.load_unified = handed.append
    mliap.activate_mliappy = activated.append
    package.mliap = mliap
    monkeypatch.setitem(sys.modules, "lammps", package)
    monkeypatch.setitem(sys.modules, "lammps.mliap", mliap)
    return handed, activated


class RecordingLammps:
    def __init__(self) -> None:
        self.commands: list[str] = []

    def command(self, line: str) -> None:
        self.commands.append(line)


def test_configure_hands_lammps_the_adapter_and_its_lines(model_file, tmp_path, fake_lammps):
    handed, activated = fake_lammps
    out = tmp_path / "m.mliap.pt"
    export_lammps(model_file, out, ["Cu"])
    lmp = RecordingLammps()
    adapter = configure(lmp, out, skin=1.5)
    assert activated == [lmp] and handed == [adapter]
    assert lmp.commands == [
        "pair_style mliap unified EXISTS 1",
        "pair_coeff * * Cu",
        "comm_modify cutoff 10.5",
    ]


def test_without_a_lammps_module_register_says_how_to_get_one(model_file, tmp_path, monkeypatch):
    out = tmp_path / "m.mliap.pt"
    export_lammps(model_file, out)
    monkeypatch.setitem(sys.modules, "lammps", None)  # import lammps -> ImportError
    with pytest.raises(LAMMPSError, match="no LAMMPS Python module.*build_lammps.sh"):
        register(out)


def test_lammps_prints_mlff_errors_in_one_line(monkeypatch, capsys):
    from mlff.lammps.driver import one_line_errors

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: seen.append(args[1]))
    one_line_errors()
    one_line_errors()  # once per process
    sys.excepthook(LAMMPSError, LAMMPSError("use FILE 1"), None)
    assert capsys.readouterr().err == "mlff: use FILE 1\n"
    other = RuntimeError("a bug")
    sys.excepthook(RuntimeError, other, None)
    assert seen == [other]  # anything else as before: a traceback


@pytest.mark.parametrize("which", ["model", "input"])
def test_the_driver_reports_a_missing_file_in_one_line(model_file, tmp_path, which, capsys):
    from mlff.lammps.driver import main

    out = tmp_path / "m.mliap.pt"
    export_lammps(model_file, out)
    (tmp_path / "in.lammps").write_text("units metal\n")
    files = {"model": str(out), "input": str(tmp_path / "in.lammps")}
    files[which] = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as stopped:
        main([files["model"], files["input"]])
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing: LAMMPS " in err and "not found" in err
