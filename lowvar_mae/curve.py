"""Classifying images seen through one variance subspace, and the deep-network curve.

Subspace classification (Balestriero & LeCun)
---------------------------------------------
Project the training and test images onto the top or bottom subspace that explains a
share of the pixel variance (``lowvar_mae.pca``; basis fitted on the training split
only), train the same supervised classifier on each projection and compare test
accuracies. Two classifiers:

* ``"linear"``: softmax regression (``lowvar_mae.probes.linear_accuracy``) with a small
  L2 penalty on the subspace's standardised PCA coordinates ``V_S^T (x - mean)``: a
  linear function of the projected image ``mean + V_S V_S^T (x - mean)`` is a linear
  function of these coordinates and back, and the penalty is carried over exactly. Full
  batch, L-BFGS, no augmentation.
* ``"convnet"``: a small conv net (:class:`SmallConvNet`, airbench-style) trained with
  the shared training loop (``lowvar_mae.train``), with the standard CIFAR augmentation:
  reflect padding by 4 pixels, a random 32 x 32 crop and a random horizontal flip.
  Augmentation runs on the uint8 originals and the projection is applied *after* it, per
  batch on the device; test images are projected once. Its run folder is named from its
  settings, so a re-run loads it.

Both classifiers get inputs of unit scale, so that a bottom subspace holding 1% of the
variance is not handicapped by the scale of its pixels.

The curve
---------
A point is the conv net trained on one subspace with one seed, one record per point.
The curve is the full images, the top subspaces explaining 50 ... 99% of the variance
and the bottom ones within 1 ... 50%, one seed each; the points that carry the
comparison (full, top-90%, top-75%, bottom-25%, bottom-20%) get three seeds. Like the
Table 1 grid, the runner

* skips points whose record exists under the results folder (records of the same
  dataset, side, share, seed and conv-net settings), so the curve fills over sessions;
  :func:`describe_missing` lists what is left with time estimates from earlier records;
* writes each record as its point finishes and refuses a checkout with uncommitted
  changes unless told otherwise;
* stops cleanly between points when ``<runs>/curve.stop`` exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import pca
from .pca import eigen_share, kept_variance_share, pca_coordinates, project_split, subspace_columns, subspace_dim
from .probes import SUBSPACE_LINEAR, LinearConfig, fit_linear, sklearn_agreement
from .provenance import atomic_write_json, device_info, require_clean, runs_dir

# ---------------------------------------------------------------- classifiers on subspaces


DEFAULT_SHARES_TOP = (0.5, 0.75, 0.9, 0.95, 0.99)


DEFAULT_SHARES_BOTTOM = (0.01, 0.05, 0.1, 0.2, 0.25, 0.5)


CLASSIFIERS = ("linear", "convnet")


def _conv_bn(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    return layers + ([nn.MaxPool2d(2)] if pool else []) + [nn.BatchNorm2d(c_out), nn.GELU()]


class SmallConvNet(nn.Sequential):
    """A narrow airbench-style net (KellerJordan/cifar10-airbench, its widths quartered).

    stem conv (3/4 width) -> three blocks of [conv, max-pool 2, BN, GELU, conv, BN, GELU]
    with width, 2 width and 4 width channels -> global max pool -> linear head (no bias).
    imgs: (N, C, H, W) standardised -> logits (N, num_classes). Width 32 on 32x32 images:
    0.58 M parameters, 40 M multiply-adds per image.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32):
        if width < 4 or width % 4:
            raise ValueError(f"width must be a multiple of 4 and >= 4, got {width!r}")
        stem, chans = 3 * width // 4, [width, 2 * width, 4 * width]
        layers = _conv_bn(in_chans, stem, pool=False)
        for c_in, c_out in zip([stem] + chans[:-1], chans):
            layers += _conv_bn(c_in, c_out, pool=True) + _conv_bn(c_out, c_out, pool=False)
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes, bias=False)]
        super().__init__(*layers)


