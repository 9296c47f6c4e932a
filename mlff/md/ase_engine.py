"""The ASE engine, the reference: one structure integrated by an ASE integrator per ensemble, with
trajectory and log writers that flush as they go, a clean stop on SIGINT/SIGTERM, restarts, run
statistics and the runtime covariance check.

Units everywhere: positions Å, time fs (ps in logs and trajectories' ``time``), energies eV,
temperature K, pressure bar, volume Å³, friction 1/ps.

Ensembles (ASE integrators):

    nve                 VelocityVerlet
    nvt  langevin       Langevin (Vanden-Eijnden–Ciccotti), centre of mass held by FixCom
    nvt  nose-hoover    NoseHooverChainNVT, coupling time 1/friction
    nvt  bussi          Bussi stochastic velocity rescaling, coupling time 1/friction
    npt  isotropic      IsotropicMTKNPT (MTK barostat + Nosé–Hoover chains), periodic cells
    npt  full           MTKNPT (full cell fluctuations), periodic cells

Every run starts with zero total momentum, so the temperature counts ``3N - 3`` degrees of freedom.
The Nosé–Hoover chains (NVT and the particles' chain of both MTK barostats) and Bussi are told so
(ASE's count 3N), which keeps both the mean and the fluctuations of the kinetic energy canonical,
and makes these ensembles integrate exactly as the batched engine's do.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable

import ase
import numpy as np
from ase import units
from ase.constraints import FixCom
from ase.md.md import MolecularDynamics

from mlff.errors import CovarianceError, MLFFError, StructureError
from mlff.md.log import CSVLog, RunningLinearFit, log_columns
from mlff.md.settings import (
    FS_PER_PS,
    MAX_STEP_DISPLACEMENT_A,
    SECONDS_PER_DAY,
    MDSettings,
    MDSummary,
)
from mlff.md.trajectory import check_output_paths, is_periodic, open_trajectory
from mlff.signals import GracefulStop


def has_momenta(atoms: ase.Atoms) -> bool:
    """True when ``atoms`` carries non-zero momenta (e.g. read from a trajectory)."""
    return bool(atoms.has("momenta") and np.any(atoms.get_momenta() != 0.0))


def initialise_momenta(atoms: ase.Atoms, temperature_k: float, rng: np.random.Generator) -> bool:
    """Maxwell–Boltzmann momenta at ``temperature_k`` with zero total momentum, unless ``atoms``
    already has momenta. Returns True when momenta were drawn."""
    if has_momenta(atoms):
        return False
    masses = atoms.get_masses()[:, None]
    momenta = rng.standard_normal((len(atoms), 3)) * np.sqrt(masses * units.kB * temperature_k)
    momenta -= masses * momenta.sum(axis=0) / masses.sum()  # zero total momentum
    atoms.set_momenta(momenta, apply_constraint=False)
    return True


def degrees_of_freedom(atoms: ase.Atoms) -> int:
    """``3N - 3`` (total momentum held at zero) less what other constraints remove; >= 1."""
    dof = atoms.get_number_of_degrees_of_freedom()
    if len(atoms) > 1 and not any(isinstance(c, FixCom) for c in atoms.constraints):
        dof -= 3
    return max(int(dof), 1)


def make_integrator(
    atoms: ase.Atoms, settings: MDSettings, rng: np.random.Generator
) -> MolecularDynamics:
    """The ASE integrator for ``settings.ensemble`` acting on ``atoms`` (momenta already set)."""
    settings.validate()
    dt = settings.timestep_fs * units.fs
    if settings.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    coupling = 1.0 / (settings.friction_per_ps / (FS_PER_PS * units.fs))  # ASE time
    if settings.ensemble == "nvt":
        if settings.thermostat == "langevin":
            from ase.md.langevin import Langevin

            atoms.set_constraint([*atoms.constraints, FixCom()])
            return Langevin(
                atoms,
                timestep=dt,
                temperature_K=settings.temperature_k,
                friction=1.0 / coupling,
                fixcm=False,
                rng=rng,
            )
        dof = degrees_of_freedom(atoms)
        if settings.thermostat == "nose-hoover":
            from ase.md.nose_hoover_chain import NoseHooverChainNVT, NoseHooverChainThermostat

            dynamics = NoseHooverChainNVT(
                atoms, timestep=dt, temperature_K=settings.temperature_k, tdamp=coupling
            )
            # ASE's chain counts 3N degrees of freedom; counted as 3N - 3 (a fractional number
            # of atoms), the first link drives 2K to (3N - 3) kT and every other link sits at
            # kT, so both the mean and the fluctuations of K are canonical
            dynamics._thermostat = NoseHooverChainThermostat(
                num_atoms_global=dof / 3.0,
                masses=dynamics.masses,
                temperature_K=settings.temperature_k,
                tdamp=coupling,
            )
            return dynamics
        from ase.md.bussi import Bussi

        if atoms.get_kinetic_energy() <= 0:
            raise ValueError("bussi needs non-zero initial momenta (temperature_k > 0)")
        dynamics = Bussi(
            atoms, timestep=dt, temperature_K=settings.temperature_k, taut=coupling, rng=rng
        )
        dynamics.ndof = dof  # 3N - 3: the target kinetic energy and the noise's dof follow
        dynamics.target_kinetic_energy = 0.5 * dynamics.temp * dof
        return dynamics
    # npt
    if not is_periodic(atoms):
        raise StructureError(
            f"npt needs a cell periodic in all three directions, got pbc={atoms.pbc.tolist()}"
        )
    if atoms.constraints:
        raise StructureError("npt (MTK barostat) does not support constraints on the atoms")
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT, NoseHooverChainThermostat

    barostat_time = settings.barostat_time_fs or 1000.0 * settings.timestep_fs
    integrator = IsotropicMTKNPT if settings.barostat == "isotropic" else MTKNPT
    dynamics = integrator(
        atoms,
        timestep=dt,
        temperature_K=settings.temperature_k,
        pressure_au=settings.pressure_bar * units.bar,
        tdamp=coupling,
        pdamp=barostat_time * units.fs,
    )
    # the particles' chain counts 3N - 3 degrees of freedom, as for NVT above
    dynamics._thermostat = NoseHooverChainThermostat(
        num_atoms_global=degrees_of_freedom(atoms) / 3.0,
        masses=dynamics.masses,
        temperature_K=settings.temperature_k,
        tdamp=coupling,
    )
    return dynamics


class UnstableSimulation(MLFFError):
    """The simulation left physics: a NaN or infinite energy or force, or an atom that jumped."""


def minimum_image(vectors: np.ndarray, atoms: ase.Atoms) -> np.ndarray:
    """(n, 3) Å displacement vectors reduced to their shortest image along periodic axes."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return vectors
    cell = np.asarray(atoms.get_cell())
    fractional = np.linalg.solve(cell.T, vectors.T).T
    fractional[:, pbc] -= np.round(fractional[:, pbc])
    return fractional @ cell


