"""Every option of a training run in one place, with its default, and its YAML form.

The command line, a ``--config`` YAML file and the ``config.yaml`` a run writes all map onto
:class:`TrainConfig`; the written file holds every option resolved, so
``mlff train --config OUT/config.yaml`` repeats the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlff.errors import DataError

# model hyperparameters per potential and size; explicit --features/--num-layers/--model-option
# win. EGNN: angular channels up to l = 3 and a readout per layer, without coordinate updates
# (chosen on the ethanol benchmark, benchmarks/train_ethanol.py; figures in docs/measurements.md)
_EGNN = {"angular_order": 3, "coordinate_updates": False, "layer_readouts": True}
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "egnn": {
        "small": {"features": 32, "num_layers": 2, "angular_channels": 8, **_EGNN},
        "medium": {"features": 64, "num_layers": 3, "angular_channels": 16, **_EGNN},
        "large": {"features": 128, "num_layers": 4, "angular_channels": 32, **_EGNN},
    },
    "tfn": {
        "small": {"features": 16, "num_layers": 2},
        "medium": {"features": 32, "num_layers": 3},
        "large": {"features": 64, "num_layers": 3},
    },
}
DEVICES = ("auto", "cpu", "cuda")
INIT_MODES = ("auto", "finetune", "freeze", "low-lr")
# what --init-mode auto means: chosen on benchmarks/pretraining.py (docs/measurements.md,
# 2026-12-05: ethanol, 200 labelled frames, 3 seeds: freeze 26.2, low-lr 28.3, finetune 37.7
# meV/Å test force MAE, the EGNN without an encoder 31.8)
AUTO_INIT_MODE = "freeze"
DTYPES = ("float32", "float64")
COMPILE_CHOICES = ("auto", "none", "inductor")
OPTIMIZER_CHOICES = ("auto", "muon", "adamw")


@dataclass
class TrainConfig:
    """All options of ``mlff train`` (units: cutoff Å, lr per step, time limit minutes)."""

    data: list[str] = field(default_factory=list)
    out: str = "mlff_run"
    # data and splits
    valid: str | None = None
    valid_fraction: float = 0.05
    test: str | None = None
    seed: int = 42
    energy_key: str | None = None
    forces_key: str | None = None
    stress_key: str | None = None
    e0: str | None = None
    # model
    potential: str = "egnn"
    encoder: str = "none"
    cutoff: float = 5.0
    size: str = "medium"
    features: int | None = None
    num_layers: int | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    # start from a pretrained Uni-Mol encoder (mlff pretrain's encoder.pt): its weights and sizes;
    # init_mode: finetune (every weight at lr), freeze (encoder fixed), low-lr (the encoder at
    # lr x encoder_lr_ratio) or auto (AUTO_INIT_MODE, the measured best)
    init: str | None = None
    init_mode: str = "auto"
    encoder_lr_ratio: float = 0.1
    # auxiliary denoising (needs encoder unimol): positions of the training frames noised by
    # denoise_sigma Å, the noise recovered through a coordinate head; loss weight 0 = off
    denoise_weight: float = 0.0
    denoise_sigma: float = 0.1
    # loss and optimisation
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    loss: str = "mse"
    huber_delta: float = 0.01
    # per process: a step takes workers x batch_size frames. Chosen on paracetamol's held-out
    # trajectory and on Cu at equal training time (docs/measurements.md, 2026-12-05): a CPU step
    # costs nearly the same per frame at 8 as at 16, so twice the steps. lr 0.02 did better on
    # paracetamol but diverged on Cu
    batch_size: int = 8
    lr: float = 0.01
    weight_decay: float = 0.0
    # muon: Muon on the hidden weight matrices, AdamW on the rest (mlff.training.optimizers);
    # auto: muon for an EGNN without encoder on molecules, else adamw. Measured at equal time
    # (docs/measurements.md, 2026-12-05, third session): Muon cut the held-out force error by
    # 32-59 % on ethanol and paracetamol, and failed to fit Cu's energies and stress
    optimizer: str = "auto"
    schedule: str = "cosine"
    warmup: float = 0.05
    min_lr_ratio: float = 0.01
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    clip_grad: float = 10.0
    ema_decay: float = 0.99
    # stopping
    epochs: int = 1000
    time_limit: float = 9.0
    patience: int = 0
    # running
    device: str = "auto"
    dtype: str = "float32"
    threads: int = 0  # torch CPU threads per process; 0: the cores shared among the processes
    workers: int = 0  # training processes; 0: one per CPU core (one with threads or on a GPU)
    eval_batch_size: int = 64
    progress: str = "auto"
    # training steps through one compiled graph: auto = on a CPU for time limits of at least
    # 5 minutes (mlff.training.compiled), none = eager, inductor = always
    compile: str = "auto"

    def model_hyperparameters(self) -> dict[str, Any]:
        """Potential hyperparameters: the size preset, then explicit widths, then options."""
        presets = SIZES.get(self.potential, {})
        if presets and self.size not in presets:
            raise DataError(f"size must be one of {sorted(presets)}, got {self.size!r}")
        resolved = dict(presets.get(self.size, {}))
        if self.features is not None:
            resolved["features"] = self.features
        if self.num_layers is not None:
            resolved["num_layers"] = self.num_layers
        resolved.update(self.model_options)
        return resolved

    def check(self) -> None:
        """Raise a one-line error for an option out of range."""
        problems = []
        if not self.data:
            problems.append("no training data given")
        for option in dataclasses.fields(self):
            value = getattr(self, option.name)
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{option.name} must be a finite number, got {value}")
        if not 0.0 <= self.valid_fraction < 1.0:
            problems.append(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.cutoff <= 0:
            problems.append(f"cutoff must be positive (Å), got {self.cutoff}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.time_limit < 0:
            problems.append(f"time_limit must be >= 0 minutes (0 = none), got {self.time_limit}")
        for name in ("threads", "workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (0 = automatic), got {getattr(self, name)}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.compile not in COMPILE_CHOICES:
            problems.append(f"compile must be one of {COMPILE_CHOICES}, got {self.compile!r}")
        if self.optimizer not in OPTIMIZER_CHOICES:
            problems.append(f"optimizer must be one of {OPTIMIZER_CHOICES}, got {self.optimizer!r}")
        for name in ("energy_weight", "forces_weight", "stress_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.init_mode not in INIT_MODES:
            problems.append(f"init_mode must be one of {INIT_MODES}, got {self.init_mode!r}")
        elif self.init_mode != "auto" and not self.init:
            problems.append(f"init_mode {self.init_mode!r} needs a pretrained encoder (--init)")
        if not 0.0 < self.encoder_lr_ratio <= 1.0:
            problems.append(f"encoder_lr_ratio must be in (0, 1], got {self.encoder_lr_ratio}")
        if self.denoise_weight < 0:
            problems.append(f"denoise_weight must be >= 0 (0 = off), got {self.denoise_weight}")
        if not self.denoise_sigma > 0:
            problems.append(f"denoise_sigma must be a length > 0 Å, got {self.denoise_sigma}")
        if self.denoise_weight > 0 and self.encoder != "unimol":
            problems.append(
                "denoise_weight > 0 needs --encoder unimol (the denoising head reads its pairs)"
            )
        if problems:
            raise DataError("bad training option: " + "; ".join(problems))


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def options_from_dict(cls: type, values: dict[str, Any], where: str = "config"):
    """An instance of the options dataclass ``cls`` from plain values (``-`` or ``_`` in names);
    unknown keys are refused naming ``where``. ``data`` becomes a list of path strings."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise DataError(
            f"{where}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    if isinstance(values.get("data"), (str, os.PathLike)):
        values["data"] = [values["data"]]
    if values.get("data") is not None:
        values["data"] = [str(p) for p in values["data"]]
    if values.get("model_options") is None:
        values.pop("model_options", None)
    return cls(**values)


def read_options(path: str | os.PathLike, cls: type) -> dict[str, Any]:
    """The option values of the dataclass ``cls`` in a YAML file (a mapping of option name to
    value); unknown names are refused naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()[0]
        raise DataError(f"{path}: not valid YAML ({first})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DataError(f"{path}: a config file must hold a mapping of option: value")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise DataError(
            f"{path}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}"
        )
    return values


def write_options(config: Any, path: str | os.PathLike) -> None:
    """Write every option of the dataclass ``config`` to ``path`` as YAML (atomically)."""
    from mlff.files import atomic_write

    text = yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from plain values; unknown keys are refused naming ``where``."""
    return options_from_dict(TrainConfig, values, where)


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The training options in a YAML file (a mapping of option name to value)."""
    return read_options(path, TrainConfig)


def write_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write every option of ``config`` to ``path`` as YAML (atomically)."""
    write_options(config, path)
