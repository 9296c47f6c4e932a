"""Several processes, one code path: ``torch.distributed`` set up from ``torchrun``'s environment.

``torchrun --nproc-per-node N -m mlff.workflows.train DATA ...`` starts N processes with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment. Each
process reads the data, builds the same model from the same seed, trains on its share of each
epoch's batches through :class:`~torch.nn.parallel.DistributedDataParallel` (gradients averaged
across processes), and only rank 0 writes files. Backend: NCCL on GPUs, gloo on CPUs. Without
those variables everything below is a no-op for one process; a plain ``mlff train`` on a CPU
starts its own processes instead (:mod:`mlff.training.workers`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """This process's place among ``world_size`` training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (a copy; the input is left as is)."""
        if not self.enabled:
            return tensor
        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over processes (a copy)."""
        if not self.enabled:
            return tensor
        reduced = tensor.clone()
        dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
        return reduced

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> Distributed:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    if not launched_by_torchrun():
        return Distributed()
    world_size = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def shutdown(context: Distributed) -> None:
    """Leave the process group (at the end of a distributed run)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
