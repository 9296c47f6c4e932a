"""Checks on a model file's contents before anything is built from them.

A model file names the network it holds in a JSON config and stores its weights as tensors. The
config is checked against the tensors, not trusted: the model it describes is first built on
PyTorch's ``meta`` device (shapes only, no memory), and every tensor name and shape must match
the file's. Only then is the real model built. So a file whose config asks for, say, 200,000
features in 400 layers is refused in one line instead of allocating terabytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from mlff.builder import build_from_config
from mlff.errors import ModelFileError

DTYPES = {"float64": torch.float64, "float32": torch.float32}
CONFIG_KEYS = {"potential": str, "encoder": str, "elements": list, "cutoff": (int, float)}


def fail(where: str, problem: str) -> ModelFileError:
    """The one-line error for a bad model or pretrained-encoder file at ``where``."""
    return ModelFileError(f"{where}: {problem}"[:400])


def _config(payload: dict, where: str) -> dict[str, Any]:
    text = payload.get("config")
    if not isinstance(text, str):
        raise fail(where, "the model file has no config text")
    try:
        config = json.loads(text)
    except ValueError as error:
        raise fail(where, f"the model config is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise fail(where, f"the model config is a {type(config).__name__}, not a mapping")
    for key, kind in CONFIG_KEYS.items():
        value = config.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(where, f"the model config's {key!r} is missing or invalid ({value!r})")
    if not all(isinstance(e, str) for e in config["elements"]):
        raise fail(where, f"the model config's elements are not symbols: {config['elements']}")
    if not (math.isfinite(config["cutoff"]) and config["cutoff"] > 0):
        raise fail(where, f"the model config's cutoff {config['cutoff']!r} is not a length > 0")
    hyper = config.setdefault("hyperparameters", {})
    if not isinstance(hyper, dict):
        raise fail(where, f"the model config's hyperparameters are not a mapping: {hyper!r}")
    return config


def checked_state(payload: dict, where: str, kind: str = "model file") -> dict[str, torch.Tensor]:
    """The payload's ``state_dict``: names to finite tensors, else one line naming ``where``
    (``kind`` names the file in that line; pretrained-encoder files share this check)."""
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise fail(where, f"the {kind} holds no weights (state_dict)")
    for name, tensor in state.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise fail(where, f"weight {name!r} is not a tensor")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise fail(where, f"weight {name!r} holds NaN or infinite values")
    return state


def _bound_integers(config: dict, n_values: int, where: str) -> None:
    """Refuse integer hyperparameters larger than the number of stored values.

    Every width, depth or count in a model owns at least one stored value, so a larger integer
    cannot describe the file's tensors; it is refused before even a shape-only build loops over it.
    """
    for key, value in config["hyperparameters"].items():
        if isinstance(value, int) and not isinstance(value, bool) and value > max(n_values, 64):
            raise fail(
                where,
                f"the model config asks for {key}={value}, more than the {n_values} values "
                "the file stores: config and weights do not match",
            )


def _compare_shapes(config: dict, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        with torch.device("meta"):
            skeleton = build_from_config(config)
    except Exception as error:  # the config is untrusted: any failure is the file's fault
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise fail(where, f"the model config describes no model mlff can build ({text})") from None
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in state.items()}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        names = ", ".join((missing or extra)[:3])
        what = "lacks" if missing else "has unexpected"
        raise fail(where, f"config and weights do not match: the file {what} weights {names}")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise fail(
                where,
                f"config and weights do not match: weight {name!r} is stored with shape "
                f"{list(stored[name])}, the config implies {list(shape)}",
            )


def check_payload(payload: dict, where: str) -> tuple[dict, torch.dtype, dict[str, torch.Tensor]]:
    """Return ``(config, dtype, state_dict)`` of a loaded model file once they are consistent.

    Raises :class:`ModelFileError` naming ``where`` and the first problem found.
    """
    config = _config(payload, where)
    dtype_name = payload.get("dtype", "float64")
    if dtype_name not in DTYPES:
        raise fail(where, f"the model dtype {dtype_name!r} is not one of {sorted(DTYPES)}")
    state = checked_state(payload, where)
    n_values = sum(t.numel() for t in state.values())
    _bound_integers(config, n_values, where)
    _compare_shapes(config, state, where)
    return config, DTYPES[dtype_name], state
