"""The Verlet list of the batched engine (CPU, float64): its pairs within the cutoff equal the exact
list's, results equal the exact list's, fast atoms and cell changes trigger rebuilds in time, only
moved systems are rebuilt, and calls between rebuilds make no host sync."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from mlff.md.forces import BatchedModel, exact_pairs
from mlff.md.neighbours import VerletList, torch_pairs
from mlff.md.state import SystemBatch
from tests.conftest import tiny_model

CUTOFF = 3.5  # Å, the tiny model's
SKIN = 1.0  # Å
RESULT_TOLERANCE = 1e-10  # eV, eV/Å: skin list against exact list
BACKENDS = ["vesin", "torch"]


def structures() -> list[Atoms]:
    """A molecule, a rattled triclinic cell, a cell smaller than the cutoff and a slab."""
    ethanol = molecule("CH3CH2OH")
    triclinic = Atoms(
        "C2OH3",
        scaled_positions=np.random.default_rng(1).random((6, 3)),
        cell=[[4.2, 0.0, 0.0], [1.3, 4.0, 0.0], [-0.8, 0.9, 4.4]],
        pbc=True,
    )
    triclinic.rattle(0.05, seed=2)
    triclinic.positions[0] += triclinic.cell[0] - 2 * triclinic.cell[2]  # unwrapped
    copper = bulk("Cu", "fcc", a=3.6)  # primitive cell, 2.5 Å wide: sees its own images
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    slab.rattle(0.05, seed=3)
    slab.positions[1] += slab.cell[1]
    return [ethanol, triclinic, copper, slab]


def batch() -> SystemBatch:
    return SystemBatch.from_atoms(structures())


def inside_radius(state, i, j, shifts, radius: float) -> set:
    """The pairs shorter than ``radius`` (Å), as a set of (i, j, S)."""
    vectors = state.positions[j] - state.positions[i]
    vectors = vectors + torch.einsum("ek,ekl->el", shifts, state.cell[state.system[i]])
    keep = torch.linalg.vector_norm(vectors, dim=-1) < radius
    rows = torch.cat([torch.stack([i, j], 1), shifts.round().long()], 1)[keep]
    return {tuple(row) for row in rows.tolist()}


def inside(state: SystemBatch, edge_index: torch.Tensor, edge_shifts: torch.Tensor) -> set:
    return inside_radius(state, edge_index[0], edge_index[1], edge_shifts, CUTOFF)


def exact(state: SystemBatch) -> set:
    return inside(state, *exact_pairs(CUTOFF)(state))


def perturb(state: SystemBatch, rng: np.random.Generator, largest: float) -> None:
    """Move every atom by a random vector of length up to ``largest`` (Å), in place."""
    steps = rng.normal(size=(state.n_atoms, 3))
    steps *= largest * rng.random((state.n_atoms, 1)) / np.linalg.norm(steps, axis=1, keepdims=True)
    state.positions += torch.from_numpy(steps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairs_inside_cutoff_equal_exact_list(backend):
    state = batch()
    edge_index, edge_shifts = VerletList(CUTOFF, SKIN, backend).update(state)
    assert edge_index.dtype == torch.long and edge_shifts.dtype == torch.float64
    systems = state.system[edge_index[0]]
    assert torch.equal(systems, state.system[edge_index[1]])
    assert torch.all(systems[1:] >= systems[:-1])  # grouped by system
    pairs = inside(state, edge_index, edge_shifts)
    assert pairs == exact(state)
    assert any(i == j for i, j, *_ in pairs)  # the small cell's own images
    # every candidate lies within cutoff + skin, and all of those are there
    i, j = edge_index
    vectors = state.positions[j] - state.positions[i]
    vectors = vectors + torch.einsum("ek,ekl->el", edge_shifts, state.cell[systems])
    assert torch.linalg.vector_norm(vectors, dim=-1).max() < CUTOFF + SKIN
    assert edge_index.shape[1] == exact_pairs(CUTOFF + SKIN)(state)[0].shape[1]


def test_torch_cell_list_thin_triclinic_cell_in_chunks(monkeypatch):
    """A cell much thinner than the radius along one skewed axis, searched in many chunks."""
    atoms = Atoms(
        "Cu2",
        scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.7, 0.4]],
        cell=[[2.0, 0.0, 0.0], [1.7, 1.1, 0.0], [0.4, -0.6, 3.0]],
        pbc=True,
    )
    state = SystemBatch.from_atoms([atoms, molecule("CH3CH2OH")])
    monkeypatch.setattr("mlff.md.neighbours.PAIR_CHUNK", 7)
    i, j, s = torch_pairs(state.positions, state.cell, state.pbc, np.array([2, 9]), 5.0)
    found = inside_radius(state, i, j, s, 5.0)
    reference = exact_pairs(5.0)(state)
    assert found == inside_radius(state, *reference[0], reference[1], 5.0)
    assert len(found) == len(i)


@pytest.mark.parametrize("repeat", [(3, 3, 3), (4, 4, 2)])
def test_torch_cell_list_with_several_bins(repeat):
    """Cells 2-3 radii wide (two and three bins per axis), sheared, rattled, partly unwrapped,
    beside a laterally large slab."""
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    crystal.set_cell(crystal.cell @ [[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [-0.1, 0.15, 1.0]], True)
    crystal.rattle(0.1, seed=7)
    crystal.positions[::5] += crystal.cell[0] - crystal.cell[2]
    slab = fcc111("Cu", (6, 6, 2), vacuum=4.0)
    slab.positions[::3] -= slab.cell[1]
    state = SystemBatch.from_atoms([crystal, slab])
    counts = state.n_atoms_per_system.numpy()
    radius = CUTOFF + SKIN
    i, j, s = torch_pairs(state.positions, state.cell, state.pbc, counts, radius)
    found = inside_radius(state, i, j, s, radius)
    reference = exact_pairs(radius)(state)
    assert found == inside_radius(state, *reference[0], reference[1], radius)
    assert len(found) == len(i) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_skin_list_results_equal_exact_list(backend):
    state = batch()
    model = BatchedModel(tiny_model("egnn", elements=("H", "C", "O", "Cu")), state.numbers)
    verlet = VerletList(CUTOFF, SKIN, backend)
    verlet.update(state)
    perturb(state, np.random.default_rng(0), 0.49 * SKIN)
    edges = verlet.update(state)
    assert verlet.n_builds == 1
    result = model(state, *edges)
    reference = model(state, *exact_pairs(CUTOFF)(state))
    torch.testing.assert_close(result.energy, reference.energy, atol=RESULT_TOLERANCE, rtol=0)
    torch.testing.assert_close(result.forces, reference.forces, atol=RESULT_TOLERANCE, rtol=0)
    assert reference.forces.abs().max() > 1e-3  # the check is not vacuous


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("lazy", [False, True])
def test_fast_atoms_trigger_rebuild_before_pairs_are_missed(backend, lazy):
    """Random moves each call (up to 0.45 skin, or the margin when the flag is read late) and
    one atom racing at that speed in a straight line: the list never misses a pair."""
    state = batch()
    verlet = VerletList(CUTOFF, SKIN, backend, lazy_flag=lazy, margin=0.1)
    speed = (0.095 if lazy else 0.45) * SKIN
    rng = np.random.default_rng(4)
    racer = int(state.offsets()[1]) + 1  # in the triclinic cell
    for _ in range(40):
        edges = verlet.update(state)
        assert inside(state, *edges) == exact(state)
        assert torch.all(verlet.max_displacement <= 0.5 * SKIN)
        racing = state.positions[racer] + torch.tensor([speed, 0.0, 0.0], dtype=torch.float64)
        perturb(state, rng, speed)
        state.positions[racer] = racing
    assert verlet.n_builds > 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_change_counts_toward_rebuild(backend):
    """NPT-like calls: the cell deforms (positions scaled with it or not) and atoms move."""
    state = batch()
    verlet = VerletList(CUTOFF, SKIN, backend)
    rng = np.random.default_rng(5)
    periodic = state.pbc.any(1)
    for call in range(30):
        edges = verlet.update(state)
        assert inside(state, *edges) == exact(state)
        strain = torch.eye(3) + torch.from_numpy(
            rng.normal(scale=0.01, size=(state.n_systems, 3, 3))
        )
        strain[~periodic] = torch.eye(3, dtype=torch.float64)
        strain[3, 2] = strain[3, :, 2] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # slab
        if call % 2:  # positions follow the cell
            state.positions = torch.einsum("na,nab->nb", state.positions, strain[state.system])
        state.cell = torch.bmm(state.cell, strain)
        perturb(state, rng, 0.1 * SKIN)
    assert verlet.n_builds > 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_compression_with_positions_following(backend):
    """Atoms fixed in fractional coordinates: only the strain term sees images coming closer."""
    state = SystemBatch.from_atoms(structures()[1:3])
    verlet = VerletList(CUTOFF, SKIN, backend)
    for _ in range(15):
        edges = verlet.update(state)
        assert inside(state, *edges) == exact(state)
        state.positions = 0.98 * state.positions
        state.cell = 0.98 * state.cell
    assert verlet.n_builds > 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_cell_expansion_with_fixed_unwrapped_positions(backend):
    """An atom ten cells away from its partner: a small strain moves their pair by much more."""
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [105.0, 0.0, 0.0]], cell=[10.0] * 3, pbc=True)
    state = SystemBatch.from_atoms([atoms])
    verlet = VerletList(CUTOFF, SKIN, backend)
    for _ in range(12):
        edges = verlet.update(state)
        assert inside(state, *edges) == exact(state)
        state.cell[0, 0, 0] += 0.03
    assert exact(state)  # the pair came inside the cutoff
    assert verlet.n_builds > 2


@pytest.mark.parametrize("lazy", [False, True])
def test_only_moved_systems_are_rebuilt(lazy):
    state = batch()
    verlet = VerletList(CUTOFF, SKIN, "torch", lazy_flag=lazy)
    before = verlet.update(state)
    moved = state.system == 1
    state.positions[moved] += torch.tensor([0.3, 0.2, -0.35]) * SKIN
    if lazy:  # the flag is read one call late
        verlet.update(state)
        assert verlet.n_builds == 1
    after = verlet.update(state)
    assert verlet.n_builds == 2
    assert verlet.builds_per_system.tolist() == [1, 2, 1, 1]
    assert verlet.max_displacement[1] == 0
    keep_before = ~moved[before[0][0]]
    keep_after = ~moved[after[0][0]]
    assert torch.equal(before[0][:, keep_before], after[0][:, keep_after])
    assert torch.equal(before[1][keep_before], after[1][keep_after])
    assert torch.all(torch.diff(state.system[after[0][0]]) >= 0)  # still grouped by system
    assert inside(state, *after) == exact(state)


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Make every device-to-host read of a tensor raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("host sync")

    with monkeypatch.context() as patch:
        for name in ("item", "cpu", "numpy", "tolist", "__bool__"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_host_sync_between_rebuilds(backend, monkeypatch):
    state = batch()
    verlet = VerletList(CUTOFF, SKIN, backend, lazy_flag=True)
    verlet.update(state)
    with pytest.raises(AssertionError, match="host sync"), no_host_sync(monkeypatch):
        bool(state.positions.sum() > 0)  # the patch is active
    rng = np.random.default_rng(6)
    for _ in range(3):
        perturb(state, rng, 0.1 * SKIN)
        with no_host_sync(monkeypatch):
            verlet.update(state)
    assert verlet.n_builds == 1
    state.positions[0] += 0.6 * SKIN
    with no_host_sync(monkeypatch):
        verlet.update(state)  # flags system 0; the rebuild happens on the next call
    assert verlet.n_builds == 1 and verlet.max_displacement[0] > 0.5 * SKIN
    verlet.update(state)
    assert verlet.n_builds == 2 and verlet.builds_per_system.tolist() == [2, 1, 1, 1]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="backend"):
        VerletList(CUTOFF, SKIN, "cells")
    with pytest.raises(ValueError, match="skin"):
        VerletList(CUTOFF, -1.0)
    with pytest.raises(ValueError, match="margin"):
        VerletList(CUTOFF, SKIN, margin=0.5)