@dataclass(frozen=True)
class ConvNetConfig:
    """Training settings of the conv-net classifier (units in comments): SGD with Nesterov
    momentum, label smoothing, crop + flip, a schedule sized for a 2-core CPU (what each
    run took is in its record)."""

    width: int = 32               # channels of the first block (then 2x and 4x; stem 3/4 x)
    epochs: int = 6               # passes over the training images
    batch_size: int = 256         # images per optimiser step
    lr: float = 0.2               # SGD (Nesterov momentum 0.9) peak learning rate
    weight_decay: float = 5e-3    # on conv and linear weights, not on BN
    warmup_epochs: float = 1.2    # linear warm-up, then cosine to 0
    label_smoothing: float = 0.2
    pad: int = 2                  # reflect padding before the random crop, pixels
    flip: bool = True             # random horizontal flip (off where a flip changes the class)
    precision: str = "fp32"       # fp32 everywhere: the same arithmetic on AVX2, AVX-512 and GPUs


def pad_crop_flip(images: Tensor, pad: int, generator: torch.Generator | None = None,
                  flip: bool = True) -> Tensor:
    """Standard CIFAR augmentation, batched: reflect-pad by ``pad``, random crop back to
    (H, W), random horizontal flip (unless ``flip`` is False). images: (N, C, H, W) uint8 or float in [0, 1] ->
    float (N, C, H, W) in [0, 1]. Reflect padding (as in KellerJordan/cifar10-airbench)
    adds no black border for the PCA projection applied afterwards to smear.
    """
    x = pca.as_unit_float(images)
    n, _, h, w = x.shape
    dev = generator.device if generator is not None else torch.device("cpu")
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        x = x.gather(2, rows.expand(n, x.shape[1], h, x.shape[3]))
        x = x.gather(3, cols.expand(n, x.shape[1], h, w))
    if not flip:
        return x
    flipped = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flipped, x.flip(-1), x)


def same_settings(recorded, cfg) -> bool:
    """Whether a record's ``settings`` (a dict read from JSON) are those of ``cfg`` (a
    settings dataclass). A field the record lacks was added after it was written, and the
    record was made with that field's default."""
    if not isinstance(recorded, dict):
        return False
    wanted = json.loads(json.dumps(asdict(cfg)))  # as a record file holds them (tuples -> lists)
    defaults = json.loads(json.dumps(asdict(type(cfg)())))
    return {**{k: v for k, v in defaults.items() if k not in recorded}, **recorded} == wanted


def _run_name(fields: dict) -> str:
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    share = "" if fields["side"] == "full" else f"{fields['share']:g}"
    return f"convnet-{fields['dataset']}-{fields['side']}{share}-e{fields['epochs']}-s{fields['seed']}-{digest}"


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, transform: Callable[[Tensor], Tensor],
            batch_size: int = 1024) -> Tensor:
    """Class predictions (N,) for images (N, C, H, W); ``transform`` maps a float batch in
    [0, 1] to the model's input."""
    model.eval()
    out = [model(transform(pca.as_unit_float(images[i:i + batch_size]))).argmax(1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def convnet_accuracy(train_u8: Tensor, train_y: Tensor, test_u8: Tensor, test_y: Tensor, num_classes: int,
                     project: Callable[[Tensor], Tensor], scale: float, mean_image: Tensor, *,
                     cfg: ConvNetConfig = ConvNetConfig(), seed: int = 0, run_dir: str | Path,
                     device: torch.device | str = "cpu", stop_after: int | None = None) -> dict:
    """Train :class:`SmallConvNet` on projected, augmented training images; test accuracy.

    train_u8, test_u8: (N, C, H, W) uint8 on ``device``; project: float batch in [0, 1]
    -> its projection (a ``pca.SubspaceFilter``, or the identity for full images);
    input to the net: (project(augmented) - mean_image) / scale. Trains with
    ``train.train_loop`` in ``run_dir`` (resumes, or loads a finished run).
    """
    from .train import DeviceData, LoopConfig, build_optimizer, resolve_precision, train_loop

    device = torch.device(device)
    mean_image = mean_image.to(device=device, dtype=torch.float32).view(1, *train_u8.shape[1:])

    def to_input(x01: Tensor) -> Tensor:
        # Project in float32 even under bf16 autocast: a bottom subspace is a small
        # difference of large numbers, which bf16 (8 bits of mantissa) would drown.
        with torch.autocast(device.type, enabled=False):
            x = (project(x01.float()) - mean_image) / scale
        return x.contiguous(memory_format=torch.channels_last)

    torch.manual_seed(seed)  # the initial weights
    # channels_last: 1.7x the training throughput of NCHW on a 2-core CPU (oneDNN).
    model = SmallConvNet(num_classes, train_u8.shape[1], cfg.width).to(device, memory_format=torch.channels_last)
    data = DeviceData(train_u8, train_y.to(device), min(cfg.batch_size, len(train_u8)))
    optimizer = build_optimizer(model, kind="sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, nesterov=True,
                                device=device)

    def loss_fn(m, x_u8, labels, gen):
        logits = m(to_input(pad_crop_flip(x_u8, cfg.pad, gen, flip=cfg.flip)))
        return F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)

    loop = LoopConfig(epochs=cfg.epochs, peak_lr=cfg.lr, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs),
                      seed=seed, precision=resolve_precision(device, cfg.precision))
    start = time.perf_counter()
    history = train_loop(run_dir, model, optimizer, data, loss_fn, loop, device, progress=False,
                         stop_after=stop_after)
    trained_seconds = time.perf_counter() - start
    test_pred = predict(model, test_u8, to_input)
    return {"test_accuracy": float((test_pred == test_y.to(test_pred.device)).float().mean()),
            "train_loss": history[-1]["loss"] if history else float("nan"),
            "epochs_done": len(history), "train_seconds_this_call": trained_seconds}


