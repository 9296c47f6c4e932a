"""build_model: argument routing and validation."""

from __future__ import annotations

import pytest

from mlff import build_model


def test_unknown_hyperparameter_names_the_valid_ones():
    with pytest.raises(
        ValueError, match="unknown potential 'egnn' hyperparameter.*widht.*features"
    ):
        build_model(elements=["H"], widht=3)


def test_unknown_encoder_hyperparameter():
    with pytest.raises(ValueError, match="encoder_bogus"):
        build_model(elements=["H"], encoder_bogus=1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"potential": "mace"}, "unknown potential 'mace'"),
        ({"encoder": "bert"}, "unknown encoder 'bert'"),
        ({"elements": ["H", "Xx"]}, "unknown element symbol 'Xx'"),
        ({"elements": ["H", "H"]}, "given twice"),
        ({"elements": []}, "non-empty"),
        ({"cutoff": -1.0}, "cutoff must be a positive"),
        ({"features": 0}, "features must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_model(**{"elements": ["H"], **kwargs})


def test_features_sizes_encoder_and_potential():
    model = build_model(elements=["H"], features=12)
    assert model.encoder.node_features_out == 12
    assert model.config["hyperparameters"] == {"features": 12}
