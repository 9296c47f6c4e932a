"""Batched FIRE, the Fréchet cell filter and the relaxation queue (CPU, float64), against ASE's
FIRE and FrechetCellFilter through mlff.relaxation.relax, and batch against single."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.filters import FrechetCellFilter

from mlff import MLFFCalculator
from mlff.errors import StructureError
from mlff.md import cell_filter as cf
from mlff.md.forces import BatchedModel, ForceFunction, exact_pairs
from mlff.md.relax import FireParameters, fire_init, fire_step, relax_many
from mlff.md.state import SystemBatch
from mlff.relaxation import relax
from tests.workflows.conftest import fit_cu_to_emt

ASE_TOLERANCE = 1e-8  # Å and eV: batched FIRE against ASE's FIRE, same model
BATCH_TOLERANCE = 1e-10  # system k in a batch against system k alone
FMAX = 1e-3  # eV/Å

SHEAR = np.array([[0.03, 0.01, 0.0], [0.01, -0.02, 0.005], [0.0, 0.005, 0.02]])


@pytest.fixture(scope="module")
def model():
    """A tiny Cu EGNN fitted to EMT, with a minimum near a = 3.6 Å."""
    return fit_cu_to_emt()


@pytest.fixture(scope="module")
def factory(model):
    return lambda batch: ForceFunction(
        BatchedModel(model, batch.numbers), exact_pairs(model.cutoff)
    )


def cu(repeat=(1, 1, 1), a=3.61, rattle=0.08, seed=1, strain=None, cubic=True) -> Atoms:
    """A rattled fcc Cu cell, optionally strained by ``(1 + strain)``."""
    atoms = bulk("Cu", "fcc", a=a, cubic=cubic) * repeat
    if strain is not None:
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def cu_cluster() -> Atoms:
    """A distorted Cu tetrahedron without a cell."""
    positions = [[0, 0, 0], [2.5, 0.1, 0], [1.2, 2.3, 0.1], [1.3, 0.7, 2.1]]
    return Atoms("Cu4", positions=positions)


def reference(model, atoms, cell, max_steps=300):
    """ASE's FIRE (and FrechetCellFilter) through mlff.relaxation.relax, the ASE engine."""
    calculator = MLFFCalculator(model, device="cpu", dtype="float64")
    return relax(atoms, calculator, fmax=FMAX, cell=cell, max_steps=max_steps)


def positions_of(state, k):
    offsets = state.batch.offsets()
    return state.batch.positions[offsets[k] : offsets[k + 1]]


@pytest.mark.parametrize(
    "structure, max_steps",
    [
        (cu((2, 1, 1), a=3.65, rattle=0.25, seed=3, strain=SHEAR), 300),  # steps clipped to maxstep
        (cu_cluster(), 40),
    ],
    ids=["strained-cell", "cluster"],
)
def test_fire_matches_ase_fixed_cell(model, factory, structure, max_steps):
    expected = reference(model, structure, cell=False, max_steps=max_steps)
    (got,) = relax_many([structure], factory, fmax=FMAX, max_steps=max_steps, cell=False)
    assert got.steps == expected.steps > 10
    assert got.converged == expected.converged
    np.testing.assert_allclose(got.atoms.positions, expected.atoms.positions, atol=ASE_TOLERANCE)
    assert got.energy == pytest.approx(expected.energy, abs=ASE_TOLERANCE)
    assert got.initial_energy == pytest.approx(expected.initial_energy, abs=1e-12)
    assert got.fmax == pytest.approx(expected.fmax, abs=ASE_TOLERANCE)
    np.testing.assert_allclose(
        got.atoms.get_forces(), expected.atoms.get_forces(), atol=ASE_TOLERANCE
    )
    if structure.pbc.all():  # the fixed-cell result carries the stress, as the ASE engine's
        np.testing.assert_allclose(
            got.atoms.get_stress(), expected.atoms.get_stress(), atol=ASE_TOLERANCE
        )
    assert got.as_dict() == pytest.approx(expected.as_dict() | {"label": "structure 0"}, abs=1e-7)


def test_cell_relaxation_matches_ase_frechet_filter(model, factory):
    structure = cu((2, 1, 1), a=3.75, strain=SHEAR, seed=4)
    expected = reference(model, structure, cell=True)
    (got,) = relax_many([structure], factory, fmax=FMAX, max_steps=300, cell=True)
    assert expected.converged and got.converged
    assert got.steps == expected.steps
    assert got.energy == pytest.approx(expected.energy, abs=1e-6)
    np.testing.assert_allclose(got.atoms.cell[:], expected.atoms.cell[:], atol=1e-6)
    np.testing.assert_allclose(got.atoms.positions, expected.atoms.positions, atol=1e-6)
    assert got.volume == pytest.approx(expected.volume, abs=1e-6)
    assert abs(got.volume_change_percent) > 1.0  # the cell did relax
    assert (got.initial_spacegroup, got.spacegroup) == (
        expected.initial_spacegroup,
        expected.spacegroup,
    )
    assert got.cell_relaxed and got.fmax < FMAX


