"""The EGNN's per-edge work as fused CPU kernels (:mod:`.kernels`): geometry and edge sums.

Evaluated op by op, each layer streams a dozen (edges, F) tensors through memory in the forward
and the backward pass; once they outgrow the last-level cache (about 10^4 atoms) every op runs
at main-memory speed, and the cost per atom grows with the cell. The message kernel
(``kernels/egnn_messages.cpp``) walks the edges of one centre atom at a time through the message
MLP, the gate, the sum and the sums along the harmonics, and in the backward pass recomputes
them, so no per-edge intermediate is written: the cost per atom stays flat, and fewer passes
make it faster at every size. The geometry kernel (``kernels/egnn_geometry.cpp``) gives the
radial basis, envelope and harmonics of every edge, and their gradient, in one pass each.

Exact: the same arithmetic in another order (round-off only; ``tests/test_fused_kernels.py``
compares both with the op-by-op reference). Inference only: no weight gradients and no second
derivatives (training keeps the reference path). ``torch.get_num_threads()`` OpenMP threads
(torch's own pool) share each call: centre-atom ranges with about equal edges, or equal edge
ranges.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

from .kernels import SUFFIX, library

# hidden widths the message kernel is instantiated for (its register tiles need the width)
FEATURES = (16, 32, 64, 128)
_REFERENCE_ONLY = contextvars.ContextVar("mlff_fused_reference_only", default=False)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within this context models take their reference path, not the fused kernels: for
    derivatives of the forces (``create_graph=True``), which the kernels do not give."""
    token = _REFERENCE_ONLY.set(True)
    try:
        yield
    finally:
        _REFERENCE_ONLY.reset(token)


def reference_only() -> bool:
    """Whether :func:`reference_path` is in force."""
    return _REFERENCE_ONLY.get()


def thread_ranges(ptr: torch.Tensor, parts: int | None = None) -> torch.Tensor:
    """(parts + 1,) bounds of ``parts`` (default ``torch.get_num_threads()``) consecutive
    centre-atom ranges with about equal edges (``ptr``: CSR offsets), one per thread; some may
    be empty. Tensor ops only: nothing is read back as a Python number (the batched MD engines'
    steps forbid that)."""
    parts = max(1, torch.get_num_threads()) if parts is None else parts
    n_atoms = len(ptr) - 1
    fractions = torch.arange(1, parts, dtype=torch.float64) / parts
    inner = torch.searchsorted(ptr, (fractions * ptr[-1]).to(ptr.dtype)).clamp_(0, n_atoms)
    return torch.cat([ptr.new_zeros(1), inner, ptr.new_full((1,), n_atoms)])


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _check(code: int) -> None:
    if code:
        what = {1: "feature width", 2: "number of harmonics (at most 16)"}.get(code, "input")
        raise RuntimeError(f"mlff fused kernel: unsupported {what}")


class _Weights:
    """One layer's weights, laid out as the kernel reads them (contiguous, its dtype)."""

    def __init__(self, radial: torch.Tensor, linear: torch.nn.Linear, gate: torch.nn.Linear):
        self.WrT = radial.detach().t().contiguous()  # (B, F)
        self.W2 = linear.weight.detach().contiguous()  # (F out, F in)
        self.W2T = self.W2.t().contiguous()
        self.b2 = linear.bias.detach().contiguous()
        self.g = gate.weight.detach()[0].contiguous()
        self.gb = gate.bias.detach().contiguous()  # (1,): read by the kernel, not here

    def addresses(self) -> list:
        tensors = (self.WrT, self.W2T, self.W2, self.b2, self.g, self.gb)
        return [t.data_ptr() for t in tensors]


