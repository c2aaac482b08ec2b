"""The Table 1 grid: every (dataset, target, seed, probe) cell of one recipe, one cell at a time.

A cell is one evaluation record: a probe (``finetune``, ``linprobe`` or ``knn``) of the
encoder pretrained on ``target`` with ``seed`` (or of the random encoder, target
``"none"``). The runner

* checks every name before anything trains (unknown targets, probes, recipes or
  datasets fail at once, naming the allowed values);
* skips cells whose record exists under the results folder, so a grid fills over several
  interrupted runs and sessions; runs with :func:`missing` to see what is left;
* pretrains each (dataset, target, seed) once and writes each record as its cell finishes;
* refuses to write records from a checkout with uncommitted changes (the record's git
  revision would not say what code made it) unless told otherwise;
* stops cleanly between cells when the file ``<runs>/grid.stop`` exists;
* records the learning order of every encoder it pretrains (band errors of held-out
  reconstructions at epoch 1, at every probe epoch and at the end, beside the calibration
  probe), as a ``learning_order`` record next to the evaluation records.

The schedule study asks for the same recipe at other lengths: ``length_overrides(recipe,
epochs)`` changes only the number of epochs, scales the warm-up with it and probes less
often on long runs; ``plan(..., pretrain_overrides=length_overrides("cpu", 24))`` are the
cells of the 24-epoch study (``python -m lowvar_mae grid --epochs 24``).

Two cores run one torch job well and two badly (a second job on the same two cores
slowed pretraining about tenfold when measured): run the grid on an otherwise idle machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

from .data import DATASETS
from .evaluate import evaluate, has_record
from .learning_order import LEARNING_ORDER_KIND, band_hook, learning_order_fields
from .pretrain import PRETRAINING_KIND, pretrain, pretraining_fields
from .provenance import device_info, require_clean, runs_dir
from .recipes import (EVAL_RECIPES, METRICS, NO_TARGET, PRETRAIN_RECIPES, FinetuneConfig, KNNConfig, make_config,
                      make_eval_config)
from .results import load_records, write_record
from .schedule import STUDY_TARGETS
from .targets import parse_target

STOP_FILE = "grid.stop"
# Every Table 1 target of CIFAR-10, the four that answer the question first.
DEFAULT_TARGETS = ["pixels", "pca-bottom:0.25", "pca-top:0.75", "none", "norm-pix", "pca-bottom:0.1", "pca-top:0.6"]
# Other ideas of a better target, on the same protocol (the "Other targets" chapter). The
# Fourier radii are the ones whose parts keep about the variance of the PCA anchors on the
# CIFAR-10 training images: high-pass outside 0.14 Nyquist keeps 25.4% (beside
# pca-bottom:0.25), low-pass inside 0.177 keeps 75.8% (beside pca-top:0.75); pc-mask:0.2 is
# PC masking at its paper's best setting (a fixed 20% of the variance masked, see
# recipes.PC_MASK_FIXED_SHARE), pc-mask its random-share variant. `python -m lowvar_mae shares`
# measures the shares.
OTHER_TARGETS = ["fft-high:0.14", "fft-low:0.177", "pc-mask:0.2", "pc-mask"]
# Probes run when none are named: the CPU and GPU protocols probe; fine-tuning is asked for by name.
DEFAULT_PROBES = {"cpu": ["linprobe", "knn"], "gpu": ["linprobe", "knn"]}


# Held-out test images whose reconstructions the learning order is measured on.
BAND_IMAGES = 256


def length_overrides(recipe: str, epochs: int | None) -> dict:
    """Pretraining fields of ``recipe`` run for ``epochs`` epochs instead of its own: the
    warm-up keeps its share of the schedule (cpu: 1 epoch per 6) and the calibration probe
    runs every ``probe_every`` epochs up to four times the recipe's length, half as often
    beyond (cpu: every 2 epochs up to 24, every 4 above). The recipe's own length (or
    None) gives no override, so its cells keep their names and records."""
    if recipe not in PRETRAIN_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(PRETRAIN_RECIPES)}")
    base = PRETRAIN_RECIPES[recipe]
    if epochs is None or epochs == base["epochs"]:
        return {}
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    warmup = base["warmup_epochs"] * epochs / base["epochs"]
    out = {"epochs": epochs, "warmup_epochs": int(warmup) if warmup == int(warmup) else warmup}
    every = base.get("probe_every", 0)
    if every:
        out["probe_every"] = every if epochs <= 4 * base["epochs"] else 2 * every
    return out


# The schedule study: pixels against bottom-25% as pretraining grows, only the length changed.
STUDY_LENGTHS = {0: (12, 24, 48), 1: (24,), 2: (24,)}  # seed -> pretraining epochs beyond the recipe's


def study_plan(dataset: str = "cifar10", recipe: str = "cpu") -> list[Cell]:
    """The schedule study's cells beyond the recipe's own length: seed 0 at every length,
    seeds 1 and 2 at 24 epochs, both probes of the recipe (its 6-epoch cells are the grid's)."""
    cells = []
    for seed, lengths in STUDY_LENGTHS.items():
        for epochs in lengths:
            cells += plan([dataset], STUDY_TARGETS, [seed], DEFAULT_PROBES.get(recipe, ["linprobe", "knn"]), recipe,
                          pretrain_overrides=length_overrides(recipe, epochs))
    return cells


@dataclass(frozen=True)
class Cell:
    dataset: str
    target: str   # a pretraining target, or "none" (no pretraining)
    seed: int
    metric: str   # finetune | linprobe | knn
    recipe: str   # pretraining and evaluation recipe
    pretrain_overrides: tuple = ()  # (field, value) pairs over the pretraining recipe
    eval_overrides: tuple = ()      # (field, value) pairs over the evaluation recipe

    def __str__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.pretrain_overrides + self.eval_overrides)
        return f"{self.dataset} {self.target} seed {self.seed} {self.metric} ({self.recipe}{', ' if extra else ''}{extra})"


