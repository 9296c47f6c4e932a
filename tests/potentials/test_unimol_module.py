"""Tests of the local, smooth Uni-Mol-style encoder (``mlff.potentials.unimol``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from mlff.potentials import encoder_class
from mlff.potentials.unimol import UniMolEncoder, unordered_pair_types

CUTOFF = 3.0
TINY = dict(features=8, pair_features=4, num_layers=2, num_heads=2, n_kernels=6, ffn_factor=2)


def make_model(n_species: int = 3, seed: int = 0, **overrides) -> UniMolEncoder:
    """A tiny float64 encoder with all parameters perturbed away from their (symmetric) init."""
    torch.manual_seed(seed)
    model = UniMolEncoder(n_species=n_species, cutoff=CUTOFF, **{**TINY, **overrides})
    model = model.to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def neighbour_list(
    positions: torch.Tensor, cutoff: float, cell: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force full neighbour list: ``edge_index (2, E)`` and Cartesian image shifts (E, 3).

    ``edge_vectors = positions[j] - positions[i] + shift``; with a cell, every image within the
    cutoff is listed (self-images included).
    """
    if cell is None:
        images = [torch.zeros(3, dtype=positions.dtype)]
    else:
        volume = torch.linalg.det(cell).abs()
        widths = [
            volume / torch.linalg.cross(cell[(a + 1) % 3], cell[(a + 2) % 3]).norm()
            for a in range(3)
        ]
        reps = [math.ceil(cutoff / float(w)) for w in widths]
        images = [
            torch.tensor(s, dtype=positions.dtype) @ cell
            for s in itertools.product(*(range(-m, m + 1) for m in reps))
        ]
    pos = positions.detach()
    centres, neighbours, shifts = [], [], []
    for shift in images:
        d = (pos[None, :, :] + shift - pos[:, None, :]).norm(dim=-1)
        i, j = torch.nonzero((d < cutoff) & (d > 1e-8), as_tuple=True)
        centres.append(i)
        neighbours.append(j)
        shifts.append(shift.expand(len(i), 3))
    edge_index = torch.stack([torch.cat(centres), torch.cat(neighbours)])
    return edge_index, torch.cat(shifts)


def edges(positions: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor):
    vectors = positions[edge_index[1]] - positions[edge_index[0]] + shifts
    return vectors, vectors.norm(dim=-1)


