"""Pretrained-encoder files: what ``mlff pretrain`` writes and ``mlff train --init`` reads.

Like a model file (:mod:`mlff.files`), a ``torch.save`` of one dict of plain values and tensors,
read with ``weights_only=True``::

    format          "mlff-pretrained-encoder"   (load_model refuses it: no potential head)
    format_version  1
    mlff_version    the version that wrote it
    config          JSON text: encoder "unimol", elements, cutoff (Å), encoder hyperparameters
    dtype           "float32" or "float64"
    state_dict      name -> tensor: encoder.*, mask_token, atom_head.*, coordinate_head.*, ...

Nothing is trusted before it is checked: the config's keys and values, then every tensor's name
and shape against the model the config describes (built on the meta device, so an absurd config
allocates nothing), then finite weights.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ase.data import atomic_numbers

from mlff._version import __version__
from mlff.errors import DataError, ModelFileError
from mlff.file_checks import DTYPES, checked_state, fail
from mlff.files import FORMAT as MODEL_FORMAT
from mlff.files import PRETRAINED_FORMAT, atomic_write, read_archive
from mlff.potentials.unimol import UniMolEncoder
from mlff.pretraining.heads import PretrainingModel

FORMAT = PRETRAINED_FORMAT
FORMAT_VERSION = 1
# the encoder arguments a file may set (n_species and cutoff come from elements and cutoff)
ENCODER_KEYS = frozenset(inspect.signature(UniMolEncoder.__init__).parameters) - {
    "self",
    "n_species",
    "cutoff",
}
KIND = "pretrained encoder file"


def pretrained_payload(model: PretrainingModel) -> dict:
    """The plain dict :func:`save_pretrained` writes (also embedded in pretraining checkpoints)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "mlff_version": __version__,
        "config": json.dumps(model.config, sort_keys=True),
        "dtype": str(model.dtype).replace("torch.", ""),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def save_pretrained(model: PretrainingModel, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path`` atomically (weights on the CPU)."""
    payload = pretrained_payload(model)
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_pretrained(path: str | os.PathLike) -> dict:
    """The payload of a pretrained-encoder file, its format checked (one-line errors)."""
    payload = read_archive(path, kind=KIND)
    kind = payload.get("format") if isinstance(payload, dict) else None
    if kind == MODEL_FORMAT:
        raise ModelFileError(
            f"{path}: a force-field model file, not a pretrained encoder (mlff pretrain writes "
            "those, as encoder.pt)"
        )
    if kind != FORMAT:
        raise ModelFileError(
            f"{path}: not an mlff {KIND} (no 'format: {FORMAT}' field; mlff pretrain writes them)"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: format version {version!r} is not a valid version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version} is newer than this mlff ({__version__}) reads "
            f"(<= {FORMAT_VERSION}); upgrade mlff"
        )
    return payload


def _config(payload: dict, where: str) -> dict[str, Any]:
    text = payload.get("config")
    try:
        config = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        config = None
    if not isinstance(config, dict):
        raise fail(where, "the file's config is missing or not a JSON mapping")
    if config.get("encoder") != "unimol":
        raise fail(where, f"the file's encoder {config.get('encoder')!r} is not 'unimol'")
    elements = config.get("elements")
    if (
        not isinstance(elements, list)
        or not elements
        or not all(isinstance(e, str) and e in atomic_numbers and e != "X" for e in elements)
        or len(set(elements)) != len(elements)
    ):
        raise fail(where, f"the file's elements are not a list of distinct symbols: {elements!r}")
    cutoff = config.get("cutoff")
    if (
        not isinstance(cutoff, (int, float))
        or isinstance(cutoff, bool)
        or not (math.isfinite(cutoff) and cutoff > 0)
    ):
        raise fail(where, f"the file's cutoff {cutoff!r} is not a length > 0 Å")
    hyper = config.get("hyperparameters", {})
    if not isinstance(hyper, dict):
        raise fail(where, f"the file's encoder hyperparameters are not a mapping: {hyper!r}")
    for key, value in hyper.items():
        if key not in ENCODER_KEYS:
            raise fail(where, f"the file's encoder hyperparameter {key!r} is unknown")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise fail(where, f"the file's encoder hyperparameter {key}={value!r} is not a number")
    return config


def _build_checked(config: dict, state: dict[str, torch.Tensor], where: str) -> PretrainingModel:
    """The model ``config`` describes, once its tensor shapes match ``state``'s (meta build)."""
    n_values = sum(t.numel() for t in state.values())
    for key, value in config["hyperparameters"].items():
        if isinstance(value, int) and value > max(n_values, 64):
            raise fail(where, f"the config asks for {key}={value}, more than the file stores")

    def build() -> PretrainingModel:
        return PretrainingModel(
            config["elements"], float(config["cutoff"]), **config["hyperparameters"]
        )

    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as error:  # the config is untrusted: any failure is the file's fault
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise fail(where, f"the config describes no encoder mlff can build ({text})") from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in state.items()}
    if set(expected) != set(stored):
        names = ", ".join(sorted(set(expected) ^ set(stored))[:3])
        raise fail(where, f"config and weights do not match (weights {names})")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise fail(
                where, f"weight {name!r} is stored as {list(stored[name])}, the config implies "
                f"{list(shape)}"
            )  # fmt: skip
    return build()


