"""Every recipe in one place: pretraining and evaluation protocols, and their config classes.

A recipe is a named set of numbers (epochs, batch, learning rate, ...). The protocols:

* ``paper``: the presentation's numbers (ViT-Tiny, 400 pretraining epochs, batch 512);
* ``gpu``: the same model and optimiser, 100 epochs, probed every 10;
* ``cpu``: a 2-core CPU protocol (all training images, the ``cpu-cifar`` ViT, 6 epochs);
* ``quick``: CPU minutes on a small ViT, a check that the pipeline runs.

:data:`PRETRAIN_RECIPES` and :class:`PretrainConfig` define a pretraining run
(``lowvar_mae.pretrain``); :data:`EVAL_RECIPES` (fine-tuning, linear probe, kNN) with
:class:`FinetuneConfig` and :class:`KNNConfig` an evaluation run (``lowvar_mae.evaluate``).
:func:`make_config` and :func:`make_eval_config` build configs from a recipe and overrides.
A config's run name is a readable prefix and a hash of every field that changes the result.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import CheckpointError
from .config import RunConfig
from .data import DATASETS
from .models import get_config
from .pca import BOTTOM_METHODS as PCA_METHODS
from .probes import FEATURES, KNN_K, KNN_TEMPERATURE
from .provenance import read_json, runs_dir
from .targets import PC_MASK_BASES, PC_MASK_COUNTS, parse_target
from .train import ATTENTIONS, AUGMENTATIONS, PRECISIONS

# ================================================================ pretraining


# Recipes: the presentation's numbers ("paper") and a CPU-minutes one ("quick").
# Units: epochs over the training split; batch = images per optimiser step (all GPUs).
PRETRAIN_RECIPES: dict[str, dict] = {
    "paper": dict(epochs=400, warmup_epochs=40, batch_size=512, base_lr=1.5e-4, weight_decay=0.05,
                  betas=(0.9, 0.95), model_size="vit-tiny"),
    "quick": dict(epochs=8, warmup_epochs=1, batch_size=128, base_lr=1e-3, weight_decay=0.05,
                  betas=(0.9, 0.95), model_size="small"),
    # The CPU protocol: every training image, a ViT of the ViT-Tiny width on 64 patches
    # ("cpu-cifar", 3.6 M parameters), bf16 where the CPU has it. On a 2-core AVX512-BF16
    # CPU it runs at about 570 images/s, 88 s an epoch of CIFAR-10's 50,000 images, so
    # the 6 epochs take about 9 minutes (about 3x that on AVX2, in fp32). A short schedule
    # learns fast only with a higher learning rate than the paper's (peak 1e-3 at batch
    # 256, against 3e-4 at batch 512). probe_every: a linear probe on the validation split
    # every 2 epochs, the protocol's calibration curve (it does not change the weights).
    "cpu": dict(epochs=6, warmup_epochs=1, batch_size=256, base_lr=1e-3, weight_decay=0.05,
                betas=(0.9, 0.95), augment="flip", probe_every=2, model_size="cpu"),
    # The same protocol on a GPU: the presentation's ViT-Tiny and optimiser, 100 epochs
    # (a quarter of its schedule, warm-up scaled with it), probed every 10 epochs.
    "gpu": dict(epochs=100, warmup_epochs=10, batch_size=512, base_lr=1.5e-4, weight_decay=0.05,
                betas=(0.9, 0.95), augment="flip", probe_every=10, model_size="vit-tiny"),
}


# PC masking with a fixed share (pc-mask:<s>) runs as PMAE's code runs its best setting:
# components of the per-pixel standardised PCA, counted by its rule. The random-share
# variant (pc-mask) keeps this project's first settings, and its run names.
PC_MASK_FIXED_SHARE = {"pc_basis": "standardized", "pc_count": "reference"}

# Model preset by recipe size and image size.
MODEL_PRESETS = {("vit-tiny", 32): "vit-tiny-cifar", ("vit-tiny", 96): "vit-tiny-stl",
                 ("small", 32): "small-cifar", ("small", 96): "small-stl", ("cpu", 32): "cpu-cifar"}


@dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """Everything that defines a pretraining run. Papermill parameters map onto these fields."""

    dataset: str = "synthetic"
    target: str = "pixels"          # pixels | norm-pix | pca-bottom:<q> | pca-top:<p> | fft-*:<r> | pc-mask
    recipe: str = "quick"
    model: str = "small-cifar"      # a preset of lowvar_mae.models
    epochs: int = 8
    warmup_epochs: float = 1
    batch_size: int = 128           # images per optimiser step
    accum_steps: int = 1            # micro-batches per step (gradient accumulation)
    base_lr: float = 1e-3           # lr = base_lr * batch_size / 256
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    mask_ratio: float = 0.75        # share of patches hidden; 0 (every patch seen) only with pc-mask
    augment: str = "none"           # none (as in the original work) | flip | crop-flip (as in MAE)
    n_train: int | None = None      # use a seeded subset of the training split
    pca_method: str = "complement"  # how bottom targets are computed (lowvar_mae.pca)
    precision: str = "auto"         # auto | fp32 | bf16
    attention: str = "auto"         # auto | sdpa | math (lowvar_mae.train.resolve_attention)
    compile: bool = False
    seed: int = 0
    recon_every: int = 0            # save reconstructions every k epochs (0: first and last only)
    probe_every: int = 0            # linear probe on the validation split every k epochs (0: never)
    pc_basis: str = "centred"       # pc-mask only: centred | standardized (per-pixel standardised PCA, as PMAE)
    pc_count: str = "nearest"       # pc-mask only: nearest (>= 1 component) | reference (PMAE's code, may be 0)

    NOT_IN_NAME = ("compile", "attention", "probe_every")  # do not change what is learned
    ADDED_LATER = {"pc_basis": "centred", "pc_count": "nearest"}

    def __post_init__(self):
        self.check_types()
        self.check_range("base_lr", 0, low_open=True)
        self.check_range("weight_decay", 0)
        self.check_range("betas", 0, 1, high_open=True)
        self.check_range("seed", 0)
        if self.n_train is not None and self.n_train < 2:
            raise ValueError(f"n_train must be None or an integer >= 2, got {self.n_train!r}")
        if self.pca_method not in PCA_METHODS:
            raise ValueError(f"pca_method must be one of {PCA_METHODS}, got {self.pca_method!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {sorted(DATASETS)}")
        spec = parse_target(self.target)
        if self.mask_ratio == 0 and not spec.masks_components:
            raise ValueError(f"mask_ratio 0 hides no patch, so target {self.target!r} would be copied from the input; "
                             "it is only allowed with target pc-mask (which masks components instead)")
        if self.pc_basis not in PC_MASK_BASES:
            raise ValueError(f"pc_basis must be one of {PC_MASK_BASES}, got {self.pc_basis!r}")
        if self.pc_count not in PC_MASK_COUNTS:
            raise ValueError(f"pc_count must be one of {PC_MASK_COUNTS}, got {self.pc_count!r}")
        if not spec.masks_components and (self.pc_basis, self.pc_count) != ("centred", "nearest"):
            raise ValueError(f"pc_basis and pc_count apply to target pc-mask only, got target {self.target!r} with "
                             f"pc_basis={self.pc_basis!r}, pc_count={self.pc_count!r}")
        if self.recipe not in PRETRAIN_RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(PRETRAIN_RECIPES)}")
        get_config(self.model, mask_ratio=self.mask_ratio)
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        for name in ("epochs", "batch_size", "accum_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("recon_every", "probe_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {getattr(self, name)!r}")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accum_steps {self.accum_steps}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ValueError(f"warmup_epochs must be in 0..epochs={self.epochs}, got {self.warmup_epochs}")

    @property
    def run_name(self) -> str:
        """Readable prefix plus a hash of every field that changes what is learned."""
        digest = self.digest()
        target = self.target.replace(":", "")
        return f"pretrain-{self.dataset}-{target}-{self.recipe}-e{self.epochs}-s{self.seed}-{digest}"


def read_run_config(run_dir: str | os.PathLike) -> PretrainConfig:
    """The config in ``<run_dir>/config.json``, checked against the folder: its run name
    (readable prefix and hash of every field) must be the folder's, so an edited or moved
    config is refused instead of labelling the run's results with the wrong settings."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        config = PretrainConfig.from_dict({k: v for k, v in raw.items() if k != "run_name"})
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path} cannot be read as a pretraining config ({err}); the run folder is "
                              "damaged: train it again (--force)") from None
    if config.run_name != run_dir.name and run_dir.name != f".{config.run_name}.new":
        raise CheckpointError(f"{path} describes run {config.run_name}, not the folder {run_dir.name}: the config "
                              "was edited or moved; restore it, or train the run again")
    return config


