"""mlff: equivariant machine-learned force fields with an ASE calculator and a CLI.

Public API::

    from mlff import build_model, save_model, load_model, MLFFCalculator
"""

from mlff._version import __version__
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
