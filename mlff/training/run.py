"""A training run from options to files: data -> statistics -> model -> loop -> outputs.

Files written in ``config.out``::

    config.yaml           every option, resolved (``mlff train --config`` repeats the run)
    model.pt              the best EMA weights (lowest validation loss), an mlff model file
    checkpoint_last.pt    full state after the last epoch (``mlff train --resume OUT``)
    checkpoint_best.pt    full state at the best validation
    metrics.csv           one row per epoch: losses, MAE/RMSE train and valid, lr, wall time
    learning_curves.png   loss / energy MAE / force MAE / lr against epoch
    parity_valid.png      parity plots of model.pt on the validation set (and parity_test.png)
    summary.json          why it stopped, best epoch, statistics, final valid and test figures
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from mlff.builder import build_model
from mlff.data import LabelKeys, LabelledFrame, elements_of, read_labelled, split_indices
from mlff.errors import DataError
from mlff.files import model_from_payload, model_payload
from mlff.pretraining.files import PretrainedEncoder, check_compatible, read_encoder
from mlff.runtime import keep_freed_memory, resolve_device, set_threads
from mlff.training.checkpoint import load_checkpoint
from mlff.training.compiled import resolve_train_compile
from mlff.training.config import AUTO_INIT_MODE, TrainConfig, write_config
from mlff.training.dataset import GraphSet
from mlff.training.denoising import Denoiser
from mlff.training.distributed import (
    Distributed,
    init_distributed,
    launched_by_torchrun,
    shutdown,
)
from mlff.training.ema import ExponentialMovingAverage
from mlff.training.loop import LoopSettings, Progress, TrainingLoop
from mlff.training.loss import LossWeights
from mlff.training.metrics import MetricsLog
from mlff.training.optimizers import make_optimizer, resolve_optimizer
from mlff.training.outputs import (
    LAST,
    METRICS_COLUMNS,
    RunFiles,
    TrainResult,
    finish_run,
)
from mlff.training.schedule import LearningRateSchedule
from mlff.training.statistics import data_statistics, read_reference_energies
from mlff.training.workers import available_cores, count_workers, worker_processes


@dataclass
class Datasets:
    train: GraphSet
    valid: GraphSet | None
    test: GraphSet | None
    elements: list[str]


def load_datasets(config: TrainConfig) -> Datasets:
    """Read, label-check, split and graph the training, validation and test data."""
    keys = LabelKeys(config.energy_key, config.forces_key, config.stress_key)
    frames = read_labelled(config.data, keys)
    if config.valid:
        train_frames, valid_frames = frames, read_labelled(config.valid, keys)
    else:
        source = ", ".join(str(path) for path in config.data)
        train_index, valid_index = split_indices(
            len(frames), config.valid_fraction, config.seed, source
        )
        train_frames = [frames[i] for i in train_index]
        valid_frames = [frames[i] for i in valid_index]
    test_frames = read_labelled(config.test, keys) if config.test else []
    elements = elements_of(train_frames)
    for name, part in (("validation", valid_frames), ("test", test_frames)):
        _check_elements(part, elements, name)
    return Datasets(
        train=GraphSet(train_frames, config.cutoff),
        valid=GraphSet(valid_frames, config.cutoff) if valid_frames else None,
        test=GraphSet(test_frames, config.cutoff) if test_frames else None,
        elements=elements,
    )


def _check_elements(frames: Sequence[LabelledFrame], elements: list[str], name: str) -> None:
    for frame in frames:
        unknown = sorted(set(frame.atoms.get_chemical_symbols()) - set(elements))
        if unknown:
            raise DataError(
                f"{frame.where}: {name} frame holds {', '.join(unknown)}, absent from the "
                f"training data (elements {', '.join(elements)})"
            )


def _build(config: TrainConfig, data: Datasets, pretrained: PretrainedEncoder | None = None):
    """The model and the data statistics; with ``pretrained`` (``--init``), its encoder's sizes
    and weights, once they fit the data and options."""
    reference = read_reference_energies(config.e0, data.elements) if config.e0 else None
    statistics = data_statistics(data.train, data.elements, reference)
    elements, hyperparameters = data.elements, config.model_hyperparameters()
    if pretrained is not None:
        check_compatible(pretrained, data.elements, config.cutoff, config.encoder, hyperparameters)
        elements = pretrained.elements  # the encoder's species order
        hyperparameters = {**hyperparameters, **pretrained.model_hyperparameters()}
    model = build_model(
        potential=config.potential,
        encoder=config.encoder,
        elements=elements,
        cutoff=config.cutoff,
        reference_energies=statistics.reference_energies,
        energy_scale=statistics.energy_scale,
        energy_shift=statistics.energy_shift,
        avg_num_neighbors=statistics.avg_num_neighbors,
        **hyperparameters,
    )
    if pretrained is not None:
        model.encoder.load_state_dict(pretrained.encoder_state)
    return model, statistics


def _parameter_groups(model, config: TrainConfig, extra: list) -> list[dict]:
    """The optimiser's parameter groups: one, or with ``--init`` under ``--init-mode low-lr``
    the encoder apart at ``encoder_lr_ratio`` times the rate; ``freeze`` fixes the encoder."""
    mode = AUTO_INIT_MODE if config.init_mode == "auto" else config.init_mode
    if not config.init or mode == "finetune":
        return [{"params": list(model.parameters()) + extra}]
    encoder = list(model.encoder.parameters())
    mine = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in mine] + extra
    if mode == "freeze":
        for parameter in encoder:
            parameter.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": rest}, {"params": encoder, "lr_scale": config.encoder_lr_ratio}]


def _optimizer(model, config: TrainConfig, kind: str, extra: list | None = None):
    """The optimiser ``kind`` ("muon" or "adamw", :mod:`mlff.training.optimizers`) over the
    parameter groups. ``extra``: parameters trained besides the model's (the denoising head)."""
    groups = _parameter_groups(model, config, list(extra or []))
    names = {id(p): name for name, p in model.named_parameters()}
    return make_optimizer(kind, groups, names, config.lr, config.weight_decay)


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_training(
    config: TrainConfig,
    resume: bool = False,
    log: Callable[[str], None] = _log_to_stderr,
    monitors: Sequence[Callable[[TrainingLoop], None]] = (),
    clock: Callable[[], float] | None = None,
) -> TrainResult:
    """Train as ``config`` says (continue from ``config.out`` when ``resume``); see module doc.

    ``log`` receives the progress lines; ``monitors`` are called after each validation with
    the training clock paused; ``clock`` (seconds) replaces wall time for the time limit.

    Processes: under ``torchrun`` this is one of its processes. Otherwise the run takes
    ``config.workers`` processes (0: one per available CPU core, see
    :func:`~mlff.training.workers.count_workers`); this process is the first, and it alone
    logs, calls ``monitors`` and writes files; the others are started here and get ``clock``
    (which must then be picklable, e.g. ``time.process_time``).
    """
    config.check()
    config = _absolute_paths(config)
    device = resolve_device(config.device)
    if launched_by_torchrun():
        context = init_distributed(device.type)
        try:
            return _run(config, resume, log, monitors, clock, device, context)
        finally:
            shutdown(context)
    _refuse_existing_run(Path(config.out), resume)
    data = load_datasets(config)
    workers = count_workers(config, device, data.train.n_batches(config.batch_size))
    if workers == 1:
        return _run(config, resume, log, monitors, clock, device, Distributed(), data)
    with worker_processes(config, resume, clock, workers) as context:
        return _run(config, resume, log, monitors, clock, device, context, data)


