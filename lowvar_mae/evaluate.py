"""Evaluating pretrained encoders: fine-tuning, linear probing, kNN, records and Table 1.

Three protocols, all on the CLS token of a :class:`~lowvar_mae.models.ViTEncoder`:

* ``finetune``: the whole :class:`~lowvar_mae.models.ViTClassifier` is trained
  (AdamW, RandAugment(2, 9), label smoothing 0.1, dropout 0.1 before the head in the
  paper recipe);
* ``linprobe``: the encoder is frozen (no gradients, eval mode, weights unchanged) and
  only the official MAE head ``BatchNorm1d(affine=False) -> Linear`` is trained (SGD,
  momentum 0.9). Without augmentation the CLS features are extracted once and the head
  trains on the cached features (the fast path); with augmentation the encoder runs on
  every augmented batch;
* ``knn``: weighted k-nearest-neighbour votes on cosine similarity of frozen CLS
  features (k=20, temperature 0.07, as in DINO); nothing is trained.

The encoder comes from a pretraining run folder (``lowvar_mae.pretrain``), loaded
strictly with :func:`~lowvar_mae.checkpoint.load_weights` (``prefix="encoder."``): a
missing run, an unfinished run, a run without checkpoint, or weights that do not fit
raise :class:`~lowvar_mae.checkpoint.CheckpointError`. Target ``"none"`` is the
"without pretraining" baseline: the encoder keeps the random initial weights that
pretraining with the same seed would have started from.

Training goes through the shared loop (:func:`lowvar_mae.train.train_loop`): run
folders, ``metrics.jsonl``, safetensors checkpoints, exact resume, bf16 via
``precision``, torchrun. An evaluation run folder holds ``config.json``,
``provenance.json``, ``metrics.jsonl`` (loss, lr, val_accuracy, val_loss per epoch),
the latest checkpoint, ``best/`` (the weights of the best validation epoch, as a
safetensors checkpoint) and, once finished, ``summary.json``. A finished config loads
instead of training again.

Protocol, and how it differs from the original work
------------------------------------------------------
* A validation split (:func:`validation_split`: stratified, seeded, default 10%) is cut
  from the *training* split only. Every choice made while training (the best epoch)
  looks at validation accuracy; the test split is evaluated once, at the end.
* Two test numbers are recorded: ``value``, the test accuracy of the final weights (the
  fixed-schedule number, comparable to Table 1), and ``test_at_best``, the test
  accuracy of the weights of the best validation epoch (``best_val_value``).
* The original work reported test-split accuracy under the name "validation", with no
  held-out validation split; if the best epoch was picked on it, the numbers are
  optimistic. It trained on the whole training split; we train on 90% of it by default,
  which costs a little accuracy. It reported single runs; records here carry a seed and
  tables report mean and spread over seeds.

Every evaluation writes one record with :func:`lowvar_mae.results.write_record`
(``kind="eval"``); :mod:`lowvar_mae.report` presents them (mean and spread over seeds,
the presentation's Table 1 beside them, figures).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (CheckpointError, latest_checkpoint, load_weights, open_run_folder, replace_run,
                         save_checkpoint, staging_dir)
from .config import RunConfig
from .data import DATASETS, load_dataset
from .models import POOLINGS, ViTClassifier, ViTEncoder, build_mae, get_config, pool_tokens, set_attention
from .provenance import OtherLoad, atomic_write_json, results_dir, runs_dir
from .reference import TABLE1, target_label
from .results import write_record
from .targets import parse_target
from .train import (ATTENTIONS, AUGMENTATIONS, PRECISIONS, DeviceData, Distributed, LoopConfig, augment,
                    autocast, build_optimizer, fits_on, init_distributed, normalize, read_metrics,
                    resolve_attention, resolve_device, resolve_precision, scaled_lr, train_loop)

PROTOCOLS = ("finetune", "linprobe")
METRICS = ("finetune", "linprobe", "knn")
NO_TARGET = "none"  # the "without pretraining" baseline
# Fields that do not change what is learned, left out of the run name's hash.
NOT_IN_NAME = ("compile", "attention", "eval_batch_size", "checkpoint_every")
RECORD_KIND = "eval"

# Recipes: the presentation's numbers ("paper") and CPU-minutes ones ("quick").
# Units: epochs over the training part of the training split; batch = images per
# optimiser step (all GPUs); lr = base_lr * batch_size / 256.
RECIPES: dict[str, dict[str, dict]] = {
    "finetune": {
        "paper": dict(optimizer="adamw", base_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999),
                      batch_size=1024, epochs=100, warmup_epochs=5, augment="none",
                      rand_augment_ops=2, rand_augment_magnitude=9, rand_augment_group=1,
                      label_smoothing=0.1, head_dropout=0.1, head_norm=False, head_init_std=2e-5),
        # Flips instead of RandAugment: per-image RandAugment costs about as much as the
        # model's own step at this size on a CPU.
        "quick": dict(optimizer="adamw", base_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999),
                      batch_size=64, epochs=4, warmup_epochs=1, augment="flip", rand_augment_ops=0,
                      label_smoothing=0.1, head_dropout=0.1, head_norm=False, head_init_std=2e-5),
        # The CPU protocol's short fine-tune of the cpu-cifar encoder on the whole training part.
        "cpu": dict(optimizer="adamw", base_lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999),
                    batch_size=256, epochs=5, warmup_epochs=1, augment="flip", rand_augment_ops=0,
                    label_smoothing=0.1, head_dropout=0.1, head_norm=False, head_init_std=2e-5),
    },
    "linprobe": {
        "paper": dict(optimizer="sgd", momentum=0.9, base_lr=0.1, weight_decay=0.0, batch_size=256,
                      epochs=90, warmup_epochs=10, augment="flip", rand_augment_ops=0,
                      label_smoothing=0.0, head_dropout=0.0, head_norm=True, head_init_std=0.01),
        # No augmentation: the head trains on cached features, 100 epochs take seconds.
        "quick": dict(optimizer="sgd", momentum=0.9, base_lr=0.1, weight_decay=0.0, batch_size=128,
                      epochs=100, warmup_epochs=10, augment="none", rand_augment_ops=0,
                      label_smoothing=0.0, head_dropout=0.0, head_norm=True, head_init_std=0.01,
                      checkpoint_every=10),
        # The CPU protocol: the quick probe on cached features of the whole training part,
        # batch 1024 (lr scaled to 0.4); which features (CLS, mean of patch tokens, both) is
        # chosen on the validation split (``features="auto"``, :func:`choose_pooling`).
        "cpu": dict(optimizer="sgd", momentum=0.9, base_lr=0.1, weight_decay=0.0, batch_size=1024,
                    epochs=100, warmup_epochs=10, augment="none", rand_augment_ops=0,
                    label_smoothing=0.0, head_dropout=0.0, head_norm=True, head_init_std=0.01,
                    checkpoint_every=25, features="auto"),
    },

    # kNN trains nothing; a recipe only says which features it votes with.
    "knn": {"quick": {}, "paper": {}, "cpu": dict(features="auto"), "gpu": dict(features="auto")},
}
RECIPES["linprobe"]["gpu"] = RECIPES["linprobe"]["cpu"]  # the probe of the GPU protocol is the CPU one
# Feature choices of the probes: a pooling of lowvar_mae.models.POOLINGS, or "auto" (chosen
# on the validation split).
FEATURES = (*POOLINGS, "auto")
KNN_K = 20
KNN_TEMPERATURE = 0.07


# ---------------------------------------------------------------- configs


@dataclass(frozen=True)
class _EvalConfig(RunConfig):
    """What is evaluated, on which data: the fields every protocol shares."""

    dataset: str = "synthetic"
    target: str = NO_TARGET          # the pretraining run's target, or "none" (random encoder)
    pretrain_run: str | None = None  # pretraining run folder name under the runs dir; None iff target "none"
    model: str = "small-cifar"       # the encoder's preset (must be the pretraining run's)
    n_train: int | None = None       # seeded subset of the training split (as in pretraining)
    n_test: int | None = None        # subset of the test split, the same images for every seed
    val_fraction: float = 0.1        # share of the training images held out for validation
    precision: str = "auto"          # auto | fp32 | bf16
    attention: str = "auto"          # auto | sdpa | math (lowvar_mae.train.resolve_attention)
    eval_batch_size: int = 256       # images per forward pass when extracting features or testing
    features: str = "cls"            # cls | mean | cls+mean | auto (chosen on validation); probes only
    seed: int = 0

    NOT_IN_NAME = NOT_IN_NAME

    def __post_init__(self) -> None:
        self.check_types()
        self.check_range("seed", 0)
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {sorted(DATASETS)}")
        if self.target != NO_TARGET:  # canonical spelling, e.g. 'pca-bottom:0.250' -> 'pca-bottom:0.25'
            object.__setattr__(self, "target", str(parse_target(self.target)))
        if (self.target == NO_TARGET) != (self.pretrain_run is None):
            raise ValueError(
                f"target {self.target!r} with pretrain_run {self.pretrain_run!r}: target 'none' (no "
                "pretraining) goes with pretrain_run=None, any other target needs its pretraining run")
        get_config(self.model)
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        for name, low in (("n_train", 2), ("n_test", 1)):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < low):
                raise ValueError(f"{name} must be None or an integer >= {low}, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be a positive integer, got {self.eval_batch_size!r}")
        if self.features not in FEATURES:
            raise ValueError(f"features must be one of {FEATURES}, got {self.features!r}")

    @property
    def metric(self) -> str:
        raise NotImplementedError

    @property
    def run_name(self) -> str:
        """Readable prefix plus a hash of every field that changes the result (pretraining run included)."""
        digest = self.digest(metric=self.metric)
        return f"{self.metric}-{self.dataset}-{self.target.replace(':', '')}-{self._name_part}-s{self.seed}-{digest}"

    @property
    def _name_part(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class FinetuneConfig(_EvalConfig):
    """A fine-tuning or linear-probing run. Papermill parameters map onto these fields."""

    protocol: str = "finetune"       # finetune | linprobe (encoder frozen)
    recipe: str = "quick"            # paper | quick: where the numbers below came from
    epochs: int = 4
    warmup_epochs: float = 1
    batch_size: int = 64             # images per optimiser step
    accum_steps: int = 1             # micro-batches per step
    optimizer: str = "adamw"         # adamw | sgd
    base_lr: float = 1e-3            # lr = base_lr * batch_size / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9            # SGD only
    augment: str = "flip"            # none | flip | crop-flip (lowvar_mae.train.augment), after RandAugment
    rand_augment_ops: int = 0        # RandAugment's num_ops; 0: no RandAugment
    rand_augment_magnitude: int = 9  # RandAugment's magnitude, 0..30
    rand_augment_group: int = 1      # images that share one draw of RandAugment ops (1: every image its own)
    label_smoothing: float = 0.1
    head_dropout: float = 0.1        # dropout before the head
    head_norm: bool = False          # BatchNorm1d(affine=False) before the Linear head (official MAE probe)
    head_init_std: float = 2e-5      # head weights ~ trunc normal (MAE: 2e-5 fine-tuning, 0.01 probing)
    feature_cache: bool = True       # linprobe without augmentation: train the head on cached features
    checkpoint_every: int = 1        # epochs between checkpoints (and the last epoch)
    compile: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_range("base_lr", 0, low_open=True)
        self.check_range("weight_decay", 0)
        self.check_range("betas", 0, 1, high_open=True)
        self.check_range("momentum", 0, 1, high_open=True)
        self.check_range("label_smoothing", 0, 1, high_open=True)
        self.check_range("head_dropout", 0, 1, high_open=True)
        self.check_range("head_init_std", 0, low_open=True)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.recipe not in RECIPES[self.protocol]:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES[self.protocol])}")
        for name in ("epochs", "batch_size", "accum_steps", "rand_augment_group", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs={self.epochs}, got {self.warmup_epochs}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if not isinstance(self.rand_augment_ops, int) or self.rand_augment_ops < 0:
            raise ValueError(f"rand_augment_ops must be an integer >= 0, got {self.rand_augment_ops!r}")
        if not 0 <= self.rand_augment_magnitude <= 30:
            raise ValueError(f"rand_augment_magnitude must lie in 0..30, got {self.rand_augment_magnitude}")
        for name in ("label_smoothing", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.base_lr <= 0 or self.weight_decay < 0 or self.head_init_std <= 0:
            raise ValueError("base_lr and head_init_std must be positive and weight_decay >= 0")
        if self.protocol == "finetune" and self.features != "cls":
            raise ValueError(f"fine-tuning classifies the CLS token: features must be 'cls', got {self.features!r}")

    @property
    def metric(self) -> str:
        return self.protocol

    @property
    def _name_part(self) -> str:
        return f"{self.recipe}-e{self.epochs}"

    @property
    def frozen_encoder(self) -> bool:
        return self.protocol == "linprobe"

    @property
    def uses_feature_cache(self) -> bool:
        """The fast path: a linear probe without augmentation trains on features extracted once."""
        return (self.frozen_encoder and self.feature_cache and self.augment == "none"
                and self.rand_augment_ops == 0)


@dataclass(frozen=True)
class KNNConfig(_EvalConfig):
    """A kNN probe on frozen CLS features: cosine similarity, k neighbours, exp(sim / T) votes."""

    recipe: str = "quick"            # a key of RECIPES["knn"]
    k: int = KNN_K
    temperature: float = KNN_TEMPERATURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recipe not in RECIPES["knn"]:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES['knn'])}")
        if not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    @property
    def metric(self) -> str:
        return "knn"

    @property
    def _name_part(self) -> str:
        return f"k{self.k}"


def _pretrain_source(pretrain) -> dict | None:
    """config.json of a pretraining run given as PretrainRun, PretrainConfig, run folder or run name."""
    from .pretrain import PretrainConfig, PretrainRun

    if pretrain is None:
        return None
    if isinstance(pretrain, PretrainRun):
        pretrain = pretrain.config
    if isinstance(pretrain, PretrainConfig):
        return {**pretrain.to_dict(), "run_name": pretrain.run_name}
    path = Path(pretrain)
    if not path.is_absolute() and not path.exists():
        path = runs_dir() / path
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no pretraining run at {path} (no config.json)")
    return {**json.loads(config_file.read_text()), "run_name": path.name}


def make_eval_config(metric: str, recipe: str = "quick", pretrain=None, *, dataset: str | None = None,
                     model: str | None = None, **overrides) -> FinetuneConfig | KNNConfig:
    """A config for ``metric`` (finetune | linprobe | knn) from a recipe and a pretraining run.

    pretrain: a PretrainRun, PretrainConfig, run folder or run name; its dataset, target,
    model, seed and n_train become the defaults. None: target "none" (random encoder),
    on ``dataset`` with ``model`` (default: the pretraining recipe of the same name's
    preset for the dataset). None values in ``overrides`` mean "the recipe's value"; when
    ``epochs`` is overridden and ``warmup_epochs`` is not, warm-up keeps the recipe's share
    of the schedule (paper fine-tuning: 5 of 100 epochs, so 0.5 of 10).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    source = _pretrain_source(pretrain)
    values: dict = {}
    if source is None:
        from .pretrain import make_config

        from .pretrain import RECIPES as PRETRAIN_RECIPES

        dataset = dataset or "synthetic"
        values.update(dataset=dataset, target=NO_TARGET, pretrain_run=None,
                      model=model or make_config(recipe if recipe in PRETRAIN_RECIPES else "quick", dataset).model)
    else:
        for name, given in (("dataset", dataset), ("model", model)):
            if given is not None and given != source[name]:
                raise ValueError(f"{name}={given!r} but pretraining run {source['run_name']} used {source[name]!r}")
        values.update(dataset=source["dataset"], target=str(parse_target(source["target"])),
                      pretrain_run=source["run_name"], model=source["model"], seed=source["seed"],
                      n_train=source.get("n_train"))
    if recipe not in RECIPES[metric]:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES[metric])}")
    recipe_values = RECIPES[metric][recipe]
    values.update(recipe_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if metric == "knn":
        return KNNConfig(recipe=recipe, **values)
    if overrides.get("epochs") is not None and overrides.get("warmup_epochs") is None:
        # a shorter or longer schedule keeps the recipe's share of warm-up
        values["warmup_epochs"] = recipe_values["warmup_epochs"] * values["epochs"] / recipe_values["epochs"]
    return FinetuneConfig(protocol=metric, recipe=recipe, **values)


# ---------------------------------------------------------------- data and protocol


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


@dataclass
class Splits:
    """Labelled images of one evaluation: uint8 (N, C, H, W) and int64 (N,), all on one device
    (the training device, or the CPU when they do not fit there; batches are then copied)."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int

    @property
    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train_images), "n_val": len(self.val_images), "n_test": len(self.test_images)}


@functools.lru_cache(maxsize=2)
def _load_split(dataset: str, split: str):
    """load_dataset, keeping the last two splits in memory: the synthetic set is generated
    on every call (seconds), and a notebook evaluates many runs on the same data."""
    return load_dataset(dataset, split)


def load_splits(dataset: str, *, n_train: int | None, n_test: int | None, val_fraction: float, seed: int,
                device: torch.device | str = "cpu") -> Splits:
    """The training split (optionally a seeded subset, as pretraining draws it) cut into
    train and validation parts by :func:`validation_split`, and the test split (optionally
    a fixed subset, the same for every seed). The tensors go to ``device`` when they take
    at most half its free memory (:func:`lowvar_mae.train.fits_on`), else stay on the CPU."""
    train = _load_split(dataset, "train")
    if n_train is not None:
        train = train.subset(n_train, seed=seed)
    test = _load_split(dataset, "test")
    if n_test is not None:
        test = test.subset(n_test, seed=0)
    train_idx, val_idx = validation_split(train.labels, val_fraction, seed)
    device = torch.device(device)
    if not fits_on(device, train.images.nbytes + test.images.nbytes):
        device = torch.device("cpu")
    images, labels = train.to_tensor(device), torch.as_tensor(train.labels, device=device)
    t_idx, v_idx = torch.as_tensor(train_idx, device=device), torch.as_tensor(val_idx, device=device)
    return Splits(images[t_idx], labels[t_idx], images[v_idx], labels[v_idx], test.to_tensor(device),
                  torch.as_tensor(test.labels, device=device), len(train.classes))


# ---------------------------------------------------------------- encoders and heads


def random_encoder(model: str, seed: int) -> ViTEncoder:
    """The encoder of preset ``model`` with the initial weights pretraining with ``seed`` starts from."""
    torch.manual_seed(seed)
    return build_mae(model).encoder


def load_pretrained_encoder(run_dir: str | os.PathLike, model: str | None = None) -> tuple[ViTEncoder, dict]:
    """The encoder of a finished pretraining run folder, loaded strictly; and the run's config.json.

    model: the preset the caller expects; another one raises. Raises CheckpointError when
    the folder, its config or its checkpoint is missing, when the run is unfinished, or when
    the weights do not fit (missing, unexpected or misshaped keys): never a random encoder.
    """
    from .pretrain import PretrainConfig, is_finished

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"no pretraining run at {run_dir} (no config.json); pretrain it first")
    raw = json.loads((run_dir / "config.json").read_text())
    if model is not None and raw.get("model") != model:
        raise CheckpointError(f"pretraining run {run_dir} used model {raw.get('model')!r}, "
                              f"the evaluation expects {model!r}")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"pretraining run {run_dir} has no checkpoint (latest.json is missing)")
    config = PretrainConfig.from_dict({k: v for k, v in raw.items() if k != "run_name"})
    if not is_finished(run_dir, config):
        done = len(read_metrics(run_dir))
        raise CheckpointError(f"pretraining run {run_dir} is unfinished ({done} of {config.epochs} epochs, "
                              "no summary.json); finish it with lowvar_mae.pretrain.pretrain first")
    encoder = build_mae(config.model).encoder
    load_weights(encoder, ckpt, prefix="encoder.")
    return encoder, raw


def build_head(embed_dim: int, num_classes: int, *, norm: bool, init_std: float, seed: int) -> nn.Module:
    """Linear head (N, D) -> (N, classes), weights ~ trunc normal(init_std) from ``seed``, bias 0;
    with ``norm``: BatchNorm1d(D, affine=False, eps=1e-6) before it (official MAE linear probe)."""
    linear = nn.Linear(embed_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=init_std, generator=torch.Generator().manual_seed(seed))
    nn.init.zeros_(linear.bias)
    if not norm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6), linear)


class LinearProbe(ViTClassifier):
    """A :class:`ViTClassifier` whose encoder is frozen: no gradients, always in eval mode.

    ``train()`` switches only the head; the encoder runs under ``torch.no_grad``.
    """

    def __init__(self, encoder: ViTEncoder, head: nn.Module, pooling: str = "cls") -> None:
        super().__init__(encoder, num_classes=1)
        self.head = head
        self.pooling = pooling
        encoder.requires_grad_(False)
        encoder.eval()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs: (N, C, H, W) -> logits (N, num_classes)."""
        with torch.no_grad():
            features = self.encoder.pooled_features(imgs, self.pooling)
        return self.head(self.head_drop(features))


def build_classifier(encoder: ViTEncoder, num_classes: int, config: FinetuneConfig,
                     pooling: str | None = None) -> ViTClassifier:
    """ViTClassifier (finetune) or LinearProbe (linprobe) on ``encoder``, head from ``config``.

    pooling: the probe's features (default ``config.features``, which must then not be "auto")."""
    pooling = pooling or config.features
    if pooling not in POOLINGS:
        raise ValueError(f"a classifier needs a pooling of {POOLINGS}, got {pooling!r} (resolve 'auto' first)")
    head = build_head(encoder.feature_dim(pooling), num_classes, norm=config.head_norm,
                      init_std=config.head_init_std, seed=config.seed)
    if config.frozen_encoder:
        probe = LinearProbe(encoder, head, pooling)
        probe.head_drop.p = config.head_dropout
        return probe
    classifier = ViTClassifier(encoder, num_classes, head_dropout=config.head_dropout)
    classifier.head = head
    return classifier


# ---------------------------------------------------------------- augmentation and forward passes


def rand_augment(images: Tensor, num_ops: int, magnitude: int, group: int = 1) -> Tensor:
    """torchvision's RandAugment(num_ops, magnitude) on uint8 images (N, C, H, W), on their device.

    ``v2.RandAugment`` draws one set of operations (and their signs) per call and applies
    it to the whole tensor it is given. It is called once per ``group`` consecutive images
    of the batch (which is already in shuffled order): group=1 gives every image its own
    draw, as a per-image data loader does; larger groups share a draw among that many
    images and cost N / group calls. The loop runs over one batch, never the dataset.
    Randomness comes from torch's global RNG, which ``run_epoch`` seeds per epoch, so a
    resumed run repeats the same draws.
    """
    from torchvision.transforms import v2

    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    return torch.cat([op(chunk) for chunk in images.split(group)])


def augment_batch(images: Tensor, config: FinetuneConfig, generator: torch.Generator | None) -> Tensor:
    """uint8 (N, C, H, W) -> float [0, 1]: RandAugment (if asked), then ``config.augment``."""
    if config.rand_augment_ops:
        images = rand_augment(images, config.rand_augment_ops, config.rand_augment_magnitude,
                              config.rand_augment_group)
    return augment(images, config.augment, generator)


@torch.no_grad()
def _batched(fn, inputs: Tensor, batch_size: int, device: torch.device, precision: str) -> Tensor:
    """fn over ``inputs`` in batches (each moved to ``device``) under autocast; float32 outputs, concatenated."""
    outs = []
    for chunk in inputs.split(batch_size):
        with autocast(device, precision):
            outs.append(fn(chunk.to(device, non_blocking=True)).float())
    return torch.cat(outs)


def extract_features(encoder: ViTEncoder, images: Tensor, *, batch_size: int = 256,
                     device: torch.device | str = "cpu", precision: str = "fp32", pooling: str = "cls") -> Tensor:
    """Features of uint8 images (N, C, H, W) by ``pooling`` (default the CLS token): (N, F)
    float32, in eval mode, without gradients."""
    return extract_pooled(encoder, images, (pooling,), batch_size=batch_size, device=device,
                          precision=precision)[pooling]


def extract_pooled(encoder: ViTEncoder, images: Tensor, poolings=POOLINGS, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, Tensor]:
    """Every pooling of ``poolings`` from one forward pass per batch: {pooling: (N, F) float32}."""
    poolings = tuple(poolings)
    was_training = encoder.training
    encoder.eval()

    def pooled(x_u8: Tensor) -> Tensor:
        tokens = encoder.forward_features(normalize(x_u8.float() / 255))
        return torch.cat([pool_tokens(tokens, p) for p in poolings], dim=1)

    joined = _batched(pooled, images, batch_size, torch.device(device), precision)
    encoder.train(was_training)
    widths = [encoder.feature_dim(p) for p in poolings]
    return dict(zip(poolings, joined.split(widths, dim=1)))


def choose_pooling(train: dict[str, Tensor], train_labels: Tensor, val: dict[str, Tensor], val_labels: Tensor,
                   num_classes: int, *, by: str = "linear") -> tuple[str, dict[str, float]]:
    """The pooling whose features classify the validation part best, and every pooling's score.

    train, val: {pooling: features} of the training and validation parts. by="linear":
    softmax regression fitted to convergence by L-BFGS (:func:`lowvar_mae.analysis.linear_accuracy`,
    deterministic); by="knn": :func:`knn_accuracy`. Ties go to the first pooling in order.
    The test split is never looked at.
    """
    from .analysis import LinearConfig, linear_accuracy

    if by not in ("linear", "knn"):
        raise ValueError(f"by must be 'linear' or 'knn', got {by!r}")
    scores = {}
    for pooling in train:
        if by == "knn":
            scores[pooling] = knn_accuracy(train[pooling], train_labels, val[pooling], val_labels,
                                           num_classes=num_classes)
        else:
            scores[pooling] = linear_accuracy(train[pooling], train_labels, val[pooling], val_labels, num_classes,
                                              LinearConfig(weight_decay=1e-4, max_iter=200))["test_accuracy"]
    return max(scores, key=scores.get), scores


def _accuracy_and_loss(fn, inputs: Tensor, labels: Tensor, batch_size: int, device: torch.device,
                       precision: str) -> tuple[float, float]:
    logits = _batched(fn, inputs, batch_size, device, precision)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels)
    return float((logits.argmax(1) == labels).float().mean()), float(loss)


