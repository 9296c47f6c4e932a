"""Compiled training steps (``mlff train --compile``) against eager ones, the reference.

The compiled graph is traced with torch.compile's "aot_eager" backend: the same graph (the
double backward included) without generating kernels, so seconds instead of minutes. Outputs
and weight gradients must equal eager ones to round-off in float64, for a batch that mixes a
molecule and a periodic cell with stress, and whole training runs must follow the same path.
"""

from __future__ import annotations

import pytest
import torch

from mlff.data import read_labelled
from mlff.errors import MLFFError
from mlff.forces import evaluate
from mlff.graph import batch_graphs, graph_from_atoms
from mlff.training.compiled import (
    AUTO_COMPILE_MIN_MINUTES,
    EnergyAndForces,
    resolve_train_compile,
)
from mlff.training.dataset import GraphSet
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.loop import LoopSettings, TrainingLoop
from mlff.training.schedule import LearningRateSchedule
from tests.conftest import tiny_model
from tests.training import labelled

ELEMENTS = ("H", "C", "O", "Cu")


def _mixed_graph():
    frames = labelled.molecules(2) + labelled.copper(1)
    return batch_graphs([graph_from_atoms(atoms, 3.5) for atoms in frames])


def _weight_gradients(model, outputs) -> list[torch.Tensor]:
    loss = (
        outputs["energy"].pow(2).sum()
        + outputs["forces"].pow(2).sum()
        + 10.0 * outputs["stress"].pow(2).sum()
    )
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", ["egnn-angular", "egnn", "tfn+unimol"])
def test_compiled_step_equals_eager_outputs_and_weight_gradients(name):
    model = tiny_model(name, elements=ELEMENTS).train().requires_grad_(True)
    graph = _mixed_graph()
    eager = evaluate(model, graph, compute_stress=True, create_graph=True)
    eager_gradients = _weight_gradients(model, eager)
    step = EnergyAndForces(model, True, True, compile="inductor", backend="aot_eager")
    compiled = step(graph)
    assert step.compiled and step.failed is None  # no silent fallback to eager
    for key in ("energy", "energies", "forces", "stress"):
        ours, reference = compiled[key].detach(), eager[key].detach()
        scale = reference.abs().max().clamp_min(1e-12)
        assert float((ours - reference).abs().max() / scale) < 1e-10, key
    gradients = _weight_gradients(model, compiled)
    assert len(gradients) == len(eager_gradients)
    for ours, reference in zip(gradients, eager_gradients, strict=True):
        scale = reference.abs().max().clamp_min(1e-12)
        assert float((ours - reference).abs().max() / scale) < 1e-9


def _loop(tmp_path, compile: str, **settings) -> TrainingLoop:
    frames = read_labelled(labelled.write(tmp_path / "cu.xyz", labelled.copper(6)))
    model = tiny_model("egnn-angular", elements=ELEMENTS).train().requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = LearningRateSchedule(optimizer, 1e-3, "cosine", 0.0, 0.1, 0.5, 5)
    settings = LoopSettings(
        batch_size=2, compile=compile, compile_backend="aot_eager", log=lambda _: None, **settings
    )
    ema = ExponentialMovingAverage(model, 0.9)
    return TrainingLoop(model, ema, optimizer, schedule, GraphSet(frames, 3.5), None, settings)


def _train(tmp_path, compile: str) -> list[torch.Tensor]:
    loop = _loop(tmp_path, compile, epochs=2)
    loop.run()
    assert loop.forward.compiled == (compile != "none")
    assert (loop.progress.compile_s > 0) == (compile != "none")
    return [p.detach().clone() for p in loop.model.parameters()]


def test_a_compiled_training_run_follows_the_eager_one(tmp_path):
    eager = _train(tmp_path, "none")
    compiled = _train(tmp_path, "inductor")
    moved = max(float((a - b).abs().max()) for a, b in zip(eager, _initial(), strict=True))
    assert moved > 1e-4  # the runs trained
    for ours, reference in zip(compiled, eager, strict=True):
        assert float((ours - reference).abs().max()) < 1e-9


def _initial() -> list[torch.Tensor]:
    return [p.detach().clone() for p in tiny_model("egnn-angular", elements=ELEMENTS).parameters()]


def test_compile_auto_means_inductor_on_a_cpu_for_long_runs_only():
    cpu = torch.device("cpu")
    assert resolve_train_compile("auto", cpu, AUTO_COMPILE_MIN_MINUTES) == "inductor"
    assert resolve_train_compile("auto", cpu, AUTO_COMPILE_MIN_MINUTES / 2) == "none"
    assert resolve_train_compile("auto", cpu, 0.0) == "none"  # no limit: tests, epoch budgets
    assert resolve_train_compile("auto", torch.device("cuda"), 60.0) == "none"  # unmeasured
    assert resolve_train_compile("none", cpu, 60.0) == "none"
    assert resolve_train_compile("inductor", cpu, 0.0) == "inductor"
    with pytest.raises(MLFFError, match="compile must be one of"):
        resolve_train_compile("fast", cpu, 10.0)


def test_the_schedule_spans_the_time_left_after_compiling(tmp_path):
    loop = _loop(tmp_path, "none", epochs=10**6, time_limit_s=100.0)
    loop.progress.elapsed = 60.0
    assert loop.fraction() == pytest.approx(0.6)
    loop.progress.compile_s = 40.0  # the first step compiled for 40 s: 20 of 60 s used
    assert loop.fraction() == pytest.approx(20.0 / 60.0)
    loop.progress.compile_s = 150.0  # compiling outlasted the limit
    assert loop.fraction() == 1.0