def random_structure(n_atoms: int, n_species: int, box: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    positions = box * torch.rand(n_atoms, 3, generator=g, dtype=torch.float64)
    species = torch.randint(0, n_species, (n_atoms,), generator=g)
    return positions, species


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if (torch.linalg.det(q) < 0) != reflect:
        q = -q
    return q


def readout_weights(model: UniMolEncoder, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random weights ``(features,)`` and ``(pair_features,)`` in the model's dtype."""
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    w_node = torch.randn(model.node_features_out, generator=g, dtype=torch.float64).to(dtype)
    w_edge = torch.randn(model.edge_features_out, generator=g, dtype=torch.float64).to(dtype)
    return w_node, w_edge


def readout(model: UniMolEncoder, seed: int = 1):
    """A scalar read from the features: random weighted sums of node and edge features."""
    w_node, w_edge = readout_weights(model, seed)

    def scalar(species, positions, edge_index, shifts):
        vectors, lengths = edges(positions, edge_index, shifts)
        node, edge = model(species, edge_index, vectors, lengths)
        return (node @ w_node).sum() + (edge @ w_edge).sum()

    return scalar


def test_registry_shapes_and_json_kwargs():
    assert encoder_class("unimol") is UniMolEncoder
    config = {"n_species": 2, "cutoff": 4.0, **TINY}
    model = UniMolEncoder(**config)
    assert model.node_features_out == TINY["features"]
    assert model.edge_features_out == TINY["pair_features"]
    positions, species = random_structure(6, 2, 3.0, seed=3)
    edge_index, shifts = neighbour_list(positions, 4.0)
    vectors, lengths = edges(positions.float(), edge_index, shifts.float())
    node, edge = model(species, edge_index, vectors, lengths)
    assert node.shape == (6, TINY["features"])
    assert edge.shape == (edge_index.shape[1], TINY["pair_features"])
    for bad in ({"features": 7, "num_heads": 2}, {"cutoff": 0.0}, {"n_species": 0}):
        with pytest.raises(ValueError):
            UniMolEncoder(**{**config, **bad})


@pytest.mark.parametrize("reflect", [False, True])
def test_invariance_under_rotation_and_reflection(reflect):
    model = make_model()
    positions, species = random_structure(8, 3, 4.0, seed=5)
    cell = torch.tensor([[4.0, 0.0, 0.0], [0.5, 4.2, 0.0], [0.3, -0.2, 3.9]], dtype=torch.float64)
    edge_index, shifts = neighbour_list(positions, CUTOFF, cell)
    vectors, lengths = edges(positions, edge_index, shifts)
    node, edge = model(species, edge_index, vectors, lengths)

    q = random_orthogonal(seed=7, reflect=reflect)
    rotated = vectors @ q.T
    node_r, edge_r = model(species, edge_index, rotated, rotated.norm(dim=-1))
    torch.testing.assert_close(node_r, node, atol=1e-10, rtol=0)
    torch.testing.assert_close(edge_r, edge, atol=1e-10, rtol=0)
    # edge features carry the envelope: they vanish for the longest edges only smoothly
    assert edge.abs().sum() > 0


def test_permutation_equivariance():
    model = make_model()
    positions, species = random_structure(9, 3, 3.5, seed=11)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    vectors, lengths = edges(positions, edge_index, shifts)
    node, edge = model(species, edge_index, vectors, lengths)

    g = torch.Generator().manual_seed(12)
    perm = torch.randperm(9, generator=g)  # new atom a is old atom perm[a]
    inverse = torch.argsort(perm)
    edge_perm = torch.randperm(edge_index.shape[1], generator=g)
    new_index = inverse[edge_index][:, edge_perm]
    node_p, edge_p = model(species[perm], new_index, vectors[edge_perm], lengths[edge_perm])
    torch.testing.assert_close(node_p, node[perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(edge_p, edge[edge_perm], atol=1e-12, rtol=0)


def smoothness_setup():
    """Atom 1 moves radially away from atom 0 along ``u``; the others stay well off the cutoff."""
    positions = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [CUTOFF, 0.0, 0.0],  # the moving atom; its distance to atom 0 is set below
            [CUTOFF + 0.3, 1.4, 0.2],  # a neighbour of the moving atom
            [0.4, -1.2, 0.8],  # a neighbour of atom 0
            [1.6, 0.9, -1.0],  # a neighbour of both
        ],
        dtype=torch.float64,
    )
    species = torch.tensor([0, 1, 2, 1, 0])
    u = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    return positions, species, u


def test_smooth_when_a_neighbour_crosses_the_cutoff():
    model = make_model()
    scalar = readout(model)
    positions, species, u = smoothness_setup()

    def at(r):
        pos = positions.clone()
        pos[1] = r * u
        d = (pos[:, None] - pos[None]).norm(dim=-1)
        others = d[torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)]
        n_near = ((others - CUTOFF).abs() < 1e-3).sum()
        assert n_near == 1  # only the (0, 1) pair sits at the cutoff
        pos.requires_grad_(True)
        edge_index, shifts = neighbour_list(pos, CUTOFF)  # rebuilt at every position
        value = scalar(species, pos, edge_index, shifts)
        (grad,) = torch.autograd.grad(value, pos)
        return value.detach(), grad, edge_index.shape[1]

    delta = 1e-8
    v_in, g_in, e_in = at(CUTOFF - delta)
    v_out, g_out, e_out = at(CUTOFF + delta)
    assert e_in == e_out + 2  # (0, 1) and (1, 0) are present inside only
    # value: continuous (compare with the inside value extrapolated linearly across 2 delta)
    extrapolated = v_in + 2 * delta * (g_in[1] @ u)
    assert abs(float(v_out - extrapolated)) < 1e-8
    # forces: continuous
    assert (g_in - g_out).abs().max() < 1e-5
    # and something actually depends on the moving atom
    assert g_in[1].abs().max() > 1e-3


def test_edges_beyond_the_cutoff_contribute_nothing():
    """A neighbour list with a skin (edges a bit past the cutoff) gives the same node features."""
    model = make_model()
    positions, species = random_structure(7, 3, 4.0, seed=21)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    skin_index, skin_shifts = neighbour_list(positions, CUTOFF + 1.0)
    assert skin_index.shape[1] > edge_index.shape[1]
    node, _ = model(species, edge_index, *edges(positions, edge_index, shifts))
    node_skin, edge_skin = model(species, skin_index, *edges(positions, skin_index, skin_shifts))
    torch.testing.assert_close(node_skin, node, atol=1e-12, rtol=0)
    beyond = edges(positions, skin_index, skin_shifts)[1] >= CUTOFF
    assert torch.all(edge_skin[beyond] == 0)


def test_gradcheck_positions():
    model = make_model(num_layers=2)
    scalar = readout(model)
    positions = torch.tensor(
        [[0.0, 0.0, 0.0], [1.1, 0.3, -0.2], [0.2, 1.4, 0.5], [-0.9, 0.4, 1.0]],
        dtype=torch.float64,
    )
    species = torch.tensor([0, 2, 1, 0])
    edge_index, shifts = neighbour_list(positions, CUTOFF)

    def f(pos):
        return scalar(species, pos, edge_index, shifts)

    pos = positions.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(f, (pos,))
    # forces are trained on: the second derivative must exist too
    assert torch.autograd.gradgradcheck(f, (pos,))


def test_isolated_atoms_give_finite_output():
    model = make_model()
    empty = torch.zeros((2, 0), dtype=torch.long)
    nothing = torch.zeros((0, 3), dtype=torch.float64)
    node, edge = model(torch.tensor([1]), empty, nothing, nothing.norm(dim=-1))
    assert node.shape == (1, TINY["features"]) and edge.shape == (0, TINY["pair_features"])
    assert torch.isfinite(node).all()

    # an atom far from a bonded pair: same output as alone
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [20.0, 0.0, 0.0]])
    positions = positions.to(torch.float64)
    species = torch.tensor([0, 2, 1])
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    node3, _ = model(species, edge_index, *edges(positions, edge_index, shifts))
    assert torch.isfinite(node3).all()
    torch.testing.assert_close(node3[2:], node, atol=1e-12, rtol=0)