def plan(datasets: Iterable[str], targets: Iterable[str], seeds: Iterable[int], probes: Iterable[str],
         recipe: str, *, pretrain_overrides: dict | None = None, eval_overrides: dict | None = None) -> list[Cell]:
    """Every cell, seed-major (all targets of seed 0 first), after checking every name.

    pretrain_overrides, eval_overrides: fields over the recipes' values in every cell (a
    smaller run for a test, another model); they change the run names, so such cells never
    stand for the recipe's own."""
    datasets, targets, seeds, probes = list(datasets), list(targets), list(seeds), list(probes)
    if recipe not in PRETRAIN_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(PRETRAIN_RECIPES)}")
    for name in datasets:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
        make_config(recipe, name)  # the recipe has a model for the dataset's image size
    for target in targets:
        if target != NO_TARGET:
            try:
                parse_target(target)
            except ValueError as err:
                raise ValueError(f"{err} (or {NO_TARGET!r}: no pretraining)") from None
    for probe in probes:
        if probe not in METRICS:
            raise ValueError(f"unknown probe {probe!r}; known: {list(METRICS)}")
        if recipe not in EVAL_RECIPES[probe]:
            raise ValueError(f"probe {probe!r} has no recipe {recipe!r}; known: {sorted(EVAL_RECIPES[probe])}")
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
    if not (datasets and targets and seeds and probes):
        raise ValueError("the grid is empty: give at least one dataset, target, seed and probe")
    pre, ev = tuple(sorted((pretrain_overrides or {}).items())), tuple(sorted((eval_overrides or {}).items()))
    cells = [Cell(d, str(parse_target(t)) if t != NO_TARGET else t, s, p, recipe, pre, ev)
             for d in datasets for s in seeds for t in targets for p in probes]
    for cell in cells[:len(targets) * len(probes)]:  # every config of one seed is valid
        eval_config(cell)
    return cells


