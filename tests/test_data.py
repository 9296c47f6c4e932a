"""Reading labelled frames: key detection, conversions, one-line errors, splits."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlff.data import LabelKeys, elements_of, read_labelled, split_indices
from mlff.errors import DataError
from tests.training import labelled


def test_calculator_results_are_found(tmp_path):
    frames = labelled.molecules(4)
    data = read_labelled(labelled.write(tmp_path / "m.extxyz", frames))
    assert len(data) == 4
    assert data[1].energy == pytest.approx(frames[1].get_potential_energy())
    np.testing.assert_allclose(data[1].forces, frames[1].get_forces(), atol=1e-6)
    assert data[0].stress is None
    assert data[2].where.endswith("m.extxyz, frame 2")


def test_ref_keys_in_info_and_arrays_are_detected(tmp_path):
    frames = labelled.molecules(3)
    path = labelled.write(tmp_path / "ref.extxyz", labelled.with_ref_keys(frames))
    data = read_labelled(path)
    assert data[2].energy == pytest.approx(frames[2].get_potential_energy())
    np.testing.assert_allclose(data[2].forces, frames[2].get_forces(), atol=1e-6)


def test_stress_voigt_and_traj_format(tmp_path):
    frames = labelled.copper(2)
    path = tmp_path / "cu.traj"
    ase.io.write(str(path), frames)
    data = read_labelled(path)
    expected = frames[0].get_stress(voigt=False)
    np.testing.assert_allclose(data[0].stress, expected, atol=1e-10)
    np.testing.assert_allclose(data[0].stress, data[0].stress.T)


def test_ase_database_and_several_files(tmp_path):
    molecules, copper = labelled.molecules(3), labelled.copper(2)
    database = tmp_path / "cu.db"
    ase.io.write(str(database), copper)
    data = read_labelled([labelled.write(tmp_path / "m.extxyz", molecules), database])
    assert len(data) == 5
    assert data[4].where.endswith("cu.db, frame 1")
    assert data[4].energy == pytest.approx(copper[1].get_potential_energy())
    np.testing.assert_allclose(data[4].stress, copper[1].get_stress(voigt=False), atol=1e-10)


def test_virial_is_converted_to_stress(tmp_path):
    atoms = labelled.copper(1)[0]
    stress = atoms.get_stress(voigt=False)
    copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True)
    copy.info["energy_dft"] = atoms.get_potential_energy()
    copy.info["virial"] = (-stress * atoms.get_volume()).reshape(9)
    path = labelled.write(tmp_path / "virial.extxyz", [copy])
    data = read_labelled(path, LabelKeys(energy="energy_dft"))
    np.testing.assert_allclose(data[0].stress, stress, atol=1e-8)
    assert data[0].forces is None


def test_given_keys_override_detection(tmp_path):
    frames = labelled.molecules(2)
    for atoms in frames:
        atoms.info["my_e"] = 1.5
    data = read_labelled(labelled.write(tmp_path / "k.extxyz", frames), LabelKeys(energy="my_e"))
    assert data[0].energy == 1.5


def _problem(path, keys=None) -> str:
    with pytest.raises(DataError) as info:
        read_labelled(path, keys)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_frame_without_energy_names_file_frame_and_keys(tmp_path):
    frames = labelled.molecules(3)
    frames[2].calc = None
    frames[2].info["comment"] = "x"
    message = _problem(labelled.write(tmp_path / "bad.extxyz", frames))
    assert "bad.extxyz, frame 2" in message
    assert "energy" in message and "keys found" in message


def test_file_without_any_label_lists_the_keys_found(tmp_path):
    atoms = labelled.molecules(1)[0]
    bare = Atoms(atoms.numbers, atoms.positions)
    bare.info["total"] = 1.0
    message = _problem(labelled.write(tmp_path / "none.extxyz", [bare]))
    assert "none.extxyz, frame 0" in message and "no energy label" in message
    assert "total" in message and "--energy-key" in message


def test_nan_labels_are_refused(tmp_path):
    frames = labelled.molecules(3)
    frames[1].calc = SinglePointCalculator(
        frames[1], energy=float("nan"), forces=frames[1].get_forces()
    )
    message = _problem(labelled.write(tmp_path / "nan.extxyz", frames))
    assert "nan.extxyz, frame 1" in message and "NaN" in message

    frames = labelled.molecules(3)
    forces = frames[2].get_forces()
    forces[0, 1] = np.nan
    frames[2].calc = SinglePointCalculator(
        frames[2], energy=frames[2].get_potential_energy(), forces=forces
    )
    message = _problem(labelled.write(tmp_path / "nanf.extxyz", frames))
    assert "frame 2" in message and "forces" in message


def test_unknown_given_key_is_refused(tmp_path):
    path = labelled.write(tmp_path / "m.extxyz", labelled.molecules(2))
    message = _problem(path, LabelKeys(forces="REF_forces"))
    assert "m.extxyz, frame 0" in message and "'REF_forces'" in message
    assert "keys found" in message and "forces" in message


def test_missing_forces_in_a_later_frame(tmp_path):
    frames = labelled.with_ref_keys(labelled.molecules(3))
    del frames[1].arrays["REF_forces"]
    message = _problem(labelled.write(tmp_path / "f.extxyz", frames))
    assert "frame 1" in message and "REF_forces" in message


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\na structure file\n")
    assert "garbage.extxyz" in _problem(garbage)
    assert "file not found" in _problem(tmp_path / "absent.extxyz")


def test_split_is_reproducible_and_disjoint():
    train, valid = split_indices(100, 0.1, seed=3)
    again = split_indices(100, 0.1, seed=3)
    assert len(valid) == 10 and len(train) == 90
    assert not set(train) & set(valid)
    np.testing.assert_array_equal(train, again[0])
    order = np.random.default_rng(3).permutation(100)
    assert set(valid) == set(order[:10])
    with pytest.raises(DataError, match="cannot be split"):
        split_indices(1, 0.5, seed=0)


def test_elements_are_ordered_by_atomic_number(tmp_path):
    data = read_labelled(labelled.write(tmp_path / "m.extxyz", labelled.molecules(2)))
    assert elements_of(data) == ["H", "C", "O"]
