"""NPT step functions of the batched engine (CPU, float64): full-cell MTK against ASE's ``MTKNPT``,
batch independence, no host sync, ⟨V⟩ of the isotropic barostat against ASE's
``IsotropicMTKNPT``, and ``mlff md run --engine batched --barostat full`` end to end."""

from __future__ import annotations

import json

import ase.io
import ase.units as units
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT
from click.testing import CliRunner
from mlff.workflows.cli import cli

from mlff import MLFFCalculator, save_model
from mlff.md.forces import BatchedModel, ForceFunction, ForceResult, exact_pairs
from mlff.md.integrators import PER_PS, initial_momenta
from mlff.md.neighbours import VerletList
from mlff.md.npt import (
    FullCellBarostat,
    conserved_energy,
    full_mtk_init,
    full_mtk_step,
    isotropic_mtk_init,
    isotropic_mtk_step,
)
from mlff.md.state import SystemBatch
from tests.workflows.conftest import fit_cu_to_emt

DT = 1.0 * units.fs
TRAJECTORY_TOLERANCE = 1e-8  # Å, amu·Å/t and eV, after 50 steps against ASE
BATCH_TOLERANCE = 1e-10  # system k in a batch against system k alone
TEMPERATURE, FRICTION = 300.0, 200.0  # K, 1/ps
PRESSURE, BAROSTAT_TIME = 1e4 * units.bar, 50.0 * units.fs  # eV/Å³, ASE time


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    """A Cu model fitted to EMT: cells under pressure stay near a real minimum."""
    return fit_cu_to_emt()


def cu_cell(seed: int, shear: float = 0.0) -> Atoms:
    """A rattled cubic Cu cell (4 atoms), sheared by ``shear`` (xy component of the strain)."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    strain = np.eye(3)
    strain[0, 1] = shear
    atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def with_momenta(structures: list[Atoms], temperature_k: float, seed: int = 0) -> SystemBatch:
    batch = SystemBatch.from_atoms(structures)
    return initial_momenta(batch, temperature_k, torch.Generator().manual_seed(seed))


def model_forces(model, batch: SystemBatch) -> ForceFunction:
    return ForceFunction(BatchedModel(model, batch.numbers), exact_pairs(model.cutoff))


def system_slices(batch: SystemBatch) -> list[slice]:
    offsets = batch.offsets().tolist()
    return [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def run_full(model, batch, steps, pressure=PRESSURE, barostat_time=BAROSTAT_TIME):
    """``steps`` full-cell MTK steps counting 3N degrees of freedom, as ASE's ``MTKNPT``."""
    force_fn = model_forces(model, batch)
    state = full_mtk_init(
        batch,
        force_fn,
        TEMPERATURE,
        pressure,
        FRICTION,
        barostat_time,
        dof=3 * batch.n_atoms_per_system,
    )
    for _ in range(steps):
        state = full_mtk_step(state, force_fn, DT)
    return state


# --------------------------------------------------------------------------- against ASE


def test_full_mtk_matches_ase(model):
    """Two rattled Cu cells (one sheared) at 10 kbar follow ASE's MTKNPT (positions, momenta,
    cells, conserved energy) for 50 steps while their cells change shape by tenths of an Å."""
    batch = with_momenta([cu_cell(2), cu_cell(5, shear=0.1)], TEMPERATURE)
    state = run_full(model, batch, 50)
    assert isinstance(state.barostat, FullCellBarostat)
    conserved = conserved_energy(state)
    for k, (atoms, part) in enumerate(zip(batch.to_atoms(), system_slices(batch), strict=True)):
        atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
        start = atoms.cell.array.copy()
        dynamics = MTKNPT(
            atoms,
            timestep=DT,
            temperature_K=TEMPERATURE,
            pressure_au=PRESSURE,
            tdamp=1.0 / (FRICTION * PER_PS),
            pdamp=BAROSTAT_TIME,
        )
        dynamics.run(50)
        change = atoms.cell.array - start
        assert np.abs(change).max() > 0.05
        # not an isotropic scaling: the cell's shape changed too
        assert np.abs(change - start * np.trace(change @ np.linalg.inv(start)) / 3).max() > 1e-3
        cell = state.batch.cell[k].numpy()
        np.testing.assert_allclose(cell, atoms.cell.array, rtol=0, atol=TRAJECTORY_TOLERANCE)
        positions = state.batch.positions[part].numpy()
        np.testing.assert_allclose(
            positions, atoms.get_positions(), rtol=0, atol=TRAJECTORY_TOLERANCE
        )
        momenta = state.batch.momenta[part].numpy()
        np.testing.assert_allclose(momenta, atoms.get_momenta(), rtol=0, atol=TRAJECTORY_TOLERANCE)
        assert abs(conserved[k].item() - dynamics.get_conserved_energy()) < TRAJECTORY_TOLERANCE


