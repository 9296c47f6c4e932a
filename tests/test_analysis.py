"""Trajectory analysis in :mod:`mlff.analysis`: g(r) normalisation, fcc shells, RMSD, thermo."""

from __future__ import annotations

import math

import ase
import numpy as np
import pytest
from ase import units
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from mlff.analysis import (
    Frames,
    analyse,
    coordination_number,
    first_minimum,
    first_peak,
    max_rdf_range,
    pair_histogram,
    radial_distribution,
    rdf_peaks,
    read_mdtraj,
    read_thermo_log,
    rmsd,
    thermo_from_frames,
    thermo_summary,
)

CU_A = 3.61  # Å, fcc lattice constant
# Ideal gas: 50 uniform random points in a 20 Å box, 200 frames, 0.5 Å bins up to 10 Å.
GAS_ATOMS, GAS_BOX, GAS_FRAMES, GAS_BINS = 50, 20.0, 200, 20
# Pair counts in a bin are close to Poisson: 5 sigma per bin leaves a chance of ~1e-5 that one
# of the 20 bins fails by accident, yet catches 2 % on the pooled g (N^2 for N (N - 1) pairs).
SIGMAS = 5.0


def fcc_cu() -> ase.Atoms:
    return bulk("Cu", "fcc", a=CU_A, cubic=True).repeat(3)


def ideal_gas(cell: np.ndarray, seed: int = 0) -> list[ase.Atoms]:
    rng = np.random.default_rng(seed)
    return [
        ase.Atoms(
            f"Ar{GAS_ATOMS}", scaled_positions=rng.random((GAS_ATOMS, 3)), cell=cell, pbc=True
        )
        for _ in range(GAS_FRAMES)
    ]


# --------------------------------------------------------------------------- g(r)


@pytest.mark.parametrize(
    "cell",
    [
        np.eye(3) * GAS_BOX,
        # skewed: minimum images of a triclinic cell are where approximate schemes go wrong
        np.array(
            [[GAS_BOX, 0, 0], [0.4 * GAS_BOX, GAS_BOX, 0], [0.3 * GAS_BOX, 0.2 * GAS_BOX, GAS_BOX]]
        ),
    ],
    ids=["cubic", "triclinic"],
)
def test_ideal_gas_has_g_of_one(cell):
    frames = Frames.from_atoms(ideal_gas(cell))
    r_max = max_rdf_range(frames.cells)
    r, g = radial_distribution(frames, r_max, GAS_BINS)
    edges = np.linspace(0.0, r_max, GAS_BINS + 1)
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    pairs = GAS_ATOMS * (GAS_ATOMS - 1) / 2
    expected = GAS_FRAMES * pairs * shells / abs(np.linalg.det(cell))  # ideal-gas pair counts
    far = r > 2.0  # below, a bin expects too few pairs for a tight check
    assert np.all(np.abs(g[far] - 1.0) < SIGMAS / np.sqrt(expected[far])), g
    pooled = np.sum(g[far] * expected[far]) / np.sum(expected[far])
    assert abs(pooled - 1.0) < SIGMAS / np.sqrt(np.sum(expected[far]))


def test_max_rdf_range_is_half_the_narrowest_width():
    assert max_rdf_range(np.eye(3)[None] * 10.0) == pytest.approx(5.0)
    # primitive fcc: the planes (111) are a / sqrt(3) apart
    primitive = bulk("Cu", "fcc", a=CU_A).cell.array
    assert max_rdf_range(primitive) == pytest.approx(CU_A / (2.0 * math.sqrt(3.0)))
    frames = Frames.from_atoms([fcc_cu()])
    with pytest.raises(ValueError, match="half the narrowest cell width"):
        pair_histogram(frames, 6.0, 10)


def test_fcc_cu_peaks_and_coordination():
    atoms = fcc_cu()
    r, g = radial_distribution([atoms], 5.4, 270)
    width = r[1] - r[0]
    r_peak, _ = first_peak(r, g)
    assert abs(r_peak - CU_A / math.sqrt(2.0)) <= width / 2
    peaks = rdf_peaks(r, g)
    assert abs(peaks[1] - CU_A) <= width / 2
    r_min = first_minimum(r, g)
    assert CU_A / math.sqrt(2.0) < r_min < CU_A
    density = (len(atoms) - 1) / atoms.get_volume()
    assert coordination_number(r, g, density, r_min) == pytest.approx(12.0, abs=1e-9)
    # the next shell (6 at a) brings 18
    r_min2 = 0.5 * (CU_A + CU_A * math.sqrt(1.5))
    assert coordination_number(r, g, density, r_min2) == pytest.approx(18.0, abs=1e-9)
    # unwrapped positions (an atom a cell vector away) change nothing
    moved = atoms.copy()
    moved.positions[5] += moved.cell[1]
    np.testing.assert_allclose(radial_distribution([moved], 5.4, 270)[1], g, atol=1e-12)
    # the partial g of the only pair is the total g
    np.testing.assert_allclose(radial_distribution([atoms], 5.4, 270, pair="Cu-Cu")[1], g)


