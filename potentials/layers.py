"""Building blocks shared by encoders and potentials: cutoff envelopes, radial bases, MLPs, scatter.

Conventions used across ``mlff.potentials`` (see ``potentials/interface.py``):
edges are directed pairs ``(i, j)`` stored as ``edge_index[0] = i`` (the centre that receives the
message) and ``edge_index[1] = j`` (the neighbour that sends it); ``edge_vectors = x_j - x_i``
(periodic image shift included) in Å.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PolynomialEnvelope(nn.Module):
    """Smooth cutoff ``u(r)``: 1 at r = 0, falling to 0 with zero slope and curvature at the cutoff.

    The DimeNet polynomial envelope of order ``p`` (continuous value, first and second derivative
    at the cutoff); exactly zero for ``r >= cutoff``. ``r`` in Å, output dimensionless.
    """

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff!r}")
        if p < 2:
            raise ValueError(f"envelope order p must be >= 2, got {p!r}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.cutoff
        value = (
            1.0
            - 0.5 * (p + 1) * (p + 2) * x.pow(p)
            + p * (p + 2) * x.pow(p + 1)
            - 0.5 * p * (p + 1) * x.pow(p + 2)
        )
        # float32 rounding of the expanded polynomial dips ~1e-6 below zero just inside the cutoff
        return torch.where(x < 1.0, value.clamp_min(0.0), torch.zeros_like(value))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


class BesselBasis(nn.Module):
    """Radial basis ``sqrt(2/c) sin(n pi r / c) / r`` for n = 1..n_basis (DimeNet); ``r`` in Å.

    Returns ``(n_edges, n_basis)``. Frequencies are trainable when ``trainable=True``.
    """

    def __init__(self, cutoff: float, n_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        if n_basis < 1:
            raise ValueError(f"n_basis must be >= 1, got {n_basis!r}")
        self.cutoff = float(cutoff)
        self.n_basis = int(n_basis)
        frequencies = math.pi * torch.arange(1, n_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r.unsqueeze(-1) / self.cutoff
        # sin(w x)/r is finite at r -> 0 (limit w/c); clamp keeps gradients finite for r = 0
        r_safe = r.unsqueeze(-1).clamp_min(1e-9)
        return self.prefactor * torch.sin(self.frequencies * x) / r_safe


def mlp(
    sizes: list[int],
    activation: type[nn.Module] = nn.SiLU,
    last_bias: bool = True,
) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between layers."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least input and output sizes, got {sizes!r}")
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        last = k == len(sizes) - 2
        layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=(last_bias or not last)))
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


def gather(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]``: rows of ``values`` (n, ...) picked by ``index`` (any shape, long) ->
    (*index.shape, ...).

    The same as advanced indexing, by ``index_select``: its backward sums with ``index_add``
    where indexing's uses ``index_put`` with accumulation, which on a CPU is several times
    slower for the (edges, features) gathers of message passing.
    """
    picked = values.index_select(0, index.reshape(-1))
    return picked.view(tuple(index.shape) + tuple(values.shape[1:]))


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` (n, ...) into ``dim_size`` rows by ``index`` (n,)."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)
