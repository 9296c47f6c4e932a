"""What a training run leaves in its output folder, and how a run there is resumed.

File names, the metrics columns, :class:`RunFiles` (the hooks that write the best model and the
checkpoints while the loop runs), :func:`finish_run` (final figures, plots and summary.json) and
:func:`config_for_resume` (the options a resumed run may change). See :mod:`mlff.training.run`
for the list of files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlff.errors import DataError
from mlff.files import atomic_write, load_model, save_model
from mlff.training.checkpoint import save_checkpoint
from mlff.training.config import TrainConfig, config_from_dict
from mlff.training.evaluation import evaluate_set
from mlff.training.metrics import FIGURES, MetricsLog
from mlff.training.optimizers import optimizer_name
from mlff.training.plots import plot_learning_curves, plot_parity

MODEL = "model.pt"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
METRICS_COLUMNS = (
    ["epoch", "step", "wall_time_s", "lr", "train_loss", "valid_loss"]
    + [f"train_{f}" for f in FIGURES]
    + [f"valid_{f}" for f in FIGURES]
)


@dataclass
class TrainResult:
    """What a run produced (figures in meV units, see :mod:`mlff.training.metrics`)."""

    out: Path
    stopped: str
    epochs: int
    steps: int
    elapsed_s: float
    best_epoch: int
    valid: dict | None
    test: dict | None


class RunFiles:
    """Writes the outputs of a run (rank 0 only)."""

    def __init__(self, out: Path, state: Callable[[], dict], ema, metrics: MetricsLog) -> None:
        self.out = out
        self.state = state
        self.ema = ema
        self.metrics = metrics

    def on_validation(self, row: dict, improved: bool) -> None:
        self.metrics.append(row)
        if improved:
            save_model(self.ema.model, self.out / MODEL)
            save_checkpoint(self.out / BEST, self.state())

    def on_checkpoint(self) -> None:
        save_checkpoint(self.out / LAST, self.state())

    def on_signal(self) -> None:
        if not (self.out / MODEL).is_file():
            save_model(self.ema.model, self.out / MODEL)


def finish_run(config, out, data, statistics, progress, metrics, loop, log) -> TrainResult:
    """Final figures of model.pt on the validation and test sets, plots and summary.json."""
    if not (out / MODEL).is_file():
        save_model(loop.ema.model, out / MODEL)
    if metrics.rows:
        plot_learning_curves(metrics, out / "learning_curves.png")
    best = load_model(out / MODEL, device=loop.model.device)
    figures = {}
    for name, part in (("valid", data.valid), ("test", data.test)):
        if part is None or progress.stopped in ("SIGINT", "SIGTERM"):
            continue
        errors = evaluate_set(best, part, config.eval_batch_size, keep=True)
        figures[name] = {
            **errors.figures(),
            "n_structures": errors.n_structures,
            "n_atoms": errors.n_atoms,
        }
        plot_parity(errors, out / f"parity_{name}.png", name)
    result = TrainResult(
        out=out,
        stopped=progress.stopped,
        epochs=progress.epoch,
        steps=progress.step,
        elapsed_s=progress.elapsed,
        best_epoch=progress.best_epoch,
        valid=figures.get("valid"),
        test=figures.get("test"),
    )
    summary = {
        "stopped": result.stopped,
        "epochs": result.epochs,
        "steps": result.steps,
        "training_time_s": result.elapsed_s,
        "best_epoch": result.best_epoch,
        "compile": loop.settings.compile,
        "optimizer": optimizer_name(loop.optimizer),
        "statistics": statistics.as_dict(),
        "valid": result.valid,
        "test": result.test,
    }
    text = json.dumps(summary, indent=2)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return result


def config_for_resume(out: str | os.PathLike, overrides: dict) -> TrainConfig:
    """The options of the run in ``out`` with ``overrides`` (stopping and running options only)."""
    from mlff.training.config import read_config

    allowed = {
        "epochs",
        "time_limit",
        "patience",
        "device",
        "threads",
        "workers",
        "progress",
        "compile",
    }
    refused = sorted(set(overrides) - allowed)
    if refused:
        raise DataError(
            f"--resume continues {out} with its own options; only "
            f"{', '.join(sorted(allowed))} may change (got {', '.join(refused)})"
        )
    path = Path(out) / "config.yaml"
    if not (Path(out) / LAST).is_file():
        raise DataError(f"{out}: no {LAST} to resume from")
    values = read_config(path)
    values.update(overrides)
    values["out"] = str(out)
    return config_from_dict(values, where=str(path))
