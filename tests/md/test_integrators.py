"""Step functions of the batched engine (CPU, float64): against ASE's integrators, batch equals
single, seeded reproducibility, energy conservation, canonical ensembles, no host sync."""

from __future__ import annotations

import ase.units as units
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT
from ase.md.verlet import VelocityVerlet

from mlff import MLFFCalculator
from mlff.md.forces import BatchedModel, ForceFunction, ForceResult, exact_pairs
from mlff.md.integrators import (
    KB,
    PER_PS,
    MDState,
    bussi_step,
    degrees_of_freedom,
    init_state,
    initial_momenta,
    langevin_step,
    nose_hoover_chain_init,
    nose_hoover_chain_step,
    temperature,
    velocity_verlet_step,
)
from mlff.md.npt import conserved_energy, isotropic_mtk_init, isotropic_mtk_step
from mlff.md.state import SystemBatch
from tests.conftest import ethanol, tiny_model

DT = 1.0 * units.fs
TRAJECTORY_TOLERANCE = 1e-8  # Å (and amu·Å/t for momenta), after 50 steps against ASE
BATCH_TOLERANCE = 1e-10  # system k in a batch against system k alone


@pytest.fixture(scope="module")
def model():
    return tiny_model("egnn", elements=("H", "C", "O", "Cu")).double()


def cu_cell(seed: int = 2) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def with_momenta(structures: list[Atoms], temperature_k: float, seed: int = 0) -> list[Atoms]:
    batch = SystemBatch.from_atoms(structures)
    generator = torch.Generator().manual_seed(seed)
    return initial_momenta(batch, temperature_k, generator).to_atoms()


def model_forces(model, batch: SystemBatch) -> ForceFunction:
    return ForceFunction(BatchedModel(model, batch.numbers), exact_pairs(model.cutoff))


def run(model, structures, steps, step, setup=None) -> MDState:
    batch = SystemBatch.from_atoms(structures)
    force_fn = model_forces(model, batch)
    state = init_state(batch, force_fn)
    if setup is not None:
        state = setup(state)
    for _ in range(steps):
        state = step(state, force_fn)
    return state


def nve(state, force_fn):
    return velocity_verlet_step(state, force_fn, DT)


def nhc(state, force_fn):
    return nose_hoover_chain_step(state, force_fn, DT)


NHC_TEMPERATURE, NHC_FRICTION = 1000.0, 200.0  # K, 1/ps: pulls hard within 50 fs


def nhc_setup(state):
    """ASE's chain counts 3N degrees of freedom."""
    dof = 3 * state.batch.n_atoms_per_system
    return nose_hoover_chain_init(state, NHC_TEMPERATURE, NHC_FRICTION, dof=dof)