def pretrain_config(cell: Cell):
    """The cell's pretraining config, or None for target "none"."""
    if cell.target == NO_TARGET:
        return None
    return make_config(cell.recipe, cell.dataset, cell.target, **dict(cell.pretrain_overrides), seed=cell.seed)


def _model(cell: Cell) -> str:
    return make_config(cell.recipe, cell.dataset, **dict(cell.pretrain_overrides)).model


def eval_config(cell: Cell):
    """The cell's evaluation config (on its pretraining run, or on the random encoder)."""
    source = pretrain_config(cell)
    kind = KNNConfig if cell.metric == "knn" else FinetuneConfig
    names = {f.name for f in fields(kind)}
    overrides = {k: v for k, v in cell.eval_overrides if k in names}  # e.g. batch_size: not for kNN
    if source is None:  # the random encoder sees the images pretraining would have seen
        overrides.setdefault("n_train", dict(cell.pretrain_overrides).get("n_train"))
    return make_eval_config(cell.metric, cell.recipe, source, dataset=cell.dataset, model=_model(cell),
                            **overrides, seed=cell.seed)


def missing(cells: Iterable[Cell], results_root=None) -> list[Cell]:
    """The cells with no record under the results folder (default $LOWVAR_MAE_RESULTS or results/)."""
    return [c for c in cells if not has_record(eval_config(c).run_name, c.metric, results_root)]


def estimate_seconds(cells: Iterable[Cell], records) -> dict[Cell, tuple[float | None, str]]:
    """Estimated seconds per cell, and where the estimate comes from.

    From eval records (``load_records("eval")``) of the same dataset, recipe, probe and
    model: the median of their evaluation wall time plus (for a pretrained target, once
    per (dataset, target, seed)) the median pretraining time. Records of this machine
    (same device name) are used when there are any, else those of other machines (named).
    """
    here = device_info()["device_name"]
    out: dict[Cell, tuple[float | None, str]] = {}
    pretrained: set[tuple] = set()
    for cell in cells:
        epochs = make_config(cell.recipe, cell.dataset, **dict(cell.pretrain_overrides)).epochs
        if records is None or not len(records):
            out[cell] = (None, "no records yet")
            continue
        model = _model(cell)
        same = records[(records["dataset"] == cell.dataset) & (records["recipe"] == cell.recipe)
                       & (records["metric"] == cell.metric) & (records["model"] == model)]
        local = same[same["device_name"] == here] if "device_name" in same else same.iloc[:0]
        use, source = (local, "this machine") if len(local) else (same, "other machines")
        if not len(use):
            out[cell] = (None, "no records of this recipe and probe yet")
            continue
        if source == "other machines":
            source = ", ".join(sorted(set(use["device_name"].dropna())))
        seconds = float(use["wall_seconds"].median())
        key = (cell.dataset, cell.target, cell.seed, epochs)
        if cell.target != NO_TARGET and key not in pretrained:
            pretrained.add(key)
            pre = use[use["target"] != NO_TARGET]
            per_epoch = (pre["pretrain_seconds"] / pre["pretrain_epochs"]).dropna() \
                if "pretrain_seconds" in pre and "pretrain_epochs" in pre else []
            if len(per_epoch):  # pretraining time grows with the epochs asked for
                seconds += float(per_epoch.median()) * epochs
            elif "pretrain_seconds" in pre and pre["pretrain_seconds"].notna().any():  # lengths unknown
                seconds += float(pre["pretrain_seconds"].dropna().median())
        out[cell] = (seconds, source)
    return out


def describe_missing(cells: list[Cell], results_root=None) -> str:
    """A table of the missing cells with their estimated time, and the total."""
    from .results import load_records

    todo = missing(cells, results_root)
    if not todo:
        return f"all {len(cells)} cells have records"
    estimates = estimate_seconds(todo, load_records("eval", results_root))
    lines = [f"{len(todo)} of {len(cells)} cells have no record (estimates for {device_info()['device_name']}):"]
    for cell in todo:
        seconds, source = estimates[cell]
        when = f"{seconds / 60:5.1f} min" if seconds is not None else "    ? min"
        lines.append(f"  {when}  {cell}  [{source}]")
    known = [s for s, _ in estimates.values() if s is not None]
    lines.append(f"total: {sum(known) / 60:.0f} min for the {len(known)} cells with an estimate")
    return "\n".join(lines)


