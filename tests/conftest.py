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


@pytest.fixture
def cifar_shards(monkeypatch):
    """``make(root, size)``: 120 training and 40 test images of the embedded data saved as
    CIFAR-10 parts of ``size`` images under ``root``, and $LOWVAR_MAE_DATA pointed there
    (the shape of the real data on a machine that receives it in parts)."""
    from lowvar_mae.data import ImageDataset, load_dataset, save_shards

    def make(root, size=50):
        for split, n in (("train", 120), ("test", 40)):
            images = load_dataset("synthetic", split).subset(n)
            save_shards(ImageDataset("cifar10", split, images.images, images.labels,
                                     tuple(f"c{i}" for i in range(10))), root, size=size)
        monkeypatch.setenv("LOWVAR_MAE_DATA", str(root))
        return root

    return make
