"""Tiny labelled data sets for the training tests, labelled with ASE's EMT (fast, no files)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator


def molecules(n: int = 12, seed: int = 0) -> list[Atoms]:
    """Rattled CH3OH and H2O with EMT energies and forces (stored as calculator results)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = molecule("CH3OH" if k % 2 else "H2O")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def copper(n: int = 6, seed: int = 0) -> list[Atoms]:
    """Strained, rattled 4-atom fcc Cu cells with EMT energies, forces and stress."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61 * rng.uniform(0.97, 1.03), cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces, stress = (
            atoms.get_potential_energy(),
            atoms.get_forces(),
            atoms.get_stress(),
        )
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        frames.append(atoms)
    return frames


def write(path: Path, frames: list[Atoms]) -> Path:
    ase.io.write(str(path), frames, format="extxyz")
    return path


def with_ref_keys(frames: list[Atoms]) -> list[Atoms]:
    """The same labels under ``REF_energy`` (info) and ``REF_forces`` (arrays), no calculator."""
    out = []
    for atoms in frames:
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.arrays["REF_forces"] = atoms.get_forces().copy()
        out.append(copy)
    return out
