"""Fixtures of the workflow tests: tiny model files, a Cu model fitted to EMT, test structures,
and a deliberately broken (orientation-dependent) model for the covariance checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from mlff.potentials.layers import PolynomialEnvelope, scatter_sum
from torch import nn

from mlff import build_model, save_model
from mlff.model import ForceField

ELEMENTS = ["H", "C", "O", "Cu"]


def randomised_model(seed: int = 0, scale: float = 0.3, elements=ELEMENTS, cutoff: float = 3.5):
    """A tiny EGNN with every weight perturbed, so energies and forces are O(1)."""
    torch.manual_seed(seed)
    model = build_model(
        potential="egnn",
        encoder="none",
        elements=list(elements),
        cutoff=cutoff,
        features=8,
        num_layers=1,
    ).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(
                scale * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            )
    return model.eval()


def cu_vacancy(a: float = 3.61, rattle: float = 0.05, seed: int = 3) -> Atoms:
    """A 2x2x2 conventional fcc Cu cell (32 sites) with one vacancy, rattled."""
    atoms = bulk("Cu", "fcc", a=a, cubic=True) * (2, 2, 2)
    del atoms[0]
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def fit_cu_to_emt(iterations: int = 150, seed: int = 0) -> ForceField:
    """A tiny Cu EGNN fitted (energies, forces, stress) to ASE's EMT on strained, rattled fcc
    cells: a model with a real minimum near a = 3.6 Å, for relaxation and MD tests."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_cu_to_emt(iterations, seed)
    finally:
        torch.set_num_threads(threads)


def _fit_cu_to_emt(iterations: int, seed: int) -> ForceField:
    from ase.calculators.emt import EMT

    from mlff.forces import evaluate
    from mlff.graph import graphs_from_atoms

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(10):
        atoms = cu_vacancy(a=3.61 * rng.uniform(0.96, 1.05), rattle=0.08, seed=k)
        if k % 2:
            atoms += Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
        atoms.calc = EMT()
        frames.append(
            (atoms, atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False))
        )
    torch.manual_seed(seed)
    model = build_model(
        potential="egnn",
        encoder="none",
        elements=["Cu"],
        cutoff=4.0,
        features=16,
        num_layers=1,
        avg_num_neighbors=12.0,
        reference_energies={"Cu": float(np.mean([e / len(a) for a, e, _, _ in frames]))},
    ).double()
    graph = graphs_from_atoms([f[0] for f in frames], model.cutoff)
    energy = torch.tensor([f[1] for f in frames], dtype=torch.float64)
    forces = torch.tensor(np.concatenate([f[2] for f in frames]))
    stress = torch.tensor(np.stack([f[3] for f in frames]))
    n_atoms = graph.n_atoms_per_graph.double()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(iterations):
        out = evaluate(model, graph, compute_forces=True, compute_stress=True, create_graph=True)
        loss = (
            (((out["energy"] - energy) / n_atoms) ** 2).mean()
            + ((out["forces"] - forces) ** 2).mean()
            + 10.0 * ((out["stress"] - stress) ** 2).mean()
        )
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


class OrientationDependentPotential(nn.Module):
    """TEST ONLY, deliberately wrong: EGNN energies plus ``strength * sum_j x_ij^2 * u(r_ij)``,
    a term that depends on the absolute orientation of every bond (x component of the edge
    vector). It is smooth and conservative, so only the covariance check can catch it."""

    def __init__(self, inner: nn.Module, cutoff: float, strength: float = 0.05) -> None:
        super().__init__()
        self.inner = inner
        self.envelope = PolynomialEnvelope(cutoff, 6)
        self.strength = strength

    def forward(self, node_features, edge_features, edge_index, edge_vectors, edge_lengths):
        energies = self.inner(node_features, edge_features, edge_index, edge_vectors, edge_lengths)
        term = edge_vectors[:, 0] ** 2 * self.envelope(edge_lengths)
        return energies + self.strength * scatter_sum(term, edge_index[0], energies.shape[0])


def broken_model(seed: int = 0) -> ForceField:
    """A ForceField whose energy depends on absolute orientation (see above)."""
    base = randomised_model(seed)
    return (
        ForceField(
            encoder=base.encoder,
            potential=OrientationDependentPotential(base.potential, base.cutoff),
            elements=base.elements,
            cutoff=base.cutoff,
            config=base.config,
        )
        .double()
        .eval()
    )


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """A saved tiny randomised EGNN for H, C, O, Cu (float64)."""
    path = tmp_path_factory.mktemp("models") / "tiny.pt"
    save_model(randomised_model(), path)
    return path


@pytest.fixture(scope="session")
def cu_model():
    return fit_cu_to_emt()


@pytest.fixture(scope="session")
def cu_model_file(cu_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "cu.pt"
    save_model(cu_model, path)
    return path


@pytest.fixture
def ethanol_file(tmp_path):
    import ase.io

    path = tmp_path / "ethanol.xyz"
    ase.io.write(path, molecule("CH3CH2OH"))
    return path


@pytest.fixture
def cu_cif(tmp_path):
    """The Cu vacancy cell as a CIF file (read back through pymatgen)."""
    from mlff.workflows.common import write_structures

    path = tmp_path / "cu_vacancy.cif"
    write_structures(path, [cu_vacancy()])
    return path


@pytest.fixture
def use_broken_model(monkeypatch):
    """Make every model file load as the broken model (for CLI tests)."""
    import mlff.calculator

    monkeypatch.setattr(mlff.calculator, "load_model", lambda path, device="cpu": broken_model())
