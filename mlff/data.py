"""Labelled data: reading frames with energies, forces and stress from any ASE-readable file.

Labels are looked up, for each frame, in the stored calculator results, then ``atoms.info``
(per-structure values), then ``atoms.arrays`` (per-atom values), under the first key that exists
from a list of usual names (``energy``, ``REF_energy``, ``forces``, ``REF_forces``, ``stress``,
``virial``, ...), or under the key the user names. Keys are detected on the first frame of each
file and every later frame must carry the same labels. Anything unusable (a frame without an
energy, a NaN, a force array of the wrong shape, a named key that is absent) raises
:class:`~mlff.errors.DataError` in one line: ``FILE, frame K: problem (keys found: ...)``.

Units are ASE's: energies eV, forces eV/Å, stress eV/Å³ (positive = tensile). A virial ``W`` (eV)
is converted to stress as ``-W / V``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np

from mlff.errors import DataError, StructureError
from mlff.graph import check_contacts, check_structure

ENERGY_KEYS = (
    "energy",
    "REF_energy",
    "ref_energy",
    "DFT_energy",
    "dft_energy",
    "total_energy",
    "Energy",
    "free_energy",
)
FORCES_KEYS = ("forces", "REF_forces", "ref_forces", "DFT_forces", "dft_forces", "force", "Forces")
STRESS_KEYS = (
    "stress",
    "REF_stress",
    "ref_stress",
    "DFT_stress",
    "dft_stress",
    "virial",
    "REF_virial",
    "ref_virial",
    "virials",
)


@dataclass
class LabelledFrame:
    """One structure with its reference labels."""

    atoms: ase.Atoms
    energy: float  # eV, total energy
    forces: np.ndarray | None  # (n_atoms, 3) eV/Å, or None when the file has none
    stress: np.ndarray | None  # (3, 3) eV/Å³, None when unlabelled or not periodic
    where: str  # "FILE, frame K", for messages


@dataclass(frozen=True)
class LabelKeys:
    """User overrides of the label keys; ``None`` means detect."""

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None


def _keys_found(atoms: ase.Atoms) -> str:
    results = list(atoms.calc.results) if atoms.calc is not None else []
    info = [k for k in atoms.info if not k.startswith("_")]
    arrays = [k for k in atoms.arrays if k not in ("numbers", "positions")]
    parts = []
    if results:
        parts.append("calculator: " + ", ".join(sorted(results)))
    if info:
        parts.append("info: " + ", ".join(sorted(info)))
    if arrays:
        parts.append("arrays: " + ", ".join(sorted(arrays)))
    return "; ".join(parts) if parts else "none"


def _lookup(atoms: ase.Atoms, key: str):
    """The value stored under ``key`` (calculator results, then info, then arrays), or None."""
    if atoms.calc is not None and key in getattr(atoms.calc, "results", {}):
        return atoms.calc.results[key]
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    return None


def _detect(atoms: ase.Atoms, candidates: Sequence[str]) -> str | None:
    for key in candidates:
        if _lookup(atoms, key) is not None:
            return key
    return None


def _as_stress(value, key: str, atoms: ase.Atoms, where: str) -> np.ndarray:
    """A stored stress (Voigt 6, 9 values or 3x3) or virial as a (3, 3) stress in eV/Å³."""
    array = np.asarray(value, dtype=np.float64)
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.reshape(6)
        array = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    elif array.size == 9:
        array = array.reshape(3, 3)
    else:
        raise DataError(
            f"{where}: {key!r} has {array.size} values; expected 6 (Voigt) or 9 "
            f"(keys found: {_keys_found(atoms)})"
        )
    if "virial" in key.lower():
        volume = abs(atoms.get_volume())
        array = -array / volume
    return array


def _check_finite(value: np.ndarray | float, what: str, key: str, where: str) -> None:
    if not np.all(np.isfinite(value)):
        raise DataError(f"{where}: {what} under {key!r} is NaN or infinite")


def _label_keys(
    atoms: ase.Atoms, keys: LabelKeys, where: str
) -> tuple[str, str | None, str | None]:
    """The (energy, forces, stress) keys of the first frame of a file."""
    found = _keys_found(atoms)
    for given in (keys.energy, keys.forces, keys.stress):
        if given is not None and _lookup(atoms, given) is None:
            raise DataError(
                f"{where}: no label under the given key {given!r} (keys found: {found})"
            )
    energy = keys.energy or _detect(atoms, ENERGY_KEYS)
    if energy is None:
        raise DataError(
            f"{where}: no energy label (looked for {', '.join(ENERGY_KEYS)}; keys found: {found});"
            " name it with --energy-key"
        )
    forces = keys.forces or _detect(atoms, FORCES_KEYS)
    stress = keys.stress or _detect(atoms, STRESS_KEYS)
    return energy, forces, stress


def _frame(
    atoms: ase.Atoms, keys: tuple[str, str | None, str | None], where: str, file_keys: str
) -> LabelledFrame:
    energy_key, forces_key, stress_key = keys
    try:
        check_structure(atoms, where)
        check_contacts(atoms, where)
    except StructureError as error:
        raise DataError(str(error)) from None
    for what, key in (("energy", energy_key), ("forces", forces_key), ("stress", stress_key)):
        if key is not None and _lookup(atoms, key) is None:
            raise DataError(
                f"{where}: no {what} label under {key!r}, which {file_keys} "
                f"(keys found: {_keys_found(atoms)})"
            )
    try:
        energy = float(np.asarray(_lookup(atoms, energy_key), dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: energy under {energy_key!r} is not one number "
            f"(keys found: {_keys_found(atoms)})"
        ) from None
    _check_finite(energy, "energy", energy_key, where)
    forces = None
    if forces_key is not None:
        forces = np.asarray(_lookup(atoms, forces_key), dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise DataError(
                f"{where}: forces under {forces_key!r} have shape {forces.shape}, "
                f"expected ({len(atoms)}, 3)"
            )
        _check_finite(forces, "forces", forces_key, where)
    stress = None
    if stress_key is not None and np.all(atoms.pbc):
        stress = _as_stress(_lookup(atoms, stress_key), stress_key, atoms, where)
        _check_finite(stress, "stress", stress_key, where)
    bare = ase.Atoms(
        numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=atoms.get_cell(),
        pbc=atoms.get_pbc(),
    )
    return LabelledFrame(atoms=bare, energy=energy, forces=forces, stress=stress, where=where)


def _read_file(path: Path) -> list[ase.Atoms]:
    import ase.io

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as error:  # ASE raises many types on unreadable input
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise DataError(
            f"{path}: cannot read structures ({type(error).__name__}: {first})"
        ) from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise DataError(f"{path}: no structures in file")
    return frames


def read_labelled(
    paths: str | os.PathLike | Sequence[str | os.PathLike], keys: LabelKeys | None = None
) -> list[LabelledFrame]:
    """Read every frame of ``paths`` (any format ASE reads) with its energy, forces and stress.

    Raises :class:`DataError` naming the file and frame for the first unusable frame.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    keys = keys or LabelKeys()
    frames: list[LabelledFrame] = []
    for path in map(Path, paths):
        structures = _read_file(path)
        file_keys = _label_keys(structures[0], keys, f"{path}, frame 0")
        described = ", ".join(
            f"{what} {key!r}"
            for what, key in zip(("energy", "forces", "stress"), file_keys, strict=True)
            if key is not None
        )
        for index, atoms in enumerate(structures):
            where = f"{path}, frame {index}"
            frames.append(_frame(atoms, file_keys, where, f"frame 0 has ({described})"))
    return frames


