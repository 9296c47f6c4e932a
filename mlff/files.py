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
from mlff.model import ForceField

FORMAT = "mlff-model"
FORMAT_VERSION = 1


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


def _read_payload(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(
            f"{path}: refused: the file holds pickled Python objects, not plain tensors "
            f"(mlff model files never do; nothing was run). {first}"[:400]
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise ModelFileError(f"{path}: not a readable model file ({error})"[:300]) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an mlff model file (no 'format: {FORMAT}' field)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version!r} is newer than this mlff "
            f"({__version__}) reads (<= {FORMAT_VERSION}); upgrade mlff"
        )
    return payload


def model_from_payload(payload: dict, where: str = "model") -> ForceField:
    """Rebuild a model from a :func:`model_payload` dict."""
    try:
        config = json.loads(payload["config"])
        model = build_from_config(config)
        dtype = getattr(torch, payload.get("dtype", "float64"))
        model = model.to(dtype)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"{where}: cannot rebuild the model: {message}"[:400]) from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ForceField:
    """Load a model saved by :func:`save_model` onto ``device``, in evaluation mode."""
    model = model_from_payload(_read_payload(path), where=str(path))
    return model.to(device).eval()