def test_expm_and_its_frechet_adjoint_match_scipy():
    from scipy.linalg import expm, expm_frechet

    generator = np.random.default_rng(0)
    scales = np.array([0.0, 1e-3, 0.3, 2.0, 40.0])[:, None, None]  # 1-norms from 0 to ~200
    a = scales * generator.normal(size=(5, 3, 3))
    g = 10.0 * generator.normal(size=(5, 3, 3))
    got = cf.expm(torch.from_numpy(a)).numpy()
    for k in range(5):
        expected = expm(a[k])
        np.testing.assert_allclose(
            got[k], expected, rtol=1e-13, atol=1e-13 * np.abs(expected).max()
        )
    small = a[:4]  # log deformations are small
    adjoint = cf.expm_frechet_adjoint(torch.from_numpy(small), torch.from_numpy(g[:4])).numpy()
    for k in range(4):
        expected = np.zeros((3, 3))
        for mu in range(3):
            for nu in range(3):
                direction = np.zeros((3, 3))
                direction[mu, nu] = 1.0
                derivative = expm_frechet(small[k], direction, compute_expm=False)
                expected[mu, nu] = np.sum(derivative * g[k])
        np.testing.assert_allclose(adjoint[k], expected, rtol=1e-12, atol=1e-12)


def test_generalised_cell_forces_match_frechet_filter(model, factory):
    """At a deformed cell, the filter's forces (atoms and the Fréchet cell rows) equal ASE's."""
    structure = cu((2, 1, 1), a=3.7, strain=SHEAR)
    n = len(structure)
    cell_step = n * np.array([[0.02, -0.01, 0.03], [0.015, -0.02, 0.0], [0.01, 0.02, 0.04]])
    atoms = structure.copy()
    atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
    ase_filter = FrechetCellFilter(atoms)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        x = ase_filter.get_positions()
        x[n:] += cell_step
        ase_filter.set_positions(x)
        expected = ase_filter.get_forces()

    batch = SystemBatch.from_atoms([structure])
    state = cf.cell_filter_init(batch)
    state, moved = cf.apply_step(
        state, batch, torch.zeros_like(batch.positions), torch.from_numpy(cell_step)[None]
    )
    np.testing.assert_allclose(moved.cell[0].numpy(), atoms.cell[:], atol=1e-12)
    np.testing.assert_allclose(moved.positions.numpy(), atoms.positions, atol=1e-12)
    result = factory(moved)(moved, compute_stress=True)
    atom_forces, cell_forces = cf.generalised_forces(state, moved, result.forces, result.stress)
    assert np.abs(expected[n:]).max() > 1e-2  # a real cell force
    np.testing.assert_allclose(atom_forces.numpy(), expected[:n], atol=1e-10)
    np.testing.assert_allclose(cell_forces[0].numpy(), expected[n:], atol=1e-10)


@pytest.mark.parametrize("cell", [False, True], ids=["fixed-cell", "cell"])
def test_batch_relaxes_each_system_as_if_alone(factory, cell):
    structures = [
        cu(a=3.7, seed=2),
        cu((2, 1, 1), a=3.55, strain=SHEAR, seed=3),
        cu(a=3.5, rattle=0.0, strain=SHEAR, cubic=False),  # one atom
    ]
    steps = 25

    def run(group):
        batch = SystemBatch.from_atoms(group)
        force_fn = factory(batch)
        state = fire_init(batch, force_fn, FMAX, cell=cell)
        for _ in range(steps):
            state = fire_step(state, force_fn, max_steps=100)
        return state

    together = run(structures)
    for k, structure in enumerate(structures):
        alone = run([structure])
        torch.testing.assert_close(
            positions_of(together, k), alone.batch.positions, atol=BATCH_TOLERANCE, rtol=0
        )
        torch.testing.assert_close(
            together.batch.cell[k], alone.batch.cell[0], atol=BATCH_TOLERANCE, rtol=0
        )
        torch.testing.assert_close(together.energy[k], alone.energy[0], atol=1e-10, rtol=0)
        assert together.steps[k] == alone.steps[0]
        assert together.dt[k] == alone.dt[0]