def split_indices(
    n_frames: int, valid_fraction: float, seed: int, source: str = "the data"
) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, valid) index arrays: ``numpy.random.default_rng(seed).permutation``.

    ``source`` names the file(s) the frames came from in errors.
    The validation part is the first ``round(valid_fraction * n_frames)`` permuted indices
    (at least one when ``valid_fraction > 0``); the training part must keep at least one frame.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise DataError(f"valid fraction must be in [0, 1), got {valid_fraction!r}")
    permutation = np.random.default_rng(seed).permutation(n_frames)
    n_valid = max(1, round(valid_fraction * n_frames)) if valid_fraction > 0 else 0
    if n_frames - n_valid < 1:
        raise DataError(
            f"{source}: {n_frames} frame(s) cannot be split into training and validation sets "
            f"(valid fraction {valid_fraction}); give more data or --valid FILE"
        )
    return np.sort(permutation[n_valid:]), np.sort(permutation[:n_valid])


def elements_of(frames: Sequence[LabelledFrame]) -> list[str]:
    """The chemical symbols present in ``frames``, ordered by atomic number."""
    from ase.data import chemical_symbols

    numbers = sorted({int(z) for f in frames for z in f.atoms.get_atomic_numbers()})
    return [chemical_symbols[z] for z in numbers]
