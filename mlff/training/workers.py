"""``mlff train``'s own data-parallel processes on a CPU: one per core, one thread each.

Molecular batches (tens of atoms a graph, 16 graphs a batch) are many small tensor operations:
torch's intra-op threads gain little on them and lose much on a busy machine (OpenMP
spin-waits). Separate processes do not share operations: each trains on its share of every
epoch's batches and :class:`~torch.nn.parallel.DistributedDataParallel` averages the gradients
over gloo, as under ``torchrun`` (:mod:`mlff.training.distributed`), so each step takes
``workers x batch_size`` frames.

:func:`count_workers` says how many processes a run takes; :func:`worker_processes` starts
ranks 1..N-1 as subprocesses of this process, which is rank 0: it logs, writes every file and
returns the result, as a single-process run does. The workers write nothing (their output goes
to a temporary log, read only to report a failure) and run in a session of their own, so a
Ctrl-C at the terminal reaches rank 0 alone: its stop flag reaches the others through the
all-reduce of every step, and all stop after the same step. A worker that fails breaks rank
0's next collective; rank 0 then reports the worker's error in one line (:class:`WorkerError`).
A worker whose parent is gone exits.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from mlff.errors import DataError, MLFFError
from mlff.training.config import TrainConfig
from mlff.training.distributed import Distributed, shutdown

# automatic count: every worker keeps at least this many batches per epoch (each step takes a
# batch from every worker: more workers on few batches make an epoch one or two large steps)
MIN_BATCHES_PER_WORKER = 4
HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0  # started workers must reach the rendezvous within this
STORE_TIMEOUT = timedelta(minutes=5)
_ERROR_MARK = "mlff-worker-error: "


class WorkerError(MLFFError):
    """A training worker process failed; the message names its rank and its error."""


@dataclass
class _Job:
    """What every worker runs: the resolved options, whether to resume, the training clock."""

    config: TrainConfig
    resume: bool
    clock: Callable[[], float] | None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def count_workers(config: TrainConfig, device: torch.device, n_batches: int) -> int:
    """Training processes for ``config`` (this one included), given ``n_batches`` training
    batches per epoch.

    ``config.workers`` when given (> 0). Otherwise one: on a GPU, or with ``config.threads``
    given (that many threads in one process); on a CPU one per available core, as long as
    each keeps MIN_BATCHES_PER_WORKER batches per epoch.
    """
    workers = int(config.workers)
    if workers:
        if workers > 1 and device.type != "cpu":
            raise DataError(
                f"--workers {workers} starts CPU processes; on {device.type} train with one "
                "process per GPU: torchrun --nproc-per-node N -m mlff.workflows.train"
            )
        if workers > n_batches:
            raise DataError(
                f"{n_batches} training batch(es) of {config.batch_size} frames cannot be shared "
                f"by {workers} workers; use fewer --workers or a smaller --batch-size"
            )
        return workers
    if device.type != "cpu" or config.threads:
        return 1
    return max(1, min(available_cores(), n_batches // MIN_BATCHES_PER_WORKER))


@contextmanager
def worker_processes(
    config: TrainConfig, resume: bool, clock: Callable[[], float] | None, world_size: int
) -> Iterator[Distributed]:
    """Start ``world_size - 1`` worker processes running ``config``; yield this process's
    place among them (rank 0). On the way out, wait for the workers (they leave after the
    training loop) or, on an error, stop them; a worker's failure is raised as
    :class:`WorkerError` instead of the broken collective it caused here.

    ``clock`` is sent to the workers, so it must be picklable (a module-level function such as
    ``time.process_time``)."""
    world_size = int(world_size)
    folder = Path(tempfile.mkdtemp(prefix="mlff-workers-"))
    processes: list[subprocess.Popen] = []
    try:
        try:
            job = pickle.dumps(_Job(config, resume, clock))
        except (pickle.PicklingError, AttributeError, TypeError):
            raise ValueError(
                f"the training clock {clock!r} cannot be sent to worker processes; pass a "
                "module-level function (e.g. time.process_time) or train with workers=1"
            ) from None
        (folder / "job.pickle").write_bytes(job)
        store = dist.TCPStore(
            HOST, 0, world_size, is_master=True, wait_for_workers=False, timeout=STORE_TIMEOUT
        )
        for rank in range(1, world_size):
            command = [sys.executable, "-m", __name__, str(rank), str(world_size)]
            command += [str(store.port), str(folder / "job.pickle")]
            with open(folder / f"worker{rank}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        _wait_until_ready(store, processes, folder)
        dist.init_process_group("gloo", store=store, rank=0, world_size=world_size)
        try:
            yield Distributed(rank=0, world_size=world_size, local_rank=0)
        except Exception as error:
            if not isinstance(error, (MLFFError, OSError)):  # not a user's error found here
                failure = _failure(processes, folder, wait_s=2.0)
                if failure is not None:
                    raise WorkerError(failure) from None
            raise
        _failure(processes, folder, wait_s=30.0, until_all_exit=True)
    finally:
        for process in processes:  # they write nothing: stopping them loses nothing
            if process.poll() is None:
                process.kill()
            process.wait()
        shutdown(Distributed(world_size=world_size))
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_ready(store, processes: list[subprocess.Popen], folder: Path) -> None:
    """Wait until every worker has reached the rendezvous; raise WorkerError if one exits or
    none comes within READY_TIMEOUT_S (rank 0 would otherwise wait in the rendezvous)."""
    keys = [f"ready{rank}" for rank in range(1, len(processes) + 1)]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not store.check(keys):
        failure = _failure(processes, folder)
        if failure is not None:
            raise WorkerError(failure)
        if time.monotonic() > deadline:
            raise WorkerError(f"training workers did not start within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.02)


def _failure(
    processes: list[subprocess.Popen], folder: Path, wait_s: float = 0.0, until_all_exit=False
) -> str | None:
    """The first failed worker's error, waiting up to ``wait_s`` for one to fail (or, with
    ``until_all_exit``, for all to exit); None when none failed."""
    deadline = time.monotonic() + wait_s
    while True:
        for rank, process in enumerate(processes, start=1):
            code = process.poll()
            if code not in (None, 0):
                return f"training worker {rank} failed: {_error_line(folder, rank, code)}"
        if until_all_exit and all(p.poll() is not None for p in processes):
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _error_line(folder: Path, rank: int, code: int) -> str:
    """The one-line error a worker reported, or how it ended."""
    try:
        lines = (folder / f"worker{rank}.log").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith(_ERROR_MARK):
            return line[len(_ERROR_MARK) :]
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _describe(error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, MLFFError):
        return first
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _exit_with_parent() -> None:
    """Exit this worker when the process that started it (rank 0) is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker(rank: int, world_size: int, port: int, job_path: str) -> int:
    """A worker's life: join rank 0's group, train its share, leave. Returns the exit status;
    an error is printed (traceback, then one marked line) for rank 0 to report."""
    _exit_with_parent()
    context = Distributed(rank=rank, world_size=world_size, local_rank=0)
    try:
        job: _Job = pickle.loads(Path(job_path).read_bytes())
        store = dist.TCPStore(HOST, port, world_size, is_master=False, timeout=STORE_TIMEOUT)
        store.set(f"ready{rank}", "1")
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
        from mlff.training.run import train_worker

        train_worker(job.config, job.resume, job.clock, context)
    except BaseException as error:  # reported to rank 0, which shows it once
        traceback.print_exc()
        print(_ERROR_MARK + _describe(error), file=sys.stderr, flush=True)
        return 1
    finally:
        shutdown(context)
    return 0


if __name__ == "__main__":  # started by worker_processes: RANK WORLD_SIZE PORT JOB
    rank_, world_size_, port_, job_ = sys.argv[1:5]
    sys.exit(_worker(int(rank_), int(world_size_), int(port_), job_))
