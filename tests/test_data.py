"""Tests of lowvar_mae.data: official-format readers against arrays built here,
the local cache format, the offline error report, and the synthetic dataset."""

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.utils as tv_utils

from lowvar_mae import data
from lowvar_mae.data import (DATASETS, DatasetFormatError, DatasetNotFoundError, ImageDataset, data_root, load_dataset,
                             make_synthetic)

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 (n, size, size, 3) NHWC, labels int64 (n,) in 0..9."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int64)


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """The official CIFAR layout, built pixel plane by plane: each row holds the
    1024 red values, then green, then blue, each plane in row-major order."""
    return np.stack([np.concatenate([img[:, :, c].ravel() for c in range(3)]) for img in images])


def write_pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(content, f)


def write_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def assert_same(dataset: ImageDataset, images: np.ndarray, labels: np.ndarray, classes) -> None:
    assert dataset.images.dtype == np.uint8 and dataset.labels.dtype == np.int64
    np.testing.assert_array_equal(dataset.images, images)
    np.testing.assert_array_equal(dataset.labels, labels)
    assert dataset.classes == tuple(classes)


# ------------------------------------------------------------------------ official formats


def test_cifar10_official_format_then_cache(tmp_path):
    per_batch = 7
    images, labels = random_images(6 * per_batch, 32, seed=0)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        part = slice(i * per_batch, (i + 1) * per_batch)
        write_pickle(
            folder / name,
            {b"data": cifar_rows(images[part]), b"labels": labels[part].tolist(), b"batch_label": b"x"},
        )
    write_pickle(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    train_count = 5 * per_batch

    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert_same(train, images[:train_count], labels[:train_count], CIFAR10_NAMES)
    assert_same(test, images[train_count:], labels[train_count:], CIFAR10_NAMES)
    assert (train.name, train.split, test.split) == ("cifar10", "train", "test")

    cache = tmp_path / "cifar10" / "cifar10_train.npz"
    assert cache.is_file() and (tmp_path / "cifar10" / "cifar10_test.npz").is_file()
    assert sorted(p.name for p in cache.parent.iterdir() if p.name.startswith(".")) == []
    for path in folder.iterdir():
        path.unlink()
    again = load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert_same(again, images[:train_count], labels[:train_count], CIFAR10_NAMES)


def test_cifar100_official_format_then_cache(tmp_path):
    rng = np.random.default_rng(1)
    names = [f"fine{k:02d}" for k in range(100)]
    folder = tmp_path / "cifar100" / "cifar-100-python"
    expected = {}
    for split, n in [("train", 9), ("test", 4)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 100, n)
        write_pickle(
            folder / split,
            {b"data": cifar_rows(images), b"fine_labels": labels.tolist(), b"coarse_labels": [0] * n},
        )
        expected[split] = images, labels
    write_pickle(folder / "meta", {b"fine_label_names": [n.encode() for n in names]})

    for split, (images, labels) in expected.items():
        assert_same(load_dataset("cifar100", split, root=tmp_path, download=False), images, labels, names)
    for path in folder.iterdir():
        path.unlink()
    for split, (images, labels) in expected.items():
        assert_same(load_dataset("cifar100", split, root=tmp_path, download=False), images, labels, names)


@pytest.mark.parametrize("split", ["train", "test", "unlabeled"])
def test_stl10_official_format_then_cache(tmp_path, split):
    images, labels = random_images(5, 96, seed=2)
    folder = tmp_path / "stl10" / "stl10_binary"
    folder.mkdir(parents=True)
    # Each image: 3 channel planes, each stored column by column (Fortran order).
    raw = np.concatenate([images[i, :, :, c].ravel(order="F") for i in range(5) for c in range(3)])
    raw.tofile(folder / f"{split}_X.bin")
    if split != "unlabeled":
        (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    names = [f"stl{k}" for k in range(10)]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    expected_labels = np.full(5, -1) if split == "unlabeled" else labels

    dataset = load_dataset("stl10", split, root=tmp_path, download=False)
    assert_same(dataset, images, expected_labels, names)
    assert dataset.image_shape == (96, 96, 3)
    assert (tmp_path / "stl10" / f"stl10_{split}.npz").is_file()
    for path in folder.iterdir():
        path.unlink()
    assert_same(load_dataset("stl10", split, root=tmp_path, download=False), images, expected_labels, names)


# ------------------------------------------------------------------------ local cache format


def test_cache_parts_join_in_index_start_order(tmp_path):
    images, labels = random_images(10, 32, seed=3)
    folder = tmp_path / "cifar10"
    # File-name order (a, b, c) differs from index order (c, a, b).
    for name, start, stop in [("a", 3, 8), ("b", 8, 10), ("c", 0, 3)]:
        write_npz(
            folder / f"cifar10_train_{name}.npz",
            x=images[start:stop],
            y=labels[start:stop].astype(np.uint8),
            classes=np.array(CIFAR10_NAMES),
            index_start=start,
            total=10,  # a declared subset: not held to CIFAR-10's 50,000
        )
    dataset = load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert_same(dataset, images, labels, CIFAR10_NAMES)


def test_cache_parts_without_index_start_join_in_name_order(tmp_path):
    images, labels = random_images(6, 32, seed=4)
    for name, part in [("2", slice(3, 6)), ("1", slice(0, 3))]:
        write_npz(
            tmp_path / "cifar10" / f"cifar10_test_{name}.npz",
            x=images[part],
            y=labels[part],
            classes=np.array(CIFAR10_NAMES),
            total=6,
        )
    assert_same(load_dataset("cifar10", "test", root=tmp_path, download=False), images, labels, CIFAR10_NAMES)


def test_cache_parts_with_a_gap_are_rejected(tmp_path):
    images, labels = random_images(6, 32, seed=5)
    for name, start in [("a", 0), ("b", 4)]:
        write_npz(
            tmp_path / "cifar10" / f"cifar10_train_{name}.npz",
            x=images[start : start + 3],
            y=labels[start : start + 3],
            classes=np.array(CIFAR10_NAMES),
            index_start=start,
        )
    with pytest.raises(DatasetFormatError, match="cifar10_train_b.npz"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)


def test_root_comes_from_argument_then_env_var_then_home(tmp_path, monkeypatch):
    images, labels = random_images(4, 32, seed=6)
    write_npz(tmp_path / "cifar10" / "cifar10_test.npz", x=images, y=labels, classes=np.array(CIFAR10_NAMES), total=4)
    monkeypatch.setenv("LOWVAR_MAE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path / "cifar10")
    assert data_root() == tmp_path.resolve()
    assert data_root(tmp_path / "other") == (tmp_path / "other").resolve()
    assert_same(load_dataset("cifar10", "test", download=False), images, labels, CIFAR10_NAMES)
    monkeypatch.delenv("LOWVAR_MAE_DATA")
    assert data_root() == (Path.home() / ".cache" / "lowvar-mae").resolve()


# ------------------------------------------------------------------------ the shared CIFAR-10


@pytest.mark.real_data
def test_shared_cifar10_is_the_lossless_official_data():
    if not os.environ.get("LOWVAR_MAE_DATA"):
        pytest.skip("LOWVAR_MAE_DATA is not set")
    folder = data_root() / "cifar10"
    if not (list(folder.glob("cifar10_train*.npz")) and list(folder.glob("cifar10_test*.npz"))):
        pytest.skip(f"no CIFAR-10 cache files in {folder}")
    train = load_dataset("cifar10", "train", download=False)
    test = load_dataset("cifar10", "test", download=False)
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == tuple(CIFAR10_NAMES) == test.classes
    for dataset in (train, test):
        assert dataset.labels.min() == 0 and dataset.labels.max() == 9
    assert np.bincount(train.labels).tolist() == [5000] * 10

    def sha256(array: np.ndarray) -> str:
        return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()

    # Labels are stored as uint8 and loaded as int64; the cast back is exact (range checked above).
    assert sha256(train.images) == "47af8b02cfcfb6cdf3dbbd1969ad7f1b70f4413f6f80f437b020ee4e5bc8304a"
    assert sha256(train.labels.astype(np.uint8)) == (
        "2b7cd2f24487317614016b72ffd53071c3062f592f0eb300c18a770d41ae1253"
    )
    assert sha256(test.images) == "f9b1e2130bab680db56eb06d886f7f1ad0f1183907ceff4659d1735c890f5b04"
    assert sha256(test.labels.astype(np.uint8)) == (
        "cec8a24a1e92aa2ecaa0bbd3dbfa86bf6cd8759fbd209a832824c8cf0afca9d5"
    )


# ------------------------------------------------------------------------ offline error report


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
@pytest.mark.parametrize("download", [False, True])
def test_missing_dataset_error_says_what_where_and_how(tmp_path, monkeypatch, name, download):
    calls = []

    def no_network(url, download_root, **kwargs):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", no_network)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, "test", root=tmp_path, download=download)
    message = str(info.value)
    url = DATASETS[name].url
    assert calls == ([url] if download else [])
    assert isinstance(info.value, FileNotFoundError)
    for text in [
        repr(name),
        "'test'",
        str(tmp_path / name / f"{name}_test.npz"),
        str(tmp_path / name / f"{name}_test_*.npz"),
        "LOWVAR_MAE_DATA",
        url,
        "JPEG",
    ]:
        assert text in message
    official = {"cifar10": "cifar-10-batches-py/test_batch", "cifar100": "cifar-100-python/test"}
    official["stl10"] = "stl10_binary/test_X.bin"
    assert str(tmp_path / name / official[name]) in message
    if download:
        assert "OSError: network is unreachable" in message
    else:
        assert "download=False" in message


# ------------------------------------------------------------------------ bad input


def test_unknown_dataset_or_split_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"'imagenet'.*'synthetic', 'cifar10', 'cifar100', 'stl10'"):
        load_dataset("imagenet", "train")
    with pytest.raises(ValueError, match=r"'unlabeled'.*'cifar10'.*'train', 'test'"):
        load_dataset("cifar10", "unlabeled")
    with pytest.raises(ValueError, match="synthetic"):
        load_dataset("cifar10", "train", n=10)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((4, 32, 32, 3), np.float32), "y": np.zeros(4, np.uint8)}, "float32"),
        ({"x": np.zeros((4, 3, 32, 32), np.uint8), "y": np.zeros(4, np.uint8)}, r"\(4, 3, 32, 32\)"),
        ({"x": np.zeros((4, 32, 32, 3), np.uint8), "y": np.zeros(5, np.uint8)}, r"\(5,\)"),
        ({"x": np.zeros((4, 32, 32, 3), np.uint8), "y": np.full(4, 10)}, "labels"),
        ({"x": np.zeros((4, 32, 32, 3), np.uint8)}, "missing key"),
    ],
)
def test_inconsistent_cache_file_is_named(tmp_path, arrays, message):
    path = tmp_path / "cifar10" / "cifar10_test.npz"
    write_npz(path, classes=np.array(CIFAR10_NAMES), **arrays)
    with pytest.raises(DatasetFormatError, match=message) as info:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(path) in str(info.value)


