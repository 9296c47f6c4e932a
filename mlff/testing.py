"""Reusable physics checks for any mlff model: symmetry and finite-difference derivatives.

Shipped inside the package so the test suite, ``mlff check`` and users share one implementation.
Each function returns the errors it measured (floats, eV, eV/Å, eV/Å³); callers choose tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

import ase
import numpy as np

from mlff.forces import evaluate
from mlff.graph import graphs_from_atoms


@dataclass
class Prediction:
    """Model outputs for one structure, as float64 numpy arrays."""

    energy: float  # eV
    forces: np.ndarray  # (n_atoms, 3) eV/Å
    stress: np.ndarray | None  # (3, 3) eV/Å³, None without a periodic cell


def predict(model, atoms: ase.Atoms, stress: bool = True) -> Prediction:
    """Energy, forces and (for periodic cells, unless ``stress=False``) the 3x3 stress of
    ``model`` at ``atoms``."""
    return predict_many(model, [atoms], stress=stress)[0]


def predict_many(model, structures: list[ase.Atoms], stress: bool = True) -> list[Prediction]:
    """Predictions for several structures evaluated together as one batch."""
    graph = graphs_from_atoms(structures, model.cutoff)
    periodic = [stress and bool(np.any(a.pbc)) for a in structures]
    out = evaluate(model, graph, compute_forces=True, compute_stress=any(periodic))
    forces = out["forces"].detach().cpu().double().numpy()
    offsets = np.cumsum([0] + [len(a) for a in structures])
    predictions = []
    for k in range(len(structures)):
        stress = out["stress"][k].detach().cpu().double().numpy() if periodic[k] else None
        predictions.append(
            Prediction(
                energy=float(out["energy"][k].item()),
                forces=forces[offsets[k] : offsets[k + 1]],
                stress=stress,
            )
        )
    return predictions


def transformed(
    atoms: ase.Atoms,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    permutation: np.ndarray | None = None,
    wrap: bool = False,
) -> ase.Atoms:
    """A copy of ``atoms`` with positions (and cell) rotated, translated and atoms permuted;
    ``wrap`` puts atoms back into a periodic cell afterwards (other images become neighbours)."""
    new = atoms.copy()
    new.calc = None
    if permutation is not None:
        new = new[np.asarray(permutation)]
    if rotation is not None:
        new.set_cell(np.asarray(new.get_cell()) @ rotation.T, scale_atoms=False)
        new.set_positions(new.get_positions() @ rotation.T)
    if translation is not None:
        new.set_positions(new.get_positions() + translation)
    if wrap and np.any(new.pbc):
        new.wrap()
    return new


@dataclass
class SymmetryErrors:
    """Largest deviations between the transformed prediction and the transformed reference."""

    energy: float  # eV per atom
    forces: float  # eV/Å, max absolute component
    stress: float  # eV/Å³, max absolute component (0 without a cell)


def symmetry_errors(
    model,
    atoms: ase.Atoms,
    rotation: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    permutation: np.ndarray | None = None,
    reference: Prediction | None = None,
    wrap: bool = False,
) -> SymmetryErrors:
    """Errors of E(g x) = E(x), F(g x) = g F(x), sigma(g x) = R sigma R^T for one transform g.

    ``reference``: the prediction at ``atoms`` when already known (stress is compared only when
    it holds one). ``wrap``: see :func:`transformed`.
    """
    reference = reference or predict(model, atoms)
    moved = predict(
        model,
        transformed(atoms, rotation, translation, permutation, wrap=wrap),
        stress=reference.stress is not None,
    )
    expected_forces = reference.forces
    expected_stress = reference.stress
    if permutation is not None:
        expected_forces = expected_forces[np.asarray(permutation)]
    if rotation is not None:
        expected_forces = expected_forces @ rotation.T
        if expected_stress is not None:
            expected_stress = rotation @ expected_stress @ rotation.T
    stress_error = 0.0
    if expected_stress is not None and moved.stress is not None:
        stress_error = float(np.abs(moved.stress - expected_stress).max())
    return SymmetryErrors(
        energy=abs(moved.energy - reference.energy) / len(atoms),
        forces=float(np.abs(moved.forces - expected_forces).max()),
        stress=stress_error,
    )


def finite_difference_forces(model, atoms: ase.Atoms, delta: float = 1e-4) -> np.ndarray:
    """Central finite-difference forces ``-(E(x+d) - E(x-d)) / 2d`` (n_atoms, 3) eV/Å."""
    displaced = []
    for atom in range(len(atoms)):
        for axis in range(3):
            for sign in (1.0, -1.0):
                copy = atoms.copy()
                positions = copy.get_positions()
                positions[atom, axis] += sign * delta
                copy.set_positions(positions)
                displaced.append(copy)
    energies = np.array([p.energy for p in predict_many(model, displaced)])
    return -(energies[0::2] - energies[1::2]).reshape(len(atoms), 3) / (2 * delta)


def finite_difference_stress(model, atoms: ase.Atoms, delta: float = 1e-5) -> np.ndarray:
    """Central finite-difference stress ``(1/V) dE/d(eps)`` (3, 3) eV/Å³ under symmetric strain."""
    volume = atoms.get_volume()
    strained = []
    for i in range(3):
        for j in range(3):
            for sign in (1.0, -1.0):
                strain = np.eye(3)
                strain[i, j] += 0.5 * sign * delta
                strain[j, i] += 0.5 * sign * delta
                copy = atoms.copy()
                copy.set_cell(np.asarray(atoms.get_cell()) @ strain, scale_atoms=True)
                strained.append(copy)
    energies = np.array([p.energy for p in predict_many(model, strained)])
    return (energies[0::2] - energies[1::2]).reshape(3, 3) / (2 * delta) / volume
