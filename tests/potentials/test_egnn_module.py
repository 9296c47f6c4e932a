"""The EGNN's fast paths (neighbour blocks, fused radial projections, chunks under activation
checkpointing) against a plain per-edge implementation of the same equations, in float64."""

from __future__ import annotations

import pytest
import torch
from mlff.potentials.egnn import EGNN, real_harmonics
from mlff.potentials.layers import scatter_sum

CUTOFF = 3.0


def naive_energies(model: EGNN, node_features, edge_features, edge_index, vectors) -> torch.Tensor:
    """Per-atom energies by the textbook formulas: every edge term materialised, then scattered."""
    centre, neighbour = edge_index
    n_atoms, inv_n = node_features.shape[0], model.inv_avg_neighbors
    lengths = vectors.norm(dim=-1)
    envelope = model.envelope(lengths)
    h = model.embed(node_features)
    energies = torch.zeros(n_atoms, dtype=h.dtype)
    moved = None
    for k, layer in enumerate(model.layers):
        radial = model.radial_basis(lengths)
        if edge_features is not None:
            radial = torch.cat([radial, edge_features], dim=-1)
        pre = torch.cat([h[centre], h[neighbour], radial], dim=-1)
        weight = torch.cat(
            [layer.centre_linear.weight, layer.neighbour_linear.weight, layer.radial_linear.weight],
            dim=1,
        )
        message = layer.message_mlp(pre @ weight.T + layer.centre_linear.bias)
        message = message * torch.sigmoid(layer.gate(message)) * envelope[:, None]
        parts = [h, scatter_sum(message, centre, n_atoms) * inv_n]
        if layer.angular_linear is not None:
            c = layer.angular_channels
            psi = layer.angular_linear(message)
            y = real_harmonics(vectors / lengths[:, None], layer.angular_order)
            densities = []
            for l in range(1, layer.angular_order + 1):
                y_l = y[:, l * l - 1 : (l + 1) ** 2 - 1]  # (E, 2l+1)
                outer = y_l[:, :, None] * psi[:, None, (l - 1) * c : l * c]  # (E, 2l+1, C)
                densities.append(scatter_sum(outer, centre, n_atoms) * inv_n)  # (n, 2l+1, C)
            parts.extend(naive_invariants(layer, densities))
        h = h + layer.node_mlp(torch.cat(parts, dim=-1))
        if layer.coordinate_mlp is not None:
            weights = layer.coordinate_mlp(message) * (envelope / (lengths + 1.0))[:, None]
            shift = scatter_sum(-vectors * weights, centre, n_atoms) * inv_n
            # as the model does: the running total of the shifts moves the current vectors
            moved = shift if moved is None else moved + shift
            vectors = vectors + moved[neighbour] - moved[centre]
            lengths = vectors.norm(dim=-1)
        if model.layer_readouts is not None and k < len(model.layer_readouts):
            energies = energies + model.layer_readouts[k](h).squeeze(-1)
    return energies + model.readout(h).squeeze(-1)


def naive_invariants(layer, densities: list[torch.Tensor]) -> list[torch.Tensor]:
    """The layer's invariants of the densities A_l (n, 2l+1, C), l = 1..order, term by term."""
    if not layer.gram:
        return [a.pow(2).sum(1) for a in densities]
    c = layer.angular_channels
    parts = []
    for a in densities:  # Gram matrix entries, c <= c'
        parts.append(
            torch.stack(
                [(a[:, :, p] * a[:, :, q]).sum(1) for p in range(c) for q in range(p, c)], dim=-1
            )
        )
    if layer.many_body:
        for l in range(2, layer.angular_order + 1):  # Y_l(A_1,c) . A_l,c
            solid = torch.stack(
                [
                    real_harmonics(densities[0][:, :, k], l)[:, l * l - 1 : (l + 1) ** 2 - 1]
                    for k in range(c)
                ],
                dim=-1,
            )
            parts.append((solid * densities[l - 1]).sum(1))
    return parts


