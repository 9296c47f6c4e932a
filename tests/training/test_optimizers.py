"""Muon (batched Newton-Schulz) against a per-matrix reference, the Muon/AdamW split, its state
dict, and what ``--optimizer auto`` picks."""

from __future__ import annotations

import math

import pytest
import torch

from mlff.errors import DataError
from mlff.training.dataset import GraphSet
from mlff.training.optimizers import (
    MUON_MOMENTUM,
    NS_COEFFICIENTS,
    NS_STEPS,
    Muon,
    MuonAdamW,
    is_muon_parameter,
    make_optimizer,
    orthogonalise,
    resolve_optimizer,
)
from tests.conftest import tiny_model
from tests.training import labelled

SHAPES = [(6, 6), (6, 6), (4, 9), (9, 4), (5, 7)]


def _reference_orthogonalise(matrix: torch.Tensor) -> torch.Tensor:
    """Muon's Newton-Schulz iteration written out for one matrix (Jordan et al. 2024)."""
    x = matrix.T if matrix.shape[0] > matrix.shape[1] else matrix
    x = x / x.norm().clamp(min=1e-7)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if matrix.shape[0] > matrix.shape[1] else x


def test_batched_orthogonalisation_equals_one_matrix_at_a_time():
    torch.manual_seed(0)
    for shape in [(6, 6), (4, 9), (9, 4)]:
        stack = torch.randn(3, *shape, dtype=torch.float64)
        batched = orthogonalise(stack)
        for k in range(3):
            torch.testing.assert_close(batched[k], _reference_orthogonalise(stack[k]))
        # nearly orthogonal: singular values within Muon's band around 1
        singular = torch.linalg.svdvals(batched[0])
        assert float(singular.min()) > 0.5 and float(singular.max()) < 1.5


def test_muon_step_equals_the_written_out_update():
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(*s, dtype=torch.float64)) for s in SHAPES]
    start = [p.detach().clone() for p in params]
    optimizer = Muon(params, lr=0.01, weight_decay=0.1)
    buffers = [torch.zeros_like(p) for p in params]
    expected = [p.clone() for p in start]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for k, g in enumerate(grads):
            buffers[k] = MUON_MOMENTUM * buffers[k] + (1 - MUON_MOMENTUM) * g
            nesterov = (1 - MUON_MOMENTUM) * g + MUON_MOMENTUM * buffers[k]
            update = _reference_orthogonalise(nesterov)
            expected[k] = expected[k] * (1 - 0.01 * 0.1)
            expected[k] = expected[k] - 0.01 * 0.2 * math.sqrt(max(g.shape)) * update
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


def test_muon_refuses_vectors():
    with pytest.raises(ValueError, match="matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


def test_split_keeps_embeddings_biases_and_thin_readouts_with_adamw():
    model = tiny_model("egnn")
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = make_optimizer("muon", [{"params": list(model.parameters())}], names, 0.01, 0.0)
    assert isinstance(optimizer, MuonAdamW)
    in_muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    in_adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    assert not in_muon & in_adamw and in_muon | in_adamw == set(names)
    for name, parameter in model.named_parameters():
        assert (id(parameter) in in_muon) == is_muon_parameter(name, parameter)
        if parameter.ndim != 2 or "embedding" in name or min(parameter.shape) < 8:
            assert id(parameter) in in_adamw, name
    assert in_muon, "no hidden matrix went to Muon"


def test_schedule_reaches_both_halves_and_state_round_trips():
    model = tiny_model("egnn")
    names = {id(p): n for n, p in model.named_parameters()}
    groups = [{"params": list(model.parameters())}]
    optimizer = make_optimizer("muon", groups, names, 0.01, 0.0)
    for group in optimizer.param_groups:
        group["lr"] = 0.003
    assert optimizer.muon.param_groups[0]["lr"] == optimizer.adamw.param_groups[0]["lr"] == 0.003
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state_dict()
    assert set(state) == {"muon", "adamw"}
    other = make_optimizer("muon", [{"params": list(model.parameters())}], names, 0.01, 0.0)
    other.load_state_dict(state)
    buffer = next(iter(other.muon.state.values()))["momentum_buffer"]
    assert torch.equal(buffer, next(iter(optimizer.muon.state.values()))["momentum_buffer"])


def test_auto_picks_muon_for_molecules_and_adamw_for_periodic_cells(tmp_path):
    from mlff.data import read_labelled

    def graph_set(frames, name):
        return GraphSet(read_labelled(str(labelled.write(tmp_path / name, frames))), 3.0)

    molecules = graph_set(labelled.molecules(2), "m.extxyz")
    mixed = graph_set(labelled.molecules(2) + labelled.copper(1), "x.extxyz")
    assert resolve_optimizer("auto", molecules) == "muon"
    assert resolve_optimizer("auto", mixed) == "adamw"
    assert resolve_optimizer("auto", molecules, ("tfn", "none")) == "adamw"
    assert resolve_optimizer("auto", molecules, ("egnn", "unimol")) == "adamw"
    assert resolve_optimizer("adamw", molecules) == "adamw"
    assert resolve_optimizer("muon", mixed) == "muon"
    with pytest.raises(DataError, match="optimizer must be one of"):
        resolve_optimizer("sgd", molecules)
    written_by_muon = {"optimizer": {"muon": {}, "adamw": {}}}
    assert resolve_optimizer("auto", mixed, ("egnn", "none"), written_by_muon) == "muon"
    with pytest.raises(DataError, match="run/last.pt: the run was trained with --optimizer muon"):
        resolve_optimizer("adamw", molecules, ("egnn", "none"), written_by_muon, "run/last.pt")
    written_by_adamw = {"optimizer": {"state": {}, "param_groups": []}}
    assert resolve_optimizer("auto", molecules, ("egnn", "none"), written_by_adamw) == "adamw"
