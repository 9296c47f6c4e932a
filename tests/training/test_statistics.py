"""Reference energies by least squares, energy scale from forces, neighbour count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms

from mlff.data import LabelledFrame
from mlff.errors import DataError
from mlff.training.dataset import GraphSet
from mlff.training.statistics import (
    average_neighbours,
    data_statistics,
    fit_reference_energies,
    read_reference_energies,
)


def _frames(e0: dict[str, float], noise: float = 0.0, seed: int = 0) -> list[LabelledFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for k, formula in enumerate(["H2O", "CH4", "CO2", "H2", "CH3OH", "O2", "C2H6", "HCOOH"]):
        atoms = Atoms(formula, positions=rng.uniform(0, 4, size=(len(Atoms(formula)), 3)))
        energy = sum(e0[s] for s in atoms.get_chemical_symbols()) + noise * rng.normal()
        forces = rng.normal(scale=0.5, size=(len(atoms), 3))
        frames.append(LabelledFrame(atoms, energy, forces, None, f"f, frame {k}"))
    return frames


def test_least_squares_recovers_reference_energies():
    e0 = {"H": -13.6, "C": -1030.0, "O": -2040.5}
    data = GraphSet(_frames(e0), cutoff=3.0)
    fitted = fit_reference_energies(data, ["H", "C", "O"])
    for symbol, value in e0.items():
        assert fitted[symbol] == pytest.approx(value, abs=1e-8)


def test_scale_is_the_rms_force_and_neighbours_are_counted():
    e0 = {"H": -1.0, "C": -2.0, "O": -3.0}
    frames = _frames(e0, noise=0.1)
    data = GraphSet(frames, cutoff=3.0)
    statistics = data_statistics(data, ["H", "C", "O"])
    forces = np.concatenate([f.forces.ravel() for f in frames])
    assert statistics.energy_scale == pytest.approx(np.sqrt(np.mean(forces**2)))
    assert statistics.energy_shift == 0.0
    edges = sum(g.n_edges for g in data.graphs)
    atoms = sum(g.n_atoms for g in data.graphs)
    assert average_neighbours(data) == pytest.approx(max(edges / atoms, 1.0))


def test_given_reference_energies_are_used_and_checked(tmp_path):
    e0 = {"H": -1.0, "C": -2.0, "O": -3.0}
    data = GraphSet(_frames(e0), cutoff=3.0)
    path = tmp_path / "e0.json"
    path.write_text(json.dumps({"H": -0.5, "C": -1.5, "O": -2.5, "N": 0.0}))
    reference = read_reference_energies(path, ["H", "C", "O"])
    assert data_statistics(data, ["H", "C", "O"], reference).reference_energies["C"] == -1.5
    path.write_text(json.dumps({"H": -0.5}))
    with pytest.raises(DataError, match="lacks element.*C, O"):
        read_reference_energies(path, ["H", "C", "O"])
    path.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_reference_energies(path, ["H"])
