"""mlff train's own worker processes: how many, and a worker's failure in one line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from mlff.errors import DataError
from mlff.training import workers
from mlff.training.config import TrainConfig, config_from_dict
from mlff.training.workers import WorkerError, count_workers
from tests.training import labelled

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device name; no GPU is touched


def test_automatic_count_is_one_per_core_while_each_keeps_its_batches(monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 8)
    auto = TrainConfig(data=["x"])
    assert count_workers(auto, CPU, n_batches=100) == 8
    per_worker = workers.MIN_BATCHES_PER_WORKER
    assert count_workers(auto, CPU, n_batches=3 * per_worker + 1) == 3
    assert count_workers(auto, CPU, n_batches=per_worker - 1) == 1
    assert count_workers(TrainConfig(data=["x"], threads=4), CPU, n_batches=100) == 1
    assert count_workers(auto, CUDA, n_batches=100) == 1


def test_processes_share_every_core_without_threads_given(monkeypatch):
    """Without --threads each process gets its share of the cores: one each with a process per
    core, all of them when a small training set leaves a single process (no idle core)."""
    from mlff.training import run
    from mlff.training.distributed import Distributed

    monkeypatch.setattr(run, "available_cores", lambda: 2)
    assert run._threads_per_process(CPU, Distributed(world_size=2)) == 1
    assert run._threads_per_process(CPU, Distributed()) == 2
    assert run._threads_per_process(CUDA, Distributed()) == 0
    monkeypatch.setattr(run, "available_cores", lambda: 1)
    assert run._threads_per_process(CPU, Distributed(world_size=2)) == 1


def test_explicit_count_is_kept_or_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(workers, "available_cores", lambda: 1)
    assert count_workers(TrainConfig(data=["x"], workers=3), CPU, n_batches=3) == 3
    assert count_workers(TrainConfig(data=["x"], workers=1, threads=2), CPU, n_batches=1) == 1
    with pytest.raises(DataError, match="2 training batch.*3 workers"):
        count_workers(TrainConfig(data=["x"], workers=3), CPU, n_batches=2)
    with pytest.raises(DataError, match="torchrun"):
        count_workers(TrainConfig(data=["x"], workers=2), CUDA, n_batches=100)
    with pytest.raises(DataError, match="workers must be >= 0"):
        TrainConfig(data=["x"], workers=-1).check()


def clock_failing_in_workers() -> float:
    """A training clock that breaks in every process but the test's own (rank 0)."""
    if os.getpid() != int(os.environ["MLFF_TEST_RANK0_PID"]):
        raise RuntimeError("the clock of a worker broke")
    return time.perf_counter()


def test_a_failing_worker_is_reported_once_in_one_line(tmp_path, monkeypatch):
    from mlff.training import run_training

    monkeypatch.setenv("MLFF_TEST_RANK0_PID", str(os.getpid()))
    # the workers unpickle the clock by importing this module
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the workers' job folder
    data = labelled.write(tmp_path / "train.extxyz", labelled.molecules(16))
    config = config_from_dict({"data": [str(data)], "out": str(tmp_path / "run"), "epochs": 2,
                               "features": 8, "num_layers": 1, "batch_size": 4,
                               "time_limit": 0, "workers": 2, "progress": "lines"})  # fmt: skip
    started = time.perf_counter()
    with pytest.raises(WorkerError) as caught:
        run_training(config, log=lambda m: None, clock=clock_failing_in_workers)
    message = str(caught.value)
    assert message == "training worker 1 failed: RuntimeError: the clock of a worker broke"
    assert time.perf_counter() - started < 60
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("mlff-workers")] == []


def test_a_clock_that_cannot_reach_the_workers_is_a_clear_error(tmp_path):
    from mlff.training import run_training

    data = labelled.write(tmp_path / "train.extxyz", labelled.molecules(16))
    config = config_from_dict({"data": [str(data)], "out": str(tmp_path / "run"),
                               "batch_size": 4, "workers": 2})  # fmt: skip
    with pytest.raises(ValueError, match="clock .* cannot be sent to worker processes"):
        run_training(config, log=lambda m: None, clock=lambda: 0.0)
