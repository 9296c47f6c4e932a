"""The edge tensor product of the TFN potential, in a channel-last layout.

:class:`EdgeTensorProduct` is e3nn's ``o3.TensorProduct(..., shared_weights=False)`` with 'uvu'
instructions (Clebsch-Gordan coefficients from ``o3.wigner_3j``, e3nn's 'component'/'element'
normalisation; the tests check it equals ``o3.TensorProduct``), but it sums all paths that end in
the same irrep (the radial weights stay per path) and evaluates everything in a channel-last
layout with a few large kernels (faster than ``o3.TensorProduct`` with one output block per
path; timings in ``docs/measurements.md``).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

Layout = tuple[tuple[int, int], ...]  # (mul, 2l + 1) per irrep: plain ints a compiler can read


def irreps_layout(irreps: o3.Irreps | Layout) -> Layout:
    """``((mul, 2l + 1), ...)`` of ``irreps``; forward passes use this rather than an Irreps
    (``len(Irreps)`` raises, which a compiler's guards call)."""
    if not isinstance(irreps, o3.Irreps):  # (an Irreps is a tuple too)
        return irreps
    return tuple((mul, ir.dim) for mul, ir in irreps)


def to_channel_last(x: torch.Tensor, irreps: o3.Irreps | Layout) -> torch.Tensor:
    """e3nn layout ``(n, sum mul * (2l+1))`` -> ``(n, sum (2l+1), mul)`` (all muls equal)."""
    layout = irreps_layout(irreps)
    n = x.shape[0]
    if len(layout) == 1:
        mul, dim = layout[0]
        return x.view(n, mul, dim).transpose(1, 2)
    # split, not slices: the backward of a slice fills a zero tensor the size of the whole input
    chunks = x.split([mul * dim for mul, dim in layout], dim=1)
    blocks = [
        chunk.view(n, mul, dim).transpose(1, 2)
        for (mul, dim), chunk in zip(layout, chunks, strict=True)
    ]
    return torch.cat(blocks, dim=1)


def from_channel_last(x: torch.Tensor, irreps: o3.Irreps | Layout) -> torch.Tensor:
    """Inverse of :func:`to_channel_last`: ``(n, sum (2l+1), mul)`` -> e3nn layout."""
    layout = irreps_layout(irreps)
    n = x.shape[0]
    if len(layout) == 1:
        mul, dim = layout[0]
        return x.transpose(1, 2).reshape(n, mul * dim)
    chunks = x.split([dim for _, dim in layout], dim=1)
    blocks = [
        chunk.transpose(1, 2).reshape(n, mul * dim)
        for (mul, dim), chunk in zip(layout, chunks, strict=True)
    ]
    return torch.cat(blocks, dim=1)


class EdgeTensorProduct(nn.Module):
    """The TFN edge filter: 'uvu' tensor product of ``x_j`` with ``Y(r_ij)``, weights per edge.

    Mathematically ``e3nn.o3.TensorProduct(irreps_in, irreps_sh, irreps_out, instructions,
    shared_weights=False)`` with the ``instructions`` attribute (every path ``l1 x l2 -> l3`` with
    ``l3`` in ``allowed``, all paths into the same ``l3`` summed, 'component' irrep and 'element'
    path normalisation, so Clebsch-Gordan blocks ``wigner_3j * sqrt((2 l3 + 1) / fan_in)``), but
    evaluated in a channel-last layout with a few large kernels instead of one per path:

        z[e, (p, m1), u]   = w[e, p, u] x[e, m1(p), u]         (one broadcast multiply per p)
        B[e, m3, (p, m1)]  = sum_m2 CG[m2, m3, (p, m1)] Y[e, m2]                 (one matmul)
        out[e, m3, u]      = sum_(p, m1) B[e, m3, (p, m1)] z[e, (p, m1), u]  (one bmm per l3)

    where the last line runs over the paths ``p`` into each ``l3`` only (so the batched matmuls
    carry no structural zeros) unless a single dense one is at most twice the work. Shapes: ``x``
    (E, sum_l1 (2 l1 + 1), mul), ``sh`` (E, irreps_sh.dim), ``weight`` (E, n_paths, mul) in
    e3nn's weight order -> (E, sum_l3 (2 l3 + 1), mul). All input irreps must have the same
    multiplicity.
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, allowed: set) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_sh = o3.Irreps(irreps_sh)
        muls = {mul for mul, _ in self.irreps_in}
        if len(muls) != 1:
            raise ValueError(f"all input irreps need the same multiplicity, got {self.irreps_in}")
        self.mul = muls.pop()
        paths = [
            (i_in, i_sh, ir_out)
            for i_in, (_, ir_in) in enumerate(self.irreps_in)
            for i_sh, (_, ir_sh) in enumerate(self.irreps_sh)
            for ir_out in ir_in * ir_sh
            if ir_out in allowed
        ]
        if not paths:
            raise ValueError(f"no tensor-product path from {self.irreps_in} into {allowed}")
        outs = sorted({ir for _, _, ir in paths})
        self.irreps_out = o3.Irreps([(self.mul, ir) for ir in outs])
        self.instructions = [(a, b, outs.index(ir), "uvu", True) for a, b, ir in paths]
        self.n_paths = len(paths)
        sh_slices = self.irreps_sh.slices()

        self.in_dims = [ir.dim for _, ir in self.irreps_in]
        # contracted output irrep by output irrep: (2 l3 + 1, rows of z, [(path, input irrep)])
        # per output irrep or, where those blocks would fill at least half of the dense
        # (sum_l3 (2 l3 + 1), rows) matrix anyway, as one dense batched matmul
        members = {ir: [k for k, path in enumerate(paths) if path[2] == ir] for ir in outs}
        sizes = {ir: sum(self.irreps_in[paths[k][0]].ir.dim for k in members[ir]) for ir in outs}
        sparse = sum(ir.dim * sizes[ir] for ir in outs)
        cheap = all(ir.dim == 1 or sizes[ir] == 1 for ir in outs)
        dense_size = (self.irreps_out.dim // self.mul) * sum(sizes.values())
        groups = [outs] if not cheap and 2 * sparse >= dense_size else [[ir] for ir in outs]
        self.out_groups: list[tuple[int, int, list[tuple[int, int]]]] = []
        blocks = []
        # the tables are built on the CPU even under another default device (the meta
        # device, on which model files are checked against their config, cannot run them)
        with torch.device("cpu"):
            for group in groups:
                dim = sum(ir.dim for ir in group)
                n_rows = sum(sizes[ir] for ir in group)
                cg = torch.zeros(self.irreps_sh.dim, dim, n_rows, dtype=torch.float64)
                column = 0
                ks = sorted(k for ir in group for k in members[ir])
                for k in ks:
                    a, b, ir_out = paths[k]
                    ir_in, ir_sh = self.irreps_in[a].ir, self.irreps_sh[b].ir
                    block = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64)
                    block = block * math.sqrt(ir_out.dim / len(members[ir_out]))
                    out = sum(ir.dim for ir in group[: group.index(ir_out)])
                    cg[sh_slices[b], out : out + ir_out.dim, column : column + ir_in.dim] = (
                        block.permute(1, 2, 0)
                    )
                    column += ir_in.dim
                blocks.append(cg.reshape(self.irreps_sh.dim, -1))
                self.out_groups.append((dim, n_rows, [(k, paths[k][0]) for k in ks]))
        self.b_sizes = [dim * n_rows for dim, n_rows, _ in self.out_groups]
        # kept in float64 and cast once per (dtype, device), not as a buffer: a buffer made in
        # float32 and moved to float64 would carry float32 rounding, which breaks equivariance
        # at the 1e-8 level for l >= 2
        self._cg64 = torch.cat(blocks, dim=1)
        self._cg_cache: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def coefficients(self, like: torch.Tensor) -> torch.Tensor:
        """The Clebsch-Gordan matrix (irreps_sh.dim, sum_l3 (2 l3 + 1) rows_l3) like ``like``."""
        if torch.compiler.is_compiling():  # no cache filled with a tracer's tensors
            return self._cg64.to(device=like.device, dtype=like.dtype)
        key = (like.dtype, like.device)
        cg = self._cg_cache.get(key)
        if cg is None:
            cg = self._cg_cache[key] = self._cg64.to(device=like.device, dtype=like.dtype)
        return cg

    def forward(self, x: torch.Tensor, sh: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        n_edges = x.shape[0]
        # split/unbind rather than slices: the backward of a slice fills a zero tensor the size
        # of the whole input, once per slice
        xs = x.split(self.in_dims, dim=1) if len(self.in_dims) > 1 else (x,)
        ws = weight.unbind(1)
        b_all = sh @ self.coefficients(sh)
        bs = b_all.split(self.b_sizes, dim=1) if len(self.b_sizes) > 1 else (b_all,)
        outs = []
        for (dim, n_rows, members), b in zip(self.out_groups, bs, strict=True):
            parts = [ws[k].unsqueeze(1) * xs[a] for k, a in members]
            z = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (E, n_rows, mul)
            b = b.view(n_edges, dim, n_rows)
            if n_rows == 1:  # a single scalar path: outer product
                outs.append(b * z)
            elif dim == 1:  # into a scalar: multiply-sum beats tiny matmuls
                outs.append((b.transpose(1, 2) * z).sum(1, keepdim=True))
            else:
                outs.append(torch.bmm(b, z))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_sh} -> {self.irreps_out}, {self.n_paths} paths"