def test_rattled_fcc_cu_keeps_its_first_shell():
    frames = []
    for seed in range(10):
        atoms = fcc_cu()
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    r, g = radial_distribution(frames, 5.4, 108)
    assert first_peak(r, g)[0] == pytest.approx(CU_A / math.sqrt(2.0), abs=0.05)
    density = (len(frames[0]) - 1) / frames[0].get_volume()
    assert coordination_number(r, g, density, first_minimum(r, g)) == pytest.approx(12.0)


def test_molecule_histogram_counts_every_pair_once():
    atoms = molecule("CH3CH2OH")  # 2 C, 6 H, 1 O
    histogram = pair_histogram(Frames.from_atoms([atoms, atoms]), 10.0, 100)
    assert histogram.total.sum() == 2 * 36
    assert histogram.n_pairs == {"C-C": 1, "C-H": 12, "C-O": 2, "H-H": 15, "H-O": 6}
    assert {name: int(c.sum()) for name, c in histogram.by_pair.items()} == {
        name: 2 * n for name, n in histogram.n_pairs.items()
    }
    shortest = np.min(atoms.get_all_distances()[np.triu_indices(len(atoms), 1)])
    first = histogram.edges[np.flatnonzero(histogram.total)[0]]
    assert first <= shortest < first + 0.1
    # in a box far larger than the molecule, the periodic histogram is the same
    boxed = atoms.copy()
    boxed.cell, boxed.pbc = np.eye(3) * 25.0, True
    np.testing.assert_array_equal(pair_histogram(Frames.from_atoms([boxed]), 10.0, 100).total * 2,
                                  histogram.total)  # fmt: skip


def test_molecule_without_cell_needs_a_volume():
    atoms = molecule("CH3CH2OH")
    with pytest.raises(ValueError, match="no periodic cell"):
        radial_distribution([atoms], 5.0, 50)
    r, g = radial_distribution([atoms], 5.0, 50, volume=1000.0)
    assert r.shape == g.shape == (50,) and g.max() > 0


def test_dcd_reads_back_as_the_frames(tmp_path):
    from mlff.md.trajectory import to_mdtraj

    frames = []
    for seed in range(3):
        atoms = fcc_cu()
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    trajectory = to_mdtraj(frames)
    trajectory.save_dcd(str(tmp_path / "cu.dcd"))
    trajectory[0].save_pdb(str(tmp_path / "cu.pdb"))
    read = read_mdtraj(tmp_path / "cu.dcd")
    assert read.time_ps is None  # DCD keeps no time
    np.testing.assert_allclose(read.positions, np.stack([f.positions for f in frames]), atol=1e-4)
    np.testing.assert_allclose(read.cells, np.stack([f.cell.array for f in frames]), atol=1e-4)
    (tmp_path / "cu.pdb").unlink()
    with pytest.raises(ValueError, match="cu.pdb"):
        read_mdtraj(tmp_path / "cu.dcd")


def test_frames_refuse_other_atoms():
    with pytest.raises(ValueError, match="run.xyz, frame 1"):
        Frames.from_atoms([molecule("H2O"), molecule("NH3")], where="run.xyz")


# --------------------------------------------------------------------------- RMSD


def test_rmsd_identical_shifted_rotated_and_mirrored():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)) * 3.0
    np.testing.assert_allclose(rmsd(np.stack([x, x])), 0.0, atol=1e-12)
    shift = np.array([0.3, -0.4, 1.2])
    assert rmsd(np.stack([x, x + shift]), align=False)[1] == pytest.approx(np.linalg.norm(shift))
    assert rmsd(np.stack([x, x + shift]))[1] == pytest.approx(0.0, abs=1e-12)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))  # proper
    rotated = x @ rotation.T + shift
    assert rmsd(np.stack([x, rotated]))[1] == pytest.approx(0.0, abs=1e-10)
    assert rmsd(np.stack([x, rotated]), align=False)[1] > 1.0
    # a mirror image is no rotation away: alignment must not reflect
    assert rmsd(np.stack([x, x * [1, 1, -1]]))[1] > 0.5
    # one atom of N moved by d: sqrt(d^2 / N) without alignment
    moved = x.copy()
    moved[3, 0] += 0.5
    assert rmsd(np.stack([x, moved]), align=False)[1] == pytest.approx(0.5 / math.sqrt(20))