def test_corrupt_files_are_named(tmp_path):
    path = tmp_path / "cifar10" / "cifar10_test.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip file")
    with pytest.raises(DatasetFormatError, match="cifar10_test.npz"):
        load_dataset("cifar10", "test", root=tmp_path, download=False)

    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "test").write_bytes(b"\x80\x04 truncated")
    write_pickle(folder / "meta", {b"fine_label_names": [b"n"] * 100})
    with pytest.raises(DatasetFormatError, match="cifar-100-python/test"):
        load_dataset("cifar100", "test", root=tmp_path, download=False)


# ------------------------------------------------------------------------ ImageDataset


def test_image_dataset_subset_and_tensor():
    images, labels = random_images(20, 8, seed=7)
    dataset = ImageDataset("toy", "train", images, labels, tuple(CIFAR10_NAMES))
    assert len(dataset) == 20 and dataset.image_shape == (8, 8, 3)

    first = dataset.subset(5)
    np.testing.assert_array_equal(first.images, images[:5])
    drawn = dataset.subset(5, seed=0)
    assert len(drawn) == 5 and len({img.tobytes() for img in drawn.images}) == 5
    np.testing.assert_array_equal(drawn.images, dataset.subset(5, seed=0).images)
    assert not np.array_equal(drawn.images, dataset.subset(5, seed=1).images)
    with pytest.raises(ValueError, match="21"):
        dataset.subset(21)

    tensor = dataset.to_tensor()
    assert tensor.dtype == torch.uint8 and tensor.shape == (20, 3, 8, 8) and tensor.is_contiguous()
    assert torch.equal(tensor, torch.from_numpy(images).permute(0, 3, 1, 2))

    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("toy", "train", images.astype(np.float32), labels, tuple(CIFAR10_NAMES))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset("toy", "train", images, labels + 10, tuple(CIFAR10_NAMES))


