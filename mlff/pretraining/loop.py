"""The pretraining engine: epochs of corrupted batches, validation of the EMA weights, stopping.

One step: a batch of structures -> corruption (hidden elements, noised positions, neighbour list
of the noised positions; a random stream fixed by the seed and the step, so a resumed run draws
the same) -> heads -> losses -> backward -> clipping -> AdamW -> EMA -> learning rate. After each
epoch the EMA weights are scored on the validation structures under one fixed corruption, so
validation losses of different epochs are comparable.

Stopping follows ``mlff train``: epochs, time limit (training time over all sessions of the run),
``patience`` validations without improvement, a non-finite loss, SIGINT/SIGTERM (the step ends,
the checkpoint is written). One process: pretraining has no data-parallel workers.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mlff.forces import edge_vectors
from mlff.pretraining.data import StructureSet
from mlff.pretraining.heads import PretrainingModel
from mlff.pretraining.losses import PretrainingWeights, pretraining_losses, total_pretraining_loss
from mlff.pretraining.masking import Corruption, corrupt, generator
from mlff.signals import GracefulStop
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.loop import Progress, limit_reached
from mlff.training.schedule import LearningRateSchedule

FIGURES = ("loss", "atoms_loss", "atoms_accuracy", "coordinates_loss", "distances_loss")


@dataclass
class PretrainSettings:
    """How to pretrain (see :class:`~mlff.pretraining.config.PretrainConfig`)."""

    batch_size: int = 8
    epochs: int = 1000
    time_limit_s: float | None = None
    patience: int = 0
    weights: PretrainingWeights = field(default_factory=PretrainingWeights)
    noise: float = 0.1  # Å
    mask_fraction: float = 0.15
    clip_grad: float = 10.0
    seed: int = 42
    eval_batch_size: int = 64
    progress_bar: bool = False
    log: Callable[[str], None] = print
    clock: Callable[[], float] = time.perf_counter


def predict_and_score(
    model: PretrainingModel, corruption: Corruption, species: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The loss terms of ``model`` on one corrupted batch (all on the model's device)."""
    graph = corruption.graph
    vectors = edge_vectors(graph.positions, graph.cell, graph)
    output = model(species, graph.edge_index, vectors, corruption.masked)
    return pretraining_losses(output, corruption, species)


