"""The batched engine's run loop: many systems stepped together on the model's device.

Between synchronisation points the loop only queues device work: the step function, the Verlet
list's lazy rebuild test and running sums for the mean temperature and the energy drift. Every
``interval`` steps (and at covariance checks and the last step) it reads one small per-system
tensor back: which systems blew up. Those stop with one line naming the system and the step; the
others go on. Snapshots go to a writer thread (:mod:`mlff.md.output`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import ase
import numpy as np
import torch
from ase import units

from mlff.md import integrators as steps
from mlff.md import npt
from mlff.md.ase_engine import has_momenta
from mlff.md.checks import check_covariance, describe, step_jump, unstable_systems
from mlff.md.forces import BatchedModel, ForceFunction, ForceResult
from mlff.md.neighbours import VerletList
from mlff.md.output import BatchWriter, take_snapshot
from mlff.md.settings import FS_PER_PS, SECONDS_PER_DAY, MDSettings
from mlff.md.state import SystemBatch
from mlff.signals import GracefulStop

DEFAULT_SKIN_A = 1.0


@dataclass
class SystemReport:
    """How one system's run went."""

    system: int
    last_step: int
    mean_temperature_k: float | None
    energy_drift_mev_per_atom_per_ps: float | None
    covariance_checks: int
    covariance_max_rel_error: float | None
    covariance_failures: int
    error: str | None = None  # one line: why this system stopped early


@dataclass
class BatchedRunSummary:
    """What a batched run did: speed over the batch and a report per system."""

    steps: int
    wall_time_s: float
    steps_per_second: float
    atom_steps_per_second: float
    ns_per_day: float
    neighbour_builds: int
    systems: list[SystemReport]
    stopped_by: str | None = None  # "SIGINT", "SIGTERM" or "covariance failure"
    # the last state of each system (positions, momenta, cell), None for a system stopped early
    final_structures: list[ase.Atoms | None] = field(default_factory=list)