def make_config(recipe: str = "quick", dataset: str = "synthetic", target: str = "pixels", **overrides) -> PretrainConfig:
    """A PretrainConfig from a recipe's numbers, the dataset's model preset and overrides.

    None values in ``overrides`` mean "the recipe's value" (handy for notebook parameters).
    """
    if recipe not in PRETRAIN_RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(PRETRAIN_RECIPES)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    values = dict(PRETRAIN_RECIPES[recipe])
    size = values.pop("model_size")
    key = (size, DATASETS[dataset].image_shape[0])
    if key not in MODEL_PRESETS and overrides.get("model") is None:
        raise ValueError(f"recipe {recipe!r} has no model preset for {dataset} ({key[1]}x{key[1]} images); "
                         f"give model=..., one of {sorted(set(MODEL_PRESETS.values()))}")
    values["model"] = MODEL_PRESETS.get(key)
    spec = parse_target(target)
    if spec.masks_components:
        values["mask_ratio"] = 0.0  # PC masking replaces patch masking (PMAE's setting)
        if spec.share is not None:  # a fixed share runs as PMAE's code runs its best setting
            values.update(PC_MASK_FIXED_SHARE)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PretrainConfig(dataset=dataset, target=target, recipe=recipe, **values)


# ================================================================ evaluation


