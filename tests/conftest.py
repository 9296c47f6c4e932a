"""Shared fixtures: tiny models with randomised weights and small test structures (float64)."""

from __future__ import annotations

import os

# numpy/scipy work in the tests is on tiny arrays; a BLAS thread pool only competes with torch
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from mlff import build_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models and tensors gain nothing from threads, and on a shared 2-core machine the
    thread pool's synchronisation costs more than it gives: every test runs on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (potential, encoder, hyperparameters) of the tiny models every physics test runs on
MODEL_CONFIGS = {
    "egnn": ("egnn", "none", {"features": 16, "num_layers": 2}),
    "egnn+unimol": (
        "egnn",
        "unimol",
        {"features": 16, "num_layers": 2, "encoder_num_layers": 2, "encoder_pair_features": 8},
    ),
    "tfn-l1": ("tfn", "none", {"features": 8, "num_layers": 2, "l_max": 1}),
    "tfn-l2": ("tfn", "none", {"features": 8, "num_layers": 2, "l_max": 2}),
    "tfn-l1-attention": ("tfn", "none", {"features": 8, "num_layers": 2, "attention": True}),
    "tfn-l2-attention": (
        "tfn",
        "none",
        {"features": 8, "num_layers": 2, "l_max": 2, "attention": True},
    ),
    "tfn+unimol": (
        "tfn",
        "unimol",
        {"features": 8, "num_layers": 2, "encoder_features": 16, "encoder_pair_features": 8},
    ),
    # the training preset's features: angular channels up to l = 3 and per-layer readouts
    "egnn-angular": (
        "egnn",
        "none",
        {
            "features": 16,
            "num_layers": 2,
            "angular_channels": 4,
            "angular_order": 3,
            "layer_readouts": True,
        },
    ),
    "egnn-fixed-coords": (
        "egnn",
        "none",
        {"features": 16, "num_layers": 2, "coordinate_updates": False},
    ),
}
# the training preset's layout (angular channels, fixed coordinates): on a CPU, inference runs
# its edge sums in the fused kernels (mlff.potentials.fused)
MODEL_CONFIGS["egnn-preset"] = (
    "egnn",
    "none",
    {**MODEL_CONFIGS["egnn-angular"][2], "coordinate_updates": False},
)


def randomise(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Perturb every weight so outputs and forces are O(1): a symmetry bug cannot hide in zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.add_(scale * noise)
    return model


def tiny_model(name: str, elements=("H", "C", "O"), cutoff: float = 3.5, seed: int = 0):
    potential, encoder, hyper = MODEL_CONFIGS[name]
    torch.manual_seed(seed)
    model = build_model(
        potential=potential, encoder=encoder, elements=list(elements), cutoff=cutoff, **hyper
    )
    return randomise(model.to(torch.float64), seed).eval()


@pytest.fixture(params=sorted(MODEL_CONFIGS))
def model_name(request) -> str:
    return request.param


@pytest.fixture
def model(model_name):
    """The tiny model with frozen weights, as the calculator and the engines run it: on a CPU an
    EGNN with fixed coordinates then evaluates through the fused kernels (tiny_model itself keeps
    trainable weights, the op-by-op reference path)."""
    return tiny_model(model_name).requires_grad_(False)


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def triclinic_cell(seed: int = 3) -> Atoms:
    """Six H/C/O atoms in a small triclinic cell (atoms see their own periodic images)."""
    rng = np.random.default_rng(seed)
    cell = np.array([[4.2, 0.0, 0.0], [0.9, 4.6, 0.0], [-0.7, 0.6, 4.9]])
    while True:
        fractional = rng.uniform(size=(6, 3))
        atoms = Atoms("HCOHCO", scaled_positions=fractional, cell=cell, pbc=True)
        distances = atoms.get_all_distances(mic=True)
        if distances[np.triu_indices(6, 1)].min() > 1.0:
            return atoms


@pytest.fixture(params=["molecule", "triclinic"])
def structure(request) -> Atoms:
    return ethanol() if request.param == "molecule" else triclinic_cell()


@pytest.fixture
def calculator_evaluations(monkeypatch) -> list[dict]:
    """Every model evaluation of an MLFFCalculator from now on, as the keyword arguments it got
    (``compute_forces``, ``compute_stress``)."""
    import mlff.calculator

    calls: list[dict] = []
    evaluate = mlff.calculator.evaluate

    def recording(model, graph, **kwargs):
        calls.append(kwargs)
        return evaluate(model, graph, **kwargs)

    monkeypatch.setattr(mlff.calculator, "evaluate", recording)
    return calls