# ------------------------------------------------------------------------ synthetic dataset


def test_synthetic_is_deterministic_balanced_and_split_apart():
    train = load_dataset("synthetic", "train")
    test = load_dataset("synthetic", "test")
    assert train.images.shape == (5000, 32, 32, 3) and test.images.shape == (1000, 32, 32, 3)
    assert train.images.dtype == np.uint8 and train.labels.dtype == np.int64
    assert train.classes == data.SYNTHETIC_CLASSES and len(train.classes) == 10
    assert np.bincount(train.labels, minlength=10).tolist() == [500] * 10
    assert np.bincount(test.labels, minlength=10).tolist() == [100] * 10

    again = load_dataset("synthetic", "train")
    assert again.images.tobytes() == train.images.tobytes()
    np.testing.assert_array_equal(again.labels, train.labels)
    assert not {img.tobytes() for img in train.images} & {img.tobytes() for img in test.images}

    images, labels = make_synthetic(23, seed=5)
    assert sorted(np.bincount(labels, minlength=10)) == [2] * 7 + [3] * 3
    assert make_synthetic(23, seed=5)[0].tobytes() == images.tobytes()
    assert make_synthetic(23, seed=6)[0].tobytes() != images.tobytes()
    assert len(load_dataset("synthetic", "test", n=30)) == 30