def test_full_mtk_conserves_its_energy_to_second_order(model):
    """Over the same 50 fs, halving the time step cuts the conserved quantity's excursions
    fourfold, while the potential enthalpy moves far more."""
    batch = with_momenta([cu_cell(3, shear=0.05)], TEMPERATURE)
    force_fn = model_forces(model, batch)
    excursions = []
    for steps in (50, 100):
        state = full_mtk_init(batch, force_fn, TEMPERATURE, PRESSURE, FRICTION, BAROSTAT_TIME)
        conserved, enthalpy = [], []
        for _ in range(steps):
            state = full_mtk_step(state, force_fn, 50.0 * units.fs / steps)
            conserved.append(conserved_energy(state))
            enthalpy.append(state.energy + state.barostat.pressure * state.batch.volumes())
        conserved, enthalpy = torch.cat(conserved), torch.cat(enthalpy)
        excursions.append((conserved - conserved[0]).abs().max().item())
        assert excursions[-1] < 0.05 * enthalpy.std().item()
    assert 3.0 < excursions[0] / excursions[1] < 5.0, excursions


# --------------------------------------------------------------------------- batch


def test_system_in_batch_equals_system_alone(model):
    """Per-system pressures and barostat times: each system of the batch follows its run alone."""
    structures = [cu_cell(2), cu_cell(5, shear=0.1), cu_cell(7, shear=-0.05)]
    batch = with_momenta(structures, TEMPERATURE, seed=4)
    pressures = torch.tensor([1e4, 0.0, 3e4], dtype=torch.float64) * units.bar
    times = torch.tensor([50.0, 80.0, 30.0], dtype=torch.float64) * units.fs
    together = run_full(model, batch, 20, pressures, times)
    for k, part in enumerate(system_slices(batch)):
        alone = run_full(model, batch.select(torch.arange(3) == k), 20, pressures[k], times[k])
        for name in ("positions", "momenta", "cell"):
            got = getattr(together.batch, name)
            got = got[k : k + 1] if name == "cell" else got[part]
            expected = getattr(alone.batch, name)
            torch.testing.assert_close(got, expected, rtol=0, atol=BATCH_TOLERANCE)


# --------------------------------------------------------------------------- host syncs


def test_steps_do_not_sync_with_the_host(model, monkeypatch):
    """Full-cell and isotropic steps with the model and a fixed pair list read nothing back."""
    batch = with_momenta([cu_cell(2), cu_cell(5, shear=0.1)], TEMPERATURE)
    edge_index, edge_shifts = VerletList(model.cutoff, 1.0).update(batch)
    wrapped = BatchedModel(model, batch.numbers, mask_edges=False)
    force_fn = ForceFunction(wrapped, lambda state: (edge_index, edge_shifts))
    pressures = torch.tensor([1e4, 2e4], dtype=torch.float64) * units.bar
    full = full_mtk_init(batch, force_fn, TEMPERATURE, pressures, FRICTION, BAROSTAT_TIME)
    isotropic = isotropic_mtk_init(batch, force_fn, TEMPERATURE, pressures, FRICTION, 50.0)

    def refuse(*args, **kwargs):
        raise AssertionError("host sync inside a step")

    for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    with pytest.raises(AssertionError, match="host sync"):
        bool(batch.positions.sum() > 0)  # the patch is in force
    for _ in range(3):
        full = full_mtk_step(full, force_fn, DT)
        isotropic = isotropic_mtk_step(isotropic, force_fn, DT)
    conserved = conserved_energy(full)
    monkeypatch.undo()
    assert torch.isfinite(full.batch.cell).all() and torch.isfinite(conserved).all()
    assert torch.isfinite(isotropic.batch.cell).all()
    assert (full.batch.cell - batch.cell).abs().max() > 1e-6