def cluster(n_atoms: int = 14, seed: int = 0):
    """A random cluster's edges within CUTOFF, shuffled (not sorted by centre)."""
    generator = torch.Generator().manual_seed(seed)
    positions = 4.0 * torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64)
    distances = torch.cdist(positions, positions)
    pairs = ((distances < CUTOFF) & ~torch.eye(n_atoms, dtype=torch.bool)).nonzero().T
    pairs = pairs[:, torch.randperm(pairs.shape[1], generator=generator)]
    return positions, pairs


def make_egnn(edge_features_in: int = 0, seed: int = 0, features: int = 8, **options) -> EGNN:
    torch.manual_seed(seed)
    model = EGNN(
        node_features_in=5,
        edge_features_in=edge_features_in,
        cutoff=CUTOFF,
        avg_num_neighbors=4.0,
        features=features,
        num_layers=3,
        n_basis=6,
        **options,
    ).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def energy_and_forces(function, positions, pairs):
    positions = positions.clone().requires_grad_(True)
    vectors = positions[pairs[1]] - positions[pairs[0]]
    energy = function(vectors).sum()
    (gradient,) = torch.autograd.grad(energy, positions)
    return energy.detach(), -gradient


OPTIONS = {
    "plain": {},
    "angular-l1": {"angular_channels": 3, "angular_order": 1},
    "preset": {
        "angular_channels": 4,
        "angular_order": 3,
        "coordinate_updates": False,
        "layer_readouts": True,
    },
    "angular-coords": {"angular_channels": 2, "angular_order": 2, "coordinate_updates": True},
    "gram": {"angular_channels": 3, "angular_order": 2, "angular_invariants": "gram"},
    "many-body": {
        "angular_channels": 3,
        "angular_order": 3,
        "coordinate_updates": False,
        "angular_invariants": "many_body",
    },
    "many-body-coords": {
        "angular_channels": 2,
        "angular_order": 2,
        "coordinate_updates": True,
        "angular_invariants": "many_body",
    },
}


