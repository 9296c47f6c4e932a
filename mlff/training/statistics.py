"""Physics-aware set-up taken from the training data: reference energies, scale, neighbour count.

* Per-element reference energies ``E0`` (eV) by least squares of the total energies on the
  element counts: ``E_s ~ sum_Z n_sZ E0_Z``. When every frame has the same composition (one
  molecule) the split between elements is not determined and the minimum-norm solution is used;
  only its sum over the molecule matters.
* Energy shift 0 (the ``E0`` already remove the mean) and energy scale = the RMS of the force
  components (eV/Å), as MACE does: the network's raw outputs and their gradients are then O(1)
  in units of the typical force, so the initial forces have the right size whatever the data.
  Without forces, the standard deviation of the per-atom energy left after ``E0``.
* The mean number of neighbours per atom within the cutoff, by which messages are divided.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers

from mlff.errors import DataError
from mlff.training.dataset import GraphSet


@dataclass
class DataStatistics:
    """What the model is told about the data before training."""

    reference_energies: dict[str, float]  # symbol -> eV
    energy_scale: float  # eV (per-atom energy unit of the network output)
    energy_shift: float  # eV per atom
    avg_num_neighbors: float  # edges per atom

    def as_dict(self) -> dict:
        return {
            "reference_energies": dict(self.reference_energies),
            "energy_scale": self.energy_scale,
            "energy_shift": self.energy_shift,
            "avg_num_neighbors": self.avg_num_neighbors,
        }


def composition_matrix(data: GraphSet, elements: Sequence[str]) -> np.ndarray:
    """(n_frames, n_elements) counts of each element in each frame."""
    columns = {atomic_numbers[e]: k for k, e in enumerate(elements)}
    counts = np.zeros((len(data), len(elements)))
    for row, graph in enumerate(data.graphs):
        numbers, n = np.unique(graph.numbers.numpy(), return_counts=True)
        for z, count in zip(numbers, n, strict=True):
            counts[row, columns[int(z)]] = count
    return counts


def fit_reference_energies(data: GraphSet, elements: Sequence[str]) -> dict[str, float]:
    """Least-squares ``E0`` per element (eV) from the total energies of ``data``."""
    counts = composition_matrix(data, elements)
    energies = data.energy.numpy()
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {e: float(v) for e, v in zip(elements, solution, strict=True)}


def read_reference_energies(path: str | os.PathLike, elements: Sequence[str]) -> dict[str, float]:
    """``E0`` from a JSON object ``{"H": -13.6, ...}`` (eV); every element must be present."""
    try:
        with open(path) as handle:
            values = json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: E0 file not found") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    return check_reference_energies(values, elements, str(path))


def check_reference_energies(
    values: object, elements: Sequence[str], where: str
) -> dict[str, float]:
    """Validate a symbol -> eV mapping for ``elements``."""
    if not isinstance(values, Mapping):
        raise DataError(f"{where}: E0 must be a mapping of element symbol to energy in eV")
    missing = [e for e in elements if e not in values]
    if missing:
        raise DataError(
            f"{where}: E0 lacks element(s) {', '.join(missing)} present in the training data"
        )
    energies = {}
    for element in elements:
        try:
            energies[element] = float(values[element])
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: E0 of {element} is not a number: {values[element]!r}"
            ) from None
        if not np.isfinite(energies[element]):
            raise DataError(f"{where}: E0 of {element} is not finite")
    return energies


def energy_scale(data: GraphSet, reference: Mapping[str, float], elements: Sequence[str]) -> float:
    """RMS force component (eV/Å); without forces the std of the per-atom residual energy."""
    forces = [f for f, has in zip(data.forces, data.has_forces, strict=True) if has]
    if forces:
        rms = float(np.sqrt(np.mean(np.concatenate([f.numpy().ravel() for f in forces]) ** 2)))
        if rms > 1e-6:
            return rms
    counts = composition_matrix(data, elements)
    e0 = np.array([reference[e] for e in elements])
    per_atom = (data.energy.numpy() - counts @ e0) / counts.sum(axis=1)
    std = float(np.std(per_atom))
    return std if std > 1e-6 else 1.0


def average_neighbours(data: GraphSet) -> float:
    """Mean number of edges per atom (at least 1)."""
    n_edges = sum(g.n_edges for g in data.graphs)
    return max(n_edges / max(data.n_atoms, 1), 1.0)


def data_statistics(
    data: GraphSet, elements: Sequence[str], reference_energies: Mapping[str, float] | None = None
) -> DataStatistics:
    """All of the above for the training set; ``reference_energies`` given skips the fit."""
    if reference_energies is None:
        reference = fit_reference_energies(data, elements)
    else:
        reference = dict(reference_energies)
    return DataStatistics(
        reference_energies=reference,
        energy_scale=energy_scale(data, reference, elements),
        energy_shift=0.0,
        avg_num_neighbors=average_neighbours(data),
    )