def offset_logits(model: UniMolEncoder, offset: float) -> UniMolEncoder:
    """Add ``offset`` to every attention logit (self and edges) and compensate in the pair update.

    The attention weights are invariant under a common offset, so the result computes the same
    function, but ``exp(logit)`` alone would overflow even float64 for ``offset`` ~ 1000.
    """
    with torch.no_grad():
        for layer in model.layers:
            layer.self_bias.weight.add_(offset)
            layer.pair_bias.bias.add_(offset)
            layer.pair_update.bias.sub_(offset * layer.pair_update.weight.sum(dim=1))
    return model


def test_large_logits_stay_finite_and_smooth():
    """Huge logits neither overflow nor break smoothness: the detached per-centre shift leaves
    the function unchanged, however large the logits and whichever term is the largest."""
    model = make_model()
    with torch.no_grad():
        for layer in model.layers:
            layer.qkv.weight.mul_(30.0)
            layer.pair_bias.bias.add_(200.0)
    positions, species = random_structure(8, 3, 3.0, seed=4)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    pos = positions.clone().requires_grad_(True)
    value = readout(model)(species, pos, edge_index, shifts)
    (grad,) = torch.autograd.grad(value, pos)
    assert torch.isfinite(value) and torch.isfinite(grad).all()

    # logits ~ 1000 (exp overflows float64) with O(1) differences: the same function as without
    plain, large = make_model(), offset_logits(make_model(), 1000.0)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    node, edge = plain(species, edge_index, *edges(positions, edge_index, shifts))
    node_large, edge_large = large(species, edge_index, *edges(positions, edge_index, shifts))
    torch.testing.assert_close(node_large, node, atol=1e-9, rtol=0)
    torch.testing.assert_close(edge_large, edge, atol=1e-9, rtol=0)

    # ...and smooth: scanning one atom across the cutoff, the energy change between neighbouring
    # points equals the work of the forces (trapezoid rule, error O(h^2)); a jump in energy or
    # forces anywhere on the path (a term switched off while still weighted) breaks this
    h = 2e-3
    radii = torch.arange(CUTOFF - 0.4, CUTOFF + 0.05, h, dtype=torch.float64)
    energies, slopes, n_edges = scan_across_the_cutoff(large, radii)
    assert n_edges[-1] < n_edges[0]  # pairs with the moving atom leave the neighbour list
    assert torch.isfinite(energies).all() and torch.isfinite(slopes).all()
    work = 0.5 * h * (slopes[1:] + slopes[:-1])
    assert (energies.diff() - work).abs().max() < 1e-6
    assert energies.diff().abs().max() > 1e-3  # the moving atom does change the energy