def share_grid(shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
               shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM) -> list[tuple[str, float | None]]:
    """[('full', None), ('top', p) ..., ('bottom', q) ...], shares checked."""
    return ([("full", None)] + [("top", pca.check_share(p)) for p in shares_top]
            + [("bottom", pca.check_share(q)) for q in shares_bottom])


def classify_subspaces(train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
                       basis: pca.PCABasis, *, num_classes: int, dataset: str,
                       shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                       shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM,
                       classifiers: Sequence[str] = ("linear",), seed: int = 0,
                       linear: LinearConfig = SUBSPACE_LINEAR, convnet: ConvNetConfig = ConvNetConfig(),
                       method: str = "complement", device: torch.device | str = "cpu",
                       root: str | os.PathLike | None = None,
                       on_row: Callable[[dict], None] | None = None,
                       points: Sequence[tuple[str, float | None]] | None = None,
                       sklearn_check: Sequence[tuple[str, float | None]] = ()) -> list[dict]:
    """Train every classifier on every subspace of the grid; one dict per (subspace, classifier).

    train_images, test_images: (N, C, H, W) uint8; labels (N,) int64; basis: PCA of the
    training split (fitted on training images only). The first rows are the full
    images (side 'full', share 1.0), whose accuracy every later row carries as
    ``full_accuracy``. Each row also holds ``variance_share`` (the kept eigenvalues'
    share) and ``kept_share_test`` (:func:`kept_variance_share` of the projected test
    images). on_row: called with each row as soon as it exists (to record it).

    The linear classifier sees the subspace's PCA coordinates (:func:`pca_coordinates`,
    :func:`subspace_columns`): a linear function of the projected pixels
    ``mean + V_S V_S^T (x - mean)`` is a linear function of ``V_S^T (x - mean)`` and
    back, and :func:`linear_accuracy` solves the same penalised problem in either, so
    this is the linear classifier of the projected images, fitted faster.
    """
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise ValueError(f"classifiers must be a non-empty subset of {CLASSIFIERS}, got {list(classifiers)!r}")
    basis.check_images(train_images)
    device = torch.device(device)
    train_u8, test_u8 = train_images.to(device), test_images.to(device)
    ytr, yte = torch.as_tensor(train_labels).to(device), torch.as_tensor(test_labels).to(device)
    if (ytr < 0).any() or (yte < 0).any():
        raise ValueError("subspace classification needs labelled images (labels >= 0)")
    basis_dev = basis.to(device)
    coords, coords_seconds = None, 0.0
    if "linear" in classifiers:
        start = time.perf_counter()
        coords = pca_coordinates(train_u8, basis_dev), pca_coordinates(test_u8, basis_dev)
        coords_seconds = time.perf_counter() - start
    full_accuracy: dict[str, float] = {}
    rows = []
    for side, share in share_grid(shares_top, shares_bottom) if points is None else points:
        start = time.perf_counter()
        kept_test = kept_variance_share(project_split(test_u8, basis_dev, side, share, method=method), test_u8) \
            if side != "full" else 1.0
        var_share = eigen_share(basis, side, share)
        measure_seconds = time.perf_counter() - start
        for classifier in classifiers:
            start = time.perf_counter()
            if classifier == "linear":
                cols = subspace_columns(basis, side, share)
                out = fit_linear(coords[0][:, cols], ytr, coords[1][:, cols], yte, num_classes, linear,
                                 pixel_dim=basis.dim, seed=seed)
                if (side, share) in sklearn_check:
                    out["sklearn"] = sklearn_agreement(coords[0][:, cols], ytr, coords[1][:, cols], yte, num_classes,
                                                       out["weight_decay"], pixel_dim=basis.dim, cfg=linear)
                out["coordinates_seconds"] = coords_seconds
                settings = asdict(linear)
            else:
                if side == "full":
                    flt: Callable[[Tensor], Tensor] = lambda x: x  # noqa: E731
                else:
                    flt = pca.make_filter(basis_dev, side, share, method=method, device=device)
                fields = {"dataset": dataset, "side": side, "share": 1.0 if share is None else share,
                          "seed": seed, "n_train": len(train_u8), "method": method,
                          "basis_samples": basis.n_samples, **asdict(convnet)}
                run_dir = runs_dir(root) / "subspace" / _run_name(fields)
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(run_dir / "config.json", fields)
                # Input scale: the RMS pixel deviation the subspace keeps (training eigenvalues).
                scale = math.sqrt(max(var_share * basis.total_variance / basis.dim, 1e-20))
                out = convnet_accuracy(train_u8, ytr, test_u8, yte, num_classes, flt, scale, basis.mean,
                                       cfg=convnet, seed=seed, run_dir=run_dir, device=device)
                out["run_dir"] = str(run_dir)
                settings = asdict(convnet)
            seconds = time.perf_counter() - start
            if side == "full":
                full_accuracy[classifier] = out["test_accuracy"]
            row = {"dataset": dataset, "side": side, "share": 1.0 if share is None else share,
                   "n_components": subspace_dim(basis, side, share), "dim": basis.dim,
                   "variance_share": var_share, "kept_share_test": kept_test, "classifier": classifier,
                   "seed": seed, "test_accuracy": out["test_accuracy"],
                   "full_accuracy": full_accuracy.get(classifier), "chance": 1.0 / num_classes,
                   "wall_seconds": seconds, "measure_seconds": measure_seconds,
                   "n_train": len(train_u8), "n_test": len(test_u8), "pca_method": method,
                   "basis_samples": basis.n_samples, "settings": settings,
                   "details": {k: v for k, v in out.items() if k != "test_accuracy"}}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def subspace_classification(dataset: str = "synthetic", *, shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                            shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM,
                            classifiers: Sequence[str] = ("linear",), epochs: int | None = None, seed: int = 0,
                            n_train: int | None = None, n_fit: int | None = None, device: str | None = "auto",
                            linear: LinearConfig = SUBSPACE_LINEAR, convnet: ConvNetConfig = ConvNetConfig(),
                            method: str = "complement", record: bool = False,
                            root: str | os.PathLike | None = None,
                            results_root: str | os.PathLike | None = None,
                            sklearn_check: Sequence[tuple[str, float | None]] = ()):
    """Load a dataset, take its PCA basis, run :func:`classify_subspaces`; a DataFrame.

    n_train: a seeded subset of the training split for the classifiers; n_fit: fit the
    PCA on a seeded subset of that many training images (not cached); default: the
    whole training split through ``targets.dataset_basis`` (cached under the runs
    folder). epochs: the conv net's epochs (None: ``convnet.epochs``). record: write
    one ``results.write_record('subspace', ...)`` per row. The frame's ``attrs`` hold
    ``basis_seconds`` (loading the data and the basis) and ``wall_seconds`` (all).
    """
    import pandas as pd

    from .data import DATASETS, load_dataset
    from .results import write_record
    from .targets import dataset_basis
    from .train import resolve_device

    dev = resolve_device(device)
    if epochs is not None:
        convnet = ConvNetConfig(**{**asdict(convnet), "epochs": int(epochs)})
    fit_start = time.perf_counter()
    train_full = load_dataset(dataset, "train")
    test = load_dataset(dataset, "test")
    if n_fit is None:
        basis = dataset_basis(dataset, root=root, device=dev)
    else:
        fit_images = train_full.subset(n_fit, seed=seed).to_tensor(dev)
        basis = pca.fit_pca(fit_images, dataset=dataset, split="train")
    basis_seconds = time.perf_counter() - fit_start
    train = train_full if n_train is None else train_full.subset(n_train, seed=seed)

    def on_row(row: dict) -> None:
        if record:
            write_record("subspace", row, device=str(dev), root=results_root)

    rows = classify_subspaces(
        train.to_tensor(dev), torch.from_numpy(train.labels), test.to_tensor(dev), torch.from_numpy(test.labels),
        basis, num_classes=DATASETS[dataset].num_classes, dataset=dataset, shares_top=shares_top,
        shares_bottom=shares_bottom, classifiers=classifiers, seed=seed, linear=linear, convnet=convnet,
        method=method, device=dev, root=root, on_row=on_row, sklearn_check=sklearn_check)
    frame = pd.DataFrame(rows)
    frame.attrs["basis_seconds"] = basis_seconds
    frame.attrs["wall_seconds"] = time.perf_counter() - fit_start
    return frame


