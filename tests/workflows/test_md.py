"""``mlff md run`` / ``mlff md analyze`` and the MD driver in :mod:`mlff.md.ase_engine`."""

from __future__ import annotations

import csv
import json
import os
import signal

import ase.io
import numpy as np
import pytest
from ase import units
from ase.build import molecule
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import MLFFCalculator
from mlff.md.ase_engine import run_md
from mlff.md.log import RunningLinearFit
from mlff.md.settings import MDSettings
from tests.workflows.conftest import broken_model, cu_vacancy

# NVE tolerances, float64, dt = 1 fs, 300 steps of a 31-atom Cu cell at 300 K:
# the total energy per atom stays within NVE_SPREAD_EV of itself while the potential energy per
# atom swings by ~1e-2 eV, and the fitted drift stays below NVE_DRIFT_MEV_PER_PS.
NVE_SPREAD_EV = 1e-4
NVE_DRIFT_MEV_PER_PS = 0.5
# NVT: the mean temperature over 400 steps (31 atoms) within 15 % of the target
NVT_RELATIVE_TOLERANCE = 0.15
# the same seeded run twice (float64, one thread) repeats itself exactly; extxyz keeps 8 decimals
SAME_RUN_A = 1e-8
# a restart reads positions and momenta back from extxyz (8 decimals): 10 steps later they differ
# by about that rounding
RESTART_A = 1e-7
# what a trajectory format keeps of the positions: DCD float32 (~1e-6 Å at 10 Å); XTC rounds to
# 0.001 nm, an error of up to 0.005 Å
FORMAT_PRECISION_A = {".dcd": 1e-5, ".xtc": 5e-3 + 1e-5}


def read_log(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def invoke(args, **kwargs):
    return CliRunner().invoke(cli, [str(a) for a in args], **kwargs)


def run_ok(args, **kwargs):
    """Invoke the CLI and assert it succeeded; on failure show its output and exception."""
    result = invoke(args, **kwargs)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:"), result.output
    for needle in needles:
        assert needle in last, result.output


# --------------------------------------------------------------------------- physics


def test_nve_conserves_total_energy(cu_model, tmp_path):
    calculator = MLFFCalculator(cu_model, device="cpu", dtype="float64")
    settings = MDSettings(
        ensemble="nve",
        temperature_k=300,
        timestep_fs=1.0,
        steps=300,
        interval=5,
        covariance_every=100,
        seed=0,
    )
    summary = run_md(cu_vacancy(), calculator, settings, log=tmp_path / "nve.csv")
    rows = read_log(tmp_path / "nve.csv")
    total = np.array([float(r["total_energy_ev"]) for r in rows]) / 31
    potential = np.array([float(r["potential_energy_ev"]) for r in rows]) / 31
    assert len(rows) == 61
    assert np.ptp(potential) > 50 * NVE_SPREAD_EV  # the test is not trivially satisfied
    assert np.ptp(total) < NVE_SPREAD_EV
    assert abs(summary.energy_drift_mev_per_atom_per_ps) < NVE_DRIFT_MEV_PER_PS
    assert summary.covariance_checks == 3
    assert summary.covariance_max_rel_error < 1e-10
    assert summary.steps == 300 and summary.steps_per_second > 0


@pytest.mark.parametrize("thermostat", ["langevin", "nose-hoover", "bussi"])
def test_nvt_mean_temperature_is_near_target(cu_model, thermostat):
    calculator = MLFFCalculator(cu_model, device="cpu", dtype="float64")
    settings = MDSettings(
        ensemble="nvt",
        thermostat=thermostat,
        temperature_k=300,
        timestep_fs=2.0,
        steps=400,
        friction_per_ps=50.0,
        covariance_every=0,
        seed=0,
    )
    summary = run_md(cu_vacancy(), calculator, settings)
    assert summary.mean_temperature_k == pytest.approx(300, rel=NVT_RELATIVE_TOLERANCE)


def test_langevin_keeps_total_momentum_zero(cu_model):
    atoms = cu_vacancy()
    settings = MDSettings(ensemble="nvt", temperature_k=300, steps=50, covariance_every=0, seed=1)
    run_md(atoms, MLFFCalculator(cu_model, device="cpu"), settings)
    assert np.abs(atoms.get_momenta().sum(axis=0)).max() < 1e-10


@pytest.mark.parametrize("thermostat", [None, "langevin", "nose-hoover", "bussi"])
def test_fixed_cell_md_computes_the_stress_only_for_the_logged_pressure(
    cu_model, tmp_path, thermostat, calculator_evaluations
):
    ensemble = "nve" if thermostat is None else "nvt"
    settings = MDSettings(
        ensemble=ensemble,
        thermostat=thermostat or "langevin",
        temperature_k=300,
        steps=7,
        interval=3,
        covariance_every=0,
        seed=1,
    )
    calculator = MLFFCalculator(cu_model, device="cpu")
    run_md(cu_vacancy(), calculator, settings)
    assert len(calculator_evaluations) == 8  # one evaluation per state, steps 0 to 7
    assert not any(c["compute_stress"] for c in calculator_evaluations)

    calculator_evaluations.clear()
    run_md(cu_vacancy(), calculator, settings, log=tmp_path / "md.csv")
    rows = read_log(tmp_path / "md.csv")
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 7]
    assert all(np.isfinite(float(r["pressure_bar"])) for r in rows)
    # the logged states compute their pressure in their own evaluation, and only they
    assert [c["compute_stress"] for c in calculator_evaluations] == [
        step in (0, 3, 6, 7) for step in range(8)
    ]
    assert calculator.include_stress is False  # as it was before the run


