"""Error figures (MAE, RMSE) accumulated over batches, and the per-epoch ``metrics.csv``.

Units of the reported figures: energy per atom meV/atom, force components meV/Å, stress
components meV/Å³. Force and stress errors are over Cartesian components.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mlff.training.dataset import Batch

MEV = 1000.0
# name -> (sum of |e|, sum of e², count) slots in the accumulator vector
_QUANTITIES = ("energy", "forces", "stress")
FIGURES = (
    "energy_mae_mev_per_atom",
    "energy_rmse_mev_per_atom",
    "forces_mae_mev_per_a",
    "forces_rmse_mev_per_a",
    "stress_mae_mev_per_a3",
    "stress_rmse_mev_per_a3",
)
_UNITS = {"energy": "mev_per_atom", "forces": "mev_per_a", "stress": "mev_per_a3"}


class ErrorAccumulator:
    """Sums of absolute and squared errors; optionally keeps the values for parity plots."""

    def __init__(self, keep: bool = False) -> None:
        self.sums = torch.zeros(len(_QUANTITIES), 3, dtype=torch.float64)
        self.loss_sum = 0.0
        self.loss_count = 0
        self.n_structures = 0
        self.n_atoms = 0
        self.keep = keep
        self.kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {q: [] for q in _QUANTITIES}

    def _add(self, row: int, reference: torch.Tensor, predicted: torch.Tensor) -> None:
        error = (predicted.detach().to(torch.float64) - reference.to(torch.float64)).reshape(-1)
        if error.numel() == 0:
            return
        self.sums[row, 0] += error.abs().sum().cpu()
        self.sums[row, 1] += error.pow(2).sum().cpu()
        self.sums[row, 2] += error.numel()
        if self.keep:
            self.kept[_QUANTITIES[row]].append(
                (
                    reference.detach().to(torch.float64).reshape(-1).cpu().numpy(),
                    predicted.detach().to(torch.float64).reshape(-1).cpu().numpy(),
                )
            )

    def update(
        self, predicted: dict[str, torch.Tensor], batch: Batch, loss: float | None = None
    ) -> None:
        """Add one batch's errors (and its loss, weighted by the number of structures)."""
        n_atoms = batch.graph.n_atoms_per_graph.to(torch.float64)
        self.n_structures += batch.graph.n_graphs
        self.n_atoms += batch.graph.n_atoms
        self._add(0, batch.energy / n_atoms, predicted["energy"] / n_atoms)
        if "forces" in predicted:
            mask = batch.has_forces
            self._add(1, batch.forces[mask], predicted["forces"][mask])
        if "stress" in predicted:
            mask = batch.has_stress
            self._add(2, batch.stress[mask], predicted["stress"][mask])
        if loss is not None:
            self.loss_sum += float(loss) * batch.graph.n_graphs
            self.loss_count += batch.graph.n_graphs

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum the accumulators over processes with ``reduce`` (an all-reduce of a tensor)."""
        extra = torch.tensor(
            [self.loss_sum, self.loss_count, self.n_structures, self.n_atoms], dtype=torch.float64
        )
        packed = reduce(torch.cat([self.sums.reshape(-1), extra]))
        self.sums = packed[: self.sums.numel()].reshape(self.sums.shape)
        self.loss_sum, loss_count, n_structures, n_atoms = packed[self.sums.numel() :].tolist()
        self.loss_count, self.n_structures, self.n_atoms = (
            int(loss_count),
            int(n_structures),
            int(n_atoms),
        )

    @property
    def loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else math.nan

    def figures(self) -> dict[str, float | None]:
        """MAE and RMSE of each quantity in meV units (None where nothing was labelled)."""
        out: dict[str, float | None] = {}
        for row, quantity in enumerate(_QUANTITIES):
            abs_sum, sq_sum, count = self.sums[row].tolist()
            unit = _UNITS[quantity]
            if count == 0:
                out[f"{quantity}_mae_{unit}"] = None
                out[f"{quantity}_rmse_{unit}"] = None
            else:
                out[f"{quantity}_mae_{unit}"] = MEV * abs_sum / count
                out[f"{quantity}_rmse_{unit}"] = MEV * math.sqrt(sq_sum / count)
        return out

    def values(self, quantity: str) -> tuple[np.ndarray, np.ndarray]:
        """Kept (reference, predicted) values of ``quantity`` (eV/atom, eV/Å, eV/Å³)."""
        pairs = self.kept[quantity]
        if not pairs:
            return np.zeros(0), np.zeros(0)
        return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


class MetricsLog:
    """``metrics.csv``: one row per epoch; rewritten atomically so it is never half written."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict] = []

    def load(self, up_to_epoch: int) -> None:
        """Read back the rows of epochs ``<= up_to_epoch`` (when resuming)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as handle:
            self.rows = [r for r in csv.DictReader(handle) if int(r["epoch"]) <= up_to_epoch]

    def append(self, row: dict) -> None:
        from mlff.files import atomic_write

        self.rows.append({c: _cell(row.get(c)) for c in self.columns})

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.path, write)

    def column(self, name: str) -> np.ndarray:
        """One column as floats (NaN where empty)."""
        return np.array(
            [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in self.rows]
        )


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