def test_synthetic_class_lives_in_the_low_variance_residual():
    """Top principal components holding 90% of the variance: near-chance linear
    probe. What is left after removing them: a clearly better one."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = load_dataset("synthetic", "train", n=2000)
    test = load_dataset("synthetic", "test", n=500)
    x_train = train.images.reshape(len(train), -1).astype(np.float64)
    x_test = test.images.reshape(len(test), -1).astype(np.float64)

    pca = PCA(n_components=100, svd_solver="randomized", random_state=0).fit(x_train)
    k = int(np.searchsorted(np.cumsum(pca.explained_variance_ratio_), 0.90)) + 1
    assert k < 100
    components, mean = pca.components_[:k], pca.mean_  # (k, 3072), (3072,)

    def top(x):
        return (x - mean) @ components.T

    def residual(x):
        return x - mean - top(x) @ components

    def accuracy(features):
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        return probe.fit(features(x_train), train.labels).score(features(x_test), test.labels)

    top_accuracy, residual_accuracy = accuracy(top), accuracy(residual)
    print(f"k={k} top-90% accuracy {top_accuracy:.3f}, residual accuracy {residual_accuracy:.3f}")
    assert top_accuracy < 0.3
    assert residual_accuracy > 0.5


def test_shards_reload_as_the_whole_split_and_refuse_a_used_root(tmp_path):
    from lowvar_mae.data import ImageDataset, save_shards

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(250, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=250)
    whole = ImageDataset("cifar10", "train", images, labels, tuple(f"c{i}" for i in range(10)))
    paths = save_shards(whole, tmp_path, size=100)
    assert [p.name for p in paths] == ["cifar10_train_00.npz", "cifar10_train_01.npz", "cifar10_train_02.npz"]
    with np.load(paths[2]) as part:
        assert int(part["index_start"]) == 200 and len(part["x"]) == 50
    back = load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert np.array_equal(back.images, images) and np.array_equal(back.labels, labels)
    assert back.classes == whole.classes
    with pytest.raises(FileExistsError, match="already holds cifar10 train"):
        save_shards(whole, tmp_path, size=100)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        save_shards(whole, tmp_path / "other", size=0)
    assert not list(tmp_path.glob("cifar10/.*.tmp"))


class _RunsCode:
    """What a crafted archive would hold: unpickling it calls os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_crafted_cifar_archive_is_refused_without_running_code(tmp_path, protocol):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = random_images(4, 32, seed=0)
    marker = tmp_path / "ran"
    flat = images.transpose(0, 3, 1, 2).reshape(4, -1)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": flat, b"labels": labels.tolist(), b"x": _RunsCode(marker)}, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES]}, f, protocol=protocol)
    with pytest.raises(DatasetFormatError, match=r"data_batch_1: not a readable CIFAR pickle .*refused global "
                                                 r"(posix|os)\.system"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert not marker.exists()
    assert not (tmp_path / "cifar10" / "cifar10_train.npz").exists()  # nothing was cached


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_honest_archives_of_every_protocol_still_load(tmp_path, protocol):
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = random_images(10, 32, seed=1)
    flat = images.transpose(0, 3, 1, 2).reshape(10, -1)
    for i, name in enumerate(["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": flat[2 * i:2 * i + 2], b"labels": labels[2 * i:2 * i + 2].tolist()}, f,
                        protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR10_NAMES]}, f, protocol=protocol)
    dataset = load_dataset("cifar10", "train", root=tmp_path, download=False)
    assert np.array_equal(dataset.images, images) and np.array_equal(dataset.labels, labels)


def test_a_split_short_of_its_known_size_is_refused_unless_it_declares_it(tmp_path):
    """The shared layout (parts with index_start, no declared size) with its second part missing."""
    images, labels = random_images(6, 32, seed=9)
    folder = tmp_path / "cifar10"
    write_npz(folder / "cifar10_train_a.npz", x=images[:3], y=labels[:3], classes=np.array(CIFAR10_NAMES),
              index_start=0)
    with pytest.raises(data.DatasetFormatError, match="hold 3 images, but cifar10's train split has 50,000"):
        load_dataset("cifar10", "train", root=tmp_path, download=False)
    write_npz(folder / "cifar10_train_a.npz", x=images[:3], y=labels[:3], classes=np.array(CIFAR10_NAMES),
              index_start=0, total=3)  # a subset on purpose
    assert len(load_dataset("cifar10", "train", root=tmp_path, download=False)) == 3
