"""Learning-rate schedules driven by the run's progress ``p`` in [0, 1].

``p`` is the larger of the fraction of steps done (of ``epochs``) and the fraction of the time
limit used, so a run cut by its time limit still ends its schedule at the small learning rate.

* ``"cosine"``: linear warm-up from ``lr / 10`` to ``lr`` over the first ``warmup`` of the run,
  then half a cosine down to ``lr * min_lr_ratio`` at ``p = 1``.
* ``"plateau"``: the same warm-up, then ``lr`` multiplied by ``factor`` whenever the validation
  loss has not improved for ``patience`` validations, never below ``lr * min_lr_ratio``.

A parameter group with an ``lr_scale`` entry (the encoder under ``--init-mode low-lr``) gets the
schedule's rate times that scale.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("cosine", "plateau")


class LearningRateSchedule:
    """Sets the optimiser's learning rate from the progress and the validation losses."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: float,
        kind: str = "cosine",
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        factor: float = 0.5,
        patience: int = 5,
    ) -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warm-up fraction must be in [0, 1), got {warmup!r}")
        if not 0.0 < min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in (0, 1], got {min_lr_ratio!r}")
        self.optimizer = optimizer
        self.peak = float(lr)
        self.kind = kind
        self.warmup = float(warmup)
        self.min_lr_ratio = float(min_lr_ratio)
        self.factor = float(factor)
        self.patience = int(patience)
        self.plateau_scale = 1.0
        self.best = math.inf
        self.bad_validations = 0
        self.lr = self.peak

    def _warm(self, progress: float) -> float:
        if progress < self.warmup:
            return 0.1 + 0.9 * progress / self.warmup
        return 1.0

    def step(self, progress: float) -> float:
        """Set and return the learning rate at ``progress`` (after each optimiser step)."""
        progress = min(max(progress, 0.0), 1.0)
        if progress < self.warmup:
            lr = self.peak * self._warm(progress)
        elif self.kind == "cosine":
            span = (progress - self.warmup) / (1.0 - self.warmup)
            low = self.peak * self.min_lr_ratio
            lr = low + 0.5 * (self.peak - low) * (1.0 + math.cos(math.pi * span))
        else:
            lr = self.peak * self.plateau_scale
        self.lr = lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def validated(self, loss: float) -> None:
        """Tell the schedule the latest validation loss (used by ``"plateau"``)."""
        if loss < self.best * (1.0 - 1e-4):
            self.best = loss
            self.bad_validations = 0
            return
        self.bad_validations += 1
        if self.kind == "plateau" and self.bad_validations > self.patience:
            self.plateau_scale = max(self.plateau_scale * self.factor, self.min_lr_ratio)
            self.bad_validations = 0

    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "plateau_scale": self.plateau_scale,
            "best": self.best,
            "bad_validations": self.bad_validations,
            "lr": self.lr,
        }

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best = float(state["best"])
        self.bad_validations = int(state["bad_validations"])
        self.lr = float(state["lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)
