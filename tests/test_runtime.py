"""Per-call thread choice: small calls run on one CPU thread, the caller's count comes back."""

import pytest
import torch

from mlff.runtime import single_thread_below

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_call_runs_on_one_thread_and_restores(two_threads):
    with single_thread_below(10, 100, CPU):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_large_call_keeps_the_threads(two_threads):
    with single_thread_below(101, 100, CPU):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 2


def test_threads_restored_after_an_error(two_threads):
    with pytest.raises(ValueError), single_thread_below(1, 100, CPU):
        raise ValueError("inside")
    assert torch.get_num_threads() == 2


def test_gpu_calls_leave_threads_alone(two_threads):
    with single_thread_below(1, 100, torch.device("cuda")):
        assert torch.get_num_threads() == 2


def test_set_threads_flushes_subnormal_floats(monkeypatch):
    from mlff.runtime import flush_denormals, set_threads

    subnormal = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal
    monkeypatch.setenv("MLFF_FLUSH_DENORMALS", "0")
    assert flush_denormals() is False
    monkeypatch.delenv("MLFF_FLUSH_DENORMALS")
    threads = torch.get_num_threads()
    try:
        set_threads(threads, "cpu")
        if not flush_denormals():
            pytest.skip("this CPU cannot flush subnormal floats")
        assert float((subnormal * 1.0)[0]) == 0.0
        assert float((torch.tensor([1e-30]) * 1e-10)[0]) == 0.0
    finally:
        torch.set_num_threads(threads)