LAYOUTS = {  # name: (max_chunk_edges, max_padding)
    "edges": (1 << 20, 0.0),
    "blocks": (1 << 20, float("inf")),
    "chunks": (7, float("inf")),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("edge_features_in", [0, 3])
def test_fast_paths_equal_the_per_edge_equations(name, layout, edge_features_in):
    model = make_egnn(edge_features_in, **OPTIONS[name])
    model.max_chunk_edges, model.max_padding = LAYOUTS[layout]
    model.chunk_edges = min(model.chunk_edges, model.max_chunk_edges)
    chunk_edges = layout == "chunks"
    in_blocks = []  # which layout ran
    original = model._layers_in_blocks
    model._layers_in_blocks = lambda *args: (in_blocks.append(True), original(*args))[1]
    positions, pairs = cluster()
    nodes = torch.randn(positions.shape[0], 5, dtype=torch.float64)
    edges = torch.randn(pairs.shape[1], 3, dtype=torch.float64) if edge_features_in else None

    def fast(vectors):
        return model(nodes, edges, pairs, vectors, vectors.norm(dim=-1))

    def naive(vectors):
        return naive_energies(model, nodes, edges, pairs, vectors)

    energy, forces = energy_and_forces(fast, positions, pairs)
    energy_ref, forces_ref = energy_and_forces(naive, positions, pairs)
    assert bool(in_blocks) == (layout.startswith("block") and model.shared_geometry)
    n_chunks = len(model._blocks._blocks.chunks)
    assert n_chunks > 2 if chunk_edges else n_chunks == 1
    torch.testing.assert_close(energy, energy_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(forces, forces_ref, rtol=0, atol=1e-10)


def test_chunks_are_used_and_keep_training_gradients():
    """Chunked evaluation gives the parameter gradients of the force loss (double backward)."""
    model = make_egnn(**OPTIONS["preset"])
    positions, pairs = cluster()
    nodes = torch.randn(positions.shape[0], 5, dtype=torch.float64)

    def loss():
        positions_ = positions.clone().requires_grad_(True)
        vectors = positions_[pairs[1]] - positions_[pairs[0]]
        energy = model(nodes, None, pairs, vectors, vectors.norm(dim=-1)).sum()
        (forces,) = torch.autograd.grad(energy, positions_, create_graph=True)
        return energy + forces.pow(2).sum()

    reference = torch.autograd.grad(loss(), list(model.parameters()))
    model.max_chunk_edges = model.chunk_edges = 9
    chunked = torch.autograd.grad(loss(), list(model.parameters()))
    assert len(model._blocks._blocks.chunks) > 2
    for a, b in zip(reference, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_a_new_edge_list_gets_a_new_layout():
    """The layout cache follows the edge list: a different list (or an in-place edit) rebuilds."""
    model = make_egnn(**OPTIONS["preset"])
    positions, pairs = cluster()
    nodes = torch.randn(positions.shape[0], 5, dtype=torch.float64)
    vectors = positions[pairs[1]] - positions[pairs[0]]
    model(nodes, None, pairs, vectors, vectors.norm(dim=-1))
    first = model._blocks._blocks
    model(nodes, None, pairs, vectors, vectors.norm(dim=-1))
    assert model._blocks._blocks is first
    fewer = pairs[:, : pairs.shape[1] // 2]
    half = vectors[: pairs.shape[1] // 2]
    energy = model(nodes, None, fewer, half, half.norm(dim=-1)).sum()
    reference = naive_energies(model, nodes, None, fewer, half).sum()
    assert model._blocks._blocks is not first
    torch.testing.assert_close(energy, reference, rtol=0, atol=1e-10)
    pairs[:, :2] = pairs[:, :2].flip(1)  # in place: same object, new version
    model(nodes, None, pairs, vectors, vectors.norm(dim=-1))
    assert model._blocks._blocks is not first


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_real_harmonics_obey_the_addition_theorem(degree):
    """``sum_m Y_lm(a) Y_lm(b) = P_l(a . b)`` for each degree, so the invariants are rotation
    invariant and each degree is normalised as the docstring says."""
    a, b = torch.nn.functional.normalize(torch.randn(2, 50, 3, dtype=torch.float64), dim=-1)
    columns = slice(degree * degree - 1, (degree + 1) ** 2 - 1)
    products = (real_harmonics(a, 3)[:, columns] * real_harmonics(b, 3)[:, columns]).sum(-1)
    t = (a * b).sum(-1)
    legendre = {1: t, 2: 0.5 * (3 * t**2 - 1), 3: 0.5 * (5 * t**3 - 3 * t)}[degree]
    torch.testing.assert_close(products, legendre, rtol=0, atol=1e-12)


@pytest.mark.parametrize("invariants", ["norms", "many_body"])
def test_harmonics_stay_exact_through_a_float32_round_trip(invariants):
    """A model kept in float32 (as training stores it) and run in float64 has the exact
    harmonic coefficients again (its own and, for the solid harmonics of the many-body
    invariants, its layers'), so its energies are rotation invariant to round-off."""
    from mlff.potentials.harmonics import harmonic_matrix

    model = make_egnn(angular_channels=4, angular_order=3, angular_invariants=invariants)
    model = model.to(torch.float32).to(torch.float64)
    assert torch.equal(model.harmonic_matrix, harmonic_matrix(3))
    for layer in model.layers if invariants == "many_body" else []:
        assert torch.equal(layer.harmonic_matrix, harmonic_matrix(3))
    positions, pairs = cluster()
    nodes = torch.randn(len(positions), 5, dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    energies = []
    for x in (positions, positions @ rotation.T):
        vectors = x[pairs[1]] - x[pairs[0]]
        energies.append(model(nodes, None, pairs, vectors, vectors.norm(dim=-1)))
    torch.testing.assert_close(energies[1], energies[0], rtol=1e-12, atol=1e-12)
