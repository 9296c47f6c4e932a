"""The batched engine's step loop between synchronisation points reads nothing back to the host:
integrator, lazy Verlet list, model, jump tracking and running statistics together."""

from __future__ import annotations

import contextlib

import pytest
import torch
from ase import units
from ase.build import bulk, molecule

from mlff.md import integrators as steps
from mlff.md.forces import BatchedModel, ForceFunction
from mlff.md.neighbours import VerletList
from mlff.md.runner import _Statistics, _stepper, advance
from mlff.md.settings import MDSettings
from mlff.md.state import SystemBatch
from tests.conftest import tiny_model


@contextlib.contextmanager
def no_host_sync(monkeypatch):
    """Make every device-to-host read of a tensor raise."""

    def refuse(*args, **kwargs):
        raise AssertionError("host sync")

    with monkeypatch.context() as patch:
        for name in ("item", "cpu", "numpy", "tolist", "__bool__", "__float__", "__int__"):
            patch.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("thermostat", ["langevin", "nose-hoover", "bussi"])
def test_steps_between_synchronisation_points_do_not_sync(thermostat, monkeypatch):
    model = tiny_model("egnn", elements=("H", "C", "O", "Cu")).double()
    cu = bulk("Cu", "fcc", a=3.61, cubic=True)
    cu.rattle(0.05, seed=1)
    batch = SystemBatch.from_atoms([molecule("CH3CH2OH"), cu, molecule("CH3CH2OH")])
    settings = MDSettings(ensemble="nvt", thermostat=thermostat, temperature_k=300.0)
    generator = torch.Generator().manual_seed(0)
    batch = steps.initial_momenta(batch, 300.0, generator)
    verlet = VerletList(model.cutoff, 1.0, lazy_flag=True)
    force_fn = ForceFunction(BatchedModel(model, batch.numbers, mask_edges=False), verlet.update)
    state = steps.init_state(batch, force_fn)
    if thermostat == "nose-hoover":
        state = steps.nose_hoover_chain_init(state, 300.0, 10.0)
    step_fn = _stepper(settings, generator)
    statistics = _Statistics(batch.n_systems, batch.device)
    jump = torch.zeros(batch.n_systems, dtype=torch.float64)
    with pytest.raises(AssertionError, match="host sync"), no_host_sync(monkeypatch):
        bool(batch.positions.sum() > 0)  # the patch is active
    dt = 0.25 * units.fs  # short enough that no system needs a rebuild within 10 steps
    with no_host_sync(monkeypatch):
        for k in range(10):
            state, jump = advance(state, step_fn, force_fn, dt, statistics, jump, k * 0.00025)
    assert verlet.n_builds == 1
    assert statistics.count.tolist() == [10.0, 10.0, 10.0]
    assert 0 < float(jump.max()) < 0.1