def system_slices(batch: SystemBatch) -> list[slice]:
    offsets = batch.offsets().tolist()
    return [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


# --------------------------------------------------------------------------- against ASE


@pytest.mark.parametrize("ensemble", ["nve", "nose-hoover"])
def test_trajectories_match_ase(model, ensemble):
    """Ethanol and a rattled Cu cell, integrated together, follow ASE's trajectories (50 steps)."""
    structures = with_momenta([ethanol(), cu_cell()], 300.0)
    if ensemble == "nve":
        state = run(model, structures, 50, nve)
    else:
        state = run(model, structures, 50, nhc, nhc_setup)
    conserved = state.conserved_energy()
    for k, (atoms, part) in enumerate(zip(structures, system_slices(state.batch), strict=True)):
        atoms = atoms.copy()
        atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
        if ensemble == "nve":
            dynamics = VelocityVerlet(atoms, timestep=DT)
        else:
            tdamp = 1.0 / (NHC_FRICTION * PER_PS)
            dynamics = NoseHooverChainNVT(
                atoms, timestep=DT, temperature_K=NHC_TEMPERATURE, tdamp=tdamp
            )
        start = atoms.get_positions()
        dynamics.run(50)
        positions = state.batch.positions[part].numpy()
        assert np.abs(positions - start).max() > 1e-3  # the atoms moved
        np.testing.assert_allclose(positions, atoms.get_positions(), rtol=0, atol=1e-8)
        momenta = state.batch.momenta[part].numpy()
        np.testing.assert_allclose(momenta, atoms.get_momenta(), rtol=0, atol=1e-8)
        if ensemble == "nose-hoover":
            assert abs(conserved[k].item() - dynamics.get_conserved_energy()) < 1e-8


def test_nose_hoover_pulls_towards_its_target(model):
    """The comparison above is not trivially NVE: the chain heats the systems towards 1000 K."""
    structures = with_momenta([ethanol(), cu_cell()], 300.0)
    hot = run(model, structures, 50, nhc, nhc_setup).batch
    plain = run(model, structures, 50, nve).batch
    assert torch.all(temperature(hot) > temperature(plain) + 50.0)
    assert (hot.positions - plain.positions).abs().max() > 1e-3


def test_isotropic_mtk_matches_ase(model):
    """Two rattled Cu cells at 10 kbar follow ASE's IsotropicMTKNPT (positions, cells, conserved
    energy) for 50 steps while their cells change by tenths of an Å."""
    batch = SystemBatch.from_atoms(with_momenta([cu_cell(), cu_cell(seed=5)], 300.0))
    force_fn = model_forces(model, batch)
    pressure, barostat_time = 1e4 * units.bar, 50.0 * units.fs
    state = isotropic_mtk_init(
        batch,
        force_fn,
        300.0,
        pressure,
        NHC_FRICTION,
        barostat_time,
        dof=3 * batch.n_atoms_per_system,
    )
    for _ in range(50):
        state = isotropic_mtk_step(state, force_fn, DT)
    conserved = conserved_energy(state)
    for k, (atoms, part) in enumerate(zip(batch.to_atoms(), system_slices(batch), strict=True)):
        atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
        start = atoms.cell.array.copy()
        dynamics = IsotropicMTKNPT(
            atoms,
            timestep=DT,
            temperature_K=300.0,
            pressure_au=pressure,
            tdamp=1.0 / (NHC_FRICTION * PER_PS),
            pdamp=barostat_time,
        )
        dynamics.run(50)
        assert np.abs(atoms.cell.array - start).max() > 0.05
        positions = state.batch.positions[part].numpy()
        np.testing.assert_allclose(positions, atoms.get_positions(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(state.batch.cell[k].numpy(), atoms.cell.array, rtol=0, atol=1e-8)
        assert abs(conserved[k].item() - dynamics.get_conserved_energy()) < 1e-8


# --------------------------------------------------------------------------- batch and seeds


@pytest.mark.parametrize("ensemble", ["nve", "nose-hoover"])
def test_system_in_batch_equals_system_alone(model, ensemble):
    other = ethanol()
    other.rattle(0.1, seed=7)
    structures = with_momenta([ethanol(), cu_cell(), other], 300.0, seed=4)
    step, setup = (nve, None) if ensemble == "nve" else (nhc, nhc_setup)
    together = run(model, structures, 20, step, setup)
    for atoms, part in zip(structures, system_slices(together.batch), strict=True):
        alone = run(model, [atoms], 20, step, setup)
        for name in ("positions", "momenta"):
            expected = getattr(alone.batch, name)
            torch.testing.assert_close(
                getattr(together.batch, name)[part], expected, rtol=0, atol=BATCH_TOLERANCE
            )


def _stochastic(name):
    def step(state, force_fn, generator):
        if name == "langevin":
            return langevin_step(state, force_fn, DT, 300.0, 50.0, generator)
        return bussi_step(state, force_fn, DT, 300.0, 50.0, generator)

    return step


@pytest.mark.parametrize("name", ["langevin", "bussi"])
def test_seeded_runs_are_reproducible(model, name):
    structures = with_momenta([ethanol(), cu_cell()], 300.0)
    step = _stochastic(name)

    def seeded(seed):
        generator = torch.Generator().manual_seed(seed)
        return run(model, structures, 10, lambda s, f: step(s, f, generator))

    first, second, other = seeded(11), seeded(11), seeded(12)
    assert torch.equal(first.batch.positions, second.batch.positions)
    assert torch.equal(first.batch.momenta, second.batch.momenta)
    assert not torch.allclose(first.batch.momenta, other.batch.momenta)


def test_nve_conserves_energy(model):
    structures = with_momenta([ethanol(), cu_cell()], 300.0, seed=1)
    batch = SystemBatch.from_atoms(structures)
    force_fn = model_forces(model, batch)
    state = init_state(batch, force_fn)
    energies, kinetic = [], []
    for _ in range(300):
        state = velocity_verlet_step(state, force_fn, 0.25 * units.fs)
        energies.append(state.conserved_energy())
        kinetic.append(state.batch.kinetic_energy())
    energies, kinetic = torch.stack(energies), torch.stack(kinetic)
    drift = (energies - energies[0]).abs().max(0).values
    assert torch.all(kinetic.std(0) > 1e-3)  # energy flows between kinetic and potential ...
    assert torch.all(drift < 1e-3 * kinetic.std(0))  # ... and the total stays put


# --------------------------------------------------------------------------- ensembles


class SoftSpheres:
    """Equal-sized systems of ``n`` atoms in cubic periodic boxes of side ``box`` (Å), repelling
    as soft spheres: E = Σ_{i<j} ε (1 - r_ij/σ)² for r_ij < σ (minimum image). A fluid whose
    collisions mix the kinetic energy quickly; forces sum to zero in each system. Reads nothing
    back to the host."""

    def __init__(self, n: int, box: float, sigma: float = 1.0, epsilon: float = 0.5) -> None:
        self.n, self.box, self.sigma, self.epsilon = n, box, sigma, epsilon

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceResult:
        x = batch.positions.view(-1, self.n, 3)
        d = x[:, None, :, :] - x[:, :, None, :]  # [system, i, j]: x_j - x_i
        d = d - self.box * torch.round(d / self.box)
        self_pair = torch.eye(self.n, dtype=torch.bool, device=x.device)
        r = torch.linalg.vector_norm(d, dim=-1)
        r = torch.where(self_pair, torch.ones_like(r), r)
        overlap = torch.clamp(1.0 - r / self.sigma, min=0.0) * ~self_pair
        energy = 0.5 * self.epsilon * (overlap**2).sum((1, 2))
        slope = -2.0 * self.epsilon * overlap / self.sigma  # dE/dr of each pair
        forces = ((slope / r)[..., None] * d).sum(2).reshape(-1, 3)
        stress = batch.cell.new_zeros(batch.cell.shape) if compute_stress else None
        return ForceResult(energy=energy, forces=forces, stress=stress)


BOX = 2.4  # Å, 8 atoms: a dilute soft-sphere fluid


def replicas(n_systems: int) -> SystemBatch:
    """``n_systems`` boxes of 8 atoms (masses 1–4 amu) on a simple cubic lattice."""
    sites = (np.indices((2, 2, 2)).reshape(3, -1).T + 0.25) * BOX / 2
    structures = []
    for _ in range(n_systems):
        atoms = Atoms("H8", positions=sites, cell=[BOX] * 3, pbc=True)
        atoms.set_masses([1.0, 2.0, 3.0, 4.0] * 2)
        structures.append(atoms)
    return SystemBatch.from_atoms(structures)


N_REPLICAS = 128
TEMPERATURES = torch.linspace(200.0, 600.0, N_REPLICAS, dtype=torch.float64)  # K
FRICTIONS = torch.linspace(10.0, 40.0, N_REPLICAS, dtype=torch.float64)  # 1/ps
ENSEMBLE_STEPS = {"langevin": (300, 2000), "bussi": (300, 2000), "nose-hoover": (300, 1500)}


@pytest.mark.parametrize("name", ["langevin", "bussi", "nose-hoover"])
def test_canonical_kinetic_energy(name):
    """⟨T⟩ = T and Var(K) = N_f (kT)² / 2, each per system, within 3σ over independent replicas
    (per-system temperatures 200–600 K and frictions 10–40 /ps)."""
    batch = replicas(N_REPLICAS)
    generator = torch.Generator().manual_seed(5)
    force_fn = SoftSpheres(8, BOX)
    state = init_state(initial_momenta(batch, TEMPERATURES, generator), force_fn)
    if name == "nose-hoover":
        state = nose_hoover_chain_init(state, TEMPERATURES, FRICTIONS)

    def step(state):
        if name == "langevin":
            return langevin_step(state, force_fn, DT, TEMPERATURES, FRICTIONS, generator)
        if name == "bussi":
            return bussi_step(state, force_fn, DT, TEMPERATURES, FRICTIONS, generator)
        return nose_hoover_chain_step(state, force_fn, DT)

    equilibration, production = ENSEMBLE_STEPS[name]
    for _ in range(equilibration):
        state = step(state)
    samples = []
    for n in range(production):
        state = step(state)
        if n % 10 == 0:
            samples.append(state.batch.kinetic_energy())
    kinetic = torch.stack(samples)  # (n_samples, n_systems)
    canonical = 0.5 * degrees_of_freedom(batch) * KB * TEMPERATURES  # ⟨K⟩ = Var(K) / kT
    mean_ratio = kinetic.mean(0) / canonical  # ⟨T⟩ / T per system
    variance_ratio = ((kinetic - canonical) ** 2).mean(0) / (canonical * KB * TEMPERATURES)
    for ratio in (mean_ratio, variance_ratio):
        error = ratio.std() / N_REPLICAS**0.5
        assert abs(ratio.mean().item() - 1.0) < 3 * error.item(), (ratio.mean(), error)


# --------------------------------------------------------------------------- host syncs


def test_steps_do_not_sync_with_the_host(monkeypatch):
    batch = replicas(3)
    generator = torch.Generator().manual_seed(0)
    force_fn = SoftSpheres(8, BOX)
    state = init_state(initial_momenta(batch, 300.0, generator), force_fn)
    temperatures, frictions = TEMPERATURES[:3], FRICTIONS[:3]

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside a step")

    for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host sync"):
        bool(batch.positions.sum() > 0)  # the patch is in force
    state = velocity_verlet_step(state, force_fn, DT)
    state = langevin_step(state, force_fn, DT, temperatures, frictions, generator)
    state = bussi_step(state, force_fn, DT, temperatures, frictions, generator)
    state = nose_hoover_chain_init(state, temperatures, frictions)
    state = nose_hoover_chain_step(state, force_fn, DT)
    temperature(state.batch)
    npt = isotropic_mtk_init(state.batch, force_fn, temperatures, 1e-3, frictions, 50.0)
    npt = isotropic_mtk_step(npt, force_fn, DT)
    monkeypatch.undo()
    assert torch.isfinite(state.batch.positions).all()
    assert torch.isfinite(npt.batch.cell).all()
