"""Tensor Field Network potential (Thomas et al. 2018), NequIP-style, with optional attention.

Every layer turns node features ``x`` (O(3) irreps up to ``l_max``) into new ones::

    m_ij  = TP_uvu( W_up x_j , u(r_ij) Y(r_ij / |r_ij|) ; R(bessel(r_ij), a_ij) )   (edge filter)
    s_i   = sum_j alpha_ij m_ij                      (alpha_ij = 1 / avg_num_neighbors by default)
    x_i  <- x_i + Gate( Linear(s_i) + Linear_self(x_i) )

``Y`` are the real spherical harmonics (e3nn, component normalised), ``u`` the polynomial
envelope (applied to ``Y`` once, so every message and its first two derivatives vanish at the
cutoff), ``R`` a radial MLP on the Bessel basis (plus the encoder's pair features ``a_ij`` when
there are any) giving one weight per channel and path of the 'uvu' tensor product (channels are
mixed only by the per-atom ``o3.Linear`` maps, which keeps the per-edge work small). The radial
MLP's two hidden layers are shared by all interaction layers, each layer having its own linear
output head (one GEMM for all of them). The gate (``e3nn.nn.Gate``) applies SiLU to the scalars
and scales each l > 0 channel by a sigmoid of its own scalar. The per-atom energy is an MLP on the
``0e`` channels of the last layer, which is built to output scalars only (its tensor product keeps
only the paths into ``0e``).

Tensor product. :class:`EdgeTensorProduct` is e3nn's ``o3.TensorProduct(..., shared_weights=
False)`` with 'uvu' instructions (Clebsch-Gordan coefficients from ``o3.wigner_3j``, e3nn's
'component'/'element' normalisation; the tests check it equals ``o3.TensorProduct``), but it sums
all paths that end in the same irrep (the radial weights stay per path) and evaluates everything
in a channel-last layout with a few large kernels (faster than ``o3.TensorProduct`` with one
output block per path; timings in ``docs/measurements.md``).

Irreps. The hidden irreps are ``features x (0e + 1o + 2e + ...)`` up to ``l_max``: only the
"natural" parity ``(-1)^l`` that spherical harmonics of edge vectors carry (as in MACE). That
halves the features and paths of the both-parities choice (``0e + 0o + 1o + 1e + ...``, NequIP's
default), and pseudo-tensors add little for energies of ordinary (achiral-invariant) potentials;
``full_parity=True`` restores them. Either way parity is tracked by e3nn, so energies are
invariant under rotations *and* reflections.

Normalisation. The sum over neighbours is divided by ``avg_num_neighbors`` (``aggregation="mean"``,
MACE's choice): scalar messages from a coordination shell add coherently, so the sum grows like
the neighbour count, and dividing by it keeps the inputs of the gates O(1) for any density.
``aggregation="sqrt"`` divides by its square root (NequIP's choice, right for random-sign sums).

Attention (``attention=True``, SE(3)-Transformer style). The key of edge ``ij`` is its message
``m_ij`` (a tensor product of ``x_j`` with ``Y(r_ij)``, as in the SE(3)-Transformer), the query
an ``o3.Linear`` of ``x_i`` onto the irreps the two share, and the logit their invariant dot
product ``q_i . m_ij / sqrt(dim)`` (a learned bilinear form; e3nn's real Wigner matrices are
orthogonal, so a component-wise dot product of equal irreps is O(3)-invariant), softly bounded
as ``a_ij = L tanh(logit / L)`` with ``L = attention_logit_bound``. Messages are summed with

    alpha_ij = exp(a_ij) * n_i / (sum_k u(r_ik) exp(a_ik) + eps) / avg_num_neighbors,
    n_i = sum_k u(r_ik),

i.e. ``alpha_ij m_ij = [u_ij exp(a_ij) / sum_k u_ik exp(a_ik)] * (n_i / avg) * (m_ij / u_ij)``: a
softmax over neighbours whose weights carry the envelope, times a smooth neighbour count
``n_i / avg`` so the model still sees coordination (with all logits equal it reduces, up to
``eps``, to the plain convolution). Smoothness: the envelope is inside the softmax normaliser, so a
neighbour entering or leaving the cutoff changes it by a term that vanishes with two
derivatives; ``m_ij`` itself carries ``u_ij``. No per-centre maximum is subtracted: the bounded
logits make ``exp`` safe in float32 (at most ``e^L``), and a max would jump when the arg-max
neighbour leaves the cutoff, which together with ``eps`` would make the energy discontinuous.
``eps`` is a fixed constant (1e-9), so ``alpha`` is as smooth as the envelope everywhere.

Default ``l_max = 1``: it already resolves angles (three-body terms) that invariant models
cannot, while the NequIP and MACE ablations report a much smaller gain from l = 1 to 2 than from
0 to 1, and l = 2 costs several times more per step (timings in ``docs/measurements.md``). The
choice rests on those published ablations and our timings, not on a fit of our own.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn

from .layers import BesselBasis, PolynomialEnvelope, gather, mlp, scatter_sum
from .tensor_product import EdgeTensorProduct, from_channel_last, irreps_layout, to_channel_last

_ATTENTION_EPS = 1e-9


# highest rotation order of the features (Clebsch-Gordan tables grow as l^5)
MAX_L = 6


def _hidden_irreps(features: int, l_max: int, full_parity: bool) -> o3.Irreps:
    """``features x`` every irrep up to ``l_max``: natural parity, or both when ``full_parity``."""
    irreps = []
    for l in range(l_max + 1):
        natural = (-1) ** l
        irreps.append((features, (l, natural)))
        if full_parity:
            irreps.append((features, (l, -natural)))
    return o3.Irreps(irreps)


class TFNLayer(nn.Module):
    """One interaction: edge tensor product, aggregation, self-interaction, gate and residual."""

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_target: o3.Irreps,
        irreps_sh: o3.Irreps,
        attention: bool,
        attention_logit_bound: float,
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        allowed = {ir for _, ir in o3.Irreps(irreps_target)}
        self.linear_up = o3.Linear(self.irreps_in, self.irreps_in)
        self.tp = EdgeTensorProduct(self.irreps_in, irreps_sh, allowed)
        irreps_mid = self.tp.irreps_out
        self.irreps_mid = irreps_mid
        self.layout_in, self.layout_mid = irreps_layout(self.irreps_in), irreps_layout(irreps_mid)
        self.weight_numel = self.tp.n_paths * self.tp.mul

        # gate: the output keeps only the target irreps that the messages can reach
        reached = {ir for _, ir in irreps_mid}
        target = [(mul, ir) for mul, ir in o3.Irreps(irreps_target) if ir in reached]
        scalars = o3.Irreps([(mul, ir) for mul, ir in target if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in target if ir.l > 0])
        acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
        with torch.device("cpu"):  # e3nn normalises the activations by sampling on a device
            self.gate = Gate(scalars, acts, gates, [torch.sigmoid] if gated else [], gated)
        self.linear_out = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.linear_self = o3.Linear(self.irreps_in, self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out
        self.residual = self.irreps_out == self.irreps_in

        self.attention = bool(attention)
        if self.attention:
            # logit = <Q x_i, m_ij>: a learned bilinear form of the centre's features and the
            # message (key) over the irreps they share; invariant since D(R) is orthogonal
            present = {ir for _, ir in self.irreps_in}
            shared = [k for k, (_, ir) in enumerate(irreps_mid) if ir in present]
            self.irreps_key = o3.Irreps([irreps_mid[k] for k in shared])
            self.layout_key = irreps_layout(self.irreps_key)
            self.query = o3.Linear(self.irreps_in, self.irreps_key)
            # rows of the channel-last message that form the key (a prefix in the usual case)
            mul, slices = self.tp.mul, irreps_mid.slices()
            # index arithmetic on the CPU, whatever the default device (see EdgeTensorProduct)
            rows = torch.cat(
                [
                    torch.arange(slices[k].start // mul, slices[k].stop // mul, device="cpu")
                    for k in shared
                ]
            )
            is_prefix = rows.tolist() == list(range(len(rows)))
            self.key_prefix = len(rows) if is_prefix else 0
            self.register_buffer("key_rows", rows, persistent=False)
            self.logit_scale = 1.0 / math.sqrt(self.irreps_key.dim)
            self.logit_bound = float(attention_logit_bound)

    def forward(
        self,
        x: torch.Tensor,
        sh: torch.Tensor,
        weight: torch.Tensor,
        envelope: torch.Tensor,
        centre: torch.Tensor,
        neighbour: torch.Tensor,
        inv_norm: float,
    ) -> torch.Tensor:
        n_atoms = x.shape[0]
        x_up = to_channel_last(self.linear_up(x), self.layout_in)
        message = self.tp(gather(x_up, neighbour), sh, weight)  # (E, dims, mul)
        if self.attention:
            query = gather(to_channel_last(self.query(x), self.layout_key), centre)
            if self.key_prefix == message.shape[1]:
                key = message
            elif self.key_prefix:
                key = message.split([self.key_prefix, message.shape[1] - self.key_prefix], 1)[0]
            else:
                key = message.index_select(1, self.key_rows)
            logits = (query * key).sum((1, 2)) * self.logit_scale
            bound = self.logit_bound
            weights = torch.exp(bound * torch.tanh(logits / bound))
            stacked = torch.stack([envelope * weights, envelope], dim=-1)
            sums = scatter_sum(stacked, centre, n_atoms)  # (n_atoms, 2): softmax norm, count
            per_centre = sums[:, 1] / (sums[:, 0] + _ATTENTION_EPS) * inv_norm
            message = message * (weights * gather(per_centre, centre))[:, None, None]
            aggregated = scatter_sum(message, centre, n_atoms)
        else:
            aggregated = scatter_sum(message, centre, n_atoms) * inv_norm
        aggregated = from_channel_last(aggregated, self.layout_mid)
        update = self.gate(self.linear_out(aggregated) + self.linear_self(x))
        return x + update if self.residual else update


class TFN(nn.Module):
    """Tensor Field Network energy model: invariant node features in, per-atom energies out.

    Args:
        node_features_in: width of the encoder's (invariant) node features.
        edge_features_in: width of the encoder's pair features (0 for none); they are
            concatenated to the Bessel basis as input of every radial network.
        cutoff: radial cutoff (Å); messages vanish smoothly there.
        avg_num_neighbors: mean number of edges per atom, for the aggregation normalisation.
        features: channels per irrep.
        l_max: highest rotation order of the features and spherical harmonics (1, 2, 3, ...).
        num_layers: interaction layers (the last one outputs scalars only).
        n_basis: Bessel functions of the radial basis.
        radial_hidden: width of the two hidden layers of each radial MLP.
        attention: SE(3)-Transformer-style attention over neighbours (see module docstring).
        envelope_p: order of the polynomial cutoff envelope.
        full_parity: keep both parities of every l (NequIP) instead of the natural ones only.
        aggregation: "mean" (divide by avg_num_neighbors) or "sqrt" (by its square root).
        attention_logit_bound: soft bound L on the attention logits (``L tanh(a / L)``).
        readout_hidden: hidden width of the per-atom energy MLP.
        trainable_basis: learn the Bessel frequencies.
    """

    def __init__(
        self,
        node_features_in: int,
        edge_features_in: int,
        cutoff: float,
        avg_num_neighbors: float = 10.0,
        features: int = 32,
        l_max: int = 1,
        num_layers: int = 3,
        n_basis: int = 8,
        radial_hidden: int = 64,
        attention: bool = False,
        envelope_p: int = 6,
        full_parity: bool = False,
        aggregation: str = "mean",
        attention_logit_bound: float = 5.0,
        readout_hidden: int = 32,
        trainable_basis: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("node_features_in", node_features_in),
            ("features", features),
            ("num_layers", num_layers),
            ("n_basis", n_basis),
            ("radial_hidden", radial_hidden),
            ("readout_hidden", readout_hidden),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if edge_features_in < 0:
            raise ValueError(f"edge_features_in must be >= 0, got {edge_features_in!r}")
        if not 0 <= l_max <= MAX_L:
            raise ValueError(f"l_max must be between 0 and {MAX_L}, got {l_max!r}")
        if avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {avg_num_neighbors!r}")
        if aggregation not in ("mean", "sqrt"):
            raise ValueError(f"aggregation must be 'mean' or 'sqrt', got {aggregation!r}")
        if attention_logit_bound <= 0:
            raise ValueError(f"attention_logit_bound must be > 0, got {attention_logit_bound!r}")

        self.cutoff = float(cutoff)
        self.edge_features_in = int(edge_features_in)
        self.l_max = int(l_max)
        norm = float(avg_num_neighbors) if aggregation == "mean" else math.sqrt(avg_num_neighbors)
        self.inv_norm = 1.0 / norm

        self.envelope = PolynomialEnvelope(cutoff, envelope_p)
        self.basis = BesselBasis(cutoff, n_basis, trainable=trainable_basis)
        self.irreps_sh = o3.Irreps.spherical_harmonics(self.l_max)
        self.sh_degrees = list(range(self.l_max + 1))  # ints, not Irreps, in forward()
        self.embedding = nn.Linear(node_features_in, features)

        hidden = _hidden_irreps(features, self.l_max, full_parity)
        scalars = o3.Irreps(f"{features}x0e")
        irreps = scalars
        self.layers = nn.ModuleList()
        for k in range(num_layers):
            target = scalars if k == num_layers - 1 else hidden
            layer = TFNLayer(irreps, target, self.irreps_sh, attention, attention_logit_bound)
            self.layers.append(layer)
            irreps = layer.irreps_out
        assert irreps == scalars, irreps
        # radial networks: a trunk shared by all layers, one linear head per layer (fused)
        self.radial_trunk = nn.Sequential(
            mlp([n_basis + self.edge_features_in, radial_hidden, radial_hidden]), nn.SiLU()
        )
        self.weight_sizes = [layer.weight_numel for layer in self.layers]
        self.radial_head = nn.Linear(radial_hidden, sum(self.weight_sizes), bias=False)
        self.readout = mlp([features, readout_hidden, 1])

    def forward(
        self,
        node_features: torch.Tensor,
        edge_features: torch.Tensor | None,
        edge_index: torch.Tensor,
        edge_vectors: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """Per-atom energies ``(n_atoms,)`` (dimensionless)."""
        centre, neighbour = edge_index[0], edge_index[1]
        envelope = self.envelope(edge_lengths)
        sh = o3.spherical_harmonics(
            self.sh_degrees, edge_vectors, normalize=True, normalization="component"
        )
        sh = sh * envelope.unsqueeze(-1)  # every message carries u(r): smooth at the cutoff
        radial = self.basis(edge_lengths)
        if self.edge_features_in > 0:
            if edge_features is None:
                raise ValueError("this TFN was built with edge features but got none")
            radial = torch.cat([radial, edge_features], dim=-1)
        weights = self.radial_head(self.radial_trunk(radial)).split(self.weight_sizes, dim=-1)
        x = self.embedding(node_features)
        for layer, weight in zip(self.layers, weights, strict=True):
            weight = weight.reshape(weight.shape[0], layer.tp.n_paths, layer.tp.mul)
            x = layer(x, sh, weight, envelope, centre, neighbour, self.inv_norm)
        return self.readout(x).squeeze(-1)