def scan_across_the_cutoff(model: UniMolEncoder, radii: torch.Tensor):
    """Atom 1 of :func:`smoothness_setup` placed at each radius from atom 0, all positions
    evaluated at once as disjoint copies: the readout energy ``(n,)``, its derivative along the
    path ``(n,)`` and the number of edges of each copy ``(n,)``."""
    start, species, u = smoothness_setup()
    n_atoms, n_copies = start.shape[0], radii.shape[0]
    positions = start.repeat(n_copies, 1, 1)
    positions[:, 1] = radii[:, None] * u
    flat = positions.reshape(-1, 3).requires_grad_(True)
    d = (positions[:, None, :, :] - positions[:, :, None, :]).norm(dim=-1)
    copy, i, j = torch.nonzero((d < CUTOFF) & (d > 1e-8), as_tuple=True)
    edge_index = torch.stack([copy * n_atoms + i, copy * n_atoms + j])
    vectors, lengths = edges(flat, edge_index, torch.zeros(copy.shape[0], 3, dtype=flat.dtype))
    node, edge = model(species.repeat(n_copies), edge_index, vectors, lengths)
    w_node, w_edge = readout_weights(model)
    energies = (node @ w_node).view(n_copies, n_atoms).sum(1)
    energies = energies.index_add(0, copy, edge @ w_edge)
    (grad,) = torch.autograd.grad(energies.sum(), flat)
    slopes = grad.view(n_copies, n_atoms, 3)[:, 1] @ u
    return energies.detach(), slopes, torch.bincount(copy, minlength=n_copies)


def test_float32():
    model64 = make_model()
    model32 = make_model().to(torch.float32)
    positions, species = random_structure(8, 3, 3.5, seed=8)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    vectors, lengths = edges(positions, edge_index, shifts)
    node32, edge32 = model32(species, edge_index, vectors.float(), lengths.float())
    assert node32.dtype == torch.float32 and edge32.dtype == torch.float32
    assert torch.isfinite(node32).all() and torch.isfinite(edge32).all()
    node64, edge64 = model64(species, edge_index, vectors, lengths)
    torch.testing.assert_close(node32.double(), node64, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(edge32.double(), edge64, atol=1e-4, rtol=1e-4)


def test_pair_types_have_their_own_affine_maps():
    table = unordered_pair_types(3)
    assert torch.equal(table, table.T)
    assert sorted(table[torch.triu_indices(3, 3)[0], torch.triu_indices(3, 3)[1]].tolist()) == list(
        range(6)
    )

    model = make_model(n_species=3)
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.5, 0.2, 0.0]], dtype=torch.float64)
    edge_index, shifts = neighbour_list(positions, CUTOFF)
    vectors, lengths = edges(positions, edge_index, shifts)

    def run(species):
        return model(torch.tensor(species), edge_index, vectors, lengths)

    node01, edge01 = run([0, 1])
    # changing the species of one atom changes the features
    node02, _ = run([0, 2])
    assert (node02[0] - node01[0]).abs().max() > 1e-3

    def changed_by(type_index):
        with torch.no_grad():
            saved = model.pair_scale.weight.clone()
            model.pair_scale.weight[type_index] += 0.5
            node, edge = run([0, 1])
            model.pair_scale.weight.copy_(saved)
        return max((node - node01).abs().max(), (edge - edge01).abs().max())

    assert changed_by(int(table[0, 1])) > 1e-3
    assert changed_by(int(table[1, 0])) > 1e-3
    for other in (table[0, 0], table[1, 1], table[0, 2], table[2, 2]):
        assert changed_by(int(other)) == 0


