"""Errors a user can cause; each message is one line naming the file, frame or option at fault."""

from __future__ import annotations


class MLFFError(ValueError):
    """Base class: bad input that mlff reports in one line (no traceback from inside torch)."""


class StructureError(MLFFError):
    """A structure that cannot be evaluated: non-finite positions, degenerate cell, no atoms."""


class UnknownElementError(MLFFError):
    """A structure holds an element the model was not built for."""


class ModelFileError(MLFFError):
    """A model file that is missing, unsafe (pickled objects), corrupt or of another format."""


class DataError(MLFFError):
    """A labelled data file that cannot be used for training or evaluation."""


class CovarianceError(MLFFError):
    """The runtime covariance check failed and the user asked to stop on failure."""


class LAMMPSError(MLFFError):
    """A LAMMPS set-up that cannot reproduce the model: element map, cutoff, ghost shell."""
