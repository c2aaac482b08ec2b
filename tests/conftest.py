"""Fixtures shared by the test modules."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_folders(tmp_path_factory):
    """No test writes into the machine's runs folder (long runs may be resuming there) or
    into the committed results/: both point into a temporary folder unless a test says otherwise."""
    import os

    base = tmp_path_factory.mktemp("session")
    before = {k: os.environ.get(k) for k in ("LOWVAR_MAE_RUNS", "LOWVAR_MAE_RESULTS")}
    os.environ["LOWVAR_MAE_RUNS"] = str(base / "runs")
    os.environ["LOWVAR_MAE_RESULTS"] = str(base / "results")
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