class _FusedEdgeSums(torch.autograd.Function):
    @staticmethod
    def forward(ctx, centre, neighbour, radial, envelope, harmonics, ptr, nbr, weights, cuts):
        n, features = centre.shape
        n_harmonics = 0 if harmonics is None else harmonics.shape[1]
        aggregated = centre.new_empty((n, features))
        summed = centre.new_empty((n, n_harmonics, features)) if n_harmonics else None
        kernel = getattr(library(), f"mlff_messages_forward_{SUFFIX[centre.dtype]}")
        _check(kernel(cuts.data_ptr(), len(cuts) - 1,
                      *_inputs(centre, neighbour, radial, envelope, harmonics, ptr, nbr, weights),
                      aggregated.data_ptr(), _address(summed)))  # fmt: skip
        ctx.save_for_backward(centre, neighbour, radial, envelope, harmonics, ptr, nbr, cuts)
        ctx.weights = weights
        return (aggregated, summed) if n_harmonics else (aggregated,)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_aggregated, grad_summed=None):
        centre, neighbour, radial, envelope, harmonics, ptr, nbr, cuts = ctx.saved_tensors
        n, features = centre.shape
        if grad_aggregated is None:
            grad_aggregated = centre.new_zeros((n, features))
        if harmonics is not None and grad_summed is None:
            grad_summed = centre.new_zeros((n, harmonics.shape[1], features))
        grad_aggregated = grad_aggregated.contiguous()
        grad_summed = None if grad_summed is None else grad_summed.contiguous()
        grad_centre = torch.empty_like(centre)
        # one neighbour gradient per thread (a thread's neighbours are anyone's), summed after
        parts = len(cuts) - 1
        grad_neighbour = neighbour.new_zeros((parts,) + tuple(neighbour.shape))
        grad_radial = torch.empty_like(radial)
        grad_envelope = torch.empty_like(envelope)
        grad_harmonics = None if harmonics is None else torch.empty_like(harmonics)
        kernel = getattr(library(), f"mlff_messages_backward_{SUFFIX[centre.dtype]}")
        inputs = _inputs(centre, neighbour, radial, envelope, harmonics, ptr, nbr, ctx.weights)
        _check(kernel(cuts.data_ptr(), parts, *inputs, grad_aggregated.data_ptr(),
                      _address(grad_summed), grad_centre.data_ptr(), neighbour.shape[0],
                      grad_neighbour.data_ptr(), grad_radial.data_ptr(),
                      grad_envelope.data_ptr(), _address(grad_harmonics)))  # fmt: skip
        grad_neighbour = grad_neighbour.sum(0) if parts > 1 else grad_neighbour[0]
        return (grad_centre, grad_neighbour, grad_radial, grad_envelope, grad_harmonics,
                None, None, None, None)  # fmt: skip


def _inputs(centre, neighbour, radial, envelope, harmonics, ptr, nbr, weights) -> list:
    """The kernel arguments from ``ptr`` to the gate bias (pointers and sizes)."""
    return [ptr.data_ptr(), nbr.data_ptr(), centre.shape[1], radial.shape[1],
            0 if harmonics is None else harmonics.shape[1], centre.data_ptr(),
            neighbour.data_ptr(), radial.data_ptr(), envelope.data_ptr(), _address(harmonics),
            *weights.addresses()]  # fmt: skip


