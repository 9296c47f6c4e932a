"""Masked-atom and denoising losses fall when the pretraining model trains on a tiny set, and the
corruption is what it claims (centred noise, neighbour lists of the noised positions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from mlff.errors import DataError
from mlff.graph import batch_graphs, graph_from_atoms
from mlff.pretraining.data import StructureSet
from mlff.pretraining.heads import PretrainingModel
from mlff.pretraining.loop import predict_and_score
from mlff.pretraining.masking import corrupt, generator


def _structures(n: int = 8) -> list:
    rng = np.random.default_rng(0)
    frames = []
    for k in range(n):
        atoms = molecule(("CH3CH2OH", "CH3OH", "H2O", "CH4")[k % 4])
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append((atoms, f"frame {k}"))
    return frames


def _fixed_losses(model, corruptions) -> dict[str, float]:
    with torch.no_grad():
        terms = [predict_and_score(model, c, s) for c, s in corruptions]
    return {k: float(np.mean([t[k] for t in terms])) for k in ("atoms", "coordinates")}


def test_masked_atom_and_denoising_losses_decrease_on_a_tiny_set():
    torch.manual_seed(0)
    structures = StructureSet(_structures(), 4.0, ["H", "C", "O"])
    model = PretrainingModel(
        ["H", "C", "O"], 4.0, features=16, pair_features=8, num_layers=2, avg_num_neighbors=6.0
    )
    graph, species = structures.batch(range(len(structures)))
    fixed = [(corrupt(graph, 4.0, 0.1, 0.3, generator(0, 1, k)), species) for k in range(3)]
    fixed = [(c.to("cpu", torch.float32), s) for c, s in fixed]
    before = _fixed_losses(model, fixed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(60):
        corruption = corrupt(graph, 4.0, 0.1, 0.3, generator(0, 0, step)).to("cpu", torch.float32)
        terms = predict_and_score(model, corruption, species)
        optimizer.zero_grad()
        (terms["atoms"] + terms["coordinates"]).backward()
        optimizer.step()
    after = _fixed_losses(model, fixed)
    assert after["atoms"] < 0.7 * before["atoms"], (before, after)
    assert after["coordinates"] < 0.8 * before["coordinates"], (before, after)
    assert after["coordinates"] < 1.0  # better than predicting no displacement at all


def test_the_noise_is_centred_and_the_edges_follow_the_noised_positions():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)  # periodic: the edges carry image shifts
    graphs = [graph_from_atoms(copper, 3.0), graph_from_atoms(molecule("H2O"), 3.0)]
    corruption = corrupt(batch_graphs(graphs), 3.0, 0.2, 0.5, generator(1, 0, 0))
    noise = corruption.noise
    zero = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(noise[:4].mean(0), zero, atol=1e-12)
    assert torch.allclose(noise[4:].mean(0), zero, atol=1e-12)
    assert noise.abs().max() > 0.01
    noised = corruption.graph
    assert torch.allclose(noised.positions, batch_graphs(graphs).positions + noise)
    rebuilt = graph_from_atoms(
        copper.__class__(copper.numbers, copper.positions + noise[:4].numpy(), cell=copper.cell,
                         pbc=True), 3.0)  # fmt: skip
    assert noised.edge_index[:, noised.batch[noised.edge_index[0]] == 0].shape[1] == rebuilt.n_edges
    assert bool(noised.edge_shifts.abs().sum() > 0)
    assert bool(corruption.masked.any())
    # clean lengths of the noised edges: O-H 0.97 Å up to the cutoff plus the noise
    assert float(corruption.clean_distances.min()) > 0.9
    assert float(corruption.clean_distances.max()) < 3.0 + 2 * float(noise.norm(dim=1).max())


@pytest.mark.parametrize(("sigma", "fraction"), [(0.0, 0.1), (-0.1, 0.1), (0.1, 1.0), (0.1, -0.2)])
def test_bad_noise_or_mask_fraction_is_one_clear_error(sigma, fraction):
    graph = graph_from_atoms(molecule("H2O"), 3.0)
    with pytest.raises(DataError, match="sigma|mask fraction"):
        corrupt(graph, 3.0, sigma, fraction, generator(0, 0, 0))
