"""Trajectory files keep the geometry: distances read back equal those written."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from mlff.md.trajectory import open_trajectory, read_mdtraj_frames

# DCD stores float32 Å; XTC rounds coordinates to 1e-3 nm
TOLERANCE_A = {".dcd": 1e-4, ".xtc": 2e-2}


@pytest.mark.parametrize("suffix", sorted(TOLERANCE_A))
def test_a_skewed_cell_in_any_orientation_reads_back_with_its_distances(tmp_path, suffix):
    atoms = bulk("Cu", "fcc", a=3.61).repeat(3)  # a primitive cell, not in standard orientation
    atoms.rattle(0.05, seed=1)
    writer = open_trajectory(tmp_path / f"md{suffix}", atoms)
    writer.write(atoms, step=0, time_fs=0.0)
    writer.close()
    back = read_mdtraj_frames(tmp_path / f"md{suffix}")[0]
    written, read = atoms.get_all_distances(mic=True), back.get_all_distances(mic=True)
    assert np.abs(read - written).max() < TOLERANCE_A[suffix]