def train_worker(
    config: TrainConfig, resume: bool, clock: Callable[[], float] | None, context: Distributed
) -> None:
    """The share of a run of a worker process started by :func:`run_training` (rank > 0):
    trains, writes nothing."""
    _run(config, resume, _silent, (), clock, torch.device("cpu"), context)


def _silent(message: str) -> None:
    pass


def _absolute_paths(config: TrainConfig) -> TrainConfig:
    """Input file paths made absolute, so the written config.yaml works from any directory."""

    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().absolute())

    return replace(
        config,
        data=[absolute(p) for p in config.data],
        valid=absolute(config.valid),
        test=absolute(config.test),
        e0=absolute(config.e0),
        init=absolute(config.init),
    )


def _refuse_existing_run(out: Path, resume: bool) -> None:
    if not resume and (out / LAST).is_file():
        raise DataError(
            f"{out} already holds a training run; continue it with --resume {out} "
            "or give another --out"
        )


def _threads_per_process(device: torch.device, context: Distributed) -> int:
    """Torch threads of a training process without ``--threads``: on a CPU, the available cores
    shared among the run's processes (one each when there is a process per core; all of them
    when a small training set leaves one process), so no core sits idle. 0 on a GPU."""
    if device.type != "cpu":
        return 0
    return max(1, available_cores() // max(1, context.world_size))


def _run(
    config, resume, log, monitors, clock, device, context: Distributed, data: Datasets | None = None
) -> TrainResult:
    """The run in this process (``data``: the datasets when already read)."""
    if device.type == "cuda" and context.enabled:
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    set_threads(config.threads or _threads_per_process(device, context), device)
    if device.type == "cpu":
        keep_freed_memory()
    out = Path(config.out)
    _refuse_existing_run(out, resume)
    checkpoint = load_checkpoint(out / LAST) if resume else None
    torch.manual_seed(config.seed)
    if data is None:
        data = load_datasets(config)
    # --init: read on a new run only (a resumed run has the weights in its checkpoint)
    pretrained = read_encoder(config.init) if config.init and checkpoint is None else None
    model, statistics = _build(config, data, pretrained)
    if checkpoint is not None:
        model = model_from_payload(checkpoint["model"], where=str(out / LAST))
    dtype = getattr(torch, config.dtype)
    model = model.to(device=device, dtype=dtype)
    denoiser = None
    if config.denoise_weight > 0:
        denoiser = Denoiser(model.encoder)
        if pretrained is not None:
            denoiser.head.load_state_dict(pretrained.coordinate_head_state)
        if checkpoint is not None and "denoiser" in checkpoint:
            denoiser.load_state_dict(checkpoint["denoiser"])
        denoiser = denoiser.to(device=device, dtype=dtype)
    if context.is_main:
        log(
            f"{len(data.train)} training, {len(data.valid) if data.valid else 0} validation, "
            f"{len(data.test) if data.test else 0} test frames; elements "
            f"{', '.join(data.elements)}; {sum(p.numel() for p in model.parameters())} "
            f"parameters ({config.potential}, {config.dtype}, {device}"
            + (f", {context.world_size} processes)" if context.enabled else ")")
        )
        write_config(config, out / "config.yaml")

    ema = ExponentialMovingAverage(model, config.ema_decay)
    extra = list(denoiser.parameters()) if denoiser is not None else None
    model_kind = (config.potential, config.encoder)
    kind = resolve_optimizer(config.optimizer, data.train, model_kind, checkpoint, out / LAST)
    optimizer = _optimizer(model, config, kind, extra)
    if context.is_main and config.optimizer == "auto" and checkpoint is None:
        log(f"optimizer: {kind} (auto: muon for an EGNN without encoder on molecules)")
    schedule = LearningRateSchedule(
        optimizer,
        config.lr,
        config.schedule,
        config.warmup,
        config.min_lr_ratio,
        config.plateau_factor,
        config.plateau_patience,
    )
    progress = Progress()
    if checkpoint is not None:
        ema.load_state_dict(checkpoint["ema"])
        ema.model.to(device=device)
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        torch.set_rng_state(checkpoint["rng"])
        progress = Progress.from_dict(checkpoint["progress"])
        if context.is_main:
            log(f"resuming {out} after epoch {progress.epoch}, step {progress.step}")
    settings = LoopSettings(
        batch_size=config.batch_size,
        epochs=config.epochs,
        time_limit_s=config.time_limit * 60.0 if config.time_limit > 0 else None,
        patience=config.patience,
        weights=LossWeights(config.energy_weight, config.forces_weight, config.stress_weight),
        loss=config.loss,
        huber_delta=config.huber_delta,
        clip_grad=config.clip_grad,
        seed=config.seed,
        eval_batch_size=config.eval_batch_size,
        progress_bar=config.progress == "bar"
        or (config.progress == "auto" and sys.stderr.isatty()),
        log=log,
        denoise_weight=config.denoise_weight,
        denoise_sigma=config.denoise_sigma,
        compile=resolve_train_compile(config.compile, device, config.time_limit),
    )
    if clock is not None:
        settings.clock = clock
    loop = TrainingLoop(
        model,
        ema,
        optimizer,
        schedule,
        data.train,
        data.valid,
        settings,
        context,
        progress,
        denoiser=denoiser,
    )
    loop.monitors.extend(monitors)
    if settings.compile != "none" and context.is_main:
        log(f"training steps compiled ({settings.compile}): the first step compiles them")

    def state() -> dict:
        return {
            "model": model_payload(model),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": torch.get_rng_state(),
            "progress": loop.progress.as_dict(),
            "config": json.dumps(asdict(config)),
            **({"denoiser": denoiser.state_dict()} if denoiser is not None else {}),
        }

    metrics = MetricsLog(out / "metrics.csv", METRICS_COLUMNS)
    if checkpoint is not None:
        metrics.load(progress.epoch)
    if context.is_main:
        files = RunFiles(out, state, ema, metrics)
        loop.on_validation = files.on_validation
        loop.on_checkpoint = files.on_checkpoint
        loop.on_signal = files.on_signal
    progress = loop.run()
    if not context.is_main:
        return TrainResult(
            out,
            progress.stopped,
            progress.epoch,
            progress.step,
            progress.elapsed,
            progress.best_epoch,
            None,
            None,
        )
    return finish_run(config, out, data, statistics, progress, metrics, loop, log)