def test_npt_takes_forces_and_stress_from_one_evaluation(cu_model, calculator_evaluations):
    settings = MDSettings(
        ensemble="npt",
        temperature_k=300,
        pressure_bar=1e4,
        steps=5,
        barostat_time_fs=100.0,
        covariance_every=0,
        seed=0,
    )
    run_md(cu_vacancy(), MLFFCalculator(cu_model, device="cpu"), settings)
    assert [c["compute_stress"] for c in calculator_evaluations] == [True] * 6


def test_npt_changes_the_volume_and_logs_pressure(cu_model, tmp_path):
    atoms = cu_vacancy()
    volume = atoms.get_volume()
    settings = MDSettings(
        ensemble="npt",
        temperature_k=300,
        pressure_bar=1e4,
        timestep_fs=2.0,
        steps=60,
        barostat_time_fs=100.0,
        covariance_every=20,
        seed=0,
    )
    summary = run_md(
        atoms, MLFFCalculator(cu_model, device="cpu"), settings, log=tmp_path / "npt.csv"
    )
    rows = read_log(tmp_path / "npt.csv")
    assert {"pressure_bar", "volume_a3", "covariance_error"} <= set(rows[0])
    assert float(rows[-1]["volume_a3"]) == pytest.approx(atoms.get_volume())
    assert atoms.get_volume() != pytest.approx(volume, rel=1e-6)
    assert summary.covariance_checks == 3


def test_running_linear_fit_matches_polyfit():
    rng = np.random.default_rng(0)
    x = np.linspace(10.0, 11.0, 50)
    y = 3.0 * x + 1e3 + rng.normal(scale=0.1, size=50)
    fit = RunningLinearFit()
    for a, b in zip(x, y, strict=True):
        fit.add(a, b)
    assert fit.slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-9)


# --------------------------------------------------------------------------- stopping, checks


def test_sigterm_stops_after_the_step_with_valid_files(model_file, tmp_path):
    atoms = molecule("CH3CH2OH")

    def progress(steps_done, elapsed):
        if steps_done == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    settings = MDSettings(timestep_fs=0.5, steps=1000, interval=5, covariance_every=0, seed=0)
    summary = run_md(
        atoms,
        MLFFCalculator(model_file, device="cpu"),
        settings,
        trajectory=tmp_path / "run.extxyz",
        log=tmp_path / "run.csv",
        progress=progress,
    )
    assert signal.getsignal(signal.SIGTERM) is previous
    assert summary.stopped_by == "SIGTERM"
    assert summary.last_step == 7
    frames = ase.io.read(tmp_path / "run.extxyz", ":")
    assert [f.info["step"] for f in frames] == [0, 5, 7]  # the last state is always written
    np.testing.assert_allclose(frames[-1].positions, atoms.positions, atol=1e-7)
    assert [int(r["step"]) for r in read_log(tmp_path / "run.csv")] == [0, 5, 7]


