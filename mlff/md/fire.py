"""Batched FIRE on the device: ASE's ``FIRE`` update for every system of a batch at once.

:func:`fire_step` applies ASE's update (``ase.optimize.FIRE``: same parameters, same first step,
same clipping of a system's whole step to ``maxstep``) to every system, each with its own velocity,
time step, mixing parameter and count of downhill steps. With ``cell=True`` the coordinates are
those of ASE's ``FrechetCellFilter`` (:mod:`mlff.md.cell_filter`). A step reads nothing back to the
host: a system that has converged (largest force row below its target), used up ``max_steps`` or
produced a non-finite energy or force stops moving, and its figures are frozen, through masks.

Units are ASE's: positions Å, energies eV, forces eV/Å, stress eV/Å³. As in ASE's FIRE, ``dt``
multiplies forces directly (velocities are eV/Å × dt, steps Å), so it is not a time in fs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch

from mlff.md import cell_filter as cf
from mlff.md.forces import ForceResult
from mlff.md.state import SystemBatch, max_per_system, sum_per_system

ForceFn = Callable[..., ForceResult]  # force_fn(batch, compute_stress=False) -> ForceResult


@dataclass(frozen=True)
class FireParameters:
    """ASE's FIRE parameters (``ase.optimize.FIRE``), with its defaults.

    ``dt``, ``dtmax``: time steps (optimiser units); ``maxstep``: Å, the longest step of a system's
    whole coordinate vector; ``a``: the first mixing parameter, ``astart`` the one after a reset;
    ``Nmin``: downhill steps before ``dt`` grows by ``finc`` (and ``a`` shrinks by ``fa``);
    ``fdec``: the factor on ``dt`` after an uphill step.
    """

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"FIRE parameter {f.name} must be positive, got {value!r}")


@dataclass
class FireState:
    """A batch under FIRE: the last evaluation, the optimiser's per-system variables and, with a
    cell filter, its state. Velocities live in the optimiser's coordinates (those of the filter)."""

    batch: SystemBatch
    energy: torch.Tensor  # (n_systems,) eV
    forces: torch.Tensor  # (n_atoms, 3) eV/Å, Cartesian
    stress: torch.Tensor | None  # (n_systems, 3, 3) eV/Å³ (cell relaxation only)
    atom_forces: torch.Tensor  # (n_atoms, 3) eV/Å, forces on the optimiser's atom coordinates
    cell_forces: torch.Tensor | None  # (n_systems, 3, 3) on the filter's cell coordinates
    velocity: torch.Tensor  # (n_atoms, 3)
    cell_velocity: torch.Tensor | None  # (n_systems, 3, 3)
    dt: torch.Tensor  # (n_systems,) float64
    a: torch.Tensor  # (n_systems,) float64, FIRE's mixing parameter
    n_downhill: torch.Tensor  # (n_systems,) long, ASE's ``Nsteps``
    started: torch.Tensor  # (n_systems,) bool, False until the first step (ASE's vel is None)
    steps: torch.Tensor  # (n_systems,) long, FIRE steps taken
    fmax: torch.Tensor  # (n_systems,) eV/Å, largest force row (atoms and, with a cell, cell rows)
    target: torch.Tensor  # (n_systems,) eV/Å, the fmax to reach
    converged: torch.Tensor  # (n_systems,) bool, fmax < target (kept once reached)
    finite: torch.Tensor  # (n_systems,) bool, energy and forces finite so far
    initial_energy: torch.Tensor  # (n_systems,) eV, at the first evaluation
    cell_filter: cf.CellFilterState | None = None

    PER_ATOM = ("forces", "atom_forces", "velocity")

    def done(self, max_steps: int) -> torch.Tensor:
        """(n_systems,) bool: converged, out of steps, or not finite (stays on the device)."""
        return self.converged | (self.steps >= max_steps) | ~self.finite

    def select(self, keep: torch.Tensor) -> FireState:
        """The systems where ``keep`` (n_systems,) bool is True, renumbered."""
        keep = keep.to(self.batch.device)
        atoms = keep[self.batch.system]
        changes = {"batch": self.batch.select(keep)}
        if self.cell_filter is not None:
            changes["cell_filter"] = self.cell_filter.select(keep, atoms)
        for name, value in self._tensors():
            changes[name] = value[atoms if name in self.PER_ATOM else keep]
        return replace(self, **changes)

    @staticmethod
    def cat(first: FireState, second: FireState) -> FireState:
        """The systems of ``first`` followed by those of ``second`` (same kind of relaxation)."""
        changes = {"batch": _cat_batches(first.batch, second.batch)}
        if first.cell_filter is not None:
            changes["cell_filter"] = cf.CellFilterState.cat(first.cell_filter, second.cell_filter)
        for name, value in first._tensors():
            changes[name] = torch.cat([value, getattr(second, name)])
        return replace(first, **changes)

    def _tensors(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                yield f.name, value


def _cat_batches(first: SystemBatch, second: SystemBatch) -> SystemBatch:
    changes = {
        f.name: torch.cat([getattr(first, f.name), getattr(second, f.name)]) for f in fields(first)
    }
    changes["system"] = torch.cat([first.system, second.system + first.n_systems])
    return SystemBatch(**changes)


def _dot(state: FireState, x: torch.Tensor, x_cell, y: torch.Tensor, y_cell) -> torch.Tensor:
    """(n_systems,) the dot product of two coordinate vectors of every system."""
    total = sum_per_system((x * y).sum(-1), state.batch.system, state.batch.n_systems)
    if x_cell is not None:
        total = total + (x_cell * y_cell).sum((1, 2))
    return total


def _evaluate(batch: SystemBatch, force_fn: ForceFn, cell_filter: cf.CellFilterState | None):
    """The model on ``batch`` and the optimiser's view of it: ``(result, atom_forces,
    cell_forces, fmax, finite)``, the last two (n_systems,)."""
    result = force_fn(batch, compute_stress=cell_filter is not None)
    if cell_filter is None:
        atom_forces, cell_forces = result.forces, None
    else:
        atom_forces, cell_forces = cf.generalised_forces(
            cell_filter, batch, result.forces, result.stress
        )
    norms = torch.linalg.vector_norm(atom_forces, dim=-1)
    fmax = max_per_system(norms, batch.system, batch.n_systems)
    if cell_forces is not None:
        fmax = torch.maximum(fmax, torch.linalg.vector_norm(cell_forces, dim=-1).amax(-1))
    finite = torch.isfinite(result.energy) & torch.isfinite(
        sum_per_system(atom_forces.abs().sum(-1), batch.system, batch.n_systems)
    )
    if cell_forces is not None:
        finite = finite & torch.isfinite(cell_forces.sum((1, 2)))
    return result, atom_forces, cell_forces, fmax, finite


def fire_init(
    batch: SystemBatch,
    force_fn: ForceFn,
    fmax: float | torch.Tensor,
    params: FireParameters = FireParameters(),  # noqa: B008 (frozen, so shared safely)
    cell: bool = False,
    exp_cell_factor: float | torch.Tensor | None = None,
    scalar_pressure: float | torch.Tensor = 0.0,
) -> FireState:
    """FIRE's state before its first step: one evaluation of ``force_fn`` on ``batch``.

    Args:
        batch: the systems; with ``cell=True`` all must be periodic in three directions.
        force_fn: ``force_fn(batch, compute_stress) -> ForceResult`` for this batch.
        fmax: eV/Å, a number or (n_systems,): a system converges when its largest force row is
            below it (ASE's criterion, strict).
        params: FIRE's parameters.
        cell: relax the cells too (:mod:`mlff.md.cell_filter`).
        exp_cell_factor, scalar_pressure: the filter's (see :func:`cell_filter_init`).
    """
    n, device = batch.n_systems, batch.device
    cell_filter = cf.cell_filter_init(batch, exp_cell_factor, scalar_pressure) if cell else None
    result, atom_forces, cell_forces, current_fmax, finite = _evaluate(batch, force_fn, cell_filter)
    target = torch.as_tensor(fmax, dtype=torch.float64, device=device).expand(n).clone()

    def full(value, dtype):
        return torch.full((n,), value, dtype=dtype, device=device)

    return FireState(
        batch=batch,
        energy=result.energy,
        forces=result.forces,
        stress=result.stress,
        atom_forces=atom_forces,
        cell_forces=cell_forces,
        velocity=torch.zeros_like(batch.positions),
        cell_velocity=None if cell_forces is None else torch.zeros_like(cell_forces),
        dt=full(params.dt, torch.float64),
        a=full(params.a, torch.float64),
        n_downhill=full(0, torch.long),
        started=full(False, torch.bool),
        steps=full(0, torch.long),
        fmax=current_fmax,
        target=target,
        converged=finite & (current_fmax < target),
        finite=finite,
        initial_energy=result.energy,
        cell_filter=cell_filter,
    )


def fire_step(
    state: FireState,
    force_fn: ForceFn,
    max_steps: int,
    params: FireParameters = FireParameters(),  # noqa: B008 (frozen, so shared safely)
) -> FireState:
    """One FIRE step of every system that is not done, then one evaluation of the batch.

    Per moving system k, with f its forces and v its velocity over all its coordinates (as
    ``ase.optimize.FIRE.step``):

        after the first step: if f·v > 0: v ← (1 - a) v + a |v| f / |f|; if N > Nmin:
        dt ← min(finc dt, dtmax), a ← fa a; N ← N + 1. Otherwise v ← 0, a ← astart,
        dt ← fdec dt, N ← 0.
        then v ← v + dt f;  Δx = dt v, scaled to |Δx| = maxstep if longer;  x ← x + Δx.

    Systems that are done (:meth:`FireState.done`) keep their coordinates, variables and figures
    bit for bit. No host sync.
    """
    batch = state.batch
    system = batch.system
    moving = ~state.done(max_steps)  # (n_systems,)
    moving_atoms = moving[system, None]  # (n_atoms, 1)
    f, f_cell = state.atom_forces, state.cell_forces
    v, v_cell = state.velocity, state.cell_velocity
    with_cell = f_cell is not None

    vf = _dot(state, f, f_cell, v, v_cell)
    f2 = _dot(state, f, f_cell, f, f_cell)
    v2 = _dot(state, v, v_cell, v, v_cell)
    downhill = state.started & (vf > 0.0)
    reset = state.started & ~(vf > 0.0)
    grow = downhill & (state.n_downhill > params.Nmin)

    # v ← keep v + a f / |f| |v| (downhill), keep = 1 - a (downhill), 0 (reset), 1 (first step)
    keep_v = torch.where(downhill, 1.0 - state.a, torch.ones_like(state.a))
    keep_v = torch.where(reset, torch.zeros_like(keep_v), keep_v)
    f_norm = torch.sqrt(torch.where(f2 > 0, f2, torch.ones_like(f2)))  # |f| = 0: not downhill
    v_norm = torch.sqrt(v2)

    dt = torch.where(grow, torch.clamp(state.dt * params.finc, max=params.dtmax), state.dt)
    dt = torch.where(reset, state.dt * params.fdec, dt)
    a = torch.where(grow, state.a * params.fa, state.a)
    a = torch.where(reset, torch.full_like(a, params.astart), a)
    n_downhill = torch.where(downhill, state.n_downhill + 1, state.n_downhill)
    n_downhill = torch.where(reset, torch.zeros_like(n_downhill), n_downhill)

    def new_velocity(v, f, index, shape):
        """``index`` maps systems onto the rows of ``v``; ``shape`` broadcasts per-system values."""
        kept = keep_v[index].view(shape) * v
        mixed = kept + state.a[index].view(shape) * f / f_norm[index].view(shape) * v_norm[
            index
        ].view(shape)
        return torch.where(downhill[index].view(shape), mixed, kept) + dt[index].view(shape) * f

    v_new = new_velocity(v, f, system, (-1, 1))
    dr = dt[system, None] * v_new
    v_cell_new = dr_cell = None
    if with_cell:
        v_cell_new = new_velocity(v_cell, f_cell, slice(None), (-1, 1, 1))
        dr_cell = dt[:, None, None] * v_cell_new
    dr_norm = torch.sqrt(_dot(state, dr, dr_cell, dr, dr_cell))
    scale = torch.where(
        dr_norm > params.maxstep, params.maxstep / dr_norm, torch.ones_like(dr_norm)
    )
    dr = dr * scale[system, None]

    if with_cell:
        dr_cell = dr_cell * scale[:, None, None]
        cell_filter, moved = cf.apply_step(state.cell_filter, batch, dr, dr_cell)
        cell_filter = cf.CellFilterState.where(moving, cell_filter, state.cell_filter, system)
        moved = replace(
            moved,
            positions=torch.where(moving_atoms, moved.positions, batch.positions),
            cell=torch.where(moving[:, None, None], moved.cell, batch.cell),
        )
    else:
        cell_filter = None
        moved = replace(
            batch, positions=torch.where(moving_atoms, batch.positions + dr, batch.positions)
        )

    result, atom_forces, cell_forces, fmax, finite = _evaluate(moved, force_fn, cell_filter)

    def pick(new, old, mask):
        return None if new is None else torch.where(mask, new, old)

    per_system = moving[:, None, None]
    return replace(
        state,
        batch=moved,
        energy=pick(result.energy, state.energy, moving),
        forces=pick(result.forces, state.forces, moving_atoms),
        stress=pick(result.stress, state.stress, per_system),
        atom_forces=pick(atom_forces, state.atom_forces, moving_atoms),
        cell_forces=pick(cell_forces, state.cell_forces, per_system),
        velocity=pick(v_new, v, moving_atoms),
        cell_velocity=pick(v_cell_new, v_cell, per_system),
        dt=pick(dt, state.dt, moving),
        a=pick(a, state.a, moving),
        n_downhill=pick(n_downhill, state.n_downhill, moving),
        started=state.started | moving,
        steps=state.steps + moving.long(),
        fmax=pick(fmax, state.fmax, moving),
        converged=state.converged | (moving & finite & (fmax < state.target)),
        finite=state.finite & (finite | ~moving),
        cell_filter=cell_filter,
    )
