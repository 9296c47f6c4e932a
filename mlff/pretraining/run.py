"""A pretraining run from options to files: structures -> encoder + heads -> loop -> outputs.

Files written in ``config.out``::

    config.yaml          every option, resolved
    encoder.pt           the best EMA weights (lowest validation loss): a pretrained-encoder
                         file for ``mlff train --init`` (not a force field: load_model refuses it)
    checkpoint_last.pt   full state after the last epoch (``mlff pretrain --resume OUT``)
    metrics.csv          one row per epoch: losses per objective, masked-atom accuracy, lr, time
    learning_curves.png  total, masked-atom and denoising losses and lr against epoch
    summary.json         why it stopped, best epoch, elements, final validation figures
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mlff.errors import DataError
from mlff.files import atomic_write
from mlff.pretraining.config import (
    PretrainConfig,
    pretrain_config_from_dict,
    read_pretrain_config,
    write_pretrain_config,
)
from mlff.pretraining.data import StructureSet, check_elements, elements_in, read_unlabelled
from mlff.pretraining.files import pretrained_from_payload, pretrained_payload, save_pretrained
from mlff.pretraining.heads import PretrainingModel
from mlff.pretraining.loop import FIGURES, PretrainingLoop, PretrainSettings
from mlff.pretraining.losses import PretrainingWeights
from mlff.runtime import resolve_device, set_threads
from mlff.training.checkpoint import load_checkpoint, save_checkpoint
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.loop import Progress
from mlff.training.metrics import MetricsLog
from mlff.training.schedule import LearningRateSchedule
from mlff.training.workers import available_cores

ENCODER = "encoder.pt"
LAST = "checkpoint_last.pt"
COLUMNS = (
    ["epoch", "step", "wall_time_s", "lr"]
    + [f"train_{f}" for f in FIGURES]
    + [f"valid_{f}" for f in FIGURES]
)
RESUME_OPTIONS = {"epochs", "time_limit", "patience", "device", "threads", "progress"}


@dataclass
class PretrainResult:
    """What a pretraining run produced."""

    out: Path
    stopped: str
    epochs: int
    steps: int
    elapsed_s: float
    best_epoch: int
    valid: dict | None  # the last validation's figures of the EMA weights


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    permutation = np.random.default_rng(seed).permutation(n)
    n_valid = min(max(1, round(fraction * n)), n - 1) if fraction > 0 else 0
    return np.sort(permutation[n_valid:]), np.sort(permutation[:n_valid])


def _optimizer(model: PretrainingModel, config: PretrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def plot_pretraining_curves(log: MetricsLog, path: str | os.PathLike) -> None:
    """Total, masked-atom and coordinate losses and the learning rate against epoch."""
    from mlff.training.plots import plot_curves

    panels = (
        ("loss", "loss"),
        ("masked atoms: cross-entropy", "atoms_loss"),
        ("coordinates: ((dx + noise) / sigma)^2", "coordinates_loss"),
    )
    plot_curves(log, path, panels, log_scale=False)


def run_pretraining(
    config: PretrainConfig,
    resume: bool = False,
    log: Callable[[str], None] = _log_to_stderr,
    clock: Callable[[], float] | None = None,
) -> PretrainResult:
    """Pretrain as ``config`` says (continue the run in ``config.out`` when ``resume``)."""
    config.check()
    config = replace(config, data=[str(Path(p).expanduser().absolute()) for p in config.data])
    out = Path(config.out)
    if not resume and (out / LAST).is_file():
        raise DataError(
            f"{out} already holds a pretraining run; continue it with --resume {out} "
            "or give another --out"
        )
    device = resolve_device(config.device)
    set_threads(config.threads or (available_cores() if device.type == "cpu" else 0), device)
    checkpoint = load_checkpoint(out / LAST) if resume else None

    structures = read_unlabelled(config.data)
    elements = elements_in(structures)
    torch.manual_seed(config.seed)
    if checkpoint is not None:
        model = pretrained_from_payload(checkpoint["model"], where=str(out / LAST))
        check_elements(structures, model.elements, "pretraining")
        elements = model.elements
    train_index, valid_index = _split(len(structures), config.valid_fraction, config.seed)
    train = StructureSet([structures[i] for i in train_index], config.cutoff, elements)
    valid = StructureSet([structures[i] for i in valid_index], config.cutoff, elements)
    if checkpoint is None:
        model = PretrainingModel(
            elements,
            config.cutoff,
            avg_num_neighbors=train.average_neighbours(),
            **config.encoder_hyperparameters(),
        )
    model = model.to(device=device, dtype=getattr(torch, config.dtype))
    log(
        f"{len(train)} training, {len(valid)} validation structures; elements "
        f"{', '.join(elements)}; {sum(p.numel() for p in model.parameters())} parameters "
        f"(unimol encoder, {config.dtype}, {device})"
    )
    write_pretrain_config(config, out / "config.yaml")

    ema = ExponentialMovingAverage(model, config.ema_decay)
    optimizer = _optimizer(model, config)
    schedule = LearningRateSchedule(
        optimizer, config.lr, "cosine", config.warmup, config.min_lr_ratio
    )
    progress = Progress()
    if checkpoint is not None:
        ema.load_state_dict(checkpoint["ema"])
        ema.model.to(device=device)
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        progress = Progress.from_dict(checkpoint["progress"])
        log(f"resuming {out} after epoch {progress.epoch}, step {progress.step}")
    settings = PretrainSettings(
        batch_size=config.batch_size,
        epochs=config.epochs,
        time_limit_s=config.time_limit * 60.0 if config.time_limit > 0 else None,
        patience=config.patience,
        weights=PretrainingWeights(
            config.atoms_weight, config.coordinates_weight, config.distances_weight
        ),
        noise=config.noise,
        mask_fraction=config.mask_fraction,
        clip_grad=config.clip_grad,
        seed=config.seed,
        eval_batch_size=config.eval_batch_size,
        progress_bar=config.progress == "bar"
        or (config.progress == "auto" and sys.stderr.isatty()),
        log=log,
    )
    if clock is not None:
        settings.clock = clock
    loop = PretrainingLoop(
        model, ema, optimizer, schedule, train, valid or None, settings, progress
    )
    metrics = MetricsLog(out / "metrics.csv", COLUMNS)
    if checkpoint is not None:
        metrics.load(progress.epoch)
    last_row: dict = {}

    def state() -> dict:
        return {
            "model": pretrained_payload(model),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "progress": loop.progress.as_dict(),
            "config": json.dumps(asdict(config)),
        }

    def on_validation(row: dict, improved: bool) -> None:
        last_row.clear()
        last_row.update(row)
        metrics.append(row)
        if improved:
            save_pretrained(ema.model, out / ENCODER)

    def save_if_missing() -> None:
        if not (out / ENCODER).is_file():
            save_pretrained(ema.model, out / ENCODER)

    loop.on_validation = on_validation
    loop.on_checkpoint = lambda: save_checkpoint(out / LAST, state())
    loop.on_signal = save_if_missing
    progress = loop.run()
    save_if_missing()
    if metrics.rows:
        plot_pretraining_curves(metrics, out / "learning_curves.png")
    valid_figures = {k[6:]: v for k, v in last_row.items() if k.startswith("valid_")} or None
    summary = {
        "stopped": progress.stopped,
        "epochs": progress.epoch,
        "steps": progress.step,
        "training_time_s": progress.elapsed,
        "best_epoch": progress.best_epoch,
        "elements": list(elements),
        "cutoff": config.cutoff,
        "encoder": model.encoder_hyperparameters,
        "valid": valid_figures,
    }
    text = json.dumps(summary, indent=2)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return PretrainResult(
        out=out,
        stopped=progress.stopped,
        epochs=progress.epoch,
        steps=progress.step,
        elapsed_s=progress.elapsed,
        best_epoch=progress.best_epoch,
        valid=valid_figures,
    )


def pretrain_config_for_resume(out: str | os.PathLike, overrides: dict) -> PretrainConfig:
    """The options of the run in ``out`` with ``overrides`` (stopping and running options)."""
    refused = sorted(set(overrides) - RESUME_OPTIONS)
    if refused:
        raise DataError(
            f"--resume continues {out} with its own options; only "
            f"{', '.join(sorted(RESUME_OPTIONS))} may change (got {', '.join(refused)})"
        )
    if not (Path(out) / LAST).is_file():
        raise DataError(f"{out}: no {LAST} to resume from")
    values = read_pretrain_config(Path(out) / "config.yaml")
    values.update(overrides)
    values["out"] = str(out)
    return pretrain_config_from_dict(values, where=str(Path(out) / "config.yaml"))