def test_broken_model_is_caught_during_md(tmp_path):
    messages = []
    settings = MDSettings(steps=20, interval=5, covariance_every=5, seed=0)
    warn = MLFFCalculator(broken_model(), device="cpu", seed=0)
    summary = run_md(molecule("CH3CH2OH"), warn, settings, on_warning=messages.append)
    assert summary.covariance_checks == 4 and summary.covariance_failures == 4
    assert summary.stopped_by is None and summary.last_step == 20
    assert len(messages) == 4 and "FAILED" in messages[0] and messages[0].startswith("step 5")

    stop = MLFFCalculator(broken_model(), device="cpu", on_covariance_failure="raise", seed=0)
    summary = run_md(
        molecule("CH3CH2OH"),
        stop,
        settings,
        trajectory=tmp_path / "t.extxyz",
        log=tmp_path / "t.csv",
    )
    assert summary.stopped_by == "covariance failure"
    assert summary.last_step == 5 and "failed at step 5" in summary.error
    assert summary.covariance_checks == 1 and summary.covariance_failures == 1
    assert len(ase.io.read(tmp_path / "t.extxyz", ":")) == 2
    assert float(read_log(tmp_path / "t.csv")[-1]["covariance_error"]) > 1e-3


# --------------------------------------------------------------------------- CLI


def test_cli_nve_json_log_and_trajectory(model_file, ethanol_file, tmp_path):
    traj, log = tmp_path / "out.extxyz", tmp_path / "out.csv"
    result = run_ok(
        [
            "md",
            "run",
            model_file,
            ethanol_file,
            "--steps",
            20,
            "--timestep",
            0.5,
            "--traj",
            traj,
            "--log",
            log,
            "--interval",
            5,
            "--covariance-every",
            10,
            "--seed",
            1,
            "--json",
        ]
    )
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "steps",
        "steps_per_second",
        "ns_per_day",
        "mean_temperature_k",
        "energy_drift_mev_per_atom_per_ps",
        "covariance_checks",
        "covariance_max_rel_error",
    ):
        assert key in payload
    assert payload["steps"] == 20 and payload["covariance_checks"] == 2
    assert payload["covariance_max_rel_error"] < 1e-10
    frames = ase.io.read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert frames[0].has("momenta") and "forces" in frames[0].calc.results
    rows = read_log(log)
    assert list(rows[0]) == [
        "step",
        "time_ps",
        "potential_energy_ev",
        "kinetic_energy_ev",
        "total_energy_ev",
        "temperature_k",
        "covariance_error",
    ]
    assert rows[2]["covariance_error"] != "" and rows[1]["covariance_error"] == ""


def test_cli_initial_velocities_have_zero_momentum_unless_given(model_file, tmp_path):
    atoms = molecule("CH3CH2OH")
    momenta = np.random.default_rng(0).normal(size=(9, 3))
    atoms.set_momenta(momenta)
    ase.io.write(tmp_path / "moving.extxyz", atoms)
    traj = tmp_path / "t.extxyz"
    run_ok(["md", "run", model_file, tmp_path / "moving.extxyz", "--steps", 0, "--traj", traj])
    np.testing.assert_allclose(ase.io.read(traj).get_momenta(), momenta, atol=1e-7)
    ase.io.write(tmp_path / "still.xyz", molecule("CH3CH2OH"))
    run_ok(
        [
            "md",
            "run",
            model_file,
            tmp_path / "still.xyz",
            "--steps",
            0,
            "--traj",
            traj,
            "--temperature",
            500,
            "--seed",
            3,
        ]
    )
    drawn = ase.io.read(traj).get_momenta()
    assert np.abs(drawn).max() > 0.1
    assert np.abs(drawn.sum(axis=0)).max() < 1e-6


