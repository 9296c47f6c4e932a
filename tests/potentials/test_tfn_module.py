"""Tests of the Tensor Field Network potential module (``mlff.potentials.tfn``), used directly."""

from __future__ import annotations

import json

import pytest
import torch
from e3nn import o3
from mlff.potentials import potential_class
from mlff.potentials.tfn import TFN, EdgeTensorProduct, from_channel_last, to_channel_last

CUTOFF = 3.0
N_SPECIES = 2
TINY = dict(features=8, num_layers=3, n_basis=6, radial_hidden=16, readout_hidden=8)
VARIANTS = [(l_max, attention) for l_max in (1, 2) for attention in (False, True)]
VARIANT_IDS = [f"l{l_max}-{'att' if attention else 'conv'}" for l_max, attention in VARIANTS]


def make_model(l_max=1, attention=False, edge_features_in=0, seed=0, **overrides) -> TFN:
    """A tiny float64 TFN with every parameter perturbed, so no symmetry bug hides in zeros."""
    torch.manual_seed(seed)
    config = dict(
        node_features_in=N_SPECIES + 1,  # != features
        edge_features_in=edge_features_in,
        cutoff=CUTOFF,
        avg_num_neighbors=3.0,
        l_max=l_max,
        attention=attention,
        **{**TINY, **overrides},
    )
    model = TFN(**config).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def neighbour_list(positions: torch.Tensor, cutoff: float = CUTOFF) -> torch.Tensor:
    """Brute-force full (both directions) neighbour list of a molecule: ``(2, E)``."""
    pos = positions.detach()
    distances = (pos[:, None] - pos[None]).norm(dim=-1)
    mask = (distances < cutoff) & ~torch.eye(len(positions), dtype=torch.bool)
    return torch.nonzero(mask).T.contiguous()


def node_features(species: torch.Tensor) -> torch.Tensor:
    """Invariant per-atom inputs: one-hot species plus a constant column."""
    one_hot = torch.nn.functional.one_hot(species, N_SPECIES).to(torch.float64)
    return torch.cat([one_hot, torch.ones(len(species), 1, dtype=torch.float64)], dim=1)


def pair_features(species: torch.Tensor, edge_index: torch.Tensor, lengths: torch.Tensor):
    """Invariant, symmetric pair features (E, 4) built from species and distances."""
    si, sj = species[edge_index[0]].double(), species[edge_index[1]].double()
    return torch.stack([si + sj, si * sj, torch.cos(lengths), lengths.pow(2) / CUTOFF**2], dim=1)


def energies(model, positions, species, edge_index=None, with_edge_features=False):
    """Per-atom energies for Cartesian ``positions``; the neighbour list is rebuilt unless given."""
    if edge_index is None:
        edge_index = neighbour_list(positions)
    vectors = positions[edge_index[1]] - positions[edge_index[0]]
    lengths = vectors.norm(dim=-1)
    features = pair_features(species, edge_index, lengths) if with_edge_features else None
    return model(node_features(species), features, edge_index, vectors, lengths)