class _Figures:
    """Sums of the loss terms over batches, weighted by structures."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(FIGURES, 0.0)
        self.counts = dict.fromkeys(FIGURES, 0)

    def add(self, terms: dict[str, torch.Tensor], loss: float, n: int) -> None:
        values = {"loss": loss, **{f"{k}_loss": terms[k] for k in ("atoms", "coordinates")}}
        values["distances_loss"] = terms["distances"]
        if "atoms_accuracy" in terms:
            values["atoms_accuracy"] = terms["atoms_accuracy"]
        for name, value in values.items():
            self.sums[name] += float(value) * n
            self.counts[name] += n

    def figures(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in FIGURES if self.counts[k]}


class PretrainingLoop:
    """Pretrains ``model`` on ``train`` and validates its EMA on ``valid``.

    Hooks: ``on_validation(row, improved)``, ``on_checkpoint()``, ``on_signal()``, as in
    :class:`~mlff.training.loop.TrainingLoop`.
    """

    def __init__(
        self,
        model: PretrainingModel,
        ema: ExponentialMovingAverage,
        optimizer: torch.optim.Optimizer,
        schedule: LearningRateSchedule,
        train: StructureSet,
        valid: StructureSet | None,
        settings: PretrainSettings,
        progress: Progress | None = None,
    ) -> None:
        self.model = model
        self.ema = ema
        self.optimizer = optimizer
        self.schedule = schedule
        self.train = train
        self.valid = valid if valid is not None and len(valid) else None
        self.settings = settings
        self.progress = progress or Progress()
        self.on_validation: Callable[[dict, bool], None] = lambda row, improved: None
        self.on_checkpoint: Callable[[], None] = lambda: None
        self.on_signal: Callable[[], None] = lambda: None
        self.steps_per_epoch = len(train.chunks(settings.batch_size))
        self._valid_batches: list[tuple[Corruption, torch.Tensor]] | None = None
        self._train_figures: dict[str, float] = {}
        self._elapsed_at_start = 0.0
        self._session_start = 0.0

    def elapsed(self) -> float:
        """Training time of the run so far (s), this session included."""
        return self._elapsed_at_start + (self.settings.clock() - self._session_start)

    def fraction(self) -> float:
        """Progress in [0, 1]: the larger of steps done / planned and time used / limit."""
        fraction = self.progress.step / (self.settings.epochs * self.steps_per_epoch)
        if self.settings.time_limit_s:
            fraction = max(fraction, self.progress.elapsed / self.settings.time_limit_s)
        return min(fraction, 1.0)

    def _corrupt(self, graph, stream: int, index: int) -> Corruption:
        settings = self.settings
        return corrupt(
            graph,
            self.model.cutoff,
            settings.noise,
            settings.mask_fraction if settings.weights.atoms > 0 else 0.0,
            generator(settings.seed, stream, index),
        )

    def _step(self, indices: np.ndarray, figures: _Figures) -> float:
        model, settings = self.model, self.settings
        graph, species = self.train.batch(indices)
        corruption = self._corrupt(graph, 0, self.progress.step).to(model.device, model.dtype)
        terms = predict_and_score(model, corruption, species.to(model.device))
        loss = total_pretraining_loss(terms, settings.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad)
        self.optimizer.step()
        self.ema.update(model)
        value = float(loss.detach())
        figures.add({k: v.detach() for k, v in terms.items()}, value, len(indices))
        return value

    def _stop_reason(self, stop: GracefulStop, loss: float) -> str:
        self.progress.elapsed = self.elapsed()
        if stop.signal_name:
            return stop.signal_name
        if not math.isfinite(loss):
            return "non-finite loss"
        if self.settings.time_limit_s and self.progress.elapsed >= self.settings.time_limit_s:
            return "time limit"
        return ""

    def _epoch(self, stop: GracefulStop) -> str:
        progress, settings = self.progress, self.settings
        order = np.random.default_rng([settings.seed, progress.epoch]).permutation(len(self.train))
        chunks = self.train.chunks(settings.batch_size, order)
        chunks = itertools.islice(chunks, progress.batch, None)
        figures = _Figures()
        bar = None
        if settings.progress_bar:
            from tqdm import tqdm

            bar = tqdm(
                total=self.steps_per_epoch,
                initial=progress.batch,
                desc=f"epoch {progress.epoch + 1}",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        reason = ""
        for indices in chunks:
            loss = self._step(indices, figures)
            progress.batch += 1
            progress.step += 1
            reason = self._stop_reason(stop, loss)
            self.schedule.step(self.fraction())
            if bar is not None:
                bar.update()
                bar.set_postfix_str(f"loss {loss:.4g}", refresh=False)
            if reason:
                break
        if bar is not None:
            bar.close()
        self._train_figures = figures.figures()
        if progress.batch >= self.steps_per_epoch:
            progress.epoch += 1
            progress.batch = 0
        return reason

    @torch.no_grad()
    def evaluate(self, model: PretrainingModel, structures: StructureSet) -> dict[str, float]:
        """Loss figures of ``model`` on ``structures`` under the fixed validation corruption."""
        if self._valid_batches is None or structures is not self.valid:
            batches = []
            for k, indices in enumerate(structures.chunks(self.settings.eval_batch_size)):
                graph, species = structures.batch(indices)
                batches.append((self._corrupt(graph, 1, k), species))
            if structures is self.valid:
                self._valid_batches = batches
        else:
            batches = self._valid_batches
        figures = _Figures()
        for corruption, species in batches:
            corruption = corruption.to(model.device, model.dtype)
            terms = predict_and_score(model, corruption, species.to(model.device))
            loss = float(total_pretraining_loss(terms, self.settings.weights))
            figures.add(terms, loss, corruption.graph.n_graphs)
        return figures.figures()

    def validate(self) -> tuple[dict, bool]:
        """Score the EMA weights; return the metrics row and whether they are the best so far."""
        progress = self.progress
        row: dict = {
            "epoch": progress.epoch + (1 if progress.batch else 0),
            "step": progress.step,
            "lr": self.schedule.lr,
            "wall_time_s": self.elapsed(),
        }
        row.update({f"train_{k}": v for k, v in self._train_figures.items()})
        score = row.get("train_loss", math.nan)
        if self.valid is not None:
            figures = self.evaluate(self.ema.model, self.valid)
            row.update({f"valid_{k}": v for k, v in figures.items()})
            score = figures["loss"]
        improved = bool(score < progress.best_loss)  # False for a NaN score
        if improved:
            progress.best_loss, progress.best_epoch, progress.stale = float(score), row["epoch"], 0
        else:
            progress.stale += 1
        return row, improved

    def _describe(self, row: dict) -> str:
        def figure(name: str) -> str:
            value = row.get(name)
            return "-" if value is None else f"{value:.3g}"

        text = (
            f"epoch {row['epoch']:4d}  step {row['step']:6d}  {row['wall_time_s']:7.1f} s  "
            f"lr {row['lr']:.2e}  train loss {figure('train_loss')}"
        )
        if self.valid is not None:
            text += (
                f"  valid loss {figure('valid_loss')}  atoms {figure('valid_atoms_loss')} "
                f"(acc {figure('valid_atoms_accuracy')})  coords {figure('valid_coordinates_loss')}"
            )
        return text

    def _limits_reached(self) -> str:
        return limit_reached(self.progress, self.settings)

    def run(self) -> Progress:
        """Pretrain until a stopping condition; return the final :class:`Progress`."""
        progress = self.progress
        progress.stopped = ""
        self._elapsed_at_start = progress.elapsed
        self._session_start = self.settings.clock()
        reason = self._limits_reached()
        if reason:
            progress.stopped = reason
            return progress
        self.schedule.step(self.fraction())
        with GracefulStop() as stop:
            while not progress.stopped:
                reason = self._epoch(stop)
                if reason in ("SIGINT", "SIGTERM"):
                    progress.stopped = reason
                    self.settings.log(
                        f"{reason}: stopped at epoch {progress.epoch + 1}, step {progress.step}; "
                        "saving"
                    )
                    self.on_checkpoint()
                    self.on_signal()
                    break
                start = self.settings.clock()
                row, improved = self.validate()
                self._elapsed_at_start -= self.settings.clock() - start  # not training time
                progress.stopped = reason or self._limits_reached()
                self.settings.log(self._describe(row))
                self.on_validation(row, improved)
                self.on_checkpoint()
        return progress
