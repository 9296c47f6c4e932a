"""``build_model``: the one place a ForceField is assembled from plain arguments.

Hyperparameters are routed by name: keys starting with ``encoder_`` go to the encoder (prefix
removed), ``reference_energies``/``energy_scale``/``energy_shift`` to the ForceField, and
every other key to the potential. ``avg_num_neighbors`` goes to the potential (and to the
encoder when it takes one). Unknown keys are refused with the list of valid ones. The resolved
arguments are stored in ``model.config`` and in saved model files, so a file rebuilds
the same model.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from ase.data import atomic_numbers

from mlff.model import ForceField
from mlff.potentials import POTENTIALS, encoder_class, potential_class

MODEL_KEYS = ("reference_energies", "energy_scale", "energy_shift")
# supplied by the builder, never by the user
_WIRED = {"n_species", "cutoff", "node_features_in", "edge_features_in"}


def _keyword_names(cls) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def _check_keys(cls, kwargs: Mapping[str, Any], what: str, prefix: str = "") -> None:
    valid = _keyword_names(cls) - _WIRED
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        choices = ", ".join(prefix + k for k in sorted(valid))
        raise ValueError(f"unknown {what} hyperparameter(s) {names}; valid: {choices}")


def _normalise_elements(elements: Sequence[str]) -> list[str]:
    if isinstance(elements, str) or not elements:
        raise ValueError(f"elements must be a non-empty list of symbols, got {elements!r}")
    normalised = []
    for symbol in elements:
        if symbol not in atomic_numbers or symbol == "X":
            raise ValueError(f"unknown element symbol {symbol!r} in elements {list(elements)}")
        if symbol in normalised:
            raise ValueError(f"element {symbol!r} given twice in elements {list(elements)}")
        normalised.append(symbol)
    return normalised


def _reference_energies(value: Any, elements: list[str]) -> list[float] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        missing = [e for e in elements if e not in value]
        if missing:
            raise ValueError(f"reference_energies lacks element(s) {missing}")
        return [float(value[e]) for e in elements]
    values = [float(v) for v in value]
    if len(values) != len(elements):
        raise ValueError(f"reference_energies has {len(values)} values for elements {elements}")
    return values


def build_model(
    potential: str = "egnn",
    encoder: str = "none",
    elements: Sequence[str] = ("H", "C", "O"),
    cutoff: float = 5.0,
    **hyperparameters: Any,
) -> ForceField:
    """Build a force field.

    Args:
        potential: "egnn" or "tfn".
        encoder: "none" (species embedding) or "unimol" (local Uni-Mol features).
        elements: chemical symbols the model handles.
        cutoff: neighbour cutoff in Å.
        **hyperparameters: potential arguments (e.g. ``features``, ``num_layers``), encoder
            arguments prefixed ``encoder_`` (e.g. ``encoder_num_layers``), and
            ``reference_energies`` (dict symbol -> eV or list), ``energy_scale``, ``energy_shift``
            (eV), ``avg_num_neighbors``.
    """
    if potential not in POTENTIALS:
        raise ValueError(f"unknown potential {potential!r}; choose one of {sorted(POTENTIALS)}")
    cutoff = float(cutoff)
    if not cutoff > 0:
        raise ValueError(f"cutoff must be a positive length in Å, got {cutoff!r}")
    elements = _normalise_elements(elements)
    potential_cls = potential_class(potential)
    encoder_cls = encoder_class(encoder)

    model_kwargs = {k: hyperparameters[k] for k in MODEL_KEYS if k in hyperparameters}
    encoder_kwargs = {
        k[len("encoder_") :]: v for k, v in hyperparameters.items() if k.startswith("encoder_")
    }
    potential_kwargs = {
        k: v
        for k, v in hyperparameters.items()
        if k not in MODEL_KEYS and not k.startswith("encoder_")
    }
    encoder_names = _keyword_names(encoder_cls)
    # the encoder's width follows the potential's unless given, so `features=` sizes both
    if "features" in encoder_names and "features" not in encoder_kwargs:
        if "features" in potential_kwargs:
            encoder_kwargs["features"] = potential_kwargs["features"]
    if "avg_num_neighbors" in encoder_names and "avg_num_neighbors" in potential_kwargs:
        encoder_kwargs.setdefault("avg_num_neighbors", potential_kwargs["avg_num_neighbors"])
    _check_keys(encoder_cls, encoder_kwargs, f"encoder {encoder!r}", prefix="encoder_")
    _check_keys(potential_cls, potential_kwargs, f"potential {potential!r}")

    encoder_module = encoder_cls(n_species=len(elements), cutoff=cutoff, **encoder_kwargs)
    potential_module = potential_cls(
        node_features_in=encoder_module.node_features_out,
        edge_features_in=encoder_module.edge_features_out,
        cutoff=cutoff,
        **potential_kwargs,
    )
    reference = _reference_energies(model_kwargs.pop("reference_energies", None), elements)
    config = {
        "potential": potential,
        "encoder": encoder,
        "elements": elements,
        "cutoff": cutoff,
        "hyperparameters": {k: v for k, v in hyperparameters.items() if k not in MODEL_KEYS},
    }
    return ForceField(
        encoder=encoder_module,
        potential=potential_module,
        elements=elements,
        cutoff=cutoff,
        config=config,
        reference_energies=reference,
        energy_scale=float(model_kwargs.get("energy_scale", 1.0)),
        energy_shift=float(model_kwargs.get("energy_shift", 0.0)),
    )


def build_from_config(config: Mapping[str, Any]) -> ForceField:
    """Rebuild the (untrained) model that ``config`` (``model.config``) describes."""
    return build_model(
        potential=config["potential"],
        encoder=config["encoder"],
        elements=config["elements"],
        cutoff=config["cutoff"],
        **config.get("hyperparameters", {}),
    )