def random_molecule(n_atoms: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positions (Å) with all pairs >= 0.9 Å apart and some beyond the cutoff."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        positions = 3.2 * torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64)
        distances = torch.pdist(positions)
        if distances.min() > 0.9 and distances.max() > CUTOFF:
            species = torch.arange(n_atoms) % N_SPECIES
            return positions, species


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    torch.manual_seed(seed)
    rotation = o3.rand_matrix(dtype=torch.float64)
    return -rotation if reflect else rotation


@pytest.mark.parametrize(("l_max", "attention"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_invariant_under_rotations_and_reflections(l_max, attention, reflect):
    model = make_model(l_max, attention)
    positions, species = random_molecule()
    reference = energies(model, positions, species)
    matrix = random_orthogonal(seed=7, reflect=reflect)
    moved = energies(model, positions @ matrix.T + torch.tensor([0.3, -1.2, 2.0]), species)
    assert reference.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(moved, reference, rtol=0, atol=1e-12)
    # and not trivially invariant: a non-rigid distortion changes the energies
    distorted = positions.clone()
    distorted[0, 0] += 0.05
    assert (energies(model, distorted, species) - reference).abs().max() > 1e-6


def test_reflection_invariance_with_both_parities():
    model = make_model(l_max=2, attention=True, full_parity=True, num_layers=4)
    assert any(ir.p != (-1) ** ir.l for _, ir in model.layers[1].irreps_out)
    positions, species = random_molecule()
    reflected = energies(model, positions @ random_orthogonal(3, reflect=True).T, species)
    torch.testing.assert_close(reflected, energies(model, positions, species), rtol=0, atol=1e-12)


def test_l_max_3_invariant():
    model = make_model(l_max=3, attention=True, num_layers=2)
    positions, species = random_molecule(seed=4)
    moved = energies(model, positions @ random_orthogonal(5, reflect=True).T, species)
    torch.testing.assert_close(moved, energies(model, positions, species), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("l_max", "attention"), VARIANTS, ids=VARIANT_IDS)
def test_permutation_equivariant(l_max, attention):
    model = make_model(l_max, attention)
    positions, species = random_molecule()
    reference = energies(model, positions, species)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = energies(model, positions[perm], species[perm])
    torch.testing.assert_close(permuted, reference[perm], rtol=0, atol=1e-12)


def cluster_with_outlier(r: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Atoms 0-4 in a compact cluster; atom 5 at distance ``r`` from atom 0 along +x, where atom
    0 is the rightmost cluster atom, so 5 can only ever be a neighbour of 0 for r near CUTOFF."""
    cluster = torch.tensor(
        [[0.0, 0.0, 0.0], [-1.1, 0.3, 0.2], [-0.6, -1.0, 0.5], [-1.0, 0.9, -0.8], [-2.0, 0.1, 0.4]],
        dtype=torch.float64,
    )
    outlier = cluster[0] + torch.tensor([r, 0.0, 0.0], dtype=torch.float64)
    return torch.cat([cluster, outlier[None]]), torch.tensor([0, 1, 0, 1, 1, 0])


@pytest.mark.parametrize(("l_max", "attention"), VARIANTS, ids=VARIANT_IDS)
def test_smooth_through_the_cutoff(l_max, attention):
    model = make_model(l_max, attention)

    def energy_and_forces(r):
        positions, species = cluster_with_outlier(r)
        positions.requires_grad_(True)
        energy = energies(model, positions, species).sum()
        (gradient,) = torch.autograd.grad(energy, positions)
        return energy.detach(), -gradient

    delta = 1e-4
    e_in, f_in = energy_and_forces(CUTOFF - delta)
    e_out, f_out = energy_and_forces(CUTOFF + delta)
    e_far, f_far = energy_and_forces(CUTOFF + 0.5)
    e_near, _ = energy_and_forces(CUTOFF - 0.5)
    assert abs(float(e_near - e_far)) > 1e-4  # the outlier does interact inside the cutoff
    assert abs(float(e_in - e_out)) < 1e-9 * max(1.0, abs(float(e_out)))
    assert (f_in - f_out).abs().max() < 1e-6
    # beyond the cutoff nothing depends on the outlier's distance
    torch.testing.assert_close(e_out, e_far, rtol=0, atol=1e-12)
    torch.testing.assert_close(f_out, f_far, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("l_max", "attention"), VARIANTS, ids=VARIANT_IDS)
def test_energy_scan_is_smooth_at_the_cutoff(l_max, attention):
    """Second differences of E(r) on a fine grid across the cutoff stay small (no kink/step)."""
    model = make_model(l_max, attention)
    rs = torch.linspace(CUTOFF - 0.01, CUTOFF + 0.01, 21, dtype=torch.float64)
    with torch.no_grad():
        e = torch.stack([energies(model, *cluster_with_outlier(float(r))).sum() for r in rs])
    h = float(rs[1] - rs[0])
    second = (e[2:] - 2 * e[1:-1] + e[:-2]) / h**2  # ~ E''(r); a kink would give ~ jump / h
    assert (second[1:] - second[:-1]).abs().max() < 1e-2
    assert second[9].abs() < 1e-3  # E'' -> 0 at the cutoff (r = rs[10])
    assert (e[11:] - e[-1]).abs().max() < 1e-12  # constant beyond


@pytest.mark.parametrize(("l_max", "attention"), VARIANTS, ids=VARIANT_IDS)
def test_forces_match_finite_differences(l_max, attention):
    model = make_model(l_max, attention, edge_features_in=4, num_layers=2)
    positions, species = random_molecule(n_atoms=5, seed=2)
    edge_index = neighbour_list(positions)  # fixed: perturbations must not change the graph
    margin = (torch.pdist(positions) - CUTOFF).abs().min()
    assert margin > 1e-3

    def per_atom(pos):
        return energies(model, pos, species, edge_index, with_edge_features=True)

    assert torch.autograd.gradcheck(per_atom, (positions.clone().requires_grad_(True),), eps=1e-6)


@pytest.mark.parametrize("attention", [False, True])
def test_edge_features_are_used_and_invariant(attention):
    model = make_model(l_max=1, attention=attention, edge_features_in=4)
    positions, species = random_molecule()
    reference = energies(model, positions, species, with_edge_features=True)
    rotated = positions @ random_orthogonal(11, reflect=True).T
    torch.testing.assert_close(
        energies(model, rotated, species, with_edge_features=True), reference, rtol=0, atol=1e-12
    )
    edge_index = neighbour_list(positions)
    vectors = positions[edge_index[1]] - positions[edge_index[0]]
    lengths = vectors.norm(dim=-1)
    features = pair_features(species, edge_index, lengths)
    changed = model(node_features(species), features * 1.5, edge_index, vectors, lengths)
    assert (changed - reference).abs().max() > 1e-6
    with pytest.raises(ValueError, match="edge features"):
        model(node_features(species), None, edge_index, vectors, lengths)


def test_float32_runs_and_agrees_with_float64():
    model = make_model(l_max=2, attention=True)
    positions, species = random_molecule()
    reference = energies(model, positions, species)
    model32 = model.to(torch.float32)
    assert all(b.dtype == torch.float32 for b in model32.buffers() if b.is_floating_point())
    edge_index = neighbour_list(positions)
    pos32 = positions.float().requires_grad_(True)
    vectors = pos32[edge_index[1]] - pos32[edge_index[0]]
    out = model32(node_features(species).float(), None, edge_index, vectors, vectors.norm(dim=-1))
    assert out.dtype == torch.float32 and out.shape == (6,)
    (gradient,) = torch.autograd.grad(out.sum(), pos32)
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(out.double(), reference, rtol=1e-4, atol=1e-4)


def test_isolated_atoms_and_empty_graph():
    model = make_model(l_max=2, attention=True)
    positions = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]], dtype=torch.float64)
    species = torch.tensor([0, 1])
    out = energies(model, positions, species)
    assert out.shape == (2,) and torch.isfinite(out).all()
    assert out[0] != out[1]  # species still matter without neighbours


def test_attention_with_zero_logits_is_the_plain_convolution():
    plain = make_model(l_max=1, attention=False)
    attention = make_model(l_max=1, attention=True)
    missing, unexpected = attention.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(".query." in name for name in missing)
    with torch.no_grad():
        for layer in attention.layers:
            for p in layer.query.parameters():
                p.zero_()
    positions, species = random_molecule()
    torch.testing.assert_close(
        energies(attention, positions, species),
        energies(plain, positions, species),
        rtol=1e-7,
        atol=1e-8,
    )


@pytest.mark.parametrize("l_max", [1, 2, 3])
@pytest.mark.parametrize("kind", ["first", "middle", "last"])
def test_edge_tensor_product_equals_e3nn(l_max, kind):
    """The fused channel-last tensor product is e3nn's 'uvu' ``o3.TensorProduct``."""
    mul = 3
    hidden = o3.Irreps([(mul, (l, (-1) ** l)) for l in range(l_max + 1)])
    irreps_in = o3.Irreps(f"{mul}x0e") if kind == "first" else hidden
    allowed = {o3.Irrep("0e")} if kind == "last" else {ir for _, ir in hidden}
    irreps_sh = o3.Irreps.spherical_harmonics(l_max)
    fused = EdgeTensorProduct(irreps_in, irreps_sh, allowed).to(torch.float64)
    reference = o3.TensorProduct(
        irreps_in,
        irreps_sh,
        fused.irreps_out,
        fused.instructions,
        shared_weights=False,
        internal_weights=False,
    ).to(torch.float64)
    n_edges = 7
    x = torch.randn(n_edges, irreps_in.dim, dtype=torch.float64)
    sh = torch.randn(n_edges, irreps_sh.dim, dtype=torch.float64)
    weight = torch.randn(n_edges, reference.weight_numel, dtype=torch.float64)
    # e3nn orders the weights instruction by instruction, channel fastest: (E, paths, mul)
    out = fused(to_channel_last(x, irreps_in), sh, weight.view(n_edges, -1, mul))
    expected = reference(x, sh, weight)
    torch.testing.assert_close(from_channel_last(out, fused.irreps_out), expected)
    torch.testing.assert_close(to_channel_last(expected, fused.irreps_out), out)


def test_registry_and_plain_config():
    assert potential_class("tfn") is TFN
    config = dict(node_features_in=4, edge_features_in=0, cutoff=4.0, l_max=2, attention=True)
    config = json.loads(json.dumps(config))
    model = TFN(**config)
    assert sum(p.numel() for p in model.parameters()) > 0
    for bad in (dict(l_max=-1), dict(features=0), dict(aggregation="max")):
        with pytest.raises(ValueError):
            TFN(**{**config, **bad})


def test_sqrt_aggregation_scales_messages():
    mean = make_model(l_max=1, aggregation="mean")
    sqrt = make_model(l_max=1, aggregation="sqrt")
    assert mean.inv_norm == pytest.approx(1 / 3.0) and sqrt.inv_norm == pytest.approx(3.0**-0.5)