class _Recorder:
    """Per-step bookkeeping of a run: statistics, covariance checks, trajectory frames, log rows."""

    def __init__(self, atoms, calculator, settings, writer, logger, on_warning) -> None:
        self.atoms = atoms
        self.calculator = calculator
        self.writer = writer
        self.logger = logger
        self.on_warning = on_warning
        self.periodic = is_periodic(atoms)
        self.dof = degrees_of_freedom(atoms)
        self.covariance_every = int(settings.covariance_every)
        self.interval = int(settings.interval)
        self.fit = RunningLinearFit()
        self.temperature_sum = 0.0
        self.temperature_count = 0
        self.covariance_errors: list[float] = []
        self.covariance_failures = 0
        self._pending_covariance: float | None = None
        self._current: tuple[int, float, float, float] | None = None  # step, time, E_pot, E_kin
        self._last_written: int | None = None
        self._previous_positions: np.ndarray | None = None

    def record(self, step: int, time_fs: float, first: bool) -> None:
        """Account for the state at ``step`` and write it on the interval. A failed covariance
        check raises CovarianceError (when the calculator is set to raise) after the state has
        been written, for inspection. The first state of a run is not written again into files
        that a restart appends to."""
        atoms = self.atoms
        # ASE's MD loop has just refreshed the forces: the calculator's results are current,
        # and reading them directly spares a comparison of the whole structure
        results = getattr(atoms.calc, "results", {})
        potential = results["energy"] if "energy" in results else atoms.get_potential_energy()
        kinetic = atoms.get_kinetic_energy()
        self._current = (step, time_fs, potential, kinetic)
        self._check_stable(step, potential + kinetic, results.get("forces"))
        self.fit.add(time_fs / FS_PER_PS, (potential + kinetic) / len(atoms))
        failure = None
        if not first:
            self.temperature_sum += self._temperature(kinetic)
            self.temperature_count += 1
            if self.covariance_every and step % self.covariance_every == 0:
                try:
                    self._check_covariance(step)
                except CovarianceError as error:
                    failure = error
        if step % self.interval == 0 or failure is not None:
            self._write(first)
        if failure is not None:
            raise failure

    def _check_stable(self, step: int, energy: float, forces: np.ndarray | None) -> None:
        """Raise :class:`UnstableSimulation` naming ``step`` when the state is not physical:
        a non-finite energy or force, or an atom that moved more than MAX_STEP_DISPLACEMENT_A
        since the previous step (minimum image in periodic directions)."""
        hint = "the simulation blew up; try a smaller time step"
        if forces is not None and not np.all(np.isfinite(forces)):
            atom = int(np.argwhere(~np.isfinite(forces))[0, 0])
            raise UnstableSimulation(
                f"step {step}: the force on atom {atom} is not finite ({hint})"
            )
        if not math.isfinite(energy):
            raise UnstableSimulation(f"step {step}: the energy is not finite ({hint})")
        positions = self.atoms.get_positions()
        previous, self._previous_positions = self._previous_positions, positions
        if previous is None or previous.shape != positions.shape:
            return
        moved = minimum_image(positions - previous, self.atoms)
        distances = np.linalg.norm(moved, axis=1)
        atom = int(np.argmax(distances))
        if distances[atom] > MAX_STEP_DISPLACEMENT_A:
            raise UnstableSimulation(
                f"step {step}: atom {atom} moved {distances[atom]:.3g} Å in one step, more than "
                f"the physical {MAX_STEP_DISPLACEMENT_A} Å ({hint})"
            )

    def finish(self) -> None:
        """Write the last state if the interval skipped it, so a restart continues from it."""
        if self._current is not None and self._current[0] != self._last_written:
            self._write(first=False)

    def _temperature(self, kinetic: float) -> float:
        return 2.0 * kinetic / (self.dof * units.kB)

    def _write(self, first: bool) -> None:
        step, time_fs, potential, kinetic = self._current
        self._last_written = step
        atoms = self.atoms
        if self.writer is not None and not (first and self.writer.appended):
            self.writer.write(atoms, step, time_fs)
        if self.logger is not None and not (first and self.logger.appended):
            row = {
                "step": step,
                "time_ps": time_fs / FS_PER_PS,
                "potential_energy_ev": potential,
                "kinetic_energy_ev": kinetic,
                "total_energy_ev": potential + kinetic,
                "temperature_k": self._temperature(kinetic),
                "covariance_error": self._pending_covariance,
            }
            if self.periodic:
                stress = atoms.get_stress(voigt=False, include_ideal_gas=True)
                row["pressure_bar"] = -np.trace(stress) / 3.0 / units.bar
                row["volume_a3"] = atoms.get_volume()
            self.logger.write(row)
            self._pending_covariance = None

    def _check_covariance(self, step: int) -> None:
        results = self.calculator.results
        checked = len(self.calculator.covariance_results)
        failure = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.calculator.run_covariance_check(
                    reference=(results["energy"], results["forces"])
                )
            except CovarianceError as error:
                failure = error
        for result in self.calculator.covariance_results[checked:]:
            self.covariance_errors.append(result.force_error)
            self._pending_covariance = result.force_error
            self.covariance_failures += not result.passed
        for warning in caught:
            message = f"step {step}: {warning.message}"
            if self.on_warning is not None:
                self.on_warning(message)
            else:
                warnings.warn(message, RuntimeWarning, stacklevel=4)
        if failure is not None:
            raise failure


