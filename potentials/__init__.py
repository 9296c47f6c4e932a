"""Equivariant potentials and invariant encoders: plain ``torch.nn.Module``s on graph tensors.

This is the lowest layer of mlff: it knows nothing of ASE, files or the CLI. The tensors going in
and out are described in :mod:`mlff.potentials.interface`.
"""

from __future__ import annotations

import importlib

from torch import nn

# name -> "module:Class"; imported on first use so that one potential's extra dependencies
# (e3nn for TFN) are not paid for by users of another
POTENTIALS: dict[str, str] = {
    "egnn": "egnn:EGNN",
    "tfn": "tfn:TFN",
}
ENCODERS: dict[str, str] = {
    "none": "interface:SpeciesEmbedding",
    "unimol": "unimol:UniMolEncoder",
}


def _load(table: dict[str, str], name: str, what: str) -> type[nn.Module]:
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    module_name, class_name = table[name].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


def potential_class(name: str) -> type[nn.Module]:
    """The potential class registered under ``name`` ("egnn", "tfn")."""
    return _load(POTENTIALS, name, "potential")


def encoder_class(name: str) -> type[nn.Module]:
    """The encoder class registered under ``name`` ("none", "unimol")."""
    return _load(ENCODERS, name, "encoder")


__all__ = ["POTENTIALS", "ENCODERS", "potential_class", "encoder_class"]
