"""The deep-network subspace curve: one conv net per (subspace, seed), one record per point.

A point is the conv net of :mod:`analysis` (``SmallConvNet``, ``ConvNetConfig``) trained
on the training images projected onto one PCA subspace (augmented first, projected
afterwards) and tested on projected test images. The curve is the full images, the top
subspaces explaining 50 ... 99% of the variance and the bottom ones within 1 ... 50%,
one seed each; the points that carry the comparison (full, top-90%, top-75%,
bottom-25%, bottom-20%) get three seeds. Like the Table 1 grid, the runner

* skips points whose record exists under the results folder (records of the same
  dataset, side, share, seed and conv-net settings), so the curve fills over sessions;
  :func:`describe_missing` lists what is left with time estimates from earlier records;
* writes each record as its point finishes and refuses a checkout with uncommitted
  changes unless told otherwise;
* stops cleanly between points when ``<runs>/curve.stop`` exists.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from . import pca
from .analysis import DEFAULT_SHARES_BOTTOM, DEFAULT_SHARES_TOP, ConvNetConfig
from .provenance import device_info, require_clean, runs_dir

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
    settings = asdict(cfg)
    same = records[(records["classifier"] == "convnet") & (records["dataset"] == point.dataset)
                   & (records["side"] == point.side) & ((records["share"] - share).abs() < 1e-9)
                   & (records["seed"] == point.seed)]
    keep = [i for i, s in zip(same.index, same["settings"]) if isinstance(s, dict) and s == settings]
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
        [isinstance(s, dict) and s == asdict(cfg) for s in records["settings"]]]
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

    from .analysis import classify_subspaces
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
