"""The batched engine's model evaluation equals MLFFCalculator, system by system, for every model
configuration, on a mixed batch: a molecule, a triclinic cell, a cell small enough to see its own
images, and a slab."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlff import MLFFCalculator
from mlff.md.forces import BatchedModel, ForceFunction
from mlff.md.neighbours import VerletList
from mlff.md.state import SystemBatch
from tests.conftest import ethanol, tiny_model, triclinic_cell

TOLERANCE = 1e-10  # eV, eV/Å, eV/Å³ in float64


def mixed_batch() -> list[Atoms]:
    small = bulk("C", "diamond", a=3.0)  # 2 atoms, cell far below the cutoff: own images
    small.rattle(0.05, seed=4)
    slab = triclinic_cell(seed=5)
    slab.pbc = [True, True, False]
    slab.center(vacuum=4.0, axis=2)
    return [ethanol(), triclinic_cell(), small, slab]


def _compare(model, structures, backend: str, mask_edges: bool) -> None:
    batch = SystemBatch.from_atoms(structures)
    force_fn = ForceFunction(
        BatchedModel(model, batch.numbers, mask_edges=mask_edges),
        VerletList(model.cutoff, skin=0.7, backend=backend).update,
    )
    result = force_fn(batch, compute_stress=True)
    calculator = MLFFCalculator(model, device="cpu", dtype="float64")
    offsets = batch.offsets().numpy()
    for k, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = calculator
        part = slice(offsets[k], offsets[k + 1])
        assert abs(result.energy[k].item() - atoms.get_potential_energy()) < TOLERANCE
        np.testing.assert_allclose(result.forces[part].numpy(), atoms.get_forces(), atol=TOLERANCE)
        if atoms.pbc.all():
            expected = atoms.get_stress(voigt=False)
            np.testing.assert_allclose(result.stress[k].numpy(), expected, atol=TOLERANCE)


def test_every_model_configuration_on_a_mixed_batch(model_name):
    model = tiny_model(model_name).double()
    _compare(model, mixed_batch(), backend="vesin", mask_edges=True)


@pytest.mark.parametrize("backend", ["vesin", "torch"])
@pytest.mark.parametrize("mask_edges", [True, False])
def test_pairs_beyond_the_cutoff_change_nothing(backend, mask_edges):
    """Kept (mask_edges=False, the sync-free GPU path) or dropped, the skin's extra pairs give
    the same results: every edge term carries an envelope that is exactly zero there."""
    for name in ("egnn", "egnn+unimol", "tfn-l2-attention"):
        _compare(tiny_model(name).double(), mixed_batch(), backend, mask_edges)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_cpu_in_float64():
    model = tiny_model("egnn").double()
    structures = mixed_batch()
    results = {}
    for device in ("cpu", "cuda"):
        batch = SystemBatch.from_atoms(structures, device)
        moved = model.to(device)
        force_fn = ForceFunction(
            BatchedModel(moved, batch.numbers), VerletList(model.cutoff, 0.7).update
        )
        result = force_fn(batch, compute_stress=True)
        results[device] = [t.cpu() for t in (result.energy, result.forces, result.stress)]
    for cpu, cuda in zip(results["cpu"], results["cuda"], strict=True):
        torch.testing.assert_close(cuda, cpu, atol=1e-10, rtol=0)