# Where the linear fit is checked against scikit-learn: the full images and two subspaces.
SKLEARN_CHECK = (("full", None), ("top", 0.9), ("bottom", 0.25))


def linear_subspace_benchmark(dataset: str = "cifar10", *, shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                              shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM, device: str | None = "cpu",
                              sklearn_check: Sequence[tuple[str, float | None]] = SKLEARN_CHECK,
                              root: str | os.PathLike | None = None,
                              results_root: str | os.PathLike | None = None):
    """The linear classifier on every subspace of a real dataset, every row recorded.

    Run with ``LOWVAR_MAE_DATA`` pointing at the data (e.g. /work/shared/datasets). The
    penalty of each subspace is chosen on held-out training images (``SUBSPACE_LINEAR``);
    the points of ``sklearn_check`` are solved again by scikit-learn. Returns the
    DataFrame of :func:`subspace_classification` (its ``wall_seconds`` per row).
    """
    return subspace_classification(dataset, shares_top=shares_top, shares_bottom=shares_bottom,
                                   classifiers=("linear",), device=device, record=True, root=root,
                                   results_root=results_root, sklearn_check=sklearn_check)


# ---------------------------------------------------------------- the curve, one point at a time


STOP_FILE = "curve.stop"
# The points that carry the comparison, run with three seeds (the rest with one).
SEEDED = (("full", None), ("top", 0.9), ("top", 0.75), ("bottom", 0.25), ("bottom", 0.2))
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Point:
    dataset: str
    side: str            # full | top | bottom
    share: float | None  # None for the full images
    seed: int

    def __str__(self) -> str:
        where = "full images" if self.side == "full" else f"{self.side} {self.share:.0%}"
        return f"{self.dataset} {where} seed {self.seed}"


