"""Output of the batched engine, off the hot path: snapshots go to a writer thread.

At each ``--interval`` the runner copies what it writes (positions, momenta, cells, energies,
forces) off the device (non-blocking on CUDA) and queues it; a background thread turns the copy
into one trajectory frame per system and one CSV row per system, so writing never stalls the step
loop. Each system gets its own trajectory file (``md.extxyz`` -> ``md_sys000.extxyz``, ... when
there are several), in any format the ASE engine writes; the CSV log has a ``system`` column.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
import torch
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator

from mlff.md.ase_engine import degrees_of_freedom
from mlff.md.log import CSVLog, log_columns
from mlff.md.settings import FS_PER_PS
from mlff.md.trajectory import check_output_paths, open_trajectory


def system_paths(path: str | os.PathLike, n_systems: int) -> list[Path]:
    """One trajectory path per system: ``path`` itself for one system, else ``stem_sysNNN``."""
    path = Path(path)
    if n_systems == 1:
        return [path]
    return [path.with_name(f"{path.stem}_sys{k:03d}{path.suffix}") for k in range(n_systems)]


@dataclass
class Snapshot:
    """Host copies of one step of a batch (numpy once :meth:`ready` returns)."""

    step: int
    time_fs: float
    systems: list[int]  # the run's system number of each system in the batch
    tensors: dict[str, torch.Tensor]  # positions, momenta, cell, energy, forces, stress, ...
    event: torch.cuda.Event | None = None

    def ready(self) -> dict[str, np.ndarray]:
        if self.event is not None:
            self.event.synchronize()
        return {k: v.numpy() for k, v in self.tensors.items()}


def take_snapshot(step: int, time_fs: float, systems: list[int], tensors: dict) -> Snapshot:
    """Copy ``tensors`` to the host without waiting for the device."""
    on_cuda = any(t.is_cuda for t in tensors.values())
    copies = {
        k: (t.detach().to("cpu", non_blocking=True) if on_cuda else t.detach().clone())
        for k, t in tensors.items()
    }
    event = None
    if on_cuda:
        event = torch.cuda.Event()
        event.record()
    return Snapshot(step, time_fs, systems, copies, event)


class BatchWriter:
    """Writes snapshots of a batch from a background thread.

    Args:
        structures: the run's systems (numbers, masses, pbc are taken from them).
        trajectory: trajectory path (one file per system, see :func:`system_paths`) or None.
        log: CSV log path or None.
        covariance: whether the log has a covariance column.
        append: continue existing files (a restart).
    """

    def __init__(
        self,
        structures: list[ase.Atoms],
        trajectory: str | os.PathLike | None,
        log: str | os.PathLike | None,
        covariance: bool,
        append: bool = False,
    ) -> None:
        self.structures = structures
        paths = system_paths(trajectory, len(structures)) if trajectory else []
        check_output_paths(*paths, log)
        self.writers = []
        if trajectory:
            paths = system_paths(trajectory, len(structures))
            self.writers = [
                open_trajectory(p, a, append) for p, a in zip(paths, structures, strict=True)
            ]
        self.periodic = [bool(np.all(a.pbc)) for a in structures]
        self.logger = None
        if log:
            columns = ["system", *log_columns(any(self.periodic), covariance)]
            self.logger = CSVLog(log, columns, append)
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="mlff-writer", daemon=True)
        self._thread.start()

    def submit(self, snapshot: Snapshot, covariance: dict[int, float] | None = None) -> None:
        """Queue a snapshot; re-raises a failure of the writer thread here."""
        if self._error is not None:
            raise self._error
        self._queue.put((snapshot, covariance or {}))

    def close(self) -> None:
        """Write what is queued, then close every file."""
        self._queue.put(None)
        self._thread.join()
        for handle in [*self.writers, self.logger]:
            if handle is not None:
                handle.close()
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue
            try:
                self._write(*item)
            except BaseException as error:  # handed to the main thread by submit/close
                self._error = error

    def _write(self, snapshot: Snapshot, covariance: dict[int, float]) -> None:
        data = snapshot.ready()
        offsets = np.concatenate([[0], np.cumsum(data["n_atoms"])])
        for k, system in enumerate(snapshot.systems):
            part = slice(offsets[k], offsets[k + 1])
            template = self.structures[system]
            atoms = ase.Atoms(
                numbers=template.numbers,
                positions=data["positions"][part],
                cell=data["cell"][k],
                pbc=template.pbc,
                masses=template.get_masses(),
                momenta=data["momenta"][part],
            )
            results = {"energy": float(data["energy"][k]), "forces": data["forces"][part]}
            if "stress" in data:
                results["stress"] = data["stress"][k]
            atoms.calc = SinglePointCalculator(atoms, **results)
            if self.writers:
                self.writers[system].write(atoms, snapshot.step, snapshot.time_fs)
            if self.logger is not None:
                self.logger.write(self._row(atoms, system, snapshot, covariance.get(system)))

    def _row(self, atoms: ase.Atoms, system: int, snapshot: Snapshot, covariance) -> dict:
        potential = atoms.get_potential_energy()
        kinetic = atoms.get_kinetic_energy()
        dof = degrees_of_freedom(atoms)  # as the engines count them
        row = {
            "system": system,
            "step": snapshot.step,
            "time_ps": snapshot.time_fs / FS_PER_PS,
            "potential_energy_ev": potential,
            "kinetic_energy_ev": kinetic,
            "total_energy_ev": potential + kinetic,
            "temperature_k": 2.0 * kinetic / (dof * units.kB),
            "covariance_error": covariance,
        }
        if self.periodic[system]:
            row["volume_a3"] = atoms.get_volume()
            if "stress" in atoms.calc.results:
                stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
                row["pressure_bar"] = -np.trace(stress) / 3.0 / units.bar
        return row
