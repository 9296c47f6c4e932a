"""The training engine: epochs of optimiser steps, validation of the EMA weights, and stopping.

One step: batch -> energies and forces (``create_graph=True``) -> loss -> backward (gradients
averaged over processes by DistributedDataParallel) -> gradient-norm clipping -> optimiser
(Muon and AdamW, or AdamW: :mod:`.optimizers`) -> EMA update -> learning rate for the new
progress. After each epoch the EMA weights are validated; the hooks then write metrics,
checkpoints and the best model.

The run stops after ``epochs``, at the time limit (training wall time over all sessions of the
run), after ``patience`` validations without improvement, when the loss is no longer finite
(diverged; model.pt keeps the best weights before), or on SIGINT/SIGTERM. A signal ends
the current step, then the last checkpoint is written and the run returns; a second Ctrl-C
raises ``KeyboardInterrupt`` at once. Every process takes the same decision: the stop flags and
the clock are reduced over processes at each step.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from mlff.signals import GracefulStop
from mlff.training.compiled import EnergyAndForces
from mlff.training.dataset import GraphSet
from mlff.training.denoising import DenoisingStep, denoising_loss, noised_batch
from mlff.training.distributed import Distributed
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.evaluation import evaluate_set
from mlff.training.loss import LossWeights, loss_terms, total_loss
from mlff.training.metrics import ErrorAccumulator
from mlff.training.schedule import LearningRateSchedule


@dataclass
class LoopSettings:
    """How to train (see :class:`~mlff.training.config.TrainConfig` for the meanings)."""

    batch_size: int = 16
    epochs: int = 1000
    time_limit_s: float | None = None  # seconds of training wall time; None = no limit
    patience: int = 0  # validations without improvement before stopping; 0 = never
    weights: LossWeights = field(default_factory=LossWeights)
    loss: str = "mse"
    huber_delta: float = 0.01
    clip_grad: float = 10.0  # max gradient norm; 0 = no clipping
    seed: int = 42
    eval_batch_size: int = 64
    progress_bar: bool = False
    log: Callable[[str], None] = print
    # seconds; wall time by default (time.process_time measures this process alone, for
    # comparing settings on a shared machine)
    clock: Callable[[], float] = time.perf_counter
    # auxiliary denoising, with a denoiser given to the loop (mlff.training.denoising): loss
    # weight and noise (Å)
    denoise_weight: float = 0.0
    denoise_sigma: float = 0.1
    # "none" (eager) or "inductor": the step's energies, forces and backward as one compiled
    # graph (mlff.training.compiled); compile_backend is torch.compile's (tests: "aot_eager")
    compile: str = "none"
    compile_backend: str = "inductor"


@dataclass
class Progress:
    """Where a run stands; saved in checkpoints so a resumed run continues from here."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current epoch
    step: int = 0  # optimiser steps in all
    elapsed: float = 0.0  # training wall time over all sessions, s
    best_loss: float = math.inf  # best validation loss so far
    best_epoch: int = 0
    stale: int = 0  # validations since the best one
    # training time spent in the first step of each session while it compiled the step (s);
    # the learning-rate schedule runs on the time after it
    compile_s: float = 0.0
    # why the run stopped: epochs, time limit, early stopping, SIGINT, SIGTERM, non-finite loss
    stopped: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Progress:
        return cls(**values)


def limit_reached(progress: Progress, settings) -> str:
    """Which limit of ``settings`` (``epochs``, ``time_limit_s``, ``patience``) ``progress`` has
    reached: "epochs", "time limit", "early stopping", or "" for none. Shared by pretraining."""
    if progress.epoch >= settings.epochs:
        return "epochs"
    if settings.time_limit_s and progress.elapsed >= settings.time_limit_s:
        return "time limit"
    if settings.patience and progress.stale >= settings.patience:
        return "early stopping"
    return ""


# the module a step calls (kept under its old name for benchmarks/training_step.py)
_EnergyAndForces = EnergyAndForces