# --------------------------------------------------------------------------- ⟨V⟩


class SoftSpheres:
    """Systems of ``n`` atoms each in orthorhombic periodic boxes (diagonal cells, as the
    isotropic barostat keeps them), repelling as soft spheres: E = Σ_{i<j} ε (1 - r_ij/σ)² for
    r_ij < σ (minimum image; boxes wider than 2σ). Energies, forces and the stress
    σ_ab = Σ_{i<j} E'(r) d_a d_b / (r V), on the batch's device, with no host sync."""

    def __init__(self, n: int, sigma: float = 1.0, epsilon: float = 0.5) -> None:
        self.n, self.sigma, self.epsilon = n, sigma, epsilon

    def __call__(self, batch: SystemBatch, compute_stress: bool = False) -> ForceResult:
        x = batch.positions.view(-1, self.n, 3)
        box = torch.diagonal(batch.cell, dim1=1, dim2=2)[:, None, None, :]
        d = x[:, None, :, :] - x[:, :, None, :]  # [system, i, j]: x_j - x_i
        d = d - box * torch.round(d / box)
        self_pair = torch.eye(self.n, dtype=torch.bool, device=x.device)
        r = torch.linalg.vector_norm(d, dim=-1)
        r = torch.where(self_pair, torch.ones_like(r), r)
        overlap = torch.clamp(1.0 - r / self.sigma, min=0.0) * ~self_pair
        energy = 0.5 * self.epsilon * (overlap**2).sum((1, 2))
        slope = -2.0 * self.epsilon * overlap / self.sigma  # dE/dr of each pair
        pair = (slope / r)[..., None] * d  # [system, i, j]: the force of j on i
        stress = None
        if compute_stress:  # each pair twice, hence 1/2
            stress = 0.5 * torch.einsum("sija,sijb->sab", pair, d) / box.prod(-1).view(-1, 1, 1)
        return ForceResult(energy=energy, forces=pair.sum(2).reshape(-1, 3), stress=stress)


