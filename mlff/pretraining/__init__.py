"""Pretraining the Uni-Mol encoder on unlabelled structures, in small modules with one job each.

====================  ================================================================
``config``            every option of ``mlff pretrain`` (:class:`PretrainConfig`), YAML
``data``              unlabelled structures -> checked frames -> graphs -> batches
``masking``           hidden elements, centred Gaussian noise, neighbour lists of the noise
``heads``             the encoder with its masked-atom, coordinate and distance heads
``losses``            cross-entropy of hidden elements, denoising and distance losses
``files``             safe pretrained-encoder files, and what ``mlff train --init`` checks
``loop``              epochs, validation under a fixed corruption, stopping, signals
``run``               a whole run: options -> files
====================  ================================================================

Public API: :func:`run_pretraining`, :class:`PretrainConfig`, :func:`load_pretrained`,
:func:`save_pretrained`, :class:`PretrainingModel`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# imported on first use, so that reading options (``config``) does not load torch
_EXPORTS = {
    "PretrainConfig": "mlff.pretraining.config",
    "PretrainResult": "mlff.pretraining.run",
    "run_pretraining": "mlff.pretraining.run",
    "load_pretrained": "mlff.pretraining.files",
    "save_pretrained": "mlff.pretraining.files",
    "PretrainingModel": "mlff.pretraining.heads",
}
__all__ = [
    "PretrainConfig",
    "PretrainResult",
    "PretrainingModel",
    "load_pretrained",
    "run_pretraining",
    "save_pretrained",
]

if TYPE_CHECKING:  # pragma: no cover
    from mlff.pretraining.config import PretrainConfig
    from mlff.pretraining.files import load_pretrained, save_pretrained
    from mlff.pretraining.heads import PretrainingModel
    from mlff.pretraining.run import PretrainResult, run_pretraining


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlff.pretraining' has no attribute {name!r}")
