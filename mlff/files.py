"""Safe model files: a JSON builder config and plain tensors, loaded with ``weights_only=True``.

A model file is a ``torch.save`` of one dict holding only strings, numbers and tensors::

    format          "mlff-model"
    format_version  1
    mlff_version    the version that wrote it
    config          JSON text: potential, encoder, elements, cutoff, hyperparameters
    elements        list of symbols; cutoff (Å); reference_energies (eV, one per element)
    state_dict      name -> tensor (CPU)

Loading rebuilds the model from the config and loads the tensors. ``torch.load`` runs with
``weights_only=True``, so a file that holds pickled objects is refused before any code runs.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from mlff._version import __version__
from mlff.builder import build_from_config
from mlff.errors import ModelFileError
from mlff.file_checks import check_payload
from mlff.model import ForceField

FORMAT = "mlff-model"
FORMAT_VERSION = 1
# the files `mlff pretrain` writes (mlff.pretraining.files): an encoder without a potential head
PRETRAINED_FORMAT = "mlff-pretrained-encoder"


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def model_payload(model: ForceField) -> dict:
    """The plain dict that :func:`save_model` writes (also embedded in training checkpoints)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlff_version": __version__,
        "config": json.dumps(model.config, sort_keys=True),
        "elements": list(model.elements),
        "cutoff": float(model.cutoff),
        "reference_energies": model.reference_energies.tolist(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def save_model(model: ForceField, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (weights on CPU, any device may load them)."""
    payload = model_payload(model)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_archive(path: str | os.PathLike, kind: str = "model file"):
    """``torch.load`` a file written by mlff with ``weights_only=True``; one-line errors.

    Anything that is not a torch archive, or holds pickled objects, is refused before
    unpickling runs. ``kind`` names the file in messages ("model file", "checkpoint").
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: {kind} not found")
    if not path.is_file():
        raise ModelFileError(f"{path}: is not a file (a {kind} is one .pt file)")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{path}: not an mlff {kind} (not a torch archive; mlff writes them with "
            "save_model or mlff train)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{path}: refused: the file holds pickled Python objects, not plain tensors "
            f"(mlff files never do; nothing was run). {_first_line(error)}"[:400]
        ) from None
    except Exception as error:  # torch.load raises many types on a damaged archive
        raise ModelFileError(
            f"{path}: not a readable {kind} ({_first_line(error)})"[:300]
        ) from None


def _read_payload(path: str | os.PathLike) -> dict:
    payload = read_archive(path)
    if isinstance(payload, dict) and payload.get("format") == PRETRAINED_FORMAT:
        raise ModelFileError(
            f"{path}: a pretrained encoder (mlff pretrain), not a force field: it has no "
            f"potential head; fine-tune it first: mlff train DATA --encoder unimol --init {path}"
        )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlff model file (no 'format: {FORMAT}' field)")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: model format version {version!r} is not a valid version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} is newer than this mlff "
            f"({__version__}) reads (<= {FORMAT_VERSION}); upgrade mlff"
        )
    return payload


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def model_from_payload(payload: dict, where: str = "model") -> ForceField:
    """Rebuild a model from a :func:`model_payload` dict.

    Nothing in the file is trusted before it is checked: the config must describe a model whose
    every tensor has the shape stored in the file (checked on the meta device, so an absurd
    config allocates nothing), and every stored weight must be finite.
    """
    config, dtype, state = check_payload(payload, where)
    try:
        model = build_from_config(config).to(dtype)
        model.load_state_dict(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise ModelFileError(f"{where}: cannot rebuild the model: {_first_line(error)}") from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ForceField:
    """Load a model saved by :func:`save_model` onto ``device``, in evaluation mode."""
    model = model_from_payload(_read_payload(path), where=str(path))
    return model.to(device).eval()
