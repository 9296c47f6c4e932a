"""Relax many structures in one batch on the device: batched FIRE with a refilling queue.

:func:`relax_many` keeps a batch of at most ``max_atoms_per_batch`` atoms under
:func:`~mlff.md.fire.fire_step` (positions, or positions and cells through
:mod:`mlff.md.cell_filter`). Every ``sync_every`` steps (default :data:`SYNC_EVERY`) it reads the
per-system ``done`` mask to the host, the loop's only host sync; it hands finished systems back as
:class:`~mlff.relaxation.RelaxResult` (as :func:`mlff.relaxation.relax` fills them, so ``mlff
relax`` reports both engines alike) and refills the batch from the structures still waiting. A
finished system idles, frozen, for fewer than ``sync_every`` steps before it leaves.

Example::

    from mlff.md.forces import BatchedModel, ForceFunction, exact_pairs
    from mlff.md.relax import relax_many

    def factory(batch):
        return ForceFunction(BatchedModel(model, batch.numbers), exact_pairs(model.cutoff))

    results = relax_many(structures, factory, fmax=0.01, max_atoms_per_batch=2048, cell=True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import ase
import numpy as np
import torch

from mlff.errors import StructureError
from mlff.graph import check_structure
from mlff.md.fire import FireParameters, FireState, ForceFn, fire_init, fire_step
from mlff.md.state import SystemBatch
from mlff.relaxation import RelaxResult, space_group

__all__ = ["SYNC_EVERY", "FireParameters", "FireState", "fire_init", "fire_step", "relax_many"]

SYNC_EVERY = 10  # steps between host reads of the done mask in relax_many


def relax_many(
    structures: Sequence[ase.Atoms],
    force_fn_factory: Callable[[SystemBatch], ForceFn],
    fmax: float = 0.01,
    max_steps: int = 500,
    max_atoms_per_batch: int = 4096,
    cell: bool = False,
    *,
    labels: Sequence[str] | None = None,
    params: FireParameters = FireParameters(),  # noqa: B008 (frozen, so shared safely)
    sync_every: int = SYNC_EVERY,
    device: torch.device | str = "cpu",
    symprec: float | None = 0.01,
) -> list[RelaxResult]:
    """Relax every structure with batched FIRE, refilling the batch as systems finish.

    Args:
        structures: the structures (copies are relaxed; constraints are not supported).
        force_fn_factory: ``factory(batch) -> force_fn`` for a batch (species are looked up per
            batch), e.g. ``lambda b: ForceFunction(BatchedModel(model, b.numbers), pairs)``.
        fmax: eV/Å, the largest force row to reach (with ``cell``, cell rows included; ASE's).
        max_steps: FIRE steps per structure before it is reported as not converged.
        max_atoms_per_batch: the most atoms in the batch at once; a larger structure runs alone.
        cell: relax cells too (FrechetCellFilter's parametrisation; needs full periodicity).
        labels: names of the structures in errors and results (default ``structure <i>``).
        params: FIRE's parameters.
        sync_every: steps between reads of the done mask to the host (the loop's only sync).
        device: where the batch lives (the model's device).
        symprec: space-group tolerance in Å for the results; None leaves space groups out.

    Returns:
        One :class:`~mlff.relaxation.RelaxResult` per structure, in input order, as
        :func:`mlff.relaxation.relax` fills it (its ``atoms`` carry a single-point calculator
        with the final energy, forces and, for periodic cells, stress).
    """
    labels = [f"structure {i}" for i in range(len(structures))] if labels is None else labels
    _check_inputs(structures, labels, fmax, max_steps, max_atoms_per_batch, sync_every, cell)
    results: list[RelaxResult | None] = [None] * len(structures)
    sizes = [len(atoms) for atoms in structures]
    waiting = list(range(len(structures)))  # input indices not yet admitted, in input order
    state: FireState | None = None
    members: list[int] = []  # input index of each system of ``state``
    while True:
        changed = False
        if state is not None:
            done = state.done(max_steps).cpu()  # the loop's host sync, once per sync_every steps
            if bool(done.any()):
                flags = done.tolist()
                finished = [m for m, d in zip(members, flags, strict=True) if d]
                finals = _results(
                    state.select(done), finished, structures, labels, force_fn_factory, symprec
                )
                for i, result in zip(finished, finals, strict=True):
                    results[i] = result
                members = [m for m, d in zip(members, flags, strict=True) if not d]
                state = state.select(~done) if members else None
                changed = True
        room = max_atoms_per_batch - (0 if state is None else state.batch.n_atoms)
        admitted = _admit(waiting, sizes, room, empty=state is None)
        if admitted:
            taken = set(admitted)
            waiting = [i for i in waiting if i not in taken]
            batch = SystemBatch.from_atoms([structures[i] for i in admitted], device=device)
            fresh = fire_init(batch, force_fn_factory(batch), fmax, params, cell)
            state = fresh if state is None else FireState.cat(state, fresh)
            members += admitted
            changed = True
        if state is None:
            return results
        if changed:
            force_fn = force_fn_factory(state.batch)
        for _ in range(sync_every):
            state = fire_step(state, force_fn, max_steps, params)


def _admit(waiting: list[int], sizes: list[int], room: int, empty: bool) -> list[int]:
    """The waiting structures that join the batch: first fit in input order within ``room``
    atoms; into an empty batch, the first always joins (a structure larger than the bound runs
    alone)."""
    admitted = []
    for i in waiting:
        if sizes[i] <= room or (empty and not admitted):
            admitted.append(i)
            room -= sizes[i]
    return admitted


def _check_inputs(structures, labels, fmax, max_steps, max_atoms_per_batch, sync_every, cell):
    """Refuse bad options and structures before any work, naming the structure."""
    if not (math.isfinite(fmax) and fmax > 0):
        raise ValueError(f"fmax must be a positive force in eV/Å, got {fmax!r}")
    for name, value, least in (
        ("max_steps", max_steps, 0),
        ("max_atoms_per_batch", max_atoms_per_batch, 1),
        ("sync_every", sync_every, 1),
    ):
        if int(value) != value or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if len(labels) != len(structures):
        raise ValueError(f"got {len(labels)} labels for {len(structures)} structures")
    for atoms, label in zip(structures, labels, strict=True):
        check_structure(atoms, label)
        if atoms.constraints:
            raise StructureError(f"{label}: constraints are not supported by the batched FIRE")
        if cell and not np.all(atoms.pbc):
            raise StructureError(
                f"{label}: cell relaxation needs a cell periodic in all three directions "
                f"(pbc={atoms.pbc.tolist()})"
            )


def _results(
    state: FireState,
    indices: Sequence[int],
    structures: Sequence[ase.Atoms],
    labels: Sequence[str],
    force_fn_factory: Callable[[SystemBatch], ForceFn],
    symprec: float | None,
) -> list[RelaxResult]:
    """RelaxResults of the finished systems of ``state``, which are ``structures[indices]``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    stress = state.stress
    if stress is None and bool(state.batch.pbc.all(-1).any()):  # fixed cells: one evaluation
        stress = force_fn_factory(state.batch)(state.batch, compute_stress=True).stress
    stress = None if stress is None else stress.cpu().numpy()
    final_cells = state.batch.cell.cpu().numpy()
    positions, forces = state.batch.positions.cpu().numpy(), state.forces.cpu().numpy()
    offsets = state.batch.offsets().cpu().numpy()
    energy, fmax = state.energy.cpu().numpy(), state.fmax.cpu().numpy()
    initial_energy = state.initial_energy.cpu().numpy()
    steps, converged = state.steps.cpu().numpy(), state.converged.cpu().numpy()
    finite = state.finite.cpu().numpy()
    out = []
    for k, i in enumerate(indices):
        part = slice(offsets[k], offsets[k + 1])
        initial = structures[i]
        periodic = bool(np.all(initial.pbc))
        relaxed = initial.copy()
        relaxed.calc = None
        if np.any(initial.pbc):
            relaxed.set_cell(final_cells[k])
        relaxed.set_positions(positions[part])
        ok = bool(converged[k] and finite[k])
        calc_results = {"energy": float(energy[k]), "forces": forces[part]}
        if periodic and stress is not None:
            calc_results["stress"] = stress[k]
        relaxed.calc = SinglePointCalculator(relaxed, **calc_results)
        relaxed.info.update({"relaxed": ok, "fmax": float(fmax[k])})
        out.append(
            RelaxResult(
                label=labels[i],
                n_atoms=len(initial),
                initial_energy=float(initial_energy[k]),
                energy=float(energy[k]),
                fmax=float(fmax[k]),
                steps=int(steps[k]),
                converged=ok,
                cell_relaxed=state.cell_filter is not None,
                initial_volume=float(initial.get_volume()) if periodic else None,
                volume=float(relaxed.get_volume()) if periodic else None,
                initial_spacegroup=None if symprec is None else space_group(initial, symprec),
                spacegroup=None if symprec is None else space_group(relaxed, symprec),
                atoms=relaxed,
            )
        )
    return out