def test_cli_same_seed_same_trajectory(model_file, ethanol_file, tmp_path):
    """Seeded velocities and Langevin noise: the same seed repeats the run, another does not."""
    nvt = ["md", "run", model_file, ethanol_file, "--ensemble", "nvt", "--steps", 20]
    nvt += ["--timestep", 0.5, "--interval", 5, "--covariance-every", 0]
    runs = {}
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        run_ok([*nvt, "--seed", seed, "--traj", tmp_path / f"{name}.extxyz"])
        runs[name] = ase.io.read(tmp_path / f"{name}.extxyz", ":")
    assert len(runs["a"]) == len(runs["b"]) == 5
    for first, second in zip(runs["a"], runs["b"], strict=True):
        np.testing.assert_allclose(second.positions, first.positions, rtol=0, atol=SAME_RUN_A)
        np.testing.assert_allclose(second.get_momenta(), first.get_momenta(), atol=SAME_RUN_A)
    assert np.abs(runs["c"][-1].positions - runs["a"][-1].positions).max() > 1e-3


def test_cli_restart_continues_exactly(model_file, ethanol_file, tmp_path):
    common = ["--timestep", 0.5, "--interval", 5, "--covariance-every", 0, "--seed", 4]
    straight = tmp_path / "straight.extxyz"
    run_ok(["md", "run", model_file, ethanol_file, "--steps", 20, "--traj", straight, *common])
    split = tmp_path / "split.extxyz"
    log = tmp_path / "split.csv"
    run_ok(
        [
            "md",
            "run",
            model_file,
            ethanol_file,
            "--steps",
            10,
            "--traj",
            split,
            "--log",
            log,
            *common,
        ]
    )
    run_ok(
        [
            "md",
            "run",
            model_file,
            "--restart",
            split,
            "--steps",
            10,
            "--traj",
            split,
            "--log",
            log,
            *common,
        ]
    )
    frames = ase.io.read(split, ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert [int(r["step"]) for r in read_log(log)] == [0, 5, 10, 15, 20]
    reference = ase.io.read(straight, ":")
    for frame, expected in zip(frames, reference, strict=True):
        np.testing.assert_allclose(frame.positions, expected.positions, rtol=0, atol=RESTART_A)
        np.testing.assert_allclose(frame.get_momenta(), expected.get_momenta(), atol=RESTART_A)
    # ...and the check can fail: the atoms move much more than that between frames
    assert np.abs(reference[-1].positions - reference[-2].positions).max() > 1e3 * RESTART_A


@pytest.mark.parametrize("suffix", [".dcd", ".xtc"])
def test_cli_mdtraj_trajectory_reads_back(model_file, cu_cif, tmp_path, suffix):
    """The same seeded run written as extxyz and as DCD/XTC: every frame agrees to what the
    format keeps, far closer than the atoms move between frames."""
    import mdtraj

    traj = tmp_path / f"cu{suffix}"
    xyz = tmp_path / "cu.extxyz"
    for path in (traj, xyz):
        run_ok(
            [
                "md",
                "run",
                model_file,
                cu_cif,
                "--steps",
                20,
                "--timestep",
                2.0,
                "--interval",
                5,
                "--traj",
                path,
                "--seed",
                2,
                "--covariance-every",
                0,
            ]
        )
    assert (tmp_path / "cu.pdb").is_file()
    loaded = mdtraj.load(str(traj), top=str(tmp_path / "cu.pdb"))
    reference = ase.io.read(xyz, ":")
    assert loaded.n_frames == len(reference) == 5 and loaded.n_atoms == 31
    tolerance = FORMAT_PRECISION_A[suffix]
    for k, frame in enumerate(reference):
        np.testing.assert_allclose(loaded.xyz[k] * 10, frame.positions, rtol=0, atol=tolerance)
        if k:
            moved = np.abs(frame.positions - reference[k - 1].positions).max()
            assert moved > 5 * tolerance  # a frame written at the wrong step would fail
    np.testing.assert_allclose(
        loaded.unitcell_lengths[0] * 10, reference[0].cell.lengths(), rtol=1e-5
    )
    assert loaded.unitcell_angles[0] == pytest.approx([90, 90, 90])


def test_cli_h5_trajectory_or_a_clear_error(model_file, ethanol_file, tmp_path):
    traj = tmp_path / "t.h5"
    result = invoke(
        ["md", "run", model_file, ethanol_file, "--steps", 4, "--interval", 2, "--traj", traj]
    )
    try:
        import tables  # noqa: F401
    except ImportError:
        assert_one_line_error(result, "t.h5", "tables")
        return
    import mdtraj

    assert result.exit_code == 0, result.output
    assert mdtraj.load(str(traj)).n_frames == 3


def test_non_finite_energy_stops_the_run_with_a_clear_error(tmp_path):
    from ase.calculators.calculator import Calculator

    class NaNAfterFiveCalls(Calculator):
        implemented_properties = ["energy", "forces"]
        calls = 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            super().calculate(atoms, properties, system_changes)
            self.calls += 1
            energy = np.nan if self.calls > 5 else 0.0
            self.results = {"energy": energy, "forces": np.zeros((len(self.atoms), 3))}

    settings = MDSettings(steps=50, interval=2, covariance_every=0, seed=0)
    summary = run_md(
        molecule("H2O"), NaNAfterFiveCalls(), settings, trajectory=tmp_path / "t.extxyz"
    )
    assert summary.stopped_by == "unstable" and summary.last_step == 5
    assert "step 5: the energy is not finite" in summary.error
    assert [f.info["step"] for f in ase.io.read(tmp_path / "t.extxyz", ":")] == [0, 2, 4]


def test_cli_npt_needs_a_periodic_cell(model_file, ethanol_file):
    result = invoke(["md", "run", model_file, ethanol_file, "--ensemble", "npt", "--steps", 1])
    assert_one_line_error(result, "npt", "periodic")


def test_cli_stop_on_covariance_failure(use_broken_model, model_file, ethanol_file, tmp_path):
    result = invoke(
        [
            "md",
            "run",
            model_file,
            ethanol_file,
            "--steps",
            30,
            "--covariance-every",
            10,
            "--on-covariance-failure",
            "stop",
            "--log",
            tmp_path / "b.csv",
        ]
    )
    assert_one_line_error(result, "covariance check failed at step 10")
    assert int(read_log(tmp_path / "b.csv")[-1]["step"]) == 10
    result = run_ok(
        ["md", "run", model_file, ethanol_file, "--steps", 10, "--covariance-every", 5, "--json"]
    )
    assert "warning: step 5: covariance check" in result.stderr
    assert json.loads(result.stdout)["covariance_checks"] == 2
    assert json.loads(result.stdout)["compile"] == "none"  # --compile auto: too short to compile


def test_cli_bad_inputs_end_in_one_line_errors(model_file, ethanol_file, tmp_path):
    nan = molecule("H2O")
    nan.positions[1, 0] = np.nan
    ase.io.write(tmp_path / "nan.xyz", nan)
    flat = ase.Atoms(
        "Cu2", positions=[[0, 0, 0], [1, 1, 0]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True
    )
    ase.io.write(tmp_path / "flat.extxyz", flat)
    (tmp_path / "garbage.cif").write_text("data_x\n_cell_length_a nonsense\nloop_\n_atom\n")
    run = ["md", "run", model_file, ethanol_file, "--steps", 1]
    cases = [
        (["md", "run", model_file, tmp_path / "nan.xyz"], ["nan.xyz", "not finite"]),
        (["md", "run", model_file, tmp_path / "flat.extxyz"], ["flat.extxyz", "zero volume"]),
        (["md", "run", model_file, tmp_path / "garbage.cif"], ["garbage.cif"]),
        (["md", "run", model_file, tmp_path / "missing.xyz"], ["missing.xyz"]),
        (["md", "run", tmp_path / "none.pt", ethanol_file], ["none.pt"]),
        ([*run, "--timestep", -1], ["--timestep"]),
        ([*run, "--timestep", "nan"], ["--timestep"]),
        ([*run, "--steps", -5], ["--steps"]),
        ([*run, "--temperature", -10], ["--temperature"]),
        ([*run, "--ensemble", "nvt", "--temperature", 0], ["--temperature"]),
        ([*run, "--traj", tmp_path / "x.foo"], ["x.foo"]),
        ([*run, "--ensemble", "npe"], ["--ensemble"]),
        ([*run, "--restart", tmp_path / "missing.extxyz"], ["missing.extxyz"]),
    ]
    for args, needles in cases:
        assert_one_line_error(invoke(args), *needles)


def test_cli_unknown_element_names_the_file(model_file, tmp_path):
    ase.io.write(tmp_path / "nacl.xyz", ase.Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]]))
    result = invoke(["md", "run", model_file, tmp_path / "nacl.xyz", "--steps", 1])
    assert_one_line_error(result, "nacl.xyz", "Na")