def _stress_wanted(settings: MDSettings, logs_pressure: bool, step: int, last: bool) -> bool:
    """Whether the force evaluation of ``step`` should include the stress: at every step of NPT
    (its integrator reads the stress of each state), and at fixed cell only on the steps whose
    row the log writes when it reports the pressure (``logs_pressure``: a periodic run with a
    log), from their own force evaluation instead of another. The others skip the strain
    derivative, as the batched engine does."""
    if settings.ensemble == "npt":
        return True
    return logs_pressure and (step % settings.interval == 0 or last)


def run_md(
    atoms: ase.Atoms,
    calculator,
    settings: MDSettings,
    trajectory: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    append: bool = False,
    start_step: int = 0,
    start_time_fs: float | None = None,
    progress: Callable[[int, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> MDSummary:
    """Integrate ``settings.steps`` steps of ``atoms`` with ``calculator`` (an MLFFCalculator).

    Momenta are drawn (Maxwell–Boltzmann, zero total momentum) unless ``atoms`` has them. Frames
    go to ``trajectory`` and rows to the CSV ``log`` every ``settings.interval`` steps, numbered
    from ``start_step`` at ``start_time_fs`` (default ``start_step`` time steps). With ``append``
    (a restart) an existing trajectory, and a log with the same columns, are continued, and the
    starting state, already in them, is not written again.

    Every ``settings.covariance_every`` steps the calculator's covariance check runs at the current
    structure: a failure warns (through ``on_warning``) or, when the calculator's
    ``on_covariance_failure`` is "raise", stops the run, as the summary reports. Leave the
    calculator's own ``check_covariance_every`` at 0 (its failures would also stop the run).
    SIGINT and SIGTERM stop the run after the current step. Files are closed on every way out.
    ``progress(steps_done, elapsed_s)`` is called after every step.
    """
    settings.validate()
    check_output_paths(trajectory, log)
    rng = np.random.default_rng(settings.seed)
    initialise_momenta(atoms, settings.temperature_k, rng)
    dynamics = make_integrator(atoms, settings, rng)
    atoms.calc = calculator
    # an MLFFCalculator computes the stress only when asked, unless told to include it
    switch = hasattr(calculator, "include_stress")
    include_stress = calculator.include_stress if switch else False
    logs_pressure = bool(log) and is_periodic(atoms)

    def next_evaluation(step: int, last: bool) -> None:
        if switch:
            wanted = _stress_wanted(settings, logs_pressure, step, last)
            calculator.include_stress = include_stress or wanted

    dt_fs = float(settings.timestep_fs)
    start_time_fs = start_step * dt_fs if start_time_fs is None else float(start_time_fs)
    stopped_by = error = None
    steps_done, elapsed, started = 0, 0.0, None
    writer = logger = None
    try:
        writer = open_trajectory(trajectory, atoms, append) if trajectory else None
        if log:
            columns = log_columns(is_periodic(atoms), settings.covariance_every > 0)
            logger = CSVLog(log, columns, append)
        recorder = _Recorder(atoms, calculator, settings, writer, logger, on_warning)
        next_evaluation(start_step, last=settings.steps == 0)
        with GracefulStop() as stop:
            try:
                for _ in dynamics.irun(settings.steps):
                    first = dynamics.nsteps == 0
                    if first:
                        started = time.perf_counter()  # after the first force evaluation
                    else:
                        steps_done = dynamics.nsteps
                        elapsed = time.perf_counter() - started
                    recorder.record(
                        start_step + dynamics.nsteps,
                        start_time_fs + dynamics.nsteps * dt_fs,
                        first=first,
                    )
                    if progress is not None and not first:
                        progress(steps_done, elapsed)
                    upcoming = dynamics.nsteps + 1
                    next_evaluation(start_step + upcoming, last=upcoming == settings.steps)
                    if stop.signal_name is not None:
                        stopped_by = stop.signal_name
                        break
            except CovarianceError as failure:
                stopped_by = "covariance failure"
                error = f"covariance check failed at step {start_step + dynamics.nsteps}: {failure}"
            except UnstableSimulation as failure:
                stopped_by, error = "unstable", str(failure)
            except StructureError as failure:  # raised by the force call inside the step
                stopped_by = "unstable"
                error = (
                    f"step {start_step + dynamics.nsteps + 1}: {failure} (the simulation blew up; "
                    "try a smaller time step)"
                )
            else:
                recorder.finish()
    finally:
        if switch:
            calculator.include_stress = include_stress
        for handle in (writer, logger):
            if handle is not None:
                handle.close()

    rate = steps_done / elapsed if elapsed > 0 else 0.0
    slope = recorder.fit.slope
    errors = recorder.covariance_errors
    return MDSummary(
        steps=steps_done,
        first_step=start_step,
        last_step=start_step + dynamics.nsteps,
        wall_time_s=elapsed,
        steps_per_second=rate,
        ns_per_day=rate * dt_fs * 1e-6 * SECONDS_PER_DAY,
        mean_temperature_k=(
            float(recorder.temperature_sum / recorder.temperature_count)
            if recorder.temperature_count
            else None
        ),
        energy_drift_mev_per_atom_per_ps=None if slope is None else float(1000.0 * slope),
        covariance_checks=len(errors),
        covariance_max_rel_error=float(max(errors)) if errors else None,
        covariance_failures=recorder.covariance_failures,
        stopped_by=stopped_by,
        error=error,
    )
