"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a ``torch.save`` of plain values and tensors (loaded with ``weights_only=True``)::

    format            "mlff-checkpoint"
    format_version    1
    model             the model payload of :func:`mlff.files.model_payload` (current weights)
    ema               EMA weights, decay and update count
    optimizer         the optimiser's state dict
    schedule          the learning-rate schedule's state
    rng               torch's global random state
    progress          epoch (completed), step, elapsed training seconds, best validation loss
                      and its epoch, validations without improvement, why the run stopped
"""

from __future__ import annotations

import os

import torch

from mlff.errors import ModelFileError
from mlff.files import atomic_write, read_archive

FORMAT = "mlff-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (see the module docstring) to ``path`` atomically."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on CPU)."""
    state = read_archive(path, kind="checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlff training checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: checkpoint format is newer than this mlff reads")
    return state
