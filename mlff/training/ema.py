"""Exponential moving average of the weights, the copy that is validated and saved.

After each optimiser step, ``θ_ema <- d θ_ema + (1 - d) θ`` with
``d = min(decay, (1 + n) / (10 + n))`` (``n`` updates so far), so early averages are not
dominated by the random initial weights.
Buffers are copied as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialMovingAverage:
    """Keeps ``self.model``, an averaged copy of ``model``."""

    def __init__(self, model: nn.Module, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        self.num_updates += 1
        decay = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        averaged = list(self.model.parameters())
        current = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "weights": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["weights"])
