"""Temperature and energy traces from an ``mlff md run`` log or from frames, and their summary."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence

import ase
import numpy as np
from ase import units

from mlff.analysis._frames import FS_PER_PS
from mlff.md.ase_engine import degrees_of_freedom

THERMO_KEYS = ("time_ps", "temperature_k", "potential_energy_ev", "total_energy_ev")


def read_thermo_log(path: str | os.PathLike, system: int | None = None) -> dict[str, np.ndarray]:
    """Temperature and energy traces of an ``mlff md run`` CSV log.

    Returns {"time_ps", "temperature_k", "potential_energy_ev", "total_energy_ev"}, each
    (n_rows,); empty cells are NaN. A log of the batched engine (a ``system`` column) holds
    several systems: ``system`` chooses one, and is required when there are several. Raises
    ``ValueError`` naming the file (and row) otherwise.
    """
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: not an mlff md log ({error})") from None
    if not rows or "time_ps" not in rows[0]:
        raise ValueError(f"{path}: not an mlff md log (no time_ps column)")
    if "system" in rows[0]:
        systems = sorted({row["system"] for row in rows})
        if system is None and len(systems) > 1:
            raise ValueError(
                f"{path}: the log holds {len(systems)} systems; analyse one system's "
                "trajectory (md_sysNNN.*), whose number chooses its rows"
            )
        if system is not None:
            rows = [row for row in rows if row["system"] == str(system)]
            if not rows:
                raise ValueError(f"{path}: no rows of system {system} (it holds {systems})")
    traces = {key: np.full(len(rows), math.nan) for key in THERMO_KEYS}
    for k, row in enumerate(rows):
        for key in THERMO_KEYS:
            text = row.get(key)
            if text in (None, ""):
                continue
            try:
                traces[key][k] = float(text)
            except (TypeError, ValueError):
                raise ValueError(f"{path}, row {k + 1}: {key} {text!r} is not a number") from None
    return traces


def thermo_from_frames(frames: Sequence[ase.Atoms]) -> dict[str, np.ndarray] | None:
    """The traces of :func:`read_thermo_log` from frames' energies and momenta (None without).

    Temperature from the kinetic energy over 3N - 3 degrees of freedom (zero total momentum; 3 for
    one atom, as the MD engines count them);
    time from ``info["time_fs"]``, else the frame index as fs.
    """
    traces: dict[str, list[float]] = {key: [] for key in THERMO_KEYS}
    for k, atoms in enumerate(frames):
        if atoms.calc is None or "energy" not in atoms.calc.results or not atoms.has("momenta"):
            return None
        kinetic = atoms.get_kinetic_energy()
        potential = float(atoms.calc.results["energy"])
        traces["time_ps"].append(atoms.info.get("time_fs", k) / FS_PER_PS)
        traces["temperature_k"].append(2.0 * kinetic / (degrees_of_freedom(atoms) * units.kB))
        traces["potential_energy_ev"].append(potential)
        traces["total_energy_ev"].append(potential + kinetic)
    return {key: np.asarray(values) for key, values in traces.items()}


def thermo_summary(traces: dict[str, np.ndarray]) -> dict:
    """Mean and standard deviation of the temperature (K), range of the total energy (eV).

    NaN entries are skipped; a value with no finite entries is None.
    """
    temperature = np.asarray(traces["temperature_k"], dtype=float)
    temperature = temperature[np.isfinite(temperature)]
    energy = np.asarray(traces["total_energy_ev"], dtype=float)
    energy = energy[np.isfinite(energy)]
    return {
        "mean_temperature_k": float(np.mean(temperature)) if temperature.size else None,
        "std_temperature_k": float(np.std(temperature)) if temperature.size else None,
        "total_energy_range_ev": float(np.ptp(energy)) if energy.size else None,
    }
