"""Errors of a model on a labelled :class:`~mlff.training.dataset.GraphSet` (no training)."""

from __future__ import annotations

import torch

from mlff.forces import evaluate
from mlff.training.dataset import GraphSet
from mlff.training.distributed import Distributed
from mlff.training.loss import LossWeights, loss_terms, total_loss
from mlff.training.metrics import ErrorAccumulator


def evaluate_set(
    model,
    data: GraphSet,
    batch_size: int = 64,
    weights: LossWeights | None = None,
    loss: str = "mse",
    huber_delta: float = 0.01,
    keep: bool = False,
    context: Distributed | None = None,
) -> ErrorAccumulator:
    """Energy/force/stress errors of ``model`` over ``data`` (and its loss when ``weights``).

    With a :class:`Distributed` context, each process evaluates its share and the sums are
    added over processes, so every process returns the figures of the whole set. ``keep``
    keeps the values for parity plots (this process's share only).
    """
    context = context or Distributed()
    accumulator = ErrorAccumulator(keep=keep)
    device, dtype = model.device, model.dtype
    with torch.enable_grad():
        for batch in data.batches(
            batch_size, rank=context.rank, world_size=context.world_size, trim=False
        ):
            batch = batch.to(device, dtype)
            # the stress (a strain derivative) only for batches that hold a stress label
            out = evaluate(
                model,
                batch.graph,
                compute_forces=data.any_forces,
                compute_stress=bool(batch.has_stress.any()),
            )
            out = {k: v.detach() for k, v in out.items()}
            value = None
            if weights is not None:
                value = total_loss(loss_terms(out, batch, loss, huber_delta), weights).item()
            accumulator.update(out, batch, value)
    accumulator.all_reduce(context.sum)
    return accumulator
