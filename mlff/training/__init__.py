"""The training engine, in small modules that each do one job.

====================  ================================================================
``config``            every option of a run (:class:`TrainConfig`), YAML in and out
``dataset``           frames -> precomputed graphs (:class:`GraphSet`) -> batches
``statistics``        E0 by least squares, energy scale, average neighbour count
``loss``              energy-per-atom / force / stress loss, MSE or Huber
``ema``               exponential moving average of the weights
``schedule``          cosine-with-warm-up or plateau learning rate
``checkpoint``        atomic checkpoints with everything needed to resume
``metrics``           MAE/RMSE accumulation and ``metrics.csv``
``plots``             learning curves and parity plots
``evaluation``        errors of a model on a labelled set
``distributed``       torchrun / DistributedDataParallel set-up
``workers``           ``mlff train``'s own processes on a CPU, one per core
``loop``              epochs, validation, stopping, signals
``run``               a whole run: options -> files
====================  ================================================================

Public API: :func:`run_training`, :class:`TrainConfig`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# imported on first use, so that reading options (``config``) does not load torch
_EXPORTS = {
    "TrainConfig": "mlff.training.config",
    "TrainResult": "mlff.training.run",
    "run_training": "mlff.training.run",
}
__all__ = ["TrainConfig", "TrainResult", "run_training"]

if TYPE_CHECKING:  # pragma: no cover
    from mlff.training.config import TrainConfig
    from mlff.training.run import TrainResult, run_training


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlff.training' has no attribute {name!r}")