PROTOCOLS = ("finetune", "linprobe")


METRICS = ("finetune", "linprobe", "knn")


NO_TARGET = "none"  # the "without pretraining" baseline


# Fields that do not change what is learned, left out of the run name's hash.
EVAL_NOT_IN_NAME = ("compile", "attention", "eval_batch_size", "checkpoint_every")


# Recipes: the presentation's numbers ("paper") and CPU-minutes ones ("quick").
# Units: epochs over the training part of the training split; batch = images per
# optimiser step (all GPUs); lr = base_lr * batch_size / 256.
EVAL_RECIPES: dict[str, dict[str, dict]] = {
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
        # The CPU protocol's short fine-tune of the cpu-cifar encoder on the whole training part:
        # about 12 minutes a run on a 2-core AVX512-BF16 CPU (336 images/s measured over a
        # 4,500-image epoch there, plus the validation and test passes).
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


EVAL_RECIPES["linprobe"]["gpu"] = EVAL_RECIPES["linprobe"]["cpu"]  # the probe of the GPU protocol is the CPU one


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

    NOT_IN_NAME = EVAL_NOT_IN_NAME

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
        if self.recipe not in EVAL_RECIPES[self.protocol]:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(EVAL_RECIPES[self.protocol])}")
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

    recipe: str = "quick"            # a key of EVAL_RECIPES["knn"]
    k: int = KNN_K
    temperature: float = KNN_TEMPERATURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recipe not in EVAL_RECIPES["knn"]:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(EVAL_RECIPES['knn'])}")
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
    if pretrain is None:
        return None
    if isinstance(getattr(pretrain, "config", None), PretrainConfig):  # a PretrainRun
        pretrain = pretrain.config
    if isinstance(pretrain, PretrainConfig):
        return {**pretrain.to_dict(), "run_name": pretrain.run_name}
    path = Path(pretrain)
    if not path.is_absolute() and not path.exists():
        path = runs_dir() / path
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no pretraining run at {path} (no config.json)")
    return {**read_json(config_file, "the pretraining run folder is damaged: train it again (--force)"),
            "run_name": path.name}


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
    if recipe not in EVAL_RECIPES[metric]:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(EVAL_RECIPES[metric])}")
    recipe_values = EVAL_RECIPES[metric][recipe]
    values.update(recipe_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if metric == "knn":
        return KNNConfig(recipe=recipe, **values)
    if overrides.get("epochs") is not None and overrides.get("warmup_epochs") is None:
        # a shorter or longer schedule keeps the recipe's share of warm-up
        values["warmup_epochs"] = recipe_values["warmup_epochs"] * values["epochs"] / recipe_values["epochs"]
    return FinetuneConfig(protocol=metric, recipe=recipe, **values)


__all__ = ["PRETRAIN_RECIPES", "MODEL_PRESETS", "PretrainConfig", "read_run_config", "make_config", "PROTOCOLS", "METRICS", "NO_TARGET",
           "EVAL_NOT_IN_NAME", "EVAL_RECIPES", "FinetuneConfig", "KNNConfig", "make_eval_config"]
