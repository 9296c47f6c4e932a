"""The fused CPU kernels (mlff.potentials.fused) against the op-by-op reference, in float64:
values and every input gradient of the message and geometry kernels, and whole EGNNs against
the per-edge equations. Skipped where the kernels cannot be built (no C++ compiler)."""

from __future__ import annotations

import pytest
import torch
from mlff.potentials import fused, kernels
from mlff.potentials.egnn_fused import fused_applies
from mlff.potentials.harmonics import harmonic_matrix, real_harmonics
from mlff.potentials.layers import BesselBasis, PolynomialEnvelope
from test_egnn_module import CUTOFF, OPTIONS, cluster, energy_and_forces, make_egnn, naive_energies

pytestmark = pytest.mark.skipif(
    kernels.library() is None, reason="the fused kernels could not be built (no C++ compiler?)"
)
F64 = torch.float64


def reference_edge_sums(centre, neighbour, radial, envelope, harmonics, ptr, nbr, weight, linear,
                        gate):  # fmt: skip
    """The message block and its sums, term by term."""
    counts = ptr[1:] - ptr[:-1]
    centres = torch.repeat_interleave(torch.arange(len(counts)), counts)
    pre = centre[centres] + neighbour[nbr] + radial @ weight.T
    u = torch.nn.functional.silu(linear(torch.nn.functional.silu(pre)))
    message = u * torch.sigmoid(gate(u)) * envelope[:, None]
    aggregated = torch.zeros_like(centre).index_add(0, centres, message)
    if harmonics is None:
        return aggregated, None
    outer = harmonics[:, :, None] * message[:, None, :]
    summed = centre.new_zeros((len(counts),) + outer.shape[1:]).index_add(0, centres, outer)
    return aggregated, summed


def random_edges(n_atoms: int, n_neighbours: int, features: int, n_basis: int, n_harmonics: int):
    """Inputs of the message kernel: uneven neighbour counts (some atoms none), weights."""
    generator = torch.Generator().manual_seed(features + n_basis + n_harmonics)
    counts = torch.randint(0, n_atoms, (n_atoms,), generator=generator) % (n_neighbours + 1)
    counts[0] = 0
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    n_edges = int(ptr[-1])
    nbr = torch.randint(0, n_atoms + 3, (n_edges,), generator=generator)  # more neighbour rows

    def normal(*shape):
        return torch.randn(*shape, generator=generator, dtype=F64)

    inputs = [normal(n_atoms, features), normal(n_atoms + 3, features), normal(n_edges, n_basis),
              torch.rand(n_edges, generator=generator, dtype=F64),
              normal(n_edges, n_harmonics) if n_harmonics else None]  # fmt: skip
    weight = normal(features, n_basis) / n_basis**0.5
    linear = torch.nn.Linear(features, features, dtype=F64).requires_grad_(False)
    gate = torch.nn.Linear(features, 1, dtype=F64).requires_grad_(False)
    return inputs, ptr, nbr, weight, linear, gate


def compare_and_probe(outputs, references, atol: float):
    """Assert each output equals its reference (both None, or close to ``atol``); return the
    two losses ``sum(output * probe)`` over the outputs, one random probe per output."""
    loss, reference_loss = 0.0, 0.0
    for output, reference in zip(outputs, references, strict=True):
        if reference is None:
            assert output is None
            continue
        torch.testing.assert_close(output, reference, rtol=0, atol=atol)
        probe = torch.randn_like(reference)
        loss = loss + (output * probe).sum()
        reference_loss = reference_loss + (reference * probe).sum()
    return loss, reference_loss


