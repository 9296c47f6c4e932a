"""Optimisers of ``mlff train``: AdamW, or Muon for the hidden weight matrices with AdamW for
the rest (embeddings, biases, readouts).

Muon (Jordan et al. 2024; ``torch.optim.Muon``) replaces each matrix's momentum by its nearest
orthogonal matrix (five Newton–Schulz iterations), so every direction of a layer learns at the
same rate. With ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025) its updates have AdamW's
RMS, so the same learning rate and schedule drive both halves.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mlff.errors import DataError
from mlff.training.config import OPTIMIZER_CHOICES

# the optimisers by name; "auto" picks one of them per run (resolve_optimizer)
OPTIMIZERS = tuple(choice for choice in OPTIMIZER_CHOICES if choice != "auto")
# matrices with a side shorter than this (the element embedding, one-output readouts and
# gates) stay with AdamW: orthogonalising a vector only normalises it
MIN_MUON_SIDE = 8


def _adamw(groups: list[dict], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; the fused kernel where torch has one for the device."""
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def is_muon_parameter(name: str, parameter: torch.Tensor) -> bool:
    """Hidden weight matrices: 2-D, both sides >= :data:`MIN_MUON_SIDE`, not an embedding."""
    return parameter.ndim == 2 and min(parameter.shape) >= MIN_MUON_SIDE and "embedding" not in name


# Muon's defaults (Jordan et al. 2024): Nesterov momentum 0.95 and five steps of the quintic
# Newton-Schulz iteration with these coefficients
MUON_MOMENTUM = 0.95
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def orthogonalise(matrices: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise a stack of matrices (k, A, B): the quintic Newton-Schulz
    iteration of Muon on all k at once, in the matrices' own precision."""
    tall = matrices.shape[1] > matrices.shape[2]
    x = matrices.transpose(1, 2) if tall else matrices
    x = x / x.norm(dim=(1, 2), keepdim=True).clamp(min=eps)
    a, b, c = NS_COEFFICIENTS
    for _ in range(NS_STEPS):
        gram = torch.bmm(x, x.transpose(1, 2))
        update = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, update, x, beta=a)
    return x.transpose(1, 2) if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters, with the learning rate matched to AdamW's update RMS.

    The same update as ``torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")``, but the
    Newton-Schulz iterations of all matrices of one shape run as one batched matmul in the
    parameters' precision: torch's runs them one matrix at a time in bfloat16, which for a
    small potential's few dozen 64 x 64 matrices cost 30x AdamW's step on a CPU.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.ndim != 2:
                    raise ValueError(
                        f"Muon takes matrices only, got shape {tuple(parameter.shape)}"
                    )

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.Optimizer.step)
        for group in self.param_groups:
            by_shape: dict[tuple[int, int], list[torch.Tensor]] = {}
            for parameter in group["params"]:
                if parameter.grad is not None:
                    by_shape.setdefault(tuple(parameter.shape), []).append(parameter)
            lr, decay = group["lr"], group["weight_decay"]
            for shape, params in by_shape.items():
                grads = [p.grad for p in params]
                buffers = []
                for parameter in params:
                    state = self.state[parameter]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(parameter)
                    buffers.append(state["momentum_buffer"])
                torch._foreach_lerp_(buffers, grads, 1.0 - MUON_MOMENTUM)
                nesterov = torch._foreach_lerp(grads, buffers, MUON_MOMENTUM)
                updates = orthogonalise(torch.stack(nesterov)).unbind(0)
                if decay:
                    torch._foreach_mul_(params, 1.0 - lr * decay)
                torch._foreach_add_(params, updates, alpha=-lr * 0.2 * math.sqrt(max(shape)))
        return None


class MuonAdamW:
    """Muon on the hidden matrices of the parameter groups, AdamW on the rest, as one optimiser.

    ``param_groups`` lists both halves' groups (the schedule sets their ``lr``); the state dict
    holds both halves' states.
    """

    def __init__(
        self, groups: list[dict], names: dict[int, str], lr: float, weight_decay: float
    ) -> None:
        muon_groups, adam_groups = [], []
        for group in groups:
            options = {k: v for k, v in group.items() if k != "params"}
            params = list(group["params"])
            muon = [p for p in params if is_muon_parameter(names.get(id(p), ""), p)]
            chosen = {id(p) for p in muon}
            rest = [p for p in params if id(p) not in chosen]
            if muon:
                muon_groups.append({"params": muon, **options})
            if rest:
                adam_groups.append({"params": rest, **options})
        self.muon = Muon(muon_groups, lr=lr, weight_decay=weight_decay) if muon_groups else None
        self.adamw = _adamw(adam_groups, lr, weight_decay) if adam_groups else None

    @property
    def _parts(self) -> list[torch.optim.Optimizer]:
        return [part for part in (self.muon, self.adamw) if part is not None]

    @property
    def param_groups(self) -> list[dict]:
        return [group for part in self._parts for group in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self._parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self._parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "muon": None if self.muon is None else self.muon.state_dict(),
            "adamw": None if self.adamw is None else self.adamw.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, part in (("muon", self.muon), ("adamw", self.adamw)):
            if part is not None and state.get(key) is not None:
                part.load_state_dict(state[key])


def make_optimizer(
    kind: str, groups: list[dict], names: dict[int, str], lr: float, weight_decay: float
):
    """The optimiser ``kind`` ("adamw" or "muon") over parameter ``groups``; ``names`` maps a
    parameter's id to its name in the model (Muon keeps embeddings with AdamW)."""
    if kind == "muon":
        return MuonAdamW(groups, names, lr, weight_decay)
    return _adamw(groups, lr, weight_decay)


def resolve_optimizer(
    choice: str,
    train,
    model_kind: tuple[str, str] = ("egnn", "none"),
    checkpoint: dict | None = None,
    where: str = "",
) -> str:
    """What ``--optimizer choice`` means for the training set ``train`` (a GraphSet) and
    ``model_kind`` (potential, encoder): "auto" is "muon" for an EGNN without encoder on a set
    with no periodic structure, where it was measured to win, else "adamw" (Muon failed on Cu;
    the TFN and the encoder are not measured). A resumed run keeps the optimiser its
    ``checkpoint`` (read from ``where``) was written with."""
    if choice not in OPTIMIZER_CHOICES:
        raise DataError(f"optimizer must be one of {', '.join(OPTIMIZER_CHOICES)}, got {choice!r}")
    if checkpoint is not None:
        written = "muon" if set(checkpoint["optimizer"]) == {"muon", "adamw"} else "adamw"
        if choice not in ("auto", written):
            raise DataError(
                f"{where}: the run was trained with --optimizer {written}; "
                f"resume it with --optimizer {written} or auto"
            )
        return written
    if choice != "auto":
        return choice
    periodic = any(bool(graph.pbc.any()) for graph in train.graphs)
    return "muon" if tuple(model_kind) == ("egnn", "none") and not periodic else "adamw"


def optimizer_name(optimizer) -> str:
    """ "muon" or "adamw": which of :data:`OPTIMIZERS` ``optimizer`` is (for summaries)."""
    return "muon" if isinstance(optimizer, MuonAdamW) else "adamw"