class _Statistics:
    """Per-system running sums on the device: temperature, and a least-squares line through
    the total energy per atom against time (its slope is the drift)."""

    def __init__(self, n_systems: int, device) -> None:
        zeros = lambda: torch.zeros(n_systems, dtype=torch.float64, device=device)  # noqa: E731
        self.count, self.temperature = zeros(), zeros()
        self.t, self.tt, self.e, self.te = zeros(), zeros(), zeros(), zeros()

    def add(self, state: steps.MDState, time_ps: float) -> None:
        batch = state.batch
        total = npt.conserved_energy(state) if npt.is_npt(state) else state.conserved_energy()
        energy = total / batch.n_atoms_per_system
        self.count += 1
        self.temperature += steps.temperature(batch)
        self.t += time_ps
        self.tt += time_ps * time_ps
        self.e += energy
        self.te += time_ps * energy

    def select(self, keep: torch.Tensor) -> None:
        for name in ("count", "temperature", "t", "tt", "e", "te"):
            setattr(self, name, getattr(self, name)[keep])

    def results(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean temperature K, drift meV/atom/ps) per system, NaN where undefined."""
        n = self.count.clamp(min=1)
        mean_t = (self.temperature / n).cpu().numpy()
        variance = self.tt / n - (self.t / n) ** 2
        slope = (self.te / n - self.t * self.e / n**2) / variance.clamp(min=1e-300)
        slope = torch.where(self.count > 1, slope, torch.full_like(slope, float("nan")))
        mean_t[self.count.cpu().numpy() == 0] = np.nan
        return mean_t, 1000.0 * slope.cpu().numpy()


def advance(
    state: steps.MDState,
    step_fn: Callable,
    force_fn: ForceFunction,
    dt: float,
    statistics: _Statistics,
    largest_jump: torch.Tensor,
    time_ps: float,
) -> tuple[steps.MDState, torch.Tensor]:
    """One step between synchronisation points: integrate, track the largest one-step jump per
    system (Å) and add to the running statistics. Queues device work only (no host sync)."""
    before = state.batch.positions
    state = step_fn(state, force_fn, dt)
    batch = state.batch
    jump = step_jump(before, batch.positions, batch.system, batch.n_systems)
    statistics.add(state, time_ps)
    return state, torch.maximum(largest_jump, jump)


def _stepper(settings: MDSettings, generator: torch.Generator) -> Callable:
    """``step(state, force_fn, dt) -> state`` for the ensemble of ``settings``."""
    t, gamma = settings.temperature_k, settings.friction_per_ps
    if settings.ensemble == "nve":
        return steps.velocity_verlet_step
    if settings.ensemble == "npt":
        return npt.isotropic_mtk_step if settings.barostat == "isotropic" else npt.full_mtk_step
    if settings.thermostat == "langevin":
        return lambda s, f, dt: steps.langevin_step(s, f, dt, t, gamma, generator)
    if settings.thermostat == "bussi":
        return lambda s, f, dt: steps.bussi_step(s, f, dt, t, gamma, generator)
    return steps.nose_hoover_chain_step


def run_batched_md(
    structures: list[ase.Atoms],
    model,
    settings: MDSettings,
    trajectory: str | os.PathLike | None = None,
    log: str | os.PathLike | None = None,
    append: bool = False,
    start_step: int = 0,
    skin: float = DEFAULT_SKIN_A,
    covariance_tolerance: float | None = None,
    stop_on_covariance_failure: bool = False,
    progress: Callable[[int, float], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    lazy_neighbours: bool | None = None,
) -> BatchedRunSummary:
    """Integrate ``settings.steps`` steps of every structure in ``structures`` at once.

    ``model`` is a :class:`~mlff.model.ForceField` on its device and in its dtype. Momenta are
    drawn (Maxwell–Boltzmann at the settings' temperature, zero total momentum per system) unless
    every structure has them. Frames and log rows are written every ``settings.interval`` steps,
    one trajectory file per system (see :func:`mlff.md.output.system_paths`).
    ``lazy_neighbours``: decide Verlet-list rebuilds from a flag read one step late, without a
    host sync (default: on CUDA only; see :class:`~mlff.md.neighbours.VerletList`).
    """
    settings.validate()
    device = model.device
    generator = torch.Generator(device=device)
    generator.manual_seed(settings.seed if settings.seed is not None else int(time.time_ns()))
    batch = SystemBatch.from_atoms(structures, device)
    if not all(has_momenta(a) for a in structures):
        batch = steps.initial_momenta(batch, settings.temperature_k, generator)
    step_fn = _stepper(settings, generator)
    dt = float(settings.timestep_fs) * units.fs
    systems = list(range(len(structures)))  # run numbers of the systems still in the batch
    reports = {k: SystemReport(k, start_step, None, None, 0, None, 0) for k in systems}
    covariance_every = int(settings.covariance_every)
    writer = BatchWriter(structures, trajectory, log, covariance_every > 0, append)
    stopped_by, done = None, 0
    atom_steps = 0

    def setup(batch: SystemBatch):
        verlet = VerletList(float(model.cutoff), skin, lazy_flag=lazy_neighbours)
        wrapped = BatchedModel(model, batch.numbers)
        return verlet, wrapped, ForceFunction(wrapped, verlet.update)

    earlier_builds = 0  # builds of the lists replaced when systems left the batch
    final: dict[int, ase.Atoms] = {}
    try:
        verlet, wrapped, force_fn = setup(batch)
        if settings.ensemble == "npt":
            init = npt.isotropic_mtk_init if settings.barostat == "isotropic" else npt.full_mtk_init
            state = init(
                batch,
                force_fn,
                settings.temperature_k,
                settings.pressure_bar * units.bar,
                settings.friction_per_ps,
                (settings.barostat_time_fs or 1000.0 * settings.timestep_fs) * units.fs,
            )
        else:
            state = steps.init_state(batch, force_fn)
        if settings.ensemble == "nvt" and settings.thermostat == "nose-hoover":
            state = steps.nose_hoover_chain_init(
                state, settings.temperature_k, settings.friction_per_ps
            )
        statistics = _Statistics(batch.n_systems, device)
        largest_jump = torch.zeros(batch.n_systems, dtype=torch.float64, device=device)
        if not append:
            writer.submit(_snapshot(state, start_step, settings, systems, log, force_fn))
        # the log's pressure needs the stress of logged steps: their own force evaluation
        # computes it (a step keeps the stress when the state holds one), instead of another
        stress_for_log = bool(log) and any(bool(np.all(a.pbc)) for a in structures)
        keeps_stress = settings.ensemble == "npt"
        # rates count the steps alone, from after the first force evaluation, as the ASE engine's
        started = time.perf_counter()
        with GracefulStop() as stop:
            for k in range(1, settings.steps + 1):
                step = start_step + k
                time_ps = step * settings.timestep_fs / FS_PER_PS
                logged = step % settings.interval == 0 or k == settings.steps
                if stress_for_log and logged and not keeps_stress:
                    state = replace(
                        state, stress=state.batch.cell.new_zeros(state.batch.cell.shape)
                    )
                state, largest_jump = advance(
                    state, step_fn, force_fn, dt, statistics, largest_jump, time_ps
                )
                atom_steps += state.batch.n_atoms
                done = k
                covariance_now = covariance_every and step % covariance_every == 0
                if not logged and not covariance_now:
                    if progress is not None:
                        progress(k, time.perf_counter() - started)
                    if stop.signal_name is None:
                        continue
                    logged = True  # a signal: write this state (a restart point), then stop
                # a synchronisation point: blow-ups, covariance, output
                result = ForceResult(state.energy, state.forces, None)
                bad = (
                    unstable_systems(
                        state.batch, result, verlet.max_displacement, skin, largest_jump
                    )
                    .cpu()
                    .numpy()
                )
                largest_jump = torch.zeros_like(largest_jump)
                errors = {}
                for index in np.flatnonzero(bad):
                    errors[systems[index]] = (
                        f"step {step}: the simulation blew up ({describe(int(bad[index]))}); "
                        "try a smaller time step"
                    )
                covariance = {}
                if covariance_now:
                    edge_index, edge_shifts = verlet.update(state.batch)
                    check = check_covariance(
                        wrapped,
                        state.batch,
                        result,
                        edge_index,
                        edge_shifts,
                        generator,
                        covariance_tolerance,
                    )
                    force_errors = check.force_error.cpu().numpy()
                    passed = check.passed().cpu().numpy()
                    for index, system in enumerate(systems):
                        if bad[index]:
                            continue
                        report = reports[system]
                        report.covariance_checks += 1
                        error = float(force_errors[index])
                        covariance[system] = error
                        previous = report.covariance_max_rel_error or 0.0
                        report.covariance_max_rel_error = max(previous, error)
                        if not passed[index]:
                            report.covariance_failures += 1
                            message = (
                                f"step {step}: covariance check failed: force error "
                                f"{error:.2e} (tol {check.force_tolerance:.0e})"
                            )
                            if stop_on_covariance_failure:
                                errors[system] = message
                                stopped_by = "covariance failure"
                            elif on_warning is not None:
                                on_warning(f"system {system}: {message}")
                for system in systems:
                    reports[system].last_step = step
                good = [i for i, s in enumerate(systems) if s not in errors]
                if good and logged:
                    keep = torch.zeros(len(systems), dtype=torch.bool)
                    keep[good] = True
                    writer.submit(
                        _snapshot(
                            _select(state, keep),
                            step,
                            settings,
                            [systems[i] for i in good],
                            log,
                            force_fn if len(good) == len(systems) else None,
                        ),
                        covariance,
                    )
                if not keeps_stress:
                    state = replace(state, stress=None)
                if errors:
                    _finish(reports, errors, statistics, systems)
                    keep = torch.tensor([s not in errors for s in systems])
                    systems = [s for s in systems if s not in errors]
                    if not systems or stopped_by == "covariance failure":
                        break
                    statistics.select(keep.to(device))
                    largest_jump = largest_jump[keep.to(device)]
                    state = _select(state, keep)
                    earlier_builds += verlet.n_builds
                    verlet, wrapped, force_fn = setup(state.batch)
                if progress is not None and stop.signal_name is None:
                    progress(k, time.perf_counter() - started)
                if stop.signal_name is not None:
                    stopped_by = stop.signal_name
                    break
        elapsed = time.perf_counter() - started
        _finish(reports, {}, statistics, systems)
        final = dict(zip(systems, state.batch.to_atoms(), strict=True))
    finally:
        writer.close()
    rate = done / elapsed if elapsed > 0 else 0.0
    return BatchedRunSummary(
        steps=done,
        wall_time_s=elapsed,
        steps_per_second=rate,
        atom_steps_per_second=atom_steps / elapsed if elapsed > 0 else 0.0,
        ns_per_day=rate * settings.timestep_fs * 1e-6 * SECONDS_PER_DAY,
        neighbour_builds=earlier_builds + int(verlet.n_builds),
        systems=[reports[k] for k in sorted(reports)],
        stopped_by=stopped_by,
        final_structures=[final.get(k) for k in sorted(reports)],
    )


def _per_system_part(value, keep: torch.Tensor):
    """``value`` (a per-system tensor, or a dataclass of them such as a thermostat chain or a
    barostat) restricted to the systems where ``keep`` is True."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[keep]
    return replace(value, **{f.name: _per_system_part(getattr(value, f.name), keep)
                             for f in fields(value)})  # fmt: skip


def _select(state: steps.MDState, keep: torch.Tensor) -> steps.MDState:
    """The state of the systems where ``keep`` (n_systems,) is True."""
    keep = keep.to(state.batch.device)
    extra = {
        f.name: _per_system_part(getattr(state, f.name), keep)
        for f in fields(state)
        if f.name not in ("batch", "forces")
    }
    return replace(
        state,
        batch=state.batch.select(keep),
        forces=state.forces[keep[state.batch.system]],
        **extra,
    )


def _snapshot(state, step, settings, systems, log, force_fn):
    """Queue-ready host copies of ``state``; the stress (for the log's pressure) only when a log
    is written and a system is periodic, at the cost of one more evaluation."""
    batch = state.batch
    tensors = {
        "positions": batch.positions,
        "momenta": batch.momenta,
        "cell": batch.cell,
        "n_atoms": batch.n_atoms_per_system,
        "energy": state.energy,
        "forces": state.forces,
    }
    if state.stress is not None:
        tensors["stress"] = state.stress
    elif log and force_fn is not None and bool(batch.pbc.all(-1).any()):
        tensors["stress"] = force_fn(batch, compute_stress=True).stress
    return take_snapshot(step, step * settings.timestep_fs, systems, tensors)


def _finish(reports, errors, statistics: _Statistics, systems: list[int]) -> None:
    """Fill the temperature and drift of ``systems`` (and the error of those in ``errors``)."""
    mean_t, drift = statistics.results()
    for index, system in enumerate(systems):
        report = reports[system]
        if report.mean_temperature_k is None or system in errors:
            report.mean_temperature_k = None if np.isnan(mean_t[index]) else float(mean_t[index])
            value = drift[index]
            report.energy_drift_mev_per_atom_per_ps = None if np.isnan(value) else float(value)
        if system in errors:
            report.error = f"system {system}: {errors[system]}"