@pytest.mark.parametrize("features", fused.FEATURES)
@pytest.mark.parametrize("n_harmonics", [0, 3, 15])
@pytest.mark.parametrize("n_basis", [6, 20])  # 20: past the kernel's small-product width
@pytest.mark.parametrize("threads", [1, 2])
def test_message_kernel_equals_reference(features, n_harmonics, n_basis, threads):
    inputs, ptr, nbr, weight, linear, gate = random_edges(23, 9, features, n_basis, n_harmonics)
    given = [x if x is None else x.clone().requires_grad_(True) for x in inputs]
    expected = [x if x is None else x.clone().requires_grad_(True) for x in inputs]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        outputs = fused.edge_sums(*given, ptr, nbr, weight, linear, gate)
    finally:
        torch.set_num_threads(previous)
    references = reference_edge_sums(*expected, ptr, nbr, weight, linear, gate)
    loss, reference_loss = compare_and_probe(outputs, references, atol=1e-12)
    used = [x for x in given if x is not None]
    gradients = torch.autograd.grad(loss, used)
    reference_gradients = torch.autograd.grad(
        reference_loss, [x for x in expected if x is not None]
    )
    for gradient, reference in zip(gradients, reference_gradients, strict=True):
        torch.testing.assert_close(gradient, reference, rtol=0, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_message_kernel_saturated_activations_stay_finite(dtype):
    """Pre-activations of +-1e3 (exp overflowing a float) give the reference's values."""
    inputs, ptr, nbr, weight, linear, gate = random_edges(19, 7, 16, 6, 3)
    inputs = [None if x is None else (300.0 * x).to(dtype) for x in inputs]
    weight, linear, gate = weight.to(dtype), linear.to(dtype), gate.to(dtype)
    outputs = fused.edge_sums(*inputs, ptr, nbr, weight, linear, gate)
    references = reference_edge_sums(*inputs, ptr, nbr, weight, linear, gate)
    for output, reference in zip(outputs, references, strict=True):
        assert torch.isfinite(output).all()
        scale = float(reference.abs().max())
        tolerance = 1e-12 if dtype == F64 else 1e-5
        torch.testing.assert_close(output, reference, rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("p", [5, 6])
def test_geometry_kernel_equals_the_modules(order, p):
    generator = torch.Generator().manual_seed(order + 10 * p)
    directions = torch.randn(300, 3, generator=generator, dtype=F64)
    lengths = 0.3 + 1.2 * CUTOFF * torch.rand(300, generator=generator, dtype=F64)  # some beyond
    vectors = directions / directions.norm(dim=-1, keepdim=True) * lengths[:, None]
    basis = BesselBasis(CUTOFF, 7).to(F64)
    envelope = PolynomialEnvelope(CUTOFF, p)
    matrix = harmonic_matrix(order) if order else None
    given = [vectors.clone().requires_grad_(True), lengths.clone().requires_grad_(True)]
    expected = [vectors.clone().requires_grad_(True), lengths.clone().requires_grad_(True)]
    outputs = fused.edge_geometry(*given, basis, envelope, matrix)
    references = [basis(expected[1]), envelope(expected[1])]
    unit = expected[0] / expected[1][:, None]
    references.append(real_harmonics(unit, order, matrix) if order else None)
    assert outputs[1][lengths >= CUTOFF].eq(0).all()
    loss, reference_loss = compare_and_probe(outputs, references, atol=1e-13)
    gradients = torch.autograd.grad(loss, given)
    reference_gradients = torch.autograd.grad(reference_loss, expected, allow_unused=True)
    for gradient, reference in zip(gradients, reference_gradients, strict=True):
        reference = torch.zeros_like(gradient) if reference is None else reference  # order 0
        torch.testing.assert_close(gradient, reference, rtol=0, atol=1e-11)


# the option sets with fixed coordinates (the kernels' case)
FIXED = {
    name: {**options, "coordinate_updates": False}
    for name, options in OPTIONS.items()
    if "coords" not in name
}


@pytest.mark.parametrize("name", sorted(FIXED))
@pytest.mark.parametrize("edge_features_in", [0, 3])
def test_fused_egnn_equals_the_per_edge_equations(name, edge_features_in, monkeypatch):
    model = make_egnn(edge_features_in, features=16, **FIXED[name]).requires_grad_(False)
    calls = []
    original = fused.edge_sums
    monkeypatch.setattr(fused, "edge_sums", lambda *a: (calls.append(1), original(*a))[1])
    positions, pairs = cluster(n_atoms=17)
    nodes = torch.randn(positions.shape[0], 5, dtype=F64)
    edges = torch.randn(pairs.shape[1], 3, dtype=F64) if edge_features_in else None
    assert fused_applies(model, F64, torch.device("cpu"))

    def fast(vectors):
        return model(nodes, edges, pairs, vectors, vectors.norm(dim=-1))

    def naive(vectors):
        return naive_energies(model, nodes, edges, pairs, vectors)

    energy, forces = energy_and_forces(fast, positions, pairs)
    assert len(calls) == len(model.layers)  # every layer ran in the kernel
    energy_ref, forces_ref = energy_and_forces(naive, positions, pairs)
    # round-off: the many-body invariants make forces of order 1e3 here
    torch.testing.assert_close(energy, energy_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(forces, forces_ref, rtol=1e-10, atol=1e-10)


def test_training_and_force_derivatives_take_the_reference_path():
    """Trainable weights, or a pass that differentiates the forces, never use the kernels (they
    give neither weight gradients nor second derivatives)."""
    model = make_egnn(features=16, **FIXED["preset"])
    cpu = torch.device("cpu")
    assert not fused_applies(model, F64, cpu)  # weights with gradients
    model.requires_grad_(False)
    assert fused_applies(model, F64, cpu)
    with fused.reference_path():
        assert not fused_applies(model, F64, cpu)
    assert fused_applies(model, F64, cpu)
    model.use_fused = False
    assert not fused_applies(model, F64, cpu)


def test_switched_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("MLFF_FUSED_KERNELS", "0")
    assert not kernels.available(F64, torch.device("cpu"))
    model = make_egnn(features=16, **FIXED["preset"]).requires_grad_(False)
    assert not fused_applies(model, F64, torch.device("cpu"))


def test_without_a_compiler_the_reference_path_runs(monkeypatch, tmp_path):
    """A failed build warns once and leaves the kernels unavailable, nothing raised."""
    monkeypatch.setenv("MLFF_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    kernels.library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="could not be built"):
            assert kernels.library() is None
        assert not kernels.available(F64, torch.device("cpu"))
    finally:
        monkeypatch.undo()
        kernels.library.cache_clear()
    assert kernels.library() is not None


def test_the_calculator_runs_the_training_preset_through_the_kernels(monkeypatch):
    """The physics suite's preset EGNN ("egnn-preset") takes the fused path through
    MLFFCalculator, with the reference path's energies, forces and stress."""
    from mlff import MLFFCalculator
    from tests.conftest import ethanol, tiny_model, triclinic_cell

    calls = []
    original = fused.edge_sums
    monkeypatch.setattr(fused, "edge_sums", lambda *a: (calls.append(1), original(*a))[1])
    calculator = MLFFCalculator(tiny_model("egnn-preset"), dtype="float64", compile="none")
    for atoms in (ethanol(), triclinic_cell()):
        atoms.calc = calculator
        properties = ["energy", "forces"] + (["stress"] if atoms.pbc.all() else [])
        calculator.calculate(atoms, properties)
        fast = {key: calculator.results[key] for key in properties}
        calculator.model.potential.use_fused = False
        calculator.calculate(atoms, properties)
        calculator.model.potential.use_fused = True
        for key in properties:
            torch.testing.assert_close(
                torch.as_tensor(fast[key]), torch.as_tensor(calculator.results[key]),
                rtol=1e-10, atol=1e-12,
            )  # fmt: skip
    assert calls


def test_mixed_dtypes_are_refused_before_the_kernel_reads_memory():
    inputs, ptr, nbr, weight, linear, gate = random_edges(11, 5, 16, 6, 3)
    inputs[2] = inputs[2].float()  # float32 radial features among float64 tensors
    with pytest.raises(TypeError, match="mixed dtypes"):
        fused.edge_sums(*inputs, ptr, nbr, weight, linear, gate)
    inputs, ptr, nbr, weight, linear, gate = random_edges(11, 5, 16, 6, 3)
    with pytest.raises(TypeError, match="int64"):
        fused.edge_sums(*inputs, ptr.int(), nbr, weight, linear, gate)