def pretrained_from_payload(payload: dict, where: str) -> PretrainingModel:
    """Rebuild a :class:`PretrainingModel` from a checked :func:`pretrained_payload` dict."""
    config = _config(payload, where)
    dtype_name = payload.get("dtype", "float32")
    if dtype_name not in DTYPES:
        raise fail(where, f"the file's dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
    state = checked_state(payload, where, kind="file")
    model = _build_checked(config, state, where).to(DTYPES[dtype_name])
    model.load_state_dict(state)
    return model


def load_pretrained(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> PretrainingModel:
    """Load a file written by :func:`save_pretrained` onto ``device``, in evaluation mode."""
    model = pretrained_from_payload(read_pretrained(path), where=str(path))
    return model.to(device).eval()


@dataclass
class PretrainedEncoder:
    """What ``mlff train --init`` takes from a pretrained-encoder file."""

    path: Path
    elements: list[str]
    cutoff: float  # Å
    hyperparameters: dict[str, Any]  # UniMolEncoder arguments
    encoder_state: dict[str, torch.Tensor]
    coordinate_head_state: dict[str, torch.Tensor]

    def model_hyperparameters(self) -> dict[str, Any]:
        """The encoder's arguments as ``build_model`` keywords (``encoder_`` prefix)."""
        return {f"encoder_{k}": v for k, v in self.hyperparameters.items()}


def read_encoder(path: str | os.PathLike) -> PretrainedEncoder:
    """The checked encoder (and coordinate head) of a pretrained-encoder file."""
    model = load_pretrained(path)
    return PretrainedEncoder(
        path=Path(path),
        elements=list(model.elements),
        cutoff=model.cutoff,
        hyperparameters=dict(model.encoder_hyperparameters),
        encoder_state=model.encoder.state_dict(),
        coordinate_head_state=model.coordinate_head.state_dict(),
    )


def check_compatible(
    pretrained: PretrainedEncoder,
    elements: list[str],
    cutoff: float,
    encoder: str,
    hyperparameters: dict[str, Any],
) -> None:
    """Raise :class:`DataError` in one line unless a model with ``encoder``, ``elements``,
    ``cutoff`` (Å) and the ``encoder_*`` keys of ``hyperparameters`` can take the encoder."""
    where = f"--init {pretrained.path}"
    if encoder != "unimol":
        raise DataError(
            f"{where}: a pretrained Uni-Mol encoder needs --encoder unimol (got {encoder!r})"
        )
    if sorted(elements) != sorted(pretrained.elements):
        raise DataError(
            f"{where}: pretrained for elements {', '.join(pretrained.elements)}, but the training "
            f"data holds {', '.join(elements)}"
        )
    if abs(float(cutoff) - pretrained.cutoff) > 1e-9:
        raise DataError(
            f"{where}: pretrained with cutoff {pretrained.cutoff:g} Å, but this model has "
            f"--cutoff {cutoff:g}; give --cutoff {pretrained.cutoff:g}"
        )
    for key, value in hyperparameters.items():
        if not key.startswith("encoder_"):
            continue
        name = key[len("encoder_") :]
        stored = pretrained.hyperparameters.get(name)
        if stored is None and name in ENCODER_KEYS:
            default = inspect.signature(UniMolEncoder.__init__).parameters[name].default
            stored = default
        if stored != value:
            raise DataError(
                f"{where}: the pretrained encoder has {name}={stored!r}, but {key}={value!r} was "
                "asked for; leave the encoder options out (they come from the file)"
            )