def test_rmsd_agrees_with_mdtraj():
    import mdtraj

    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 3)) * 2.0
    frames = np.stack([x + rng.normal(size=x.shape) * 0.3 for _ in range(5)])
    topology = mdtraj.Topology()
    residue = topology.add_residue("X", topology.add_chain())
    for _ in range(len(x)):
        topology.add_atom("C", mdtraj.element.carbon, residue)
    trajectory = mdtraj.Trajectory(frames / 10.0, topology)
    reference = mdtraj.rmsd(trajectory, trajectory, 0) * 10.0
    np.testing.assert_allclose(rmsd(frames), reference, atol=1e-4)


# --------------------------------------------------------------------------- thermodynamics


def test_thermo_log_reading_and_summary(tmp_path):
    log = tmp_path / "md.csv"
    log.write_text(
        "step,time_ps,potential_energy_ev,kinetic_energy_ev,total_energy_ev,temperature_k\n"
        "0,0.0,-10.0,0.5,-9.5,290\n"
        "10,0.01,-10.1,0.6,-9.5,310\n"
        "20,0.02,-10.2,,,\n"
    )
    traces = read_thermo_log(log)
    np.testing.assert_allclose(traces["time_ps"], [0.0, 0.01, 0.02])
    assert math.isnan(traces["temperature_k"][2])
    summary = thermo_summary(traces)
    assert summary["mean_temperature_k"] == pytest.approx(300.0)
    assert summary["std_temperature_k"] == pytest.approx(10.0)
    assert summary["total_energy_range_ev"] == pytest.approx(0.0)
    assert thermo_summary({"temperature_k": [math.nan], "total_energy_ev": []}) == {
        "mean_temperature_k": None,
        "std_temperature_k": None,
        "total_energy_range_ev": None,
    }


def test_thermo_log_errors_name_the_file_and_row(tmp_path):
    log = tmp_path / "md.csv"
    log.write_text("step,time_ps,temperature_k\n0,0.0,300\n1,0.001,hot\n")
    with pytest.raises(ValueError, match=r"md.csv, row 2: temperature_k 'hot'"):
        read_thermo_log(log)
    log.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="md.csv: not an mlff md log"):
        read_thermo_log(log)
    log.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="md.csv: not an mlff md log"):
        read_thermo_log(log)


def test_thermo_from_frames_temperature_and_energy():
    atoms = molecule("H2O")
    masses = atoms.get_masses()
    velocities = np.random.default_rng(3).normal(size=(3, 3)) * 0.01
    velocities -= (masses[:, None] * velocities).sum(0) / masses.sum()
    atoms.set_velocities(velocities)
    atoms.info["time_fs"] = 250.0
    atoms.calc = SinglePointCalculator(atoms, energy=-14.0)
    kinetic = 0.5 * np.sum(masses[:, None] * velocities**2)
    traces = thermo_from_frames([atoms])
    assert traces["time_ps"][0] == pytest.approx(0.25)
    assert traces["temperature_k"][0] == pytest.approx(2 * kinetic / (6 * units.kB))
    assert traces["total_energy_ev"][0] == pytest.approx(-14.0 + kinetic)
    assert thermo_from_frames([molecule("H2O")]) is None  # no energies, no momenta


# --------------------------------------------------------------------------- all at once


def test_analyse_clamps_r_max_and_reports_rdf_only_with_a_cell():
    crystal = analyse(Frames.from_atoms([fcc_cu()]), 8.0, 100)
    assert crystal.summary["r_max_a"] == pytest.approx(1.5 * CU_A)
    assert crystal.summary["rdf"]["Cu-Cu"]["first_peak_a"] == pytest.approx(2.553, abs=0.06)
    assert crystal.summary["rmsd_a"]["max"] == pytest.approx(0.0, abs=1e-12)
    molecule_result = analyse(Frames.from_atoms([molecule("CH3CH2OH")]), 6.0, 60)
    assert molecule_result.rdf is None and molecule_result.summary["rdf"] is None
    assert molecule_result.h.sum() == 36


def test_a_batched_log_is_read_one_system_at_a_time(tmp_path):
    path = tmp_path / "md.csv"
    path.write_text(
        "system,step,time_ps,potential_energy_ev,kinetic_energy_ev,total_energy_ev,temperature_k\n"
        "0,0,0,-1,1,0,300\n1,0,0,-2,1,-1,400\n0,10,0.01,-1,1,0,310\n1,10,0.01,-2,1,-1,410\n"
    )
    traces = read_thermo_log(path, system=1)
    np.testing.assert_array_equal(traces["temperature_k"], [400.0, 410.0])
    with pytest.raises(ValueError, match="md.csv: the log holds 2 systems"):
        read_thermo_log(path)
    with pytest.raises(ValueError, match="no rows of system 5"):
        read_thermo_log(path, system=5)
