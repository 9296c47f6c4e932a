"""Pretrained-encoder files: round trip, checked before trusted, and refused as a force field."""

from __future__ import annotations

import json

import pytest
import torch

from mlff import MLFFCalculator, ModelFileError, load_model
from mlff.pretraining.files import (
    load_pretrained,
    pretrained_payload,
    read_encoder,
    save_pretrained,
)
from mlff.pretraining.heads import PretrainingModel


@pytest.fixture
def model() -> PretrainingModel:
    torch.manual_seed(0)
    return PretrainingModel(["H", "O"], 3.0, features=8, pair_features=4, num_layers=1, num_heads=2)


def test_round_trip_keeps_config_and_weights(model, tmp_path):
    path = tmp_path / "encoder.pt"
    save_pretrained(model, path)
    loaded = load_pretrained(path)
    assert loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    encoder = read_encoder(path)
    assert encoder.elements == ["H", "O"] and encoder.cutoff == 3.0
    assert encoder.model_hyperparameters()["encoder_features"] == 8


def test_load_model_and_the_calculator_refuse_a_pretrained_file(model, tmp_path):
    path = tmp_path / "encoder.pt"
    save_pretrained(model, path)
    for load in (load_model, MLFFCalculator):
        with pytest.raises(ModelFileError) as error:
            load(path)
        message = str(error.value)
        assert str(path) in message and "no potential head" in message
        assert "\n" not in message


def _tampered(model, tmp_path, change) -> str:
    payload = pretrained_payload(model)
    change(payload)
    path = tmp_path / "tampered.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError) as error:
        load_pretrained(path)
    return str(error.value)


def test_a_config_that_does_not_match_the_weights_is_refused(model, tmp_path):
    def wider(payload):
        config = json.loads(payload["config"])
        config["hyperparameters"]["features"] = 16
        payload["config"] = json.dumps(config)

    assert "is stored as" in _tampered(model, tmp_path, wider)


def test_absurd_or_foreign_configs_and_bad_weights_are_refused(model, tmp_path):
    def huge(payload):
        config = json.loads(payload["config"])
        config["hyperparameters"]["features"] = 10**9
        payload["config"] = json.dumps(config)

    def unknown_key(payload):
        config = json.loads(payload["config"])
        config["hyperparameters"]["evil"] = 1
        payload["config"] = json.dumps(config)

    def bad_element(payload):
        config = json.loads(payload["config"])
        config["elements"] = ["H", "Qq"]
        payload["config"] = json.dumps(config)

    def nan_weight(payload):
        name = next(iter(payload["state_dict"]))
        payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))

    assert "more than the file stores" in _tampered(model, tmp_path, huge)
    assert "'evil' is unknown" in _tampered(model, tmp_path, unknown_key)
    assert "distinct symbols" in _tampered(model, tmp_path, bad_element)
    assert "NaN" in _tampered(model, tmp_path, nan_weight)
