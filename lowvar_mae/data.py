"""Image datasets as uint8 arrays: loading, caching, and an embedded synthetic set.

Every dataset is returned as an :class:`ImageDataset` holding the whole split in
memory: ``images`` uint8 ``(N, H, W, C)`` RGB, ``labels`` int64 ``(N,)`` (-1 for
unlabelled images). Training moves the whole split to the device once with
:meth:`ImageDataset.to_tensor` and converts to float there.

Where :func:`load_dataset` looks, for dataset ``<name>`` and split ``<split>``
under the data root (:func:`data_root`: argument, else ``$LOWVAR_MAE_DATA``, else
``~/.cache/lowvar-mae``):

1. the local cache, ``<root>/<name>/<name>_<split>.npz``, or the split stored in
   parts, ``<root>/<name>/<name>_<split>_*.npz``, joined in ``index_start`` order
   (which must then run contiguously from 0; without that key, file-name order).
   Keys: ``x`` uint8 ``(N, H, W, C)`` RGB, ``y`` integer ``(N,)`` (-1 unlabelled),
   ``classes`` unicode ``(num_classes,)``, ``index_start`` int (official index of
   row 0 of that file). This is the layout of the shared
   lossless CIFAR-10 copy, so ``LOWVAR_MAE_DATA=/work/shared/datasets`` loads it;
2. the official files, as torchvision's download leaves them in ``<root>/<name>/``
   (``cifar-10-batches-py/``, ``cifar-100-python/``, ``stl10_binary/``), read by
   the small readers below; the cache file of step 1 is then written next to them;
3. if ``download`` is true, the official archive is downloaded and extracted
   with torchvision's downloader (URL and md5 from torchvision's dataset
   classes), then step 2 again;
4. otherwise :class:`DatasetNotFoundError` says what is missing, where it looked
   and how to get the data.

Never use JPEG copies of these datasets: JPEG compression mostly destroys the
low-variance image detail this package studies.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ENV_VAR = "LOWVAR_MAE_DATA"
DEFAULT_ROOT = Path("~/.cache/lowvar-mae")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset split is neither on disk nor downloadable."""