def run_grid(cells: list[Cell], *, device: str = "auto", results_root=None, root=None, allow_dirty: bool = False,
             progress: bool = False, log=print) -> list[Path]:
    """Run every missing cell (pretraining each encoder once); returns the records written.

    allow_dirty: write records from a checkout with uncommitted changes (their git revision
    then ends in "-dirty"). Stops between cells when ``<runs>/grid.stop`` exists.
    """
    revision = require_clean(allow_dirty)
    todo = missing(cells, results_root)
    log(f"grid: {len(todo)} of {len(cells)} cells to run at {revision}")
    stop = runs_dir(root) / STOP_FILE
    written = []
    for i, cell in enumerate(todo):
        if stop.exists():
            log(f"grid: {stop} exists, stopping before {cell}")
            break
        start = time.perf_counter()
        source = pretrain_config(cell)
        if source is not None:
            hooks = [] if parse_target(source.target).masks_components else \
                [band_hook(source, n_eval=BAND_IMAGES, every=max(1, source.probe_every), device=device, root=root,
                           at_most=True)]
            run = pretrain(source, root=root, device=device, progress=progress, epoch_hooks=hooks)
            path = record_pretraining(run.run_dir, results_root)
            if path is not None:
                written.append(path)
            if hooks:
                path = record_learning_order(run, results_root, device=device, log=log)
                if path is not None:
                    written.append(path)
        result = evaluate(eval_config(cell), root=root, results_root=results_root, device=device, progress=progress)
        if result.record is not None:
            written.append(result.record)
        log(f"grid: [{i + 1}/{len(todo)}] {cell}: {result.value:.4f} in {(time.perf_counter() - start) / 60:.1f} min"
            f" -> {result.record}")
    return written


def record_pretraining(run_dir, results_root=None) -> Path | None:
    """Write the pretraining record of a finished run (loss curve, reconstructions of its
    fixed test batch), unless one of its run name exists; returns the record written, if any."""
    done = load_records(PRETRAINING_KIND, results_root)
    if len(done) and (done["run_name"] == Path(run_dir).name).any():
        return None
    # The record's own provenance is of the reading; the run's (machine, code) is in pretrain_provenance.
    return write_record(PRETRAINING_KIND, pretraining_fields(run_dir), root=results_root)


def record_learning_order(run, results_root=None, *, device: str = "auto", log=print) -> Path | None:
    """Write the learning-order record of a finished pretraining run, unless one of its run
    name exists or the run has no band errors for every epoch it measured (a run trained
    before the grid recorded them); returns the record written, if any."""
    done = load_records(LEARNING_ORDER_KIND, results_root)
    if len(done) and (done["run_name"] == run.run_dir.name).any():
        return None
    banded = [m for m in run.metrics if "band_rel_error" in m]
    if not banded or banded[-1]["epoch"] != len(run.metrics):
        log(f"grid: {run.run_dir.name} has no band errors at its last epoch (trained without them); "
            "no learning-order record")
        return None
    note = f"grid run: band errors of the first {BAND_IMAGES} test images (or all, if fewer) at epoch 1, every probe " \
        "epoch and the last"
    where = str(next(run.model.parameters()).device)
    return write_record(LEARNING_ORDER_KIND, learning_order_fields(run, note), device=where, root=results_root)


__all__ = ["STUDY_LENGTHS", "study_plan", "DEFAULT_TARGETS", "OTHER_TARGETS", "DEFAULT_PROBES", "Cell", "plan", "pretrain_config", "eval_config", "missing", "estimate_seconds", "describe_missing",
           "run_grid", "STOP_FILE", "BAND_IMAGES", "length_overrides", "record_pretraining", "record_learning_order"]