def plan(dataset: str = "cifar10", *, shares_top=DEFAULT_SHARES_TOP, shares_bottom=DEFAULT_SHARES_BOTTOM,
         seeded=SEEDED, seeds=SEEDS) -> list[Point]:
    """Every point: the whole curve with the first seed, then the other seeds of ``seeded``."""
    from .data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    seeds = list(seeds)
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if not seeds:
        raise ValueError("give at least one seed")
    curve = [("full", None)] + [("top", pca.check_share(p)) for p in shares_top] \
        + [("bottom", pca.check_share(q)) for q in shares_bottom]
    for side, share in seeded:
        if (side, share) not in curve:
            raise ValueError(f"seeded point {(side, share)!r} is not on the curve {curve!r}")
    first = [Point(dataset, side, share, seeds[0]) for side, share in curve]
    return first + [Point(dataset, side, share, s) for s in seeds[1:] for side, share in curve
                    if (side, share) in seeded]


def _matches(records, point: Point, cfg: ConvNetConfig):
    """The rows of ``records`` (``load_records('subspace')``) that are this point's runs."""
    if records is None or not len(records) or "classifier" not in records:
        return records.iloc[:0] if records is not None else None
    share = 1.0 if point.share is None else point.share
    same = records[(records["classifier"] == "convnet") & (records["dataset"] == point.dataset)
                   & (records["side"] == point.side) & ((records["share"] - share).abs() < 1e-9)
                   & (records["seed"] == point.seed)]
    keep = [i for i, s in zip(same.index, same["settings"]) if same_settings(s, cfg)]
    return same.loc[keep]


