"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread: the test machine's 2 cores are shared, and two threads per process
    run about ten times slower there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Runs and records in a fresh temporary folder: (runs, results)."""
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "runs", tmp_path / "results"
