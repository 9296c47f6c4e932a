"""Model files: round trips, refusal of pickled payloads, clear errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from mlff import ModelFileError, build_model, load_model, save_model
from mlff.files import FORMAT_VERSION, model_payload
from mlff.testing import predict
from tests.conftest import ethanol, tiny_model, triclinic_cell


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_reproduces_predictions(model_name, tmp_path, dtype):
    model = tiny_model(model_name).to(dtype)
    model.reference_energies.copy_(torch.tensor([-13.6, -1030.1, -2040.7], dtype=torch.float64))
    save_model(model, tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.dtype == dtype
    assert loaded.config == model.config
    assert loaded.elements == model.elements
    for atoms in (ethanol(), triclinic_cell()):
        before, after = predict(model, atoms), predict(loaded, atoms)
        assert after.energy == before.energy
        np.testing.assert_array_equal(after.forces, before.forces)


def test_reference_energies_stay_float64_in_a_float32_model(tmp_path):
    model = build_model(elements=["H", "O"], reference_energies={"H": -13.123456789, "O": -1.5})
    model = model.to(torch.float32)
    assert model.reference_energies.dtype == torch.float64
    save_model(model, tmp_path / "m.pt")
    assert load_model(tmp_path / "m.pt").reference_energies[0].item() == -13.123456789


def test_file_holds_config_and_plain_values(tmp_path):
    model = build_model(potential="egnn", elements=["Cu"], cutoff=4.5, features=8, num_layers=1)
    save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["format_version"] == FORMAT_VERSION
    assert payload["elements"] == ["Cu"]
    assert payload["cutoff"] == 4.5
    config = json.loads(payload["config"])
    assert config["hyperparameters"] == {"features": 8, "num_layers": 1}


class _Exploit:
    """A payload whose unpickling would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = model_payload(build_model(elements=["H"], features=4, num_layers=1))
    payload["extra"] = _Exploit(str(marker))
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="pickled Python objects") as info:
        load_model(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "evil.pt" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_garbage_and_foreign_files(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "nothing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFileError, match="garbage.pt"):
        load_model(tmp_path / "garbage.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not an mlff model file"):
        load_model(tmp_path / "foreign.pt")


def test_newer_format_version_is_refused(tmp_path):
    payload = model_payload(build_model(elements=["H"], features=4, num_layers=1))
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ModelFileError, match="newer"):
        load_model(tmp_path / "future.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    save_model(build_model(elements=["H"], features=4, num_layers=1), path)
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_model(build_model(elements=["H", "C"], features=4, num_layers=1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))


def _saved_payload(tmp_path, **hyper) -> dict:
    save_model(
        build_model(elements=["H", "C"], features=4, num_layers=1, **hyper), tmp_path / "m.pt"
    )
    return torch.load(tmp_path / "m.pt", weights_only=True)


def _refused(tmp_path, payload, match: str) -> str:
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(path)
    message = str(info.value)
    assert "bad.pt" in message and "\n" not in message
    return message


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PK\x03\x04 truncated zip"])
def test_text_and_empty_files_are_refused_in_one_line(tmp_path, content):
    path = tmp_path / "notamodel.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="notamodel.pt: not an mlff model file") as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match="is not a file"):
        load_model(tmp_path)


def test_absurd_config_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    payload = _saved_payload(tmp_path)
    config = json.loads(payload["config"])
    config["hyperparameters"].update(features=200_000, num_layers=400)
    payload["config"] = json.dumps(config)

    def no_real_build(config):  # a real build of this config would need terabytes
        raise AssertionError("the model was built before its config was checked")

    monkeypatch.setattr("mlff.files.build_from_config", no_real_build)
    _refused(tmp_path, payload, "features=200000.*do not match")


@pytest.mark.parametrize("model_name", ["egnn", "tfn-l2-attention", "tfn+unimol"])
def test_config_that_disagrees_with_the_weights_is_refused(tmp_path, model_name, monkeypatch):
    payload = model_payload(tiny_model(model_name))
    config = json.loads(payload["config"])
    config["hyperparameters"]["features"] += 1  # plausible, but not the stored shapes
    payload["config"] = json.dumps(config)
    monkeypatch.setattr(
        "mlff.files.build_from_config",
        lambda config: pytest.fail("built before the shapes were compared"),
    )
    _refused(tmp_path, payload, "config and weights do not match")


def test_missing_and_unexpected_weights_are_refused(tmp_path):
    payload = _saved_payload(tmp_path)
    name = next(iter(payload["state_dict"]))
    removed = payload["state_dict"].pop(name)
    _refused(tmp_path, payload, f"lacks weights {name}")
    payload["state_dict"][name] = removed
    payload["state_dict"]["extra.weight"] = torch.zeros(2)
    _refused(tmp_path, payload, "unexpected weights extra.weight")


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("config", "{not json", "not valid JSON"),
        ("config", "[1, 2]", "not a mapping"),
        ("config", '{"potential": "egnn"}', "'encoder' is missing"),
        ("dtype", "int8", "dtype 'int8'"),
        ("state_dict", [1], "holds no weights"),
        ("format_version", "1", "not a valid version"),
    ],
)
def test_malformed_fields_are_refused(tmp_path, field, value, match):
    payload = _saved_payload(tmp_path)
    payload[field] = value
    _refused(tmp_path, payload, match)


def test_non_finite_weights_and_bad_cutoff_are_refused(tmp_path):
    payload = _saved_payload(tmp_path)
    name = [k for k, v in payload["state_dict"].items() if v.is_floating_point()][-1]
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    _refused(tmp_path, payload, f"weight '{name}' holds NaN")
    payload = _saved_payload(tmp_path)
    config = json.loads(payload["config"])
    config["cutoff"] = -1.0
    payload["config"] = json.dumps(config)
    _refused(tmp_path, payload, "cutoff -1.0")
