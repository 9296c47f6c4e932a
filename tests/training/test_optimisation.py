"""Loss terms, EMA, learning-rate schedules, error figures and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlff.errors import ModelFileError
from mlff.graph import batch_graphs, graph_from_atoms
from mlff.training.checkpoint import load_checkpoint, save_checkpoint
from mlff.training.dataset import Batch
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.loss import LossWeights, loss_terms, total_loss
from mlff.training.metrics import ErrorAccumulator
from mlff.training.schedule import LearningRateSchedule
from tests.training import labelled


def _batch() -> Batch:
    frames = labelled.molecules(2)
    graph = batch_graphs([graph_from_atoms(a, 3.0) for a in frames])
    return Batch(
        graph=graph,
        energy=torch.tensor([a.get_potential_energy() for a in frames], dtype=torch.float64),
        forces=torch.cat([torch.tensor(a.get_forces()) for a in frames]),
        stress=torch.zeros(2, 3, 3, dtype=torch.float64),
        has_forces=torch.ones(graph.n_atoms, dtype=torch.bool),
        has_stress=torch.zeros(2, dtype=torch.bool),
    )


def test_loss_terms_and_masks():
    batch = _batch()
    exact = {"energy": batch.energy.clone(), "forces": batch.forces.clone()}
    terms = loss_terms(exact, batch)
    assert float(terms["energy"]) == 0.0 and float(terms["forces"]) == 0.0
    shifted = {"energy": batch.energy + 0.3, "forces": batch.forces + 0.1}
    terms = loss_terms(shifted, batch)
    n_atoms = batch.graph.n_atoms_per_graph.double()
    assert float(terms["energy"]) == pytest.approx(float(((0.3 / n_atoms) ** 2).mean()))
    assert float(terms["forces"]) == pytest.approx(0.01)
    weights = LossWeights(energy=2.0, forces=10.0)
    expected = 2.0 * float(terms["energy"]) + 10.0 * 0.01
    assert float(total_loss(terms, weights)) == pytest.approx(expected)
    huber = loss_terms(shifted, batch, kind="huber", huber_delta=0.01)
    assert float(huber["forces"]) == pytest.approx(0.01 * (0.1 - 0.005))
    batch.has_forces[:] = False
    assert float(loss_terms(shifted, batch)["forces"]) == 0.0


def test_ema_follows_the_weights():
    model = nn.Linear(2, 1)
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        start = model.weight.clone()
        model.weight.add_(1.0)
    ema.update(model)  # decay min(0.5, 2/11)
    d = 2.0 / 11.0
    torch.testing.assert_close(ema.model.weight, d * start + (1 - d) * model.weight)
    copy = ExponentialMovingAverage(nn.Linear(2, 1), decay=0.9)
    copy.load_state_dict(ema.state_dict())
    torch.testing.assert_close(copy.model.weight, ema.model.weight)
    assert copy.num_updates == 1 and copy.decay == 0.5


def test_cosine_schedule_warms_up_and_decays():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = LearningRateSchedule(optimizer, 1.0, "cosine", warmup=0.1, min_lr_ratio=0.01)
    assert schedule.step(0.0) == pytest.approx(0.1)
    assert schedule.step(0.05) == pytest.approx(0.55)
    assert schedule.step(0.1) == pytest.approx(1.0)
    assert schedule.step(0.55) == pytest.approx(0.505)
    assert schedule.step(1.0) == pytest.approx(0.01)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_plateau_schedule_cuts_after_patience():
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    schedule = LearningRateSchedule(optimizer, 1.0, "plateau", warmup=0.0, patience=2, factor=0.5)
    schedule.validated(1.0)
    for _ in range(3):
        schedule.validated(2.0)
    assert schedule.step(0.5) == pytest.approx(0.5)
    restored = LearningRateSchedule(optimizer, 1.0, "plateau", warmup=0.0)
    restored.load_state_dict(schedule.state_dict())
    assert restored.step(0.6) == pytest.approx(0.5)


def test_error_figures():
    batch = _batch()
    accumulator = ErrorAccumulator(keep=True)
    predicted = {
        "energy": batch.energy + 0.009 * batch.graph.n_atoms_per_graph,
        "forces": batch.forces.clone(),
    }
    predicted["forces"][0, 0] += 0.3
    accumulator.update(predicted, batch, loss=2.0)
    figures = accumulator.figures()
    n_components = 3 * batch.graph.n_atoms
    assert figures["energy_mae_mev_per_atom"] == pytest.approx(9.0)
    assert figures["forces_mae_mev_per_a"] == pytest.approx(300.0 / n_components)
    assert figures["forces_rmse_mev_per_a"] == pytest.approx(300.0 / math.sqrt(n_components))
    assert figures["stress_mae_mev_per_a3"] is None
    assert accumulator.loss == 2.0
    reference, values = accumulator.values("forces")
    assert reference.shape == values.shape == (n_components,)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    state = {"weights": torch.arange(3.0), "progress": {"epoch": 2, "best_loss": math.inf}}
    save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["progress"]["epoch"] == 2
    torch.testing.assert_close(loaded["weights"], torch.arange(3.0))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an mlff training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
