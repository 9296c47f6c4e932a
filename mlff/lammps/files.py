"""The file ``mlff export-lammps`` writes: a model and its LAMMPS settings, as plain tensors.

Layout (one ``torch.save`` of a dict of strings, numbers, lists and tensors)::

    format          "mlff-lammps"
    format_version  1
    mlff_version    the version that wrote it
    model           an mlff model payload (see :mod:`mlff.files`)
    type_elements   element of each LAMMPS atom type, type 1 first
    cutoff          Å; depth: message-passing hops

LAMMPS's own loader (``pair_style mliap unified file.pt``) unpickles a whole Python object, so
any code in the file runs. mlff files never hold code: this one is read with
``torch.load(weights_only=True)`` by :func:`read_lammps_file`, and the adapter object is built
here and handed to LAMMPS from Python (:mod:`mlff.lammps.driver`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from mlff._version import __version__
from mlff.errors import LAMMPSError, ModelFileError
from mlff.files import atomic_write, load_model, model_from_payload, model_payload, read_archive
from mlff.lammps.settings import LAMMPSSettings, check_type_elements, message_passing_depth
from mlff.model import ForceField

FORMAT = "mlff-lammps"
FORMAT_VERSION = 1


def settings_for(model: ForceField, type_elements: Sequence[str] | None = None) -> LAMMPSSettings:
    """The LAMMPS settings of ``model`` with the element of each atom type (default: its own)."""
    return LAMMPSSettings(
        type_elements=check_type_elements(type_elements, model.elements),
        model_elements=tuple(model.elements),
        cutoff=float(model.cutoff),
        depth=message_passing_depth(model),
    )


def export_lammps(
    model: ForceField | str | os.PathLike,
    path: str | os.PathLike,
    type_elements: Sequence[str] | None = None,
) -> LAMMPSSettings:
    """Write ``model`` (or the model file it names) for LAMMPS to ``path``, atomically.

    Returns the settings LAMMPS needs (:meth:`LAMMPSSettings.describe` prints them).
    """
    if not isinstance(model, ForceField):
        model = load_model(model)
    settings = settings_for(model, type_elements)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlff_version": __version__,
        "model": model_payload(model),
        "type_elements": list(settings.type_elements),
        "cutoff": settings.cutoff,
        "depth": settings.depth,
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return settings


def read_lammps_file(path: str | os.PathLike) -> tuple[ForceField, LAMMPSSettings]:
    """The model (CPU, eval) and its LAMMPS settings from a file of :func:`export_lammps`.

    Only plain data is read (``weights_only=True``); the settings are checked against the model
    rebuilt from the file, so a file edited by hand cannot ask LAMMPS for a shorter cutoff or a
    thinner ghost shell than the model needs.
    """
    payload = read_archive(path, kind="LAMMPS model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(
            f"{path}: not an mlff LAMMPS file (no 'format: {FORMAT}' field; write one with "
            "mlff export-lammps)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version:
        raise ModelFileError(f"{path}: format version {version!r} is not a valid version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version} is newer than this mlff ({__version__}) reads "
            f"(<= {FORMAT_VERSION}); upgrade mlff"
        )
    if not isinstance(payload.get("model"), dict):
        raise ModelFileError(f"{path}: holds no model")
    model = model_from_payload(payload["model"], where=str(path)).eval()
    type_elements = payload.get("type_elements")
    if not isinstance(type_elements, list) or not all(isinstance(s, str) for s in type_elements):
        raise ModelFileError(f"{path}: 'type_elements' is not a list of element symbols")
    try:
        settings = settings_for(model, type_elements)
    except LAMMPSError as error:
        raise LAMMPSError(f"{path}: {error}") from None
    stored = (payload.get("cutoff"), payload.get("depth"))
    if stored != (settings.cutoff, settings.depth):
        raise LAMMPSError(
            f"{path}: stored cutoff {stored[0]!r} Å and depth {stored[1]!r} do not match the "
            f"model's {settings.cutoff:g} Å and {settings.depth} hop(s); export it again"
        )
    return model, settings