# ---------------------------------------------------------------- kNN


def knn_votes(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, *, k: int = KNN_K,
              T: float = KNN_TEMPERATURE, num_classes: int, batch_size: int = 1024) -> Tensor:
    """Weighted kNN votes (M, num_classes), as in DINO's ``knn_classifier``.

    Features are L2-normalised; each test row takes its k most cosine-similar training
    rows and adds exp(similarity / T) to the vote of each neighbour's class. Batched over
    test rows: memory (batch_size, N_train).
    """
    if k > len(train_feats):
        raise ValueError(f"k={k} neighbours but only {len(train_feats)} training features")
    bank = F.normalize(train_feats.float(), dim=1)
    train_labels = train_labels.to(bank.device)
    votes = []
    for chunk in test_feats.split(batch_size):
        sims, idx = (F.normalize(chunk.float().to(bank.device), dim=1) @ bank.T).topk(k, dim=1)
        weights = (sims / T).exp()
        v = torch.zeros(len(chunk), num_classes, device=bank.device)
        votes.append(v.scatter_add_(1, train_labels[idx], weights))
    return torch.cat(votes)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int = KNN_K, T: float = KNN_TEMPERATURE, num_classes: int | None = None,
                 batch_size: int = 1024) -> float:
    """Top-1 accuracy of :func:`knn_votes` (cosine similarity, k=20, T=0.07 by default)."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    votes = knn_votes(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes,
                      batch_size=batch_size)
    return float((votes.argmax(1) == test_labels.to(votes.device)).float().mean())


# ---------------------------------------------------------------- fine-tuning and linear probing


@dataclass
class EvalResult:
    """One finished (or loaded, or interrupted) evaluation."""

    run_dir: Path
    config: FinetuneConfig | KNNConfig
    summary: dict                      # value, best_val_value, test_at_best, ...; {} if unfinished
    metrics: list[dict] = field(default_factory=list)
    trained_now: bool = True
    model: nn.Module | None = None     # the classifier at its final weights (None when loaded)
    record: Path | None = None

    @property
    def value(self) -> float:
        """Test accuracy of the final weights."""
        return self.summary["value"]


def _best_dir(run_dir: Path) -> Path:
    return run_dir / "best"


def fit_classifier(config: FinetuneConfig, encoder: ViTEncoder, splits: Splits, run_dir: str | os.PathLike, *,
                   device: torch.device | str = "cpu", dist: Distributed = Distributed(), progress: bool = True,
                   stop_after: int | None = None, pooling: str | None = None,
                   features: dict[str, Tensor] | None = None) -> EvalResult:
    """Fine-tune or linearly probe ``encoder`` on ``splits`` in ``run_dir`` with the shared loop.

    Per epoch the validation accuracy is measured; the best epoch's weights (first best on
    ties) go to ``run_dir/best/``. At the end the test split is evaluated twice: with the
    final weights (``value``) and with the best validation epoch's (``test_at_best``).

    pooling: the probe's features when ``config.features`` is "auto" (chosen by the caller);
    features: {"train", "val", "test": features of that pooling}, already extracted (the
    feature-cache path then skips the encoder).
    """
    run_dir, dev = Path(run_dir), torch.device(device)
    precision = resolve_precision(dev, config.precision)
    attention = resolve_attention(dev, precision, config.attention)
    pooling = pooling or config.features
    classifier = build_classifier(set_attention(encoder, attention), splits.num_classes, config, pooling).to(dev)
    eb = config.eval_batch_size

    if config.uses_feature_cache:
        feats = features or {name: extract_features(classifier.encoder, getattr(splits, f"{name}_images"),
                                                    batch_size=eb, device=dev, precision=precision, pooling=pooling)
                             for name in ("train", "val", "test")}
        data = DeviceData(feats["train"], splits.train_labels, config.batch_size, dist=dist)
        trained: nn.Module = classifier.head
        inputs = {"val": feats["val"], "test": feats["test"]}

        def predict(x):
            return classifier.head(x)

        def loss_fn(m, x, labels, gen):
            return F.cross_entropy(m(x).float(), labels, label_smoothing=config.label_smoothing)
    else:
        data = DeviceData(splits.train_images, splits.train_labels, config.batch_size, dist=dist, device=dev)
        trained = classifier
        inputs = {"val": splits.val_images, "test": splits.test_images}

        def predict(x):
            return classifier(normalize(x.float() / 255))

        def loss_fn(m, x_u8, labels, gen):
            logits = m(normalize(augment_batch(x_u8, config, gen)))
            return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)

    peak = scaled_lr(config.base_lr, config.batch_size)
    optimizer = build_optimizer(trained, kind=config.optimizer, lr=peak, weight_decay=config.weight_decay,
                                betas=config.betas, momentum=config.momentum, device=dev)
    net: nn.Module = trained
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(trained, device_ids=[dist.local_rank] if dev.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def evaluate_on(split: str) -> tuple[float, float]:
        was_training = trained.training
        trained.eval()
        result = _accuracy_and_loss(predict, inputs[split], getattr(splits, f"{split}_labels"), eb, dev, precision)
        trained.train(was_training)
        return result

    best_ckpt = latest_checkpoint(_best_dir(run_dir))
    best = {"val": -1.0, "epoch": 0, "state": None}
    if best_ckpt is not None:  # resuming: the best epoch so far is on disk
        state = json.loads((best_ckpt / "state.json").read_text())
        best.update(val=state["val_accuracy"], epoch=state["epoch"])

    def on_epoch_end(epoch: int, metrics: dict) -> dict:
        val_acc, val_loss = evaluate_on("val")
        if val_acc > best["val"]:
            best.update(val=val_acc, epoch=epoch,
                        state={k: v.detach().clone() for k, v in classifier.state_dict().items()})
            if dist.is_main:
                save_checkpoint(_best_dir(run_dir), epoch, classifier, None, {"val_accuracy": val_acc})
        return {"val_accuracy": val_acc, "val_loss": val_loss}

    loop = LoopConfig(epochs=config.epochs, peak_lr=peak, warmup_epochs=config.warmup_epochs, seed=config.seed,
                      accum_steps=config.accum_steps, precision=precision, checkpoint_every=config.checkpoint_every)
    metrics = train_loop(run_dir, net, optimizer, data, loss_fn, loop, dev, dist=dist, on_epoch_end=on_epoch_end,
                         progress=progress, stop_after=stop_after)
    if len(metrics) < config.epochs:
        return EvalResult(run_dir, config, {}, metrics, trained_now=True, model=classifier)

    value, _ = evaluate_on("test")
    final_state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    if best["state"] is not None:
        classifier.load_state_dict(best["state"])
    else:
        load_weights(classifier, latest_checkpoint(_best_dir(run_dir)))
    test_at_best, _ = evaluate_on("test")
    classifier.load_state_dict(final_state)
    summary = {"metric": config.metric, "value": value, "best_val_value": best["val"], "test_at_best": test_at_best,
               "best_epoch": best["epoch"], "final_val_value": metrics[-1]["val_accuracy"],
               "train_seconds": sum(m["seconds"] for m in metrics), "epochs": config.epochs,
               "precision": precision, "attention": attention, "feature_cache": config.uses_feature_cache,
               "features": pooling, **splits.sizes}
    return EvalResult(run_dir, config, summary, metrics, trained_now=True, model=classifier)


def knn_probe(config: KNNConfig, encoder: ViTEncoder, splits: Splits, *, device: torch.device | str = "cpu",
              features: dict[str, dict[str, Tensor]] | None = None) -> dict:
    """kNN accuracy of frozen features (``config.features``; "auto": the pooling with the best
    validation accuracy): the training part is the bank, validation and test rows are
    classified against it. features: {"train", "val", "test": {pooling: features}}, already
    extracted. Returns the summary fields."""
    dev = torch.device(device)
    precision = resolve_precision(dev, config.precision)
    attention = resolve_attention(dev, precision, config.attention)
    encoder = set_attention(encoder, attention).to(dev)
    poolings = POOLINGS if config.features == "auto" else (config.features,)
    feats = features or {name: extract_pooled(encoder, getattr(splits, f"{name}_images"), poolings,
                                              batch_size=config.eval_batch_size, device=dev, precision=precision)
                         for name in ("train", "val", "test")}
    kw = dict(k=config.k, T=config.temperature, num_classes=splits.num_classes)
    vals = {p: knn_accuracy(feats["train"][p], splits.train_labels, feats["val"][p], splits.val_labels, **kw)
            for p in poolings}
    pooling = max(vals, key=vals.get)
    test = knn_accuracy(feats["train"][pooling], splits.train_labels, feats["test"][pooling], splits.test_labels, **kw)
    # The only choice (the pooling) is made on validation, so the "best" numbers are the final ones.
    return {"metric": "knn", "value": test, "best_val_value": vals[pooling], "test_at_best": test, "best_epoch": None,
            "final_val_value": vals[pooling], "train_seconds": 0.0, "precision": precision, "attention": attention,
            "features": pooling, "features_val": vals, **splits.sizes}


# ---------------------------------------------------------------- runs and records


def _record_fields(config: FinetuneConfig | KNNConfig, summary: dict, run_dir: Path) -> dict:
    spec = parse_target(config.target) if config.target != NO_TARGET else None
    share = spec.share if spec is not None and spec.needs_basis else None  # a share of variance (fft-*: a radius)
    fields_ = {"dataset": config.dataset, "target": config.target, "share": share,
               "recipe": getattr(config, "recipe", "knn"), "seed": config.seed, "run": run_dir.name,
               "run_dir": str(run_dir), "model": config.model, "pretrain_run": config.pretrain_run,
               "n_train_subset": config.n_train, **summary}
    if isinstance(config, KNNConfig):
        fields_.update(k=config.k, temperature=config.temperature)
    return fields_


def pretrain_provenance(run_dir: Path, summary: dict) -> dict:
    """What made a pretrained encoder, from its run folder: the code (git revision, and that
    of every resumed start), the machine, threads, precision and wall time."""
    path = run_dir / "provenance.json"
    prov = json.loads(path.read_text()) if path.is_file() else {}
    return {"git_revision": prov.get("git_revision"), "device_name": prov.get("device_name"),
            "threads": prov.get("threads"), "host": prov.get("host"), "time_utc": prov.get("time_utc"),
            "precision": summary.get("precision", prov.get("precision")), "train_seconds": summary.get("train_seconds"),
            "images_per_s": summary.get("images_per_s"), "other_cores_max": summary.get("other_cores_max"),
            "resumes": [r.get("git_revision") for r in prov.get("resumes", [])]}


def has_record(run_name: str, metric: str, results_root=None) -> bool:
    """Whether a record of evaluation run ``run_name`` and ``metric`` exists: under ``results_root``
    if given, else in any folder records are read from (``lowvar_mae.results.record_dirs``: the
    committed results/ and $LOWVAR_MAE_RESULTS)."""
    from .results import record_dirs

    for folder in record_dirs(results_root):
        for path in (folder / RECORD_KIND).glob("*.json"):
            rec = json.loads(path.read_text())
            if rec.get("run") == run_name and rec.get("metric") == metric:
                return True
    return False


def evaluate(config: FinetuneConfig | KNNConfig, *, root: str | os.PathLike | None = None,
             results_root: str | os.PathLike | None = None, device: str | None = "auto", force: bool = False,
             progress: bool = True, stop_after: int | None = None, record: bool = True) -> EvalResult:
    """Run ``config`` (resuming its run folder) or load it if finished; write its record.

    root: the runs folder (pretraining runs are looked up there too); results_root: where
    records go (default $LOWVAR_MAE_RESULTS or the checkout's results/). A loaded run
    writes its record only if none of that run is under ``results_root`` yet, so
    re-running a notebook does not count a run twice. force: evaluate again into a staging
    folder that replaces the run folder (not the pretraining run) only when it finishes.
    """
    dev = resolve_device(device)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    final_dir = run_dir = runs_dir(root) / config.run_name
    if force:  # evaluate again beside the old run; it is replaced only when the new one finishes
        run_dir = staging_dir(final_dir)
        if dist.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)

    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        result = EvalResult(run_dir, config, summary, read_metrics(run_dir), trained_now=False)
        if record and dist.is_main and not has_record(config.run_name, config.metric, results_root):
            result.record = write_record(RECORD_KIND, _record_fields(config, summary, run_dir),
                                         device=summary.get("device"), root=results_root)
        return result

    start = time.perf_counter()
    others = OtherLoad()
    pretrain_info: dict = {"pretrain_recipe": None, "pretrain_epochs": None}
    if config.pretrain_run is None:
        encoder = random_encoder(config.model, config.seed)
    else:
        encoder, raw = load_pretrained_encoder(runs_dir(root) / config.pretrain_run, model=config.model)
        theirs = {"dataset": raw["dataset"], "target": str(parse_target(raw["target"]))}
        for name, value in theirs.items():
            if getattr(config, name) != value:
                raise ValueError(f"config says {name}={getattr(config, name)!r}, "
                                 f"pretraining run {config.pretrain_run} has {value!r}")
        source_dir = runs_dir(root) / config.pretrain_run
        done = json.loads((source_dir / "summary.json").read_text())
        pretrain_info = {"pretrain_recipe": raw.get("recipe"), "pretrain_epochs": raw.get("epochs"),
                         "pretrain_seconds": done.get("train_seconds"),
                         "pretrain_images_per_s": done.get("images_per_s"),
                         "pretrain_final_loss": done.get("final_loss"),
                         "pretrain_probe_curve": done.get("probe_curve", []),
                         "pretrain_other_cores_max": done.get("other_cores_max"),
                         "pretrain_provenance": pretrain_provenance(source_dir, done)}
    encoder = encoder.to(dev)
    splits = load_splits(config.dataset, n_train=config.n_train, n_test=config.n_test,
                         val_fraction=config.val_fraction, seed=config.seed, device=dev)

    if dist.is_main:
        open_run_folder(run_dir, config, str(dev), seed=config.seed, world_size=dist.world_size)
    if isinstance(config, KNNConfig):
        feats = _pooled_splits(config, encoder, splits, dev) if config.features == "auto" else None
        result = EvalResult(run_dir, config, knn_probe(config, encoder, splits, device=dev, features=feats),
                            model=encoder)
    else:
        pooling, features, chosen = _resolve_pooling(config, encoder, splits, dev)
        result = fit_classifier(config, encoder, splits, run_dir, device=dev, dist=dist, progress=progress,
                                stop_after=stop_after, pooling=pooling, features=features)
        if not result.summary:
            return result
        result.summary.update(chosen)
    result.summary.update(pretrain_info, wall_seconds=time.perf_counter() - start, device=str(dev),
                          other_cores=others())
    if dist.is_main:
        atomic_write_json(summary_file, result.summary)
        if run_dir != final_dir:
            run_dir = replace_run(run_dir, final_dir)
            result.run_dir = run_dir
        if record:
            result.record = write_record(RECORD_KIND, _record_fields(config, result.summary, run_dir),
                                         device=str(dev), root=results_root)
    return result


# The pooled features of the last encoder evaluated, shared by its probes (a linear probe and
# a kNN of one encoder extract them once): {"key": ..., "features": {split: {pooling: (N, F)}}}.
_FEATURES: dict = {}


def _pooled_splits(config: _EvalConfig, encoder: ViTEncoder, splits: Splits, dev: torch.device) -> dict:
    """Every pooling of the train, val and test parts; reused while the encoder (its pretraining
    run, or the random weights of model and seed) and the images (dataset, subsets, split seed)
    and the precision are the same as for the last call."""
    precision = resolve_precision(dev, config.precision)
    with torch.no_grad():  # the weights themselves, in case a run of the same name was trained again
        weights = float(sum(p.double().sum() + p.double().square().sum() for p in encoder.parameters()))
    key = (config.pretrain_run, config.model, config.dataset, config.n_train, config.n_test, config.val_fraction,
           config.seed, precision, str(dev), splits.sizes["n_train"], splits.sizes["n_test"], weights)
    if _FEATURES.get("key") != key:
        _FEATURES.clear()
        set_attention(encoder, resolve_attention(dev, precision, config.attention))
        _FEATURES["features"] = {
            name: extract_pooled(encoder, getattr(splits, f"{name}_images"), batch_size=config.eval_batch_size,
                                 device=dev, precision=precision) for name in ("train", "val", "test")}
        _FEATURES["key"] = key
    return _FEATURES["features"]


def _resolve_pooling(config: FinetuneConfig, encoder: ViTEncoder, splits: Splits, dev: torch.device):
    """(pooling, features of it for the feature cache or None, record fields) for ``config``:
    with features="auto", every pooling is extracted once and :func:`choose_pooling` picks one
    on the validation part."""
    if config.features != "auto":
        return config.features, None, {}
    feats = _pooled_splits(config, encoder, splits, dev)
    pooling, scores = choose_pooling(feats["train"], splits.train_labels, feats["val"], splits.val_labels,
                                     splits.num_classes)
    chosen = {name: feats[name][pooling] for name in feats} if config.uses_feature_cache else None
    return pooling, chosen, {"features_val": scores, "features_chosen_by": "L-BFGS softmax regression, validation"}


BASELINE_KIND = "baseline"
PIXEL_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def pixel_linear_probe(dataset: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                       val_fraction: float = 0.1, weight_decays=PIXEL_WEIGHT_DECAYS, max_iter: int = 300,
                       device: str | None = "auto", results_root=None, record: bool = True) -> dict:
    """The bar a pretrained encoder's linear probe must clear: softmax regression on raw pixels.

    The same training / validation / test images as the probes (:func:`load_splits` with
    ``seed``); pixels standardised on the training part; the L2 penalty chosen on the
    validation part among ``weight_decays``; fitted by full-batch L-BFGS to convergence
    (at most ``max_iter`` iterations; the record says how many ran); the test split
    scored once, with the chosen penalty. Writes a record of kind "baseline" unless one of
    the same setting exists (then that record's fields are returned).
    """
    from .analysis import LinearConfig, choose_weight_decay, linear_accuracy

    setting = {"dataset": dataset, "target": "raw-pixels", "metric": "linear", "seed": seed, "n_train_subset": n_train,
               "n_test_subset": n_test, "val_fraction": val_fraction, "weight_decays": list(weight_decays),
               "max_iter": max_iter}
    if record:
        for path in sorted((results_dir(results_root) / BASELINE_KIND).glob("*.json")):
            rec = json.loads(path.read_text())
            if all(rec.get(k) == v for k, v in setting.items()):
                return {**rec, "record": str(path)}
    dev = resolve_device(device)
    start = time.perf_counter()
    splits = load_splits(dataset, n_train=n_train, n_test=n_test, val_fraction=val_fraction, seed=seed, device=dev)
    flat = {name: getattr(splits, f"{name}_images").flatten(1).float() / 255 for name in ("train", "val", "test")}
    chosen, fits = choose_weight_decay(flat["train"], splits.train_labels, flat["val"], splits.val_labels,
                                       splits.num_classes, LinearConfig(weight_decays=tuple(weight_decays),
                                                                        max_iter=max_iter))
    final = linear_accuracy(flat["train"], splits.train_labels, flat["test"], splits.test_labels, splits.num_classes,
                            LinearConfig(weight_decay=chosen, max_iter=max_iter))
    fields_ = {**setting, "recipe": "pixels-linear", "value": final["test_accuracy"],
               "val_value": fits[chosen]["test_accuracy"], "weight_decay": chosen,
               "val_by_weight_decay": {str(wd): fits[wd]["test_accuracy"] for wd in weight_decays},
               "train_accuracy": final["train_accuracy"], "train_loss": final["train_loss"],
               "iterations": final["iterations"], "grad_max": final["grad_max"], "converged": final["converged"],
               "wall_seconds": time.perf_counter() - start, "device": str(dev), **splits.sizes}
    if record:
        fields_["record"] = str(write_record(BASELINE_KIND, fields_, device=str(dev), root=results_root))
    return fields_


__all__ = ["FinetuneConfig", "KNNConfig", "EvalResult", "Splits", "LinearProbe", "RECIPES",
           "make_eval_config", "validation_split", "load_splits", "random_encoder", "load_pretrained_encoder",
           "build_head", "build_classifier", "rand_augment", "augment_batch", "extract_features", "knn_votes",
           "knn_accuracy", "fit_classifier", "knn_probe", "evaluate"]
