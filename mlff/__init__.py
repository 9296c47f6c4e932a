"""mlff: equivariant machine-learned force fields with an ASE calculator and a CLI.

Public API::

    from mlff import build_model, save_model, load_model, MLFFCalculator

Names are imported on first use, so ``import mlff`` (and ``mlff --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mlff._version import __version__

_EXPORTS = {
    "build_model": "mlff.builder",
    "save_model": "mlff.files",
    "load_model": "mlff.files",
    "MLFFCalculator": "mlff.calculator",
    "ForceField": "mlff.model",
    "MLFFError": "mlff.errors",
    "StructureError": "mlff.errors",
    "UnknownElementError": "mlff.errors",
    "ModelFileError": "mlff.errors",
    "DataError": "mlff.errors",
    "CovarianceError": "mlff.errors",
}

__all__ = [
    "__version__",
    "build_model",
    "save_model",
    "load_model",
    "MLFFCalculator",
    "ForceField",
    "MLFFError",
    "StructureError",
    "UnknownElementError",
    "ModelFileError",
    "DataError",
    "CovarianceError",
]

if TYPE_CHECKING:  # pragma: no cover
    from mlff.builder import build_model
    from mlff.calculator import MLFFCalculator
    from mlff.errors import (
        CovarianceError,
        DataError,
        MLFFError,
        ModelFileError,
        StructureError,
        UnknownElementError,
    )
    from mlff.files import load_model, save_model
    from mlff.model import ForceField


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mlff' has no attribute {name!r}")