def edge_sums(
    centre: torch.Tensor,
    neighbour: torch.Tensor,
    radial: torch.Tensor,
    envelope: torch.Tensor,
    harmonics: torch.Tensor | None,
    ptr: torch.Tensor,
    nbr: torch.Tensor,
    radial_weight: torch.Tensor,
    linear: torch.nn.Linear,
    gate: torch.nn.Linear,
    cuts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Unnormalised edge sums of one EGNN layer, edges sorted by centre.

    ``centre`` (n, F) and ``neighbour`` (n_atoms, F): the first message layer's ``h_i`` and
    ``h_j`` blocks per atom; ``radial`` (e, B): the radial features (Bessel basis and pair
    features) whose block is ``radial_weight`` (F, B); ``envelope`` (e,); ``harmonics`` (e, M) or
    None; ``ptr`` (n + 1,) CSR offsets of each centre's edges and ``nbr`` (e,) their neighbours
    (long, on the CPU); ``linear``/``gate``: the second message layer and the gate; ``cuts``:
    :func:`thread_ranges` of ``ptr`` (made here when None). Returns the sum of the messages per
    centre (n, F) and their sums along the harmonics (n, M, F) or None.
    """
    contiguous = [t if t is None else t.contiguous() for t in (centre, neighbour, radial,
                  envelope, harmonics)]  # fmt: skip
    weights = _Weights(radial_weight, linear, gate)
    # the kernel reads raw memory: every float in one dtype, indices as int64
    floats = [t for t in contiguous if t is not None] + [weights.W2, weights.WrT, weights.gb]
    if any(t.dtype != centre.dtype for t in floats) or {ptr.dtype, nbr.dtype} != {torch.long}:
        raise TypeError("mlff fused kernel: mixed dtypes or non-int64 indices")
    cuts = thread_ranges(ptr) if cuts is None else cuts
    outputs = _FusedEdgeSums.apply(*contiguous, ptr.contiguous(), nbr.contiguous(), weights, cuts)
    return outputs[0], (outputs[1] if len(outputs) > 1 else None)


class _FusedGeometry(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vectors, lengths, basis, envelope, matrix):
        n_edges = lengths.shape[0]
        n_basis = basis.frequencies.shape[0]
        order = 0 if matrix is None else {3: 1, 12: 2, 39: 3}[matrix.shape[0]]
        n_harmonics = 0 if matrix is None else matrix.shape[1]
        radial = lengths.new_empty((n_edges, n_basis))
        smooth = lengths.new_empty((n_edges,))
        harmonics = lengths.new_empty((n_edges, n_harmonics)) if n_harmonics else None
        constants = _GeometryConstants(basis, envelope, matrix, order, n_harmonics)
        kernel = getattr(library(), f"mlff_geometry_forward_{SUFFIX[lengths.dtype]}")
        kernel(n_edges, max(1, torch.get_num_threads()), vectors.data_ptr(), lengths.data_ptr(),
               *constants.arguments(), radial.data_ptr(), smooth.data_ptr(),
               _address(harmonics))  # fmt: skip
        ctx.save_for_backward(vectors, lengths)
        ctx.constants = constants
        return radial, smooth, harmonics

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_radial, grad_smooth, grad_harmonics):
        vectors, lengths = ctx.saved_tensors
        constants = ctx.constants
        n_edges = lengths.shape[0]
        if grad_radial is None:
            grad_radial = lengths.new_zeros((n_edges, constants.n_basis))
        if grad_smooth is None:
            grad_smooth = torch.zeros_like(lengths)
        if constants.n_harmonics and grad_harmonics is None:
            grad_harmonics = lengths.new_zeros((n_edges, constants.n_harmonics))
        grads = [g if g is None else g.contiguous() for g in (grad_radial, grad_smooth,
                 grad_harmonics)]  # fmt: skip
        grad_vectors, grad_lengths = torch.empty_like(vectors), torch.empty_like(lengths)
        kernel = getattr(library(), f"mlff_geometry_backward_{SUFFIX[lengths.dtype]}")
        kernel(n_edges, max(1, torch.get_num_threads()), vectors.data_ptr(), lengths.data_ptr(),
               *constants.arguments(), *map(_address, grads), grad_vectors.data_ptr(),
               grad_lengths.data_ptr())  # fmt: skip
        return grad_vectors, grad_lengths, None, None, None


class _GeometryConstants:
    """The radial basis', envelope's and harmonics' constants as the geometry kernel reads them."""

    def __init__(self, basis, envelope, matrix, order: int, n_harmonics: int) -> None:
        self.frequencies = basis.frequencies.detach().to(torch.float64).contiguous()
        self.n_basis = int(self.frequencies.shape[0])
        self.cutoff, self.prefactor = float(basis.cutoff), float(basis.prefactor)
        self.p, self.order, self.n_harmonics = int(envelope.p), order, n_harmonics
        # the harmonics' matrix by its non-zero entries: (monomial row, harmonic), coefficient
        self.terms = self.coefficients = None
        if matrix is not None:
            dense = matrix.detach().to(device="cpu", dtype=torch.float64)
            self.terms = dense.nonzero().contiguous()
            self.coefficients = dense[self.terms[:, 0], self.terms[:, 1]].contiguous()
        if float(envelope.cutoff) != self.cutoff:
            raise ValueError("the fused geometry needs one cutoff for basis and envelope")

    def arguments(self) -> list:
        n_terms = 0 if self.terms is None else self.terms.shape[0]
        return [self.n_basis, self.frequencies.data_ptr(), self.cutoff, self.prefactor, self.p,
                self.order, self.n_harmonics, n_terms, _address(self.terms),
                _address(self.coefficients)]  # fmt: skip


def edge_geometry(
    vectors: torch.Tensor,
    lengths: torch.Tensor,
    basis,
    envelope,
    matrix: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The Bessel basis (e, n_basis) of ``basis`` (:class:`~.layers.BesselBasis`), the envelope
    (e,) of ``envelope`` (:class:`~.layers.PolynomialEnvelope`, the same cutoff) and, with
    ``matrix`` (:func:`~.harmonics.harmonic_matrix`), the real harmonics (e, M) of
    ``vectors / lengths``: edge vectors (e, 3) and lengths (e,) in Å."""
    return _FusedGeometry.apply(vectors.contiguous(), lengths.contiguous(), basis, envelope,
                                matrix)  # fmt: skip
