"""``mlff bench``: MD speed and memory figures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from mlff.workflows.cli import cli


def test_bench_reports_speed_and_memory(model_file, ethanol_file):
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            str(model_file),
            str(ethanol_file),
            "--steps",
            "5",
            "--warmup",
            "2",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["steps"] == 5 and payload["n_atoms"] == 9
    assert payload["steps_per_second"] > 0 and payload["ns_per_day"] > 0
    assert payload["us_per_atom_step"] == 1e6 / (payload["steps_per_second"] * 9)
    assert payload["peak_memory_mb"] > 0 and payload["peak_memory_kind"] == "process_max_rss"
    assert 0 < payload["calculator_ms"] <= 2 * payload["step_ms"]
    assert payload["device"] == "cpu" and payload["dtype"] == "float64"


def test_bench_unknown_element_is_a_one_line_error(model_file, tmp_path):
    (tmp_path / "nacl.xyz").write_text("2\n\nNa 0 0 0\nCl 2.5 0 0\n")
    result = CliRunner().invoke(cli, ["bench", str(model_file), str(tmp_path / "nacl.xyz")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "nacl.xyz" in result.output.strip().splitlines()[-1]


def test_bench_times_the_batched_engine_on_replicas(model_file, ethanol_file):
    args = ["bench", str(model_file), str(ethanol_file), "--engine", "batched", "--replicas"]
    result = CliRunner().invoke(cli, [*args, "4", "--steps", "5", "--warmup", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["engine"] == "batched" and payload["n_systems"] == 4
    assert payload["steps"] == 5 and payload["n_atoms"] == 36
    assert payload["atom_steps_per_second"] == pytest.approx(payload["steps_per_second"] * 36)
    assert payload["neighbour_builds"] >= 1 and payload["calculator_ms"] > 0