def missing(points: list[Point], cfg: ConvNetConfig = ConvNetConfig(), results_root=None) -> list[Point]:
    """The points with no record under the results folder."""
    from .results import load_records

    records = load_records("subspace", results_root)
    return [p for p in points if not len(_matches(records, p, cfg))]


def describe_missing(points: list[Point], cfg: ConvNetConfig = ConvNetConfig(), results_root=None) -> str:
    """A table of the missing points with estimated minutes (median wall time of the conv-net
    records with these settings, this machine's when there are any), and the total."""
    from .results import load_records

    todo = missing(points, cfg, results_root)
    if not todo:
        return f"all {len(points)} points have records"
    here = device_info()["device_name"]
    records = load_records("subspace", results_root)
    done = records.iloc[:0] if not len(records) or "classifier" not in records else records[
        [same_settings(s, cfg) for s in records["settings"]]]
    local = done[done["device_name"] == here] if "device_name" in done else done.iloc[:0]
    use, source = (local, "this machine") if len(local) else (done, "other machines")
    if len(use) and source == "other machines":
        source = ", ".join(sorted(set(use["device_name"].dropna())))
    minutes = float(use["wall_seconds"].median()) / 60 if len(use) else None
    lines = [f"{len(todo)} of {len(points)} points have no record (estimates for {here}):"]
    for p in todo:
        when = f"{minutes:5.1f} min" if minutes is not None else "    ? min"
        lines.append(f"  {when}  {p}  [{source if minutes is not None else 'no records of these settings yet'}]")
    if minutes is not None:
        lines.append(f"total: {minutes * len(todo):.0f} min")
    return "\n".join(lines)


def run_curve(points: list[Point], cfg: ConvNetConfig = ConvNetConfig(), *, device: str = "auto",
              results_root=None, root=None, allow_dirty: bool = False, method: str = "complement",
              log=print) -> list:
    """Run every missing point, writing one ``subspace`` record each; returns their paths.

    The data and the PCA basis of the training split (cached under the runs folder) are
    loaded once per dataset. allow_dirty: write records from a checkout with uncommitted
    changes (their git revision then ends in "-dirty").
    """
    import torch

    from .data import DATASETS, load_dataset
    from .results import write_record
    from .targets import dataset_basis
    from .train import resolve_device

    revision = require_clean(allow_dirty)
    todo = missing(points, cfg, results_root)
    log(f"curve: {len(todo)} of {len(points)} points to run at {revision}")
    dev = resolve_device(device)
    stop = runs_dir(root) / STOP_FILE
    loaded: dict[str, tuple] = {}
    written = []
    for i, point in enumerate(todo):
        if stop.exists():
            log(f"curve: {stop} exists, stopping before {point}")
            break
        if point.dataset not in loaded:
            train, test = load_dataset(point.dataset, "train"), load_dataset(point.dataset, "test")
            loaded[point.dataset] = (train.to_tensor(dev), torch.from_numpy(train.labels), test.to_tensor(dev),
                                     torch.from_numpy(test.labels), dataset_basis(point.dataset, root=root, device=dev))
        xtr, ytr, xte, yte, basis = loaded[point.dataset]
        start = time.perf_counter()
        (row,) = classify_subspaces(xtr, ytr, xte, yte, basis, num_classes=DATASETS[point.dataset].num_classes,
                                    dataset=point.dataset, classifiers=("convnet",), seed=point.seed, convnet=cfg,
                                    method=method, device=dev, root=root, points=[(point.side, point.share)])
        path = write_record("subspace", row, device=str(dev), root=results_root)
        written.append(path)
        log(f"curve: [{i + 1}/{len(todo)}] {point}: {row['test_accuracy']:.4f} "
            f"in {(time.perf_counter() - start) / 60:.1f} min -> {path}")
    return written


__all__ = ["Point", "SEEDED", "SEEDS", "STOP_FILE", "plan", "missing", "describe_missing", "run_curve"]