# --------------------------------------------------------------------------- analyze


def test_analyze_dcd_of_a_crystal(model_file, cu_cif, tmp_path):
    traj = tmp_path / "cu.dcd"
    run_ok(
        [
            "md",
            "run",
            model_file,
            cu_cif,
            "--steps",
            10,
            "--interval",
            2,
            "--traj",
            traj,
            "--log",
            tmp_path / "cu.csv",
            "--covariance-every",
            0,
        ]
    )
    out = tmp_path / "analysis"
    result = run_ok(["md", "analyze", traj, "--out", out, "--json", "--bins", 50])
    summary = json.loads(result.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["n_frames"] == 6 and summary["periodic"]
    # nearest neighbours of fcc Cu at a/sqrt(2) = 2.55 Å
    assert summary["rdf"]["Cu-Cu"]["first_peak_a"] == pytest.approx(2.55, abs=0.15)
    assert summary["h_r"]["min_distance_a"] > 2.0
    assert summary["rmsd_a"]["max"] < 0.5
    assert summary["thermo"]["source"].endswith("cu.csv")
    for name in ("rdf.png", "distance_histogram.png", "rmsd.png", "thermo.png"):
        assert (out / name).stat().st_size > 1000


def test_analyze_extxyz_of_a_molecule(model_file, ethanol_file, tmp_path):
    traj = tmp_path / "eth.extxyz"
    run_ok(["md", "run", model_file, ethanol_file, "--steps", 10, "--interval", 5, "--traj", traj])
    result = run_ok(["md", "analyze", traj, "--json"])
    summary = json.loads(result.stdout)
    assert summary["rdf"] is None and not summary["periodic"]
    assert 0.5 < summary["h_r"]["min_distance_a"] < 1.2  # O-H, C-H bonds
    assert summary["thermo"]["mean_temperature_k"] > 0
    assert (tmp_path / "eth_analysis" / "rmsd.png").is_file()


def test_analyze_bad_file_is_one_line_error(tmp_path):
    (tmp_path / "bad.dcd").write_bytes(b"not a dcd")
    assert_one_line_error(invoke(["md", "analyze", tmp_path / "bad.dcd"]), "bad.pdb")
    (tmp_path / "bad.pdb").write_text("garbage\n")
    assert_one_line_error(invoke(["md", "analyze", tmp_path / "bad.dcd"]), "bad.dcd")


@pytest.mark.parametrize("barostat", ["isotropic", "full"])
def test_npt_of_both_engines_is_the_same_trajectory(cu_model_file, tmp_path, barostat):
    """Both engines count 3N - 3 degrees of freedom in the particles' chain at the target
    temperature, so the ASE engine's MTK NPT and the batched engine's agree step by step."""
    atoms = cu_vacancy()
    rng = np.random.default_rng(3)
    masses = atoms.get_masses()[:, None]
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * 300.0)
    atoms.set_momenta(momenta - masses * momenta.sum(0) / masses.sum())
    ase.io.write(tmp_path / "cu.extxyz", atoms)
    frames = {}
    for engine in ("ase", "batched"):
        run_ok(
            ["md", "run", cu_model_file, tmp_path / "cu.extxyz", "--engine", engine,
             "--ensemble", "npt", "--barostat", barostat, "--pressure", "10000",
             "--steps", "30", "--interval", "10", "--traj", tmp_path / f"{engine}.extxyz"]
        )  # fmt: skip
        frames[engine] = ase.io.read(tmp_path / f"{engine}.extxyz", ":")
    assert len(frames["ase"]) == len(frames["batched"]) == 4
    for ours, theirs in zip(frames["batched"], frames["ase"], strict=True):
        np.testing.assert_allclose(ours.positions, theirs.positions, atol=1e-8)
        np.testing.assert_allclose(ours.cell.array, theirs.cell.array, atol=1e-8)
    assert abs(frames["ase"][-1].get_volume() - atoms.get_volume()) > 1e-3  # the cell moved