def test_float32_edges_at_the_cutoff():
    """float32 edges within rounding of the cutoff (envelope ~ 0, even < 0 by cancellation)."""
    model = make_model().to(torch.float32)
    with torch.no_grad():
        for layer in model.layers:
            layer.pair_bias.bias.add_(50.0)  # edge logits far above the self logit
    lengths = torch.linspace(CUTOFF - 1e-2, CUTOFF + 1e-3, 400, dtype=torch.float32)
    n = lengths.shape[0]
    star = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(1, n + 1)])
    edge_index = torch.cat([star, star.flip(0)], dim=1)
    lengths = torch.cat([lengths, lengths]).requires_grad_(True)
    vectors = lengths.detach().unsqueeze(-1) * torch.tensor([1.0, 0.0, 0.0])
    species = torch.arange(n + 1) % 3
    node, edge = model(species, edge_index, vectors, lengths)
    assert torch.isfinite(node).all() and torch.isfinite(edge).all()
    (grad,) = torch.autograd.grad(node.sum() + edge.sum(), lengths)
    assert torch.isfinite(grad).all()
    assert torch.all(edge[lengths.detach() >= CUTOFF] == 0)


def test_float32_zero_envelope_edges_with_large_logits():
    """Edges exactly at and just inside the cutoff in float32 (where the envelope rounds or is
    clamped to 0), with edge logits far above the self logits, add exactly nothing: energy, forces
    and the parameter gradients of a force loss are finite and the same without those edges."""
    model = make_model().to(torch.float32)
    with torch.no_grad():
        for layer in model.layers:
            layer.pair_bias.bias.add_(200.0)  # exp(200) overflows float32
    cutoff = torch.tensor(CUTOFF, dtype=torch.float32)
    just_inside = float(torch.nextafter(cutoff, torch.tensor(0.0)))
    positions = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [CUTOFF, 0.0, 0.0],  # exactly at the cutoff of atom 0
            [0.0, just_inside, 0.0],  # one float32 step inside
            [0.0, 0.0, CUTOFF - 2e-6],  # a few steps inside
            [-1.0, -0.8, -0.3],  # an ordinary neighbour of atom 0
            [3.5, 1.0, 0.0],  # an ordinary neighbour of atom 1
        ],
        dtype=torch.float32,
    )
    species = torch.tensor([0, 1, 2, 1, 0, 2])
    d = (positions[None] - positions[:, None]).norm(dim=-1)
    i, j = torch.nonzero((d <= CUTOFF) & (d > 0), as_tuple=True)
    edge_index = torch.stack([i, j])
    shifts = torch.zeros((edge_index.shape[1], 3))
    lengths = d[i, j]
    zero = model.envelope(lengths) == 0
    assert zero.sum() == 6  # atom 0 with atoms 1, 2 and 3, both ways
    assert (lengths[zero] < CUTOFF).sum() == 4  # inside the cutoff, but weight 0

    scalar = readout(model)

    def energy_forces_gradients(edge_index, shifts):
        pos = positions.clone().requires_grad_(True)
        energy = scalar(species, pos, edge_index, shifts)
        (gradient,) = torch.autograd.grad(energy, pos, create_graph=True)
        loss = energy + gradient.pow(2).sum()  # force training differentiates twice
        parameters = list(model.parameters())
        grads = torch.autograd.grad(loss, parameters, allow_unused=True, materialize_grads=True)
        return energy.detach(), -gradient.detach(), grads

    energy, forces, grads = energy_forces_gradients(edge_index, shifts)
    assert torch.isfinite(energy) and torch.isfinite(forces).all()
    assert all(torch.isfinite(g).all() for g in grads)
    energy_kept, forces_kept, grads_kept = energy_forces_gradients(
        edge_index[:, ~zero], shifts[~zero]
    )
    torch.testing.assert_close(energy, energy_kept)
    torch.testing.assert_close(forces, forces_kept)
    for g, g_kept in zip(grads, grads_kept, strict=True):
        torch.testing.assert_close(g, g_kept, rtol=1e-4, atol=1e-4)
    assert forces.abs().max() > 1e-3  # something depends on the positions
