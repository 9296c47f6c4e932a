"""The compiled inference path: the model's energy function through ``torch.compile`` (inductor).

Only :meth:`~mlff.model.ForceField.atomic_energies` is compiled, with dynamic shapes (any number
of atoms and edges, one compilation); forces and stress still come from ``torch.autograd.grad``
in :mod:`mlff.forces`, which runs the compiled backward. Training stays eager: compiling the
double backward of a force loss is not supported. Eager mode is the reference; the compiled
model gives the same energies, forces and stress to round-off (``tests/test_compiled.py``).

Compiling costs a minute or more on a CPU the first time; inductor caches its kernels on disk
(``TORCHINDUCTOR_CACHE_DIR``), so later runs start faster.
"""

from __future__ import annotations

import torch

from mlff.errors import MLFFError
from mlff.model import ForceField

COMPILE_CHOICES = ("none", "inductor")


def compile_model(model: ForceField, mode: str = "inductor") -> ForceField:
    """Compile ``model``'s energy function in place (``mode="none"``: leave it eager).

    The model must be in eval mode with its parameters frozen (inference only).
    """
    if mode not in COMPILE_CHOICES:
        raise MLFFError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {mode!r}")
    if mode == "none" or is_compiled(model):
        return model
    if model.training or any(p.requires_grad for p in model.parameters()):
        raise MLFFError("only a model prepared for inference (eval, frozen weights) is compiled")
    eager = model.atomic_energies
    compiled = torch.compile(eager, dynamic=True)
    # an instance attribute shadows the method; the eager one stays reachable
    object.__setattr__(model, "atomic_energies", compiled)
    object.__setattr__(model, "_eager_atomic_energies", eager)
    return model


def is_compiled(model: ForceField) -> bool:
    """Whether :func:`compile_model` compiled ``model``."""
    return "_eager_atomic_energies" in vars(model)