def test_queue_refills_and_matches_one_by_one(factory):
    structures = [
        cu((2, 1, 1), a=3.7, strain=SHEAR, seed=5),  # 8 atoms
        cu(a=3.5, rattle=0.0, strain=SHEAR, cubic=False),  # 1 atom
        cu(a=3.65, seed=6),  # 4
        cu((3, 1, 1), a=3.58, seed=7),  # 12
        cu(a=3.7, rattle=0.02, strain=-SHEAR, seed=8),  # 4
        cu((2, 1, 1), a=3.62, cubic=False, seed=9),  # 2
    ]
    sizes = []

    def recording_factory(batch):
        sizes.append(batch.n_atoms)
        return factory(batch)

    labels = [f"s{i}" for i in range(len(structures))]
    results = relax_many(
        structures,
        recording_factory,
        fmax=FMAX,
        max_steps=300,
        max_atoms_per_batch=12,
        cell=True,
        labels=labels,
        sync_every=3,
        symprec=None,
    )
    assert [r.label for r in results] == labels
    assert [r.n_atoms for r in results] == [len(s) for s in structures]
    assert all(r.converged for r in results)
    assert max(sizes) <= 12 and len(sizes) > 4  # refilled several times, never over the bound
    for structure, got in zip(structures, results, strict=True):
        (alone,) = relax_many([structure], factory, fmax=FMAX, max_steps=300, cell=True)
        assert got.steps == alone.steps
        assert got.energy == pytest.approx(alone.energy, abs=BATCH_TOLERANCE)
        np.testing.assert_allclose(got.atoms.positions, alone.atoms.positions, atol=1e-8)
        np.testing.assert_allclose(got.atoms.cell[:], alone.atoms.cell[:], atol=1e-8)
        assert got.atoms.info["relaxed"] is True


def test_converged_system_stops_while_others_continue(factory):
    structures = [cu(a=3.61, rattle=0.01, seed=1), cu((2, 1, 1), a=3.7, strain=SHEAR, seed=2)]
    batch = SystemBatch.from_atoms(structures)
    force_fn = factory(batch)
    state = fire_init(batch, force_fn, FMAX)
    while not bool(state.converged[0]):
        state = fire_step(state, force_fn, max_steps=300)
        assert state.steps[0] < 300
    frozen, steps = positions_of(state, 0).clone(), int(state.steps[0])
    assert not bool(state.converged[1])
    moving = positions_of(state, 1).clone()
    for _ in range(5):
        state = fire_step(state, force_fn, max_steps=300)
    assert torch.equal(positions_of(state, 0), frozen)  # bit for bit
    assert int(state.steps[0]) == steps
    assert not torch.allclose(positions_of(state, 1), moving)
    assert int(state.steps[1]) == steps + 5
    (alone,) = relax_many(structures[:1], factory, fmax=FMAX, max_steps=300, symprec=None)
    assert alone.steps == steps


def test_out_of_steps_is_not_converged_and_large_structures_run_alone(factory):
    structures = [cu((2, 1, 1), a=3.7, strain=SHEAR), cu(a=3.7, seed=4)]  # 8 and 4 atoms
    sizes = []

    def recording_factory(batch):
        sizes.append(batch.n_atoms)
        return factory(batch)

    results = relax_many(
        structures, recording_factory, fmax=FMAX, max_steps=4, max_atoms_per_batch=2
    )
    assert [(r.converged, r.steps, r.n_atoms) for r in results] == [(False, 4, 8), (False, 4, 4)]
    assert all(r.fmax >= FMAX and r.atoms.info["relaxed"] is False for r in results)
    assert set(sizes) == {8, 4}  # one at a time
    assert relax_many([], factory) == []


def test_bad_inputs_are_refused(factory):
    with pytest.raises(StructureError, match="molecule: cell relaxation needs a cell periodic"):
        relax_many([cu_cluster()], factory, cell=True, labels=["molecule"])
    with pytest.raises(ValueError, match="fmax must be a positive force"):
        relax_many([cu()], factory, fmax=0.0)
    with pytest.raises(ValueError, match="max_atoms_per_batch must be an integer >= 1"):
        relax_many([cu()], factory, max_atoms_per_batch=0)
    with pytest.raises(ValueError, match="FIRE parameter dt must be positive, got -0.1"):
        FireParameters(dt=-0.1)


@pytest.mark.parametrize("cell", [False, True], ids=["fixed-cell", "cell"])
def test_fire_step_reads_nothing_back_to_the_host(model, monkeypatch, cell):
    """With a pair provider that does not sync (a fixed candidate list, unmasked edges: the
    envelope zeroes pairs beyond the cutoff), FIRE steps never read a tensor back."""
    structures = [cu(a=3.7, seed=2), cu((2, 1, 1), a=3.55, strain=SHEAR, seed=3)]
    batch = SystemBatch.from_atoms(structures)
    index, shifts = exact_pairs(model.cutoff + 1.0)(batch)
    force_fn = ForceFunction(
        BatchedModel(model, batch.numbers, mask_edges=False), lambda state: (index, shifts)
    )
    state = fire_init(batch, force_fn, FMAX, cell=cell)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside a FIRE step")

    with monkeypatch.context() as patch:
        for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, refuse)
        for _ in range(3):
            state = fire_step(state, force_fn, max_steps=100)
    assert state.steps.tolist() == [3, 3]
