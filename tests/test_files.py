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
