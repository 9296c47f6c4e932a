"""Every option of ``mlff pretrain`` in one place, with its default, and its YAML form.

Units: cutoff and noise Å, learning rate per step, time limit minutes. The encoder defaults are
:class:`~mlff.potentials.unimol.UniMolEncoder`'s, which ``mlff train --encoder unimol`` uses at
``--size medium``; ``mlff train --init`` takes the encoder's sizes from the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

from mlff.errors import DataError
from mlff.training.config import options_from_dict, read_options, write_options


@dataclass
class PretrainConfig:
    """All options of ``mlff pretrain``."""

    data: list[str] = field(default_factory=list)
    out: str = "mlff_pretrain"
    valid_fraction: float = 0.05
    seed: int = 42
    # encoder (UniMolEncoder arguments; model_options holds any other, e.g. n_kernels)
    cutoff: float = 5.0
    features: int = 64
    pair_features: int = 16
    num_layers: int = 2
    num_heads: int = 4
    model_options: dict[str, Any] = field(default_factory=dict)
    # objectives
    mask_fraction: float = 0.15  # of the atoms of a batch whose element is hidden
    noise: float = 0.1  # Å, standard deviation of the Gaussian noise on positions
    atoms_weight: float = 1.0
    coordinates_weight: float = 1.0
    distances_weight: float = 0.0
    # optimisation (AdamW, cosine schedule with warm-up, EMA of the weights)
    batch_size: int = 8
    lr: float = 0.001
    weight_decay: float = 0.0
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    clip_grad: float = 10.0
    ema_decay: float = 0.99
    # stopping
    epochs: int = 1000
    time_limit: float = 9.0
    patience: int = 0
    # running
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0  # torch CPU threads; 0: every available core (one process)
    eval_batch_size: int = 64
    progress: str = "auto"

    def encoder_hyperparameters(self) -> dict[str, Any]:
        """The UniMolEncoder arguments of this run (``avg_num_neighbors`` comes from the data)."""
        values = {
            "features": self.features,
            "pair_features": self.pair_features,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
        }
        values.update(self.model_options)
        return values

    def check(self) -> None:
        """Raise a one-line :class:`DataError` for an option out of range."""
        problems = []
        if not self.data:
            problems.append("no structure files given")
        for option in dataclasses.fields(self):
            value = getattr(self, option.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{option.name} must be a finite number, got {value}")
        if not 0.0 <= self.valid_fraction < 1.0:
            problems.append(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if not self.cutoff > 0:
            problems.append(f"cutoff must be positive (Å), got {self.cutoff}")
        if not self.noise > 0:
            problems.append(f"noise must be a length > 0 Å (e.g. 0.1), got {self.noise}")
        if not 0.0 < self.mask_fraction < 1.0:
            problems.append(f"mask_fraction must be in (0, 1), got {self.mask_fraction}")
        for name in ("atoms_weight", "coordinates_weight", "distances_weight", "weight_decay"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.atoms_weight + self.coordinates_weight + self.distances_weight <= 0:
            problems.append("at least one of the objectives' weights must be > 0")
        for name in ("batch_size", "epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.time_limit < 0:
            problems.append(f"time_limit must be >= 0 minutes (0 = none), got {self.time_limit}")
        if self.threads < 0:
            problems.append(f"threads must be >= 0 (0 = automatic), got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            problems.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("float32", "float64"):
            problems.append(f"dtype must be float32 or float64, got {self.dtype!r}")
        if problems:
            raise DataError("bad pretraining option: " + "; ".join(problems))


FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}


def pretrain_config_from_dict(values: dict[str, Any], where: str = "options") -> PretrainConfig:
    """A :class:`PretrainConfig` from plain values; unknown keys are refused naming ``where``."""
    return options_from_dict(PretrainConfig, values, where)


def read_pretrain_config(path: str | os.PathLike) -> dict[str, Any]:
    """The pretraining options in a YAML file (a mapping of option name to value)."""
    return read_options(path, PretrainConfig)


def write_pretrain_config(config: PretrainConfig, path: str | os.PathLike) -> None:
    """Write every option of ``config`` to ``path`` as YAML (atomically)."""
    write_options(config, path)