class TrainingLoop:
    """Trains ``model`` on ``train`` and validates its EMA on ``valid``.

    Hooks (called on rank 0 only): ``on_validation(row, improved)`` after each validation,
    ``on_checkpoint()`` when the last checkpoint should be written, ``on_signal()`` when a
    signal stopped the run. ``monitors`` are called as ``monitor(loop)`` after each validation,
    on every process that has them, with the training clock of every process paused (the
    benchmark evaluates a test set there).
    """

    def __init__(
        self,
        model: nn.Module,
        ema: ExponentialMovingAverage,
        optimizer: torch.optim.Optimizer,
        schedule: LearningRateSchedule,
        train: GraphSet,
        valid: GraphSet | None,
        settings: LoopSettings,
        context: Distributed | None = None,
        progress: Progress | None = None,
        denoiser: nn.Module | None = None,
    ) -> None:
        self.model = model
        self.denoiser = denoiser
        self._trained_parameters = list(model.parameters()) + (
            list(denoiser.parameters()) if denoiser is not None else []
        )
        self.ema = ema
        self.optimizer = optimizer
        self.schedule = schedule
        self.train = train
        self.valid = valid if valid is not None and len(valid) else None
        self.settings = settings
        self.context = context or Distributed()
        self.progress = progress or Progress()
        self.on_validation: Callable[[dict, bool], None] = lambda row, improved: None
        self.on_checkpoint: Callable[[], None] = lambda: None
        self.on_signal: Callable[[], None] = lambda: None
        self.monitors: list[Callable[[TrainingLoop], None]] = []
        self.steps_per_epoch = train.n_batches(settings.batch_size, self.context.world_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(train)} training frames make no full batch for each of "
                f"{self.context.world_size} processes; use a smaller --batch-size"
            )
        module = EnergyAndForces(
            model,
            train.any_forces,
            train.any_stress,
            compile=settings.compile,
            backend=settings.compile_backend,
        )
        if denoiser is not None:
            module = DenoisingStep(module, denoiser)
        if self.context.enabled:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [model.device] if model.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=device_ids)
        self.forward = module
        self._compile_pending = settings.compile != "none"
        self._session_start = 0.0
        self._elapsed_at_start = 0.0
        self._train_figures: ErrorAccumulator | None = None  # of the last epoch
        self._last_valid = ""  # validation figures shown beside the progress bar

    # -- clock and progress --------------------------------------------------------------
    def elapsed(self) -> float:
        """Training wall time of the run so far (s), this session included."""
        return self._elapsed_at_start + (self.settings.clock() - self._session_start)

    def fraction(self) -> float:
        """Progress in [0, 1]: the larger of steps done / planned and time used / limit."""
        total_steps = self.settings.epochs * self.steps_per_epoch
        fraction = self.progress.step / total_steps
        if self.settings.time_limit_s:
            # compiling is training time, but the schedule spans the time left after it
            compiling = self.progress.compile_s
            usable = self.settings.time_limit_s - compiling
            used = (self.progress.elapsed - compiling) / usable if usable > 0 else 1.0
            fraction = max(fraction, used)
        return min(fraction, 1.0)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not counted as training time."""
        start = self.settings.clock()
        try:
            yield
        finally:
            self._elapsed_at_start -= self.settings.clock() - start

    def _sync_clock_and_stop(self, stop: GracefulStop, loss: float) -> str:
        """Agree over processes on the elapsed time and on stopping; return the reason or ''."""
        local = torch.tensor(
            [
                self.elapsed(),
                1.0 if stop.signal_name == "SIGINT" else 0.0,
                1.0 if stop.signal_name == "SIGTERM" else 0.0,
                0.0 if math.isfinite(loss) else 1.0,
                self.progress.compile_s,
            ],
            dtype=torch.float64,
        )
        agreed = self.context.max(local)
        self.progress.elapsed = float(agreed[0])
        self.progress.compile_s = float(agreed[4])  # the same schedule on every process
        if agreed[2] > 0:
            return "SIGTERM"
        if agreed[1] > 0:
            return "SIGINT"
        if agreed[3] > 0:
            return "non-finite loss"
        if self.settings.time_limit_s and self.progress.elapsed >= self.settings.time_limit_s:
            return "time limit"
        return ""

    # -- one step, one epoch ---------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        """This epoch's shuffled frame order: the same on every process and after a resume."""
        return np.random.default_rng([self.settings.seed, epoch]).permutation(len(self.train))

    def _step(self, batch, accumulator: ErrorAccumulator) -> float:
        settings = self.settings
        noised = None
        if self.denoiser is not None:
            noised = noised_batch(
                batch.graph, self.model.cutoff, settings.denoise_sigma, settings.seed,
                self.context.rank, self.progress.step, self.model.device, self.model.dtype,
            )  # fmt: skip
        batch = batch.to(self.model.device, self.model.dtype)
        out = (
            self.forward(batch.graph) if noised is None else self.forward(batch.graph, noised.graph)
        )
        loss = total_loss(
            loss_terms(out, batch, settings.loss, settings.huber_delta), settings.weights
        )
        if noised is not None:
            denoise = denoising_loss(out.pop("denoise"), noised.noise, noised.sigma)
            loss = loss + settings.denoise_weight * denoise.to(loss.dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if settings.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self._trained_parameters, settings.clip_grad)
        self.optimizer.step()
        self.ema.update(self.model)
        value = float(loss.detach())
        accumulator.update({k: v.detach() for k, v in out.items()}, batch, value)
        return value

    def _epoch(self, stop: GracefulStop) -> str:
        """Run the rest of the current epoch; return why it ended early ('' if it did not)."""
        progress, settings = self.progress, self.settings
        batches = self.train.batches(
            settings.batch_size,
            self._order(progress.epoch),
            rank=self.context.rank,
            world_size=self.context.world_size,
        )
        batches = itertools.islice(batches, progress.batch, None)
        accumulator = ErrorAccumulator()
        bar = None
        if settings.progress_bar and self.context.is_main:
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
        for batch in batches:
            started = settings.clock() if self._compile_pending else None
            loss = self._step(batch, accumulator)
            if started is not None:  # this session's first step compiled the graph
                self._compile_pending = False
                progress.compile_s += settings.clock() - started
            progress.batch += 1
            progress.step += 1
            reason = self._sync_clock_and_stop(stop, loss)
            self.schedule.step(self.fraction())
            if bar is not None:
                bar.update()
                bar.set_postfix_str(f"loss {loss:.4g} {self._last_valid}", refresh=False)
            if reason:
                break
        if bar is not None:
            bar.close()
        accumulator.all_reduce(self.context.sum)
        self._train_figures = accumulator
        if progress.batch >= self.steps_per_epoch:
            progress.epoch += 1
            progress.batch = 0
        return reason

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> tuple[dict, bool]:
        """Validate the EMA weights; return the metrics row and whether they are the best."""
        progress, settings = self.progress, self.settings
        row: dict = {
            "epoch": progress.epoch + (1 if progress.batch else 0),
            "step": progress.step,
            "lr": self.schedule.lr,
        }
        train = self._train_figures
        if train is not None:
            row["train_loss"] = train.loss
            row.update({f"train_{k}": v for k, v in train.figures().items()})
        if self.valid is not None:
            valid = evaluate_set(
                self.ema.model,
                self.valid,
                settings.eval_batch_size,
                settings.weights,
                settings.loss,
                settings.huber_delta,
                context=self.context,
            )
            row["valid_loss"] = valid.loss
            row.update({f"valid_{k}": v for k, v in valid.figures().items()})
            score = valid.loss
        else:
            score = row.get("train_loss", math.nan)
        progress.elapsed = float(
            self.context.max(torch.tensor([self.elapsed()], dtype=torch.float64))[0]
        )
        row["wall_time_s"] = progress.elapsed
        improved = bool(score < progress.best_loss) or self.valid is None
        if improved:
            progress.best_loss = float(score)
            progress.best_epoch = row["epoch"]
            progress.stale = 0
        else:
            progress.stale += 1
        self.schedule.validated(float(score))
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
                f"  valid loss {figure('valid_loss')}  E {figure('valid_energy_mae_mev_per_atom')}"
                f" meV/atom  F {figure('valid_forces_mae_mev_per_a')} meV/Å"
            )
            self._last_valid = (
                f"| valid E {figure('valid_energy_mae_mev_per_atom')} "
                f"F {figure('valid_forces_mae_mev_per_a')}"
            )
        return text

    # -- the run ---------------------------------------------------------------------------
    def _limits_reached(self) -> str:
        return limit_reached(self.progress, self.settings)

    def run(self) -> Progress:
        """Train until a stopping condition; return the final :class:`Progress`."""
        progress = self.progress
        progress.stopped = ""
        self._elapsed_at_start = progress.elapsed
        self._session_start = self.settings.clock()
        reason = self._limits_reached()
        if reason:
            progress.stopped = reason
            return progress
        self.schedule.step(self.fraction())
        with GracefulStop() as stop, warnings.catch_warnings():
            # DDP compares the strides of gradients with its buckets' also along dimensions of
            # size 1 (a (1, n) weight), where they do not change the layout: a false alarm
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
            while not progress.stopped:
                reason = self._epoch(stop)
                if reason in ("SIGINT", "SIGTERM"):
                    progress.stopped = reason
                    if self.context.is_main:
                        self.settings.log(
                            f"{reason}: stopped at epoch {progress.epoch + 1}, "
                            f"step {progress.step}; saving"
                        )
                        self.on_checkpoint()
                        self.on_signal()
                    break
                row, improved = self.validate()
                progress.stopped = reason or self._limits_reached()
                if self.context.is_main:
                    self.settings.log(self._describe(row))
                    self.on_validation(row, improved)
                    self.on_checkpoint()
                with self.paused():
                    for monitor in self.monitors:
                        monitor(self)
                    # processes with other monitors (or none) wait here, their clocks paused
                    self.context.barrier()
        self.context.barrier()
        return progress