class DatasetFormatError(ValueError):
    """A dataset file exists but is corrupt or inconsistent; the message names the file."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    image_shape: (H, W, C) of every image; num_classes: number of class names;
    splits: the allowed split names; url: the official archive (None: generated).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    splits: tuple[str, ...]
    url: str | None


# Images per split of the real datasets. A split read from files that do not declare their
# size (the official archives and caches written from them declare it) must hold exactly
# this many, so a copy with a part missing is refused instead of read short.
SPLIT_SIZES = {"cifar10": {"train": 50_000, "test": 10_000}, "cifar100": {"train": 50_000, "test": 10_000},
               "stl10": {"train": 5_000, "test": 8_000, "unlabeled": 100_000}}

DATASETS: dict[str, DatasetInfo] = {
    "synthetic": DatasetInfo("synthetic", (32, 32, 3), 10, ("train", "test"), None),
    "cifar10": DatasetInfo(
        "cifar10",
        (32, 32, 3),
        10,
        ("train", "test"),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (32, 32, 3),
        100,
        ("train", "test"),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "stl10": DatasetInfo(
        "stl10",
        (96, 96, 3),
        10,
        ("train", "test", "unlabeled"),
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    ),
}


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of an image dataset, held in memory.

    images: uint8 (N, H, W, C), RGB; labels: int64 (N,), -1 for unlabelled images;
    classes: class names, ``classes[label]``. Equality is identity (the fields are
    arrays).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, H, W, C), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({len(self.images)},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if not isinstance(self.classes, tuple) or not all(isinstance(c, str) for c in self.classes):
            raise ValueError(f"classes must be a tuple of str, got {self.classes!r}")
        if self.labels.size and (self.labels.min() < -1 or self.labels.max() >= len(self.classes)):
            raise ValueError(
                f"labels must lie in [-1, {len(self.classes) - 1}], "
                f"got [{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of every image."""
        return tuple(self.images.shape[1:])

    def subset(self, n: int, seed: int | None = None) -> ImageDataset:
        """The first ``n`` images, or with ``seed`` ``n`` images drawn without
        replacement (kept in dataset order; not stratified)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"subset size n={n} must lie in [0, {len(self)}]")
        if seed is None:
            index = np.arange(n)
        else:
            index = np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False))
        return ImageDataset(
            self.name, self.split, self.images[index], self.labels[index], self.classes
        )

    def to_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All images as a contiguous uint8 tensor (N, C, H, W) on ``device``.

        The copy to the device is made in uint8 (4x smaller than float32); convert
        to float there.
        """
        images = torch.from_numpy(self.images).to(device)
        return images.permute(0, 3, 1, 2).contiguous()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root as an absolute path: ``root`` if given, else ``$LOWVAR_MAE_DATA``
    (when set and non-empty), else ``~/.cache/lowvar-mae``. ``~`` is expanded."""
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


def load_dataset(
    name: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = True,
    *,
    n: int | None = None,
) -> ImageDataset:
    """Load one split of a dataset (see the module docstring for where it looks).

    name: one of ``DATASETS``; split: one of ``DATASETS[name].splits``;
    root: the data root (see :func:`data_root`); download: allow downloading the
    official archive; n: size of the synthetic split (synthetic only; the default
    sizes are train 5000, test 1000).

    Raises ValueError for an unknown name or split, DatasetFormatError for a
    corrupt file, DatasetNotFoundError when the split cannot be found or fetched.
    """
    info = _check_name_split(name, split)
    if name == "synthetic":
        size, seed = _SYNTHETIC_SPLITS[split]
        images, labels = make_synthetic(size if n is None else n, seed, info.image_shape[0])
        return ImageDataset(name, split, images, labels, SYNTHETIC_CLASSES)
    if n is not None:
        raise ValueError(f"n is only for the synthetic dataset; use .subset(n) for {name!r}")

    base = data_root(root)
    folder = base / name
    cached = _load_cache(folder, name, split, info)
    if cached is not None:
        return cached

    official = _read_official(folder, name, split, info)
    if official is None:
        if download:
            download_status = _try_download(name, folder)
            official = _read_official(folder, name, split, info)
        else:
            download_status = "downloading was disabled (download=False)"
        if official is None:
            raise DatasetNotFoundError(_not_found_message(base, name, split, download_status))
    _write_cache(folder / f"{name}_{split}.npz", official, total=len(official))  # read whole: its size is known
    return official


def _check_name_split(name: str, split: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(map(repr, DATASETS))}")
    info = DATASETS[name]
    if split not in info.splits:
        raise ValueError(
            f"unknown split {split!r} for dataset {name!r}; "
            f"allowed: {', '.join(map(repr, info.splits))}"
        )
    return info


# ------------------------------------------------------------------- local cache (.npz)


def _cache_paths(folder: Path, name: str, split: str) -> tuple[Path, list[Path]]:
    """The single cache file and the existing part files (sorted by name)."""
    return folder / f"{name}_{split}.npz", sorted(folder.glob(f"{name}_{split}_*.npz"))


def _load_cache(folder: Path, name: str, split: str, info: DatasetInfo) -> ImageDataset | None:
    single, parts = _cache_paths(folder, name, split)
    if single.is_file() and parts:
        raise DatasetFormatError(
            f"both {single} and parts {[str(p) for p in parts]} exist for {name!r} {split!r}; "
            "keep one of them"
        )
    files = [single] if single.is_file() else parts
    if not files:
        return None
    loaded = [_read_npz(path, info) for path in files]
    starts = [start for _, _, _, start, _ in loaded]
    if all(start is not None for start in starts):
        order = sorted(range(len(files)), key=lambda i: starts[i])
        expected = 0
        for i in order:
            if starts[i] != expected:
                raise DatasetFormatError(
                    f"{files[i]}: index_start={starts[i]} but the parts before it end at "
                    f"{expected} (a part is missing or overlaps) in {folder}"
                )
            expected += len(loaded[i][0])
    elif any(start is not None for start in starts):
        raise DatasetFormatError(
            f"only some of {[str(p) for p in files]} have an index_start key; give all or none"
        )
    else:
        order = list(range(len(files)))
    totals = {t for *_, t in loaded if t is not None}
    count = sum(len(x[0]) for x in loaded)
    if len(totals) > 1:
        raise DatasetFormatError(f"the parts in {folder} declare different split sizes {sorted(totals)}")
    if totals and count != next(iter(totals)):
        raise DatasetFormatError(
            f"the parts {[p.name for p in files]} in {folder} hold {count:,} images, but the split "
            f"declares {next(iter(totals)):,}: a part is missing; copy every part of {name} {split}")
    known = SPLIT_SIZES.get(name, {}).get(split)
    if not totals and known is not None and count != known:
        raise DatasetFormatError(
            f"{[p.name for p in files]} in {folder} hold {count:,} images, but {name}'s {split} split has "
            f"{known:,}: a part is missing or the files are a subset; copy every part, or save a subset on "
            "purpose with lowvar_mae.data.save_shards (its parts declare their size)")
    classes = loaded[order[0]][2]
    for i in order[1:]:
        if loaded[i][2] != classes:
            raise DatasetFormatError(f"{files[i]}: classes differ from those in {files[order[0]]}")
    images = _join([loaded[i][0] for i in order])
    labels = _join([loaded[i][1] for i in order])
    return ImageDataset(name, split, images, labels, classes)


def _join(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0, without a copy when there is a single array."""
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _read_npz(
    path: Path, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], int | None, int | None]:
    """Read and check one cache file: x uint8 (N, H, W, C), y int64 (N,), classes, index_start."""
    try:
        with np.load(path) as npz:
            missing = {"x", "y", "classes"} - set(npz.files)
            if missing:
                raise DatasetFormatError(
                    f"{path}: missing key(s) {sorted(missing)}; has {npz.files}"
                )
            images, labels, classes = npz["x"], npz["y"], npz["classes"]
            index_start = int(npz["index_start"]) if "index_start" in npz.files else None
            total = int(npz["total"]) if "total" in npz.files else None
    except DatasetFormatError:
        raise
    except Exception as err:  # zip, pickle and array errors all mean a corrupt file
        raise DatasetFormatError(
            f"{path}: cannot be read as a dataset .npz ({_one_line(err)})"
        ) from err
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != info.image_shape:
        raise DatasetFormatError(
            f"{path}: x must be uint8 (N, {', '.join(map(str, info.image_shape))}) NHWC, "
            f"got {images.dtype} {images.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != images.shape[:1]:
        raise DatasetFormatError(
            f"{path}: y must be integer ({len(images)},) to match x, "
            f"got {labels.dtype} {labels.shape}"
        )
    labels = labels.astype(np.int64)
    if classes.dtype.kind != "U" or classes.shape != (info.num_classes,):
        raise DatasetFormatError(
            f"{path}: classes must be a unicode array of {info.num_classes} names, "
            f"got {classes.dtype} {classes.shape}"
        )
    if labels.size and (labels.min() < -1 or labels.max() >= info.num_classes):
        raise DatasetFormatError(
            f"{path}: labels must lie in [-1, {info.num_classes - 1}], "
            f"got [{labels.min()}, {labels.max()}]"
        )
    return images, labels, tuple(str(c) for c in classes), index_start, total


def _write_cache(path: Path, dataset: ImageDataset, *, index_start: int = 0, compress: bool = False,
                 warn: bool = True, total: int | None = None) -> None:
    """Write ``dataset`` in the cache format, atomically (temp file + os.replace).

    Uncompressed by default, so later loads cost one read. With ``warn``, a folder that
    cannot be written only gives a warning (the data was loaded); else the error is raised.
    """
    tmp_path = None
    try:
        with tempfile.NamedTemporaryFile(
            dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp", delete=False
        ) as f:
            tmp_path = Path(f.name)
            (np.savez_compressed if compress else np.savez)(
                f,
                x=dataset.images,
                y=dataset.labels,
                classes=np.array(dataset.classes, dtype=str),
                index_start=np.int64(index_start),
                **({} if total is None else {"total": np.int64(total)}),
            )
        os.replace(tmp_path, path)
    except OSError as err:
        if not warn:
            raise
        warnings.warn(f"could not write the dataset cache {path}: {_one_line(err)}", stacklevel=3)
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def save_shards(dataset: ImageDataset, root: str | os.PathLike, size: int = 10_000) -> list[Path]:
    """Re-save ``dataset`` as parts of at most ``size`` images in the cache format, compressed:
    ``<root>/<name>/<name>_<split>_<k>.npz`` with their ``index_start`` and the split's
    ``total``, so a data root missing a part is refused, not read short. A data root holding
    the parts loads as the whole split; a part of CIFAR's 10,000 images is about 28 MB, small
    enough to carry to another machine a few at a time. Lossless (PNG-like zip), never JPEG.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    folder = Path(root).expanduser() / dataset.name
    folder.mkdir(parents=True, exist_ok=True)
    single, parts = _cache_paths(folder, dataset.name, dataset.split)
    if single.is_file() or parts:
        raise FileExistsError(f"{folder} already holds {dataset.name} {dataset.split} files; choose an empty root")
    paths = []
    for k, start in enumerate(range(0, len(dataset), size)):
        part = ImageDataset(dataset.name, dataset.split, dataset.images[start:start + size],
                            dataset.labels[start:start + size], dataset.classes)
        path = folder / f"{dataset.name}_{dataset.split}_{k:02d}.npz"
        _write_cache(path, part, index_start=start, compress=True, warn=False, total=len(dataset))
        paths.append(path)
    return paths


# ------------------------------------------------------------------- official formats

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_STL10_DIR = "stl10_binary"
_CIFAR_KEYS = {  # name -> (labels key in a batch, class names key in the meta file)
    "cifar10": (b"labels", b"label_names"),
    "cifar100": (b"fine_labels", b"fine_label_names"),
}


def _official_files(folder: Path, name: str, split: str) -> list[Path]:
    """Every official file needed for one split."""
    if name == "cifar10":
        d = folder / _CIFAR10_DIR
        batches = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        return [d / b for b in batches] + [d / "batches.meta"]
    if name == "cifar100":
        d = folder / _CIFAR100_DIR
        return [d / split, d / "meta"]
    d = folder / _STL10_DIR
    labels = [] if split == "unlabeled" else [d / f"{split}_y.bin"]
    return [d / f"{split}_X.bin", *labels, d / "class_names.txt"]


def _read_official(folder: Path, name: str, split: str, info: DatasetInfo) -> ImageDataset | None:
    """Read one split from the official files, or None if any file is missing."""
    files = _official_files(folder, name, split)
    if not all(path.is_file() for path in files):
        return None
    if name == "stl10":
        images, labels, classes = _read_stl10(files, split, info)
    else:
        label_key, names_key = _CIFAR_KEYS[name]
        parts = [_read_cifar_batch(path, label_key, info) for path in files[:-1]]
        images = _join([p[0] for p in parts])
        labels = _join([p[1] for p in parts])
        classes = _read_cifar_names(files[-1], names_key, info)
    if labels.size and (labels.min() < -1 or labels.max() >= info.num_classes):
        raise DatasetFormatError(
            f"labels read from {files[0].parent} lie in [{labels.min()}, {labels.max()}], "
            f"outside [0, {info.num_classes - 1}]"
        )
    return ImageDataset(name, split, images, labels, classes)


# The only globals an official CIFAR pickle (or one numpy writes in the same layout) refers
# to: numpy's array reconstruction, under its numpy 1 and numpy 2 module names, and the
# codec Python 3 uses for bytes in protocol 2. Anything else is refused before it is called.
_PICKLE_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, strings, numbers and numpy arrays: a crafted
    archive cannot run code while it is read."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR archive holds only arrays, lists and strings")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """Load an official CIFAR pickle (a plain dict of arrays and lists) with :class:`_CifarUnpickler`."""
    try:
        with path.open("rb") as f:
            content = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as err:  # any unpickling failure means a corrupt (or crafted) file
        raise DatasetFormatError(f"{path}: not a readable CIFAR pickle ({_one_line(err)})") from err
    if not isinstance(content, dict):
        raise DatasetFormatError(f"{path}: expected a dict, got {type(content).__name__}")
    return content


def _read_cifar_batch(
    path: Path, label_key: bytes, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch: b'data' uint8 (N, 3072), each row R, G, B planes of 32x32
    in row-major order -> images uint8 (N, 32, 32, 3), labels int64 (N,)."""
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise DatasetFormatError(
            f"{path}: missing key b'data' or {label_key!r}; has {sorted(batch)}"
        )
    height, width, channels = info.image_shape
    data = np.asarray(batch[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != channels * height * width:
        raise DatasetFormatError(
            f"{path}: b'data' must be uint8 (N, {channels * height * width}), "
            f"got {data.dtype} {data.shape}"
        )
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != data.shape[:1]:
        raise DatasetFormatError(f"{path}: {len(labels)} labels for {len(data)} images")
    images = data.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _read_cifar_names(path: Path, key: bytes, info: DatasetInfo) -> tuple[str, ...]:
    meta = _unpickle(path)
    names = meta.get(key)
    if names is None or len(names) != info.num_classes:
        raise DatasetFormatError(f"{path}: expected {info.num_classes} class names under {key!r}")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _read_stl10(
    files: list[Path], split: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """STL-10 binaries: ``<split>_X.bin`` raw uint8, per image 3 channel planes of
    96x96 each stored column-major; ``<split>_y.bin`` uint8 labels 1..10.
    Returns images uint8 (N, 96, 96, 3), labels int64 (N,) in 0..9 (-1 for
    ``unlabeled``), class names."""
    x_path, names_path = files[0], files[-1]
    height, width, channels = info.image_shape
    raw = np.fromfile(x_path, dtype=np.uint8)
    if raw.size % (channels * height * width):
        raise DatasetFormatError(
            f"{x_path}: {raw.size} bytes is not a whole number of "
            f"{channels}x{height}x{width} images"
        )
    # raw[n, c, col, row] -> images[n, row, col, c]
    images = np.ascontiguousarray(raw.reshape(-1, channels, width, height).transpose(0, 3, 2, 1))
    if split == "unlabeled":
        labels = np.full(len(images), -1, dtype=np.int64)
    else:
        y_path = files[1]
        labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
        if labels.shape != images.shape[:1]:
            raise DatasetFormatError(
                f"{y_path}: {len(labels)} labels for {len(images)} images in {x_path}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= info.num_classes):
            raise DatasetFormatError(
                f"{y_path}: labels must lie in 1..{info.num_classes}, "
                f"got {labels.min() + 1}..{labels.max() + 1}"
            )
    names = tuple(line.strip() for line in names_path.read_text().splitlines() if line.strip())
    if len(names) != info.num_classes:
        raise DatasetFormatError(
            f"{names_path}: expected {info.num_classes} class names, got {len(names)}"
        )
    return images, labels, names


# ------------------------------------------------------------------- download and error report


def _download_official(name: str, folder: Path) -> None:
    """Download and extract the official archive into ``folder`` with torchvision's
    downloader, using the URL, file name and md5 of torchvision's dataset class
    (what ``CIFAR10(root=folder, download=True)`` does, without then loading the
    whole split through torchvision)."""
    from torchvision import datasets as tv_datasets
    from torchvision.datasets import utils as tv_utils

    dataset_class = {
        "cifar10": tv_datasets.CIFAR10,
        "cifar100": tv_datasets.CIFAR100,
        "stl10": tv_datasets.STL10,
    }[name]
    tv_utils.download_and_extract_archive(
        dataset_class.url, folder, filename=dataset_class.filename, md5=dataset_class.tgz_md5
    )


def _try_download(name: str, folder: Path) -> str:
    """Download the official archive; return how it went, for the error report."""
    try:
        _download_official(name, folder)
    except Exception as err:  # any failure (network, md5, archive) goes into the report
        return f"the download failed: {_one_line(err)}"
    return "the download finished but the files listed above are still missing"


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _not_found_message(base: Path, name: str, split: str, download_status: str) -> str:
    folder = base / name
    single, _ = _cache_paths(folder, name, split)
    looked = [
        f"  {single}  (local cache, one file)",
        f"  {folder / f'{name}_{split}_*.npz'}  (local cache, in parts)",
        *(
            f"  {path}  (official format)"
            for path in _official_files(folder, name, split)
            if not path.is_file()
        ),
    ]
    official_dir = {"cifar10": _CIFAR10_DIR, "cifar100": _CIFAR100_DIR, "stl10": _STL10_DIR}[name]
    return "\n".join(
        [
            f"dataset {name!r} split {split!r} not found under the data root {base}.",
            "Looked for (missing):",
            *looked,
            f"Download: {download_status}.",
            f"To get it, set {ENV_VAR} to a folder holding {name}/{name}_{split}.npz "
            "(keys x uint8 (N, H, W, C) RGB, y, classes, index_start; or parts "
            f"{name}/{name}_{split}_*.npz), or download the official archive {DATASETS[name].url} "
            f"and extract it into <that folder>/{name}/ (giving {name}/{official_dir}/).",
            "Never use JPEG copies of the images: JPEG compression erases the low-variance "
            "detail this package studies.",
        ]
    )


# ------------------------------------------------------------------- synthetic dataset

SYNTHETIC_CLASSES: tuple[str, ...] = tuple(f"orient-{18 * k}deg" for k in range(10))
_SYNTHETIC_SPLITS = {"train": (5000, 101), "test": (1000, 202)}  # split -> (size, seed)

# All intensities on the 0-255 scale.
_BASE_LEVEL = 128.0  # mean grey level
_BRIGHTNESS = 35.0  # global brightness offset per image ~ U(-35, 35)
_COLOUR_CAST = 15.0  # offset per image and channel ~ N(0, 15^2)
_FIELD_TERMS = 4  # cosines per channel in the smooth field
_FIELD_AMPLITUDE = 18.0  # amplitude of each cosine ~ U(0, 18)
_FIELD_MAX_CYCLES = 2.5  # cycles per image width, each axis ~ U(-2.5, 2.5)
_GRATING_AMPLITUDE = 5.0  # class signal, same on the three channels
_GRATING_FREQUENCY = (0.25, 0.4)  # cycles per pixel ~ U(0.25, 0.4) per image
_NOISE_STD = 2.0  # i.i.d. Gaussian pixel noise


def make_synthetic(n: int, seed: int, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate the synthetic dataset: images uint8 (n, S, S, 3) RGB, labels int64 (n,).

    A controlled teaching dataset, not a benchmark: most pixel variance is
    class-independent and the class is carried by faint fine structure, so the
    top principal components (about 90% of the variance) say almost nothing
    about the class while the low-variance residual does.

    Per image, on the 0-255 scale:

    - class-independent, high variance: a grey level 128 plus a global
      brightness offset U(-35, 35), a colour cast N(0, 15^2) per channel, and a
      smooth field per channel, the sum of 4 plane cosines with amplitude
      U(0, 18), random phase and frequency U(-2.5, 2.5) cycles per image width
      on each axis;
    - class signal, low variance: a grating ``5 cos(2 pi f (x cos t + y sin t) + p)``
      added to all three channels, with orientation ``t = label * 18 deg``
      (10 orientations over 180 deg), frequency f ~ U(0.25, 0.4) cycles per
      pixel, phase p ~ U(0, pi) and (x, y) measured from the image centre. The
      phase range is half a turn so the class mean is not zero and linear
      classifiers get some signal;
    - pixel noise N(0, 2^2), then rounding and clipping to 0..255 (clipping is
      very rare).

    Natural photos (e.g. scikit-learn's sample images) are not mixed in, so the
    bytes depend only on numpy. Labels are balanced (each class n // 10 or
    n // 10 + 1) in an order shuffled by ``seed``. The same ``seed`` and ``n``
    give identical bytes (given the same numpy); a different ``n`` gives a
    different set, not a prefix.
    """
    if n < 0 or image_size < 1:
        raise ValueError(f"need n >= 0 and image_size >= 1, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SYNTHETIC_CLASSES))
    coords = np.arange(image_size, dtype=np.float32) - (image_size - 1) / 2  # (S,), centred

    images = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    brightness = rng.uniform(-_BRIGHTNESS, _BRIGHTNESS, (n, 1))
    offset = _BASE_LEVEL + brightness + rng.normal(0, _COLOUR_CAST, (n, 3))
    images[:] = offset.astype(np.float32)[:, :, None, None]

    # Smooth field, separable:
    # a cos(u x + v y + p) = a cos(u x + p) cos(v y) - a sin(u x + p) sin(v y).
    max_frequency = 2 * np.pi * _FIELD_MAX_CYCLES / image_size  # radians per pixel
    u, v = rng.uniform(-max_frequency, max_frequency, (2, n, 3, _FIELD_TERMS, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, 3, _FIELD_TERMS, 1)).astype(np.float32)
    amplitude = rng.uniform(0, _FIELD_AMPLITUDE, (n, 3, _FIELD_TERMS, 1)).astype(np.float32)
    along_x = u * coords + phase  # (n, 3, K, S)
    cos_x, sin_x = amplitude * np.cos(along_x), amplitude * np.sin(along_x)
    cos_y, sin_y = np.cos(v * coords), np.sin(v * coords)
    for k in range(_FIELD_TERMS):
        images += cos_y[:, :, k, :, None] * cos_x[:, :, k, None, :]
        images -= sin_y[:, :, k, :, None] * sin_x[:, :, k, None, :]

    # Class grating, separable the same way, shared by the three channels.
    angle = labels * (np.pi / len(SYNTHETIC_CLASSES))
    wavenumber = 2 * np.pi * rng.uniform(*_GRATING_FREQUENCY, n)
    grating_phase = rng.uniform(0, np.pi, n)
    gx = (wavenumber * np.cos(angle))[:, None].astype(np.float32) * coords  # (n, S)
    gx += grating_phase[:, None].astype(np.float32)
    gy = (wavenumber * np.sin(angle))[:, None].astype(np.float32) * coords
    grating = np.cos(gy)[:, :, None] * np.cos(gx)[:, None, :]  # (n, S_y, S_x)
    grating -= np.sin(gy)[:, :, None] * np.sin(gx)[:, None, :]
    images += _GRATING_AMPLITUDE * grating[:, None]

    images += _NOISE_STD * rng.standard_normal(images.shape, dtype=np.float32)
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


# ---------------------------------------------------------------- splits


def validation_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of training-split indices: (train_idx, val_idx), sorted int64.

    labels: (N,) class indices of the *training* split (never the test split). Each class
    c with n_c >= 2 images gives round(fraction * n_c) of them, clipped to 1..n_c - 1, to
    validation; a class with one image stays in training. The same seed gives the same split.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size < 2:
        raise ValueError(f"labels must be a 1-D array of at least 2 class indices, got shape {labels.shape}")
    if (labels < 0).any():
        raise ValueError("labels contain -1 (unlabelled images); a validation split needs labelled images")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue
        n_val = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        val.append(rng.permutation(members)[:n_val])
    if not val:
        raise ValueError("no class has two images: nothing can be held out for validation")
    val_idx = np.sort(np.concatenate(val)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx).astype(np.int64)
    return train_idx, val_idx
