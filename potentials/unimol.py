"""A local, smooth Uni-Mol-style encoder (atom tokens + pair representation).

Uni-Mol (Zhou et al., ICLR 2023) keeps an atom representation ``h_i`` and a pair representation
``z_ij``. Pair distances are mapped per pair type ``t`` by ``a_t d + b_t``, expanded in ``K``
Gaussian kernels with learnable means and widths and passed through an MLP; the pair
representation is a bias on the attention logits of every head, and the logits of each layer are
fed back into the pair representation (atom -> pair), so the two refine each other. The original
attends globally and its softmax is not smooth in the set of neighbours. :class:`UniMolEncoder`
is the local, smooth version used by ``mlff``:

* **Local.** Atom ``i`` attends only over its edges ``(i, j)`` (``edge_index[0] = i``) plus itself;
  periodic images are separate edges, so nothing else is needed for periodic cells.
* **Pair types are unordered** (``{A, B}``: ``n (n + 1) / 2`` types). The affine map rescales a
  *distance*, which is symmetric in the pair, so ``(i, j)`` and ``(j, i)`` start from the same
  pair representation and both directions train the same ``a_t, b_t``. Direction enters later
  through the query/key of the two atoms (``q_i . k_j != q_j . k_i``), so the pair representation
  still becomes directional after the first layer.
* **Smooth attention with a self token.** With the polynomial envelope ``u(r)`` (zero value, slope
  and curvature at the cutoff) the weights are::

      w_ij = u(r_ij) exp(l_ij) / (exp(l_ii) + sum_k u(r_ik) exp(l_ik)),
      w_ii =         exp(l_ii) / (same denominator)

  ``l_ii = q_i . k_i / sqrt(d) + s_{species(i)}`` is the self token (envelope 1). The self term
  keeps the denominator strictly positive, so no ``eps`` is needed: the formula is *exactly*
  invariant under ``l -> l - m_i`` for any per-centre shift ``m_i``. We therefore subtract the
  detached ``m_i = max(l_ii, max_k (l_ik + log u_ik))`` (the log of the largest term, so the
  largest term is exactly 1 and the denominator is ``>= 1``: no overflow, no underflow to 0/0);
  since the value does not depend on ``m_i`` at all, detaching it changes neither value nor
  gradient, and the jump of ``m_i`` when an edge enters is invisible. Edges with ``u = 0`` (at
  the cutoff, or rounded to 0 just inside it in float32) are not in the shift, and their exponent
  is set to 0, so their term is an exact 0 (never ``0 * inf``). An edge entering or leaving the
  neighbour list contributes ``u exp(l) -> 0`` with its first two derivatives, so node features
  are C2 in the positions. An isolated atom attends to itself only (weight 1).
* **Pair update (atom -> pair).** Each layer's per-head logits ``l_ij`` (pair bias included) are
  added to ``z_ij`` through a linear map ``H -> pair_features``; the next layer's bias is a linear
  map of ``z_ij``.
* **Density channel.** A normalised attention cannot count neighbours, so the initial atom token
  is ``embed(species_i) + W sum_j u(r_ij) z0_ij / avg_num_neighbors`` (a smooth coordination
  descriptor).
* **Outputs.** Node features ``LayerNorm(h_i)``; edge features ``u(r_ij) LayerNorm(z_ij)``, so they
  vanish (C2) at the cutoff and a downstream potential stays smooth even if it forgets its own
  envelope. Only ``edge_lengths`` and species are used, so the outputs are invariant under
  rotations, reflections and translations; ``edge_vectors`` is ignored.
* **Pretraining.** :meth:`UniMolEncoder.represent` returns, besides the two outputs, the pair
  representation before the first layer (``z0``) and after the last (``zL``), whose change drives
  the coordinate head of :mod:`mlff.pretraining`, and can hide the element of chosen atoms behind
  a mask token (masked-atom prediction).

Pre-LN transformer layers: ``h += Attn(LN(h))``, ``h += FFN(LN(h))`` (SiLU, width
``ffn_factor * features``). All sums over neighbours are vectorised ``index_add_`` /
``scatter_reduce('amax')`` ops.

Defaults (``features=64, pair_features=16, num_layers=2, num_heads=4, n_kernels=32,
ffn_factor=2``) are a speed/capacity compromise, not yet tuned for accuracy per second on a
training set; timings are in ``docs/measurements.md``.

The Gaussian kernels cap their squared argument so far tails never become float32 denormals,
which are slow on x86 CPUs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .layers import PolynomialEnvelope, mlp, scatter_sum


def unordered_pair_types(n_species: int) -> torch.Tensor:
    """``(n_species, n_species)`` long table: index of the unordered pair type ``{a, b}``."""
    table = torch.empty((n_species, n_species), dtype=torch.long)
    t = 0
    for a in range(n_species):
        for b in range(a, n_species):
            table[a, b] = t
            table[b, a] = t
            t += 1
    return table


class GaussianKernels(nn.Module):
    """``exp(-((x - mu_k) / sigma_k)^2 / 2)``, k = 1..K, learnable means and widths (Å).

    The squared argument is capped at 160: far tails (``< e^-80``) would otherwise be float32
    denormals, which slow ``exp`` and everything downstream on x86 CPUs. The cap changes values
    by < 2e-35 (and only where the kernel is already that small), so it is invisible to
    smoothness.
    """

    def __init__(self, n_kernels: int, start: float, stop: float) -> None:
        super().__init__()
        self.means = nn.Parameter(torch.linspace(start, stop, n_kernels))
        self.widths = nn.Parameter(torch.full((n_kernels,), (stop - start) / max(n_kernels - 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.unsqueeze(-1) - self.means) / self.widths.abs().clamp_min(1e-3)
        return torch.exp(-0.5 * (z * z).clamp_max(160.0))


class _PairAttentionLayer(nn.Module):
    """One pre-LN transformer layer with pair-biased, envelope-weighted local attention."""

    def __init__(
        self, n_species: int, features: int, pair_features: int, num_heads: int, ffn_factor: int
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = features // num_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.norm_attn = nn.LayerNorm(features)
        self.qkv = nn.Linear(features, 3 * features)
        self.out = nn.Linear(features, features)
        self.pair_bias = nn.Linear(pair_features, num_heads)
        self.self_bias = nn.Embedding(n_species, num_heads)
        nn.init.zeros_(self.self_bias.weight)
        self.pair_update = nn.Linear(num_heads, pair_features)
        self.norm_ffn = nn.LayerNorm(features)
        self.ffn = mlp([features, ffn_factor * features, features])

    def forward(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        species: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        envelope: torch.Tensor,
        log_envelope: torch.Tensor,
        masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_atoms, n_edges = h.shape[0], centre.shape[0]
        heads, dim = self.num_heads, self.head_dim
        q, k, v = self.qkv(self.norm_attn(h)).view(n_atoms, 3, heads, dim).unbind(1)

        # logits (E, H) and self logits (N, H)
        logits = (q.index_select(0, centre) * k.index_select(0, neighbour)).sum(-1) * self.scale
        logits = logits + self.pair_bias(z)
        self_bias = self.self_bias(species)
        if masked is not None:  # a masked atom's element must not leak through its self bias
            self_bias = self_bias.masked_fill(masked.unsqueeze(-1), 0.0)
        self_logits = (q * k).sum(-1) * self.scale + self_bias

        # detached per-centre shift: the weights are exactly invariant under it (no eps anywhere)
        with torch.no_grad():
            shift = self_logits.clone()
            shift.scatter_reduce_(
                0,
                centre.unsqueeze(-1).expand(n_edges, heads),
                logits + log_envelope.unsqueeze(-1),
                reduce="amax",
                include_self=True,
            )
        # edges with zero envelope (at/after the cutoff, or clamped just inside it in float32) are
        # not in the shift, so exp(l - shift) could overflow and 0 * inf = NaN: give them exponent
        # 0 instead. Both branches are finite, so value, gradient and second derivative are too.
        exponent = logits - shift.index_select(0, centre)
        active = (envelope > 0).unsqueeze(-1)
        exponent = torch.where(active, exponent, torch.zeros_like(exponent))
        edge_terms = envelope.unsqueeze(-1) * torch.exp(exponent)
        self_terms = torch.exp(self_logits - shift)
        denominator = self_terms + scatter_sum(edge_terms, centre, n_atoms)  # >= 1
        messages = scatter_sum(
            edge_terms.unsqueeze(-1) * v.index_select(0, neighbour), centre, n_atoms
        )
        attended = (messages + self_terms.unsqueeze(-1) * v) / denominator.unsqueeze(-1)
        h = h + self.out(attended.reshape(n_atoms, heads * dim))
        h = h + self.ffn(self.norm_ffn(h))

        # atom -> pair: this layer's logits refine the pair representation
        z = z + self.pair_update(logits)
        return h, z


class UniMolRepresentation(NamedTuple):
    """What one pass of :class:`UniMolEncoder` computes (shapes per atom / per edge)."""

    node_features: torch.Tensor  # (n_atoms, features) invariant, LayerNorm(h)
    edge_features: torch.Tensor  # (n_edges, pair_features) invariant, u(r) LayerNorm(z_L)
    initial_pairs: torch.Tensor  # (n_edges, pair_features) z_0, before the first layer
    final_pairs: torch.Tensor  # (n_edges, pair_features) z_L, after the last layer
    envelope: torch.Tensor  # (n_edges,) u(r_ij) in [0, 1], zero at and after the cutoff


class UniMolEncoder(nn.Module):
    """Local, smooth Uni-Mol-style encoder; see the module docstring for the design.

    ``forward(species, edge_index, edge_vectors, edge_lengths)`` returns node features
    ``(n_atoms, features)`` and edge features ``(n_edges, pair_features)``, both invariant; the
    edge features carry the cutoff envelope. ``cutoff`` in Å.
    """

    def __init__(
        self,
        n_species: int,
        cutoff: float,
        features: int = 64,
        pair_features: int = 16,
        num_layers: int = 2,
        num_heads: int = 4,
        n_kernels: int = 32,
        ffn_factor: int = 2,
        envelope_p: int = 6,
        avg_num_neighbors: float = 16.0,
    ) -> None:
        super().__init__()
        if n_species < 1:
            raise ValueError(f"n_species must be >= 1, got {n_species!r}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff!r}")
        for name, value in (
            ("features", features),
            ("pair_features", pair_features),
            ("num_heads", num_heads),
            ("n_kernels", n_kernels),
            ("ffn_factor", ffn_factor),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers!r}")
        if features % num_heads != 0:
            raise ValueError(f"features ({features}) must be divisible by num_heads ({num_heads})")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors!r}")

        self.n_species = int(n_species)
        self.cutoff = float(cutoff)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.node_features_out = int(features)
        self.edge_features_out = int(pair_features)

        self.register_buffer("pair_type_table", unordered_pair_types(n_species), persistent=False)
        n_types = n_species * (n_species + 1) // 2
        self.pair_scale = nn.Embedding(n_types, 1)  # a_t
        self.pair_shift = nn.Embedding(n_types, 1)  # b_t (Å)
        nn.init.ones_(self.pair_scale.weight)
        nn.init.zeros_(self.pair_shift.weight)
        self.kernels = GaussianKernels(n_kernels, 0.0, self.cutoff)
        self.pair_mlp = mlp([n_kernels, n_kernels, pair_features])
        self.envelope = PolynomialEnvelope(self.cutoff, envelope_p)

        self.embedding = nn.Embedding(n_species, features)
        self.density = nn.Linear(pair_features, features, bias=False)
        self.layers = nn.ModuleList(
            _PairAttentionLayer(n_species, features, pair_features, num_heads, ffn_factor)
            for _ in range(num_layers)
        )
        self.norm_node = nn.LayerNorm(features)
        self.norm_pair = nn.LayerNorm(pair_features)

    def pair_types(self, species: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Unordered pair type of every edge, ``(n_edges,)`` long."""
        return self.pair_type_table[species[edge_index[0]], species[edge_index[1]]]

    def forward(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        representation = self.represent(species, edge_index, edge_lengths)
        return representation.node_features, representation.edge_features

    def represent(
        self,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        edge_lengths: torch.Tensor,
        masked: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> UniMolRepresentation:
        """Every representation of one pass (``forward`` returns the first two).

        ``masked`` (n_atoms,) bool marks atoms whose element is hidden (masked-atom
        pretraining): their token starts from ``mask_token`` (features,) instead of their
        element's embedding, and neither their self bias nor the pair types of their edges
        (distance scale and shift) depend on their element.
        """
        n_atoms = species.shape[0]
        centre, neighbour = edge_index[0], edge_index[1]
        r = edge_lengths
        # the polynomial loses ~1e-6 to cancellation just inside the cutoff in float32 and can
        # dip below zero there: clamp, so that no attention weight is ever negative
        envelope = self.envelope(r).clamp_min(0.0)
        # log u only feeds the detached softmax shift: -inf drops edges at/after the cutoff from
        # the max, the clamp bounds exp(l - shift) <= 1e30 for the tiniest positive envelopes
        with torch.no_grad():
            log_envelope = torch.where(
                envelope > 0,
                torch.log(envelope.clamp_min(1e-30)),
                torch.full_like(envelope, -math.inf),
            )

        types = self.pair_types(species, edge_index)
        pair_scale = self.pair_scale(types).squeeze(-1)
        pair_shift = self.pair_shift(types).squeeze(-1)
        if masked is not None:  # edges touching a masked atom: the identity map, a = 1, b = 0
            hidden = masked[centre] | masked[neighbour]
            pair_scale = torch.where(hidden, torch.ones_like(pair_scale), pair_scale)
            pair_shift = torch.where(hidden, torch.zeros_like(pair_shift), pair_shift)
        z = self.pair_mlp(self.kernels(pair_scale * r + pair_shift))
        initial_pairs = z

        h = self.embedding(species)
        if masked is not None:
            if mask_token is None:
                raise ValueError("masked atoms need a mask_token of shape (features,)")
            h = torch.where(masked.unsqueeze(-1), mask_token.to(h.dtype).expand_as(h), h)
        h = h + self.density(scatter_sum(envelope.unsqueeze(-1) * z, centre, n_atoms)) / (
            self.avg_num_neighbors
        )
        for layer in self.layers:
            h, z = layer(h, z, species, centre, neighbour, envelope, log_envelope, masked)

        return UniMolRepresentation(
            node_features=self.norm_node(h),
            edge_features=envelope.unsqueeze(-1) * self.norm_pair(z),
            initial_pairs=initial_pairs,
            final_pairs=z,
            envelope=envelope,
        )

    def extra_repr(self) -> str:
        return (
            f"n_species={self.n_species}, cutoff={self.cutoff}, "
            f"avg_num_neighbors={self.avg_num_neighbors}"
        )
