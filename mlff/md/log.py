"""The CSV log of a run (one row per logged step, flushed each row) and running statistics."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from mlff.errors import MLFFError


def log_columns(periodic: bool, covariance: bool) -> list[str]:
    """CSV header of the MD log."""
    columns = [
        "step",
        "time_ps",
        "potential_energy_ev",
        "kinetic_energy_ev",
        "total_energy_ev",
        "temperature_k",
    ]
    if periodic:
        columns += ["pressure_bar", "volume_a3"]
    if covariance:
        columns.append("covariance_error")
    return columns


class CSVLog:
    """A CSV file, one row per logged step, flushed after each row."""

    def __init__(self, path: str | os.PathLike, columns: list[str], append: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = columns
        header_matches = False
        if append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path) as existing:
                header = existing.readline().strip()
            header_matches = header == ",".join(columns)
            if not header_matches:  # continuing a run must never overwrite its log
                raise MLFFError(
                    f"{self.path}: the log to continue has columns {header!r}, this run writes "
                    f"{','.join(columns)!r}; give another --log"
                )
        self.appended = header_matches
        self._file = open(self.path, "a" if header_matches else "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=columns, restval="")
        if not header_matches:
            self._writer.writeheader()
            self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _csv_value(v) for k, v in row.items() if k in self.columns})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.10g}"
    return value


# --------------------------------------------------------------------------- statistics


class RunningLinearFit:
    """Least-squares slope of ``y`` against ``x`` from running sums (centred on the first point)."""

    def __init__(self) -> None:
        self.n = 0
        self._x0 = self._y0 = 0.0
        self._sx = self._sy = self._sxx = self._sxy = 0.0

    def add(self, x: float, y: float) -> None:
        if self.n == 0:
            self._x0, self._y0 = x, y
        x, y = x - self._x0, y - self._y0
        self.n += 1
        self._sx += x
        self._sy += y
        self._sxx += x * x
        self._sxy += x * y

    @property
    def slope(self) -> float | None:
        if self.n < 2:
            return None
        denominator = self.n * self._sxx - self._sx * self._sx
        if denominator <= 0:
            return None
        return (self.n * self._sxy - self._sx * self._sy) / denominator