class SoftSphereCalculator(Calculator):
    """:class:`SoftSpheres` as an ASE calculator (one system; energy, forces, stress)."""

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, potential: SoftSpheres) -> None:
        super().__init__()
        self.potential = potential

    def check_state(self, atoms, tol=0.0):
        """Positions or cell changed (exactly; ASE's default comparison dominates the step)."""
        same = (
            self.atoms is not None
            and np.array_equal(atoms.positions, self.atoms.positions)
            and np.array_equal(atoms.cell.array, self.atoms.cell.array)
        )
        return [] if same else ["positions", "cell"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = SystemBatch.from_atoms([self.atoms])
        result = self.potential(batch, compute_stress=True)
        self.results = {
            "energy": float(result.energy[0]),
            "forces": result.forces.numpy(),
            "stress": result.stress[0].numpy()[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
        }


N_SPHERES, DENSITY = 16, 0.6  # atoms per box, 1/Å³ at the start
FLUID_PRESSURE, FLUID_DT = 0.03, 4.0 * units.fs  # eV/Å³ (~0.5 Mbar on these stiff spheres)
FLUID_FRICTION, FLUID_BAROSTAT_TIME = 10.0, 100.0 * units.fs
EQUILIBRATION = 200  # steps
BATCHED_REPLICAS, BATCHED_STEPS = 128, 450
ASE_REPLICAS, ASE_STEPS, ASE_BLOCK = 4, 1500, 100  # blocks of 400 fs, > 10 correlation times


def fluid(seed: int) -> Atoms:
    """A bcc arrangement of 16 He atoms at the start density, rattled."""
    side = (N_SPHERES / DENSITY) ** (1 / 3)
    sites = np.indices((2, 2, 2)).reshape(3, -1).T
    sites = np.concatenate([sites, sites + 0.5]) * side / 2
    atoms = Atoms(f"He{N_SPHERES}", positions=sites, cell=[side] * 3, pbc=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def test_isotropic_npt_mean_volume_matches_ase():
    """⟨V⟩ of a soft-sphere fluid under the batched IsotropicMTK barostat (128 independent
    replicas) equals ASE's ``IsotropicMTKNPT`` with the same potential (4 runs, standard error
    from block averages) within 3 combined standard errors. The comparison resolves ⟨V⟩ to
    about 0.7%; counting 3N - 3 instead of 3N degrees of freedom (T off by 7%) moves ⟨V⟩ by 3%."""
    potential = SoftSpheres(N_SPHERES)
    structures = [fluid(seed) for seed in range(BATCHED_REPLICAS)]
    batch = with_momenta(structures, TEMPERATURE, seed=1)
    state = isotropic_mtk_init(
        batch,
        potential,
        TEMPERATURE,
        FLUID_PRESSURE,
        FLUID_FRICTION,
        FLUID_BAROSTAT_TIME,
        dof=3 * batch.n_atoms_per_system,  # as ASE counts them
    )
    volumes = []
    for k in range(EQUILIBRATION + BATCHED_STEPS):
        state = isotropic_mtk_step(state, potential, FLUID_DT)
        if k >= EQUILIBRATION:
            volumes.append(state.batch.volumes())
    replica_means = torch.stack(volumes).mean(0)  # independent replicas: one block each
    ours = replica_means.mean().item()
    ours_error = replica_means.std().item() / BATCHED_REPLICAS**0.5

    blocks = []
    for seed in range(ASE_REPLICAS):
        atoms = with_momenta([fluid(1000 + seed)], TEMPERATURE, seed=seed).to_atoms()[0]
        atoms.calc = SoftSphereCalculator(potential)
        dynamics = IsotropicMTKNPT(
            atoms,
            timestep=FLUID_DT,
            temperature_K=TEMPERATURE,
            pressure_au=FLUID_PRESSURE,
            tdamp=1.0 / (FLUID_FRICTION * PER_PS),
            pdamp=FLUID_BAROSTAT_TIME,
        )
        dynamics.run(EQUILIBRATION)
        for _ in range(ASE_STEPS // ASE_BLOCK):
            block = []
            for _ in range(ASE_BLOCK):
                dynamics.run(1)
                block.append(atoms.get_volume())
            blocks.append(np.mean(block))
    theirs = float(np.mean(blocks))
    theirs_error = float(np.std(blocks, ddof=1) / len(blocks) ** 0.5)

    error = (ours_error**2 + theirs_error**2) ** 0.5
    assert error < 0.01 * theirs, (ours_error, theirs_error)  # precise enough to mean something
    assert abs(ours - theirs) < 3.0 * error, (ours, ours_error, theirs, theirs_error)
    assert abs(theirs - N_SPHERES / DENSITY) > 3.0 * error  # the volume did move


# --------------------------------------------------------------------------- CLI


def test_cli_runs_full_cell_npt_on_the_batched_engine(model, tmp_path):
    model_path = tmp_path / "cu.pt"
    save_model(model, model_path)
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    cu.rattle(0.05, seed=2)
    path = tmp_path / "cu.extxyz"
    ase.io.write(path, cu)
    result = CliRunner().invoke(
        cli,
        ["md", "run", str(model_path), str(path), "--engine", "batched", "--ensemble", "npt",
         "--barostat", "full", "--pressure", "1e4", "--barostat-time", "50", "--steps", "20",
         "--interval", "10", "--traj", str(tmp_path / "md.extxyz"), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    assert payload["engine"] == "batched" and payload["ensemble"] == "npt"
    assert payload["last_step"] == 20
    frames = ase.io.read(tmp_path / "md.extxyz", ":")  # one system: no _sysNNN suffix
    assert [f.info["step"] for f in frames] == [0, 10, 20]
    change = frames[-1].cell.array - cu.cell.array
    assert np.abs(change).max() > 1e-4  # the cell moved ...
    isotropic = cu.cell.array * np.trace(change @ np.linalg.inv(cu.cell.array)) / 3
    assert np.abs(change - isotropic).max() > 1e-3  # ... and its shape: the full barostat
