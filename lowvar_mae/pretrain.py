"""MAE pretraining runs: a config, a run folder named from it, and the loop that fills it.

A run folder holds ``config.json``, ``provenance.json`` (versions, git revision, device,
seed), ``metrics.jsonl`` (one line per epoch), the latest checkpoint (safetensors),
``recon/epoch-NNNN.safetensors`` (reconstructions of a fixed test batch) and, when the
run is finished, ``summary.json``. Running a finished config again loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import latest_checkpoint, load_weights, open_run_folder, replace_run, staging_dir, unwrap
from .config import RunConfig
from .data import DATASETS, load_dataset
from .models import MAE, build_mae, get_config, set_attention
from .provenance import OtherLoad, atomic_write_json, runs_dir
from .targets import PCMasking, basis_provenance, dataset_basis, make_pc_masking, make_target, parse_target
from .pca import BOTTOM_METHODS as PCA_METHODS
from .train import (ATTENTIONS, AUGMENTATIONS, PRECISIONS, DeviceData, LoopConfig, augment, build_optimizer, denormalize,
                    fits_on, init_distributed, normalize, read_metrics, resolve_attention, resolve_device,
                    resolve_precision, scaled_lr, train_loop)

# Recipes: the presentation's numbers ("paper") and a CPU-minutes one ("quick").
# Units: epochs over the training split; batch = images per optimiser step (all GPUs).
RECIPES: dict[str, dict] = {
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

    NOT_IN_NAME = ("compile", "attention", "probe_every")  # do not change what is learned

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
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; known: {sorted(RECIPES)}")
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


def make_config(recipe: str = "quick", dataset: str = "synthetic", target: str = "pixels", **overrides) -> PretrainConfig:
    """A PretrainConfig from a recipe's numbers, the dataset's model preset and overrides.

    None values in ``overrides`` mean "the recipe's value" (handy for notebook parameters).
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known: {sorted(RECIPES)}")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    values = dict(RECIPES[recipe])
    size = values.pop("model_size")
    key = (size, DATASETS[dataset].image_shape[0])
    if key not in MODEL_PRESETS and overrides.get("model") is None:
        raise ValueError(f"recipe {recipe!r} has no model preset for {dataset} ({key[1]}x{key[1]} images); "
                         f"give model=..., one of {sorted(set(MODEL_PRESETS.values()))}")
    values["model"] = MODEL_PRESETS.get(key)
    if parse_target(target).masks_components:
        values["mask_ratio"] = 0.0  # PC masking replaces patch masking (PMAE's setting)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PretrainConfig(dataset=dataset, target=target, recipe=recipe, **values)


@dataclass
class PretrainRun:
    run_dir: Path
    config: PretrainConfig
    model: MAE
    metrics: list[dict]
    trained_now: bool

    def reconstructions(self) -> dict[int, dict[str, torch.Tensor]]:
        """Saved reconstructions by epoch: input, target, prediction, mask as images in [0, 1]."""
        return load_reconstructions(self.run_dir)


def is_finished(run_dir: Path, config: PretrainConfig) -> bool:
    return (run_dir / "summary.json").is_file() and len(read_metrics(run_dir)) >= config.epochs


def load_reconstructions(run_dir: str | Path) -> dict[int, dict[str, torch.Tensor]]:
    out = {}
    for path in sorted((Path(run_dir) / "recon").glob("epoch-*.safetensors")):
        out[int(path.stem.split("-")[1])] = {k: v.float() for k, v in load_file(str(path)).items()}
    return out


def masked_relative_error(rec: dict[str, torch.Tensor]) -> float:
    """Squared error of a saved reconstruction (:func:`reconstruct`) on its masked patches,
    over the target's variance across the batch there: 0 is exact, about 1 is what
    predicting the mean image scores. The variance is the unbiased one (divided by n - 1
    images), so that a prediction of the population mean scores 1 on average however
    small the batch, not n / (n - 1)."""
    target, pred = rec["target"].double(), rec["prediction"].double()
    n = target.shape[0]
    if n < 2:
        raise ValueError(f"need a batch of at least 2 images to measure the target's variance, got {n}")
    mask = rec["mask"].expand_as(target).bool()
    err = (pred - target)[mask].square().mean()
    var = (target - target.mean(0, keepdim=True))[mask].square().mean() * n / (n - 1)
    return float(err / var)


@torch.no_grad()
def reconstruct(model: MAE, x01: torch.Tensor, target_fn: Callable, seed: int,
                pc_masking: PCMasking | None = None) -> dict[str, torch.Tensor]:
    """Reconstruct a batch (N, C, H, W) in [0, 1] with a fixed mask; all outputs as images in [0, 1].

    pc_masking: for the pc-mask target, the input has a fixed draw of components removed
    (the loss is then PC masking's, on those components), patches masked as the model's config says."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=x01.device).manual_seed(seed)
    target = target_fn(x01)
    if pc_masking is None:
        loss, pred, mask = model(normalize(x01), target, generator=gen)
    else:
        idx, _ = pc_masking.draw(gen)
        x_in, coords = pc_masking.split(x01, idx)
        _, pred, mask = model(normalize(x_in), target, generator=gen)
        loss = pc_masking.loss(denormalize(model.unpatchify(pred.float())), coords, idx)
        x01 = x_in
    model.train(was_training)
    p, c = model.config.patch_size, model.config.in_chans
    mask_img = model.unpatchify(mask.unsqueeze(-1).expand(-1, -1, p * p * c).to(x01.dtype))
    return {"input": x01, "target": denormalize(target), "prediction": denormalize(model.unpatchify(pred.float())),
            "mask": mask_img[:, :1], "loss": loss.reshape(1).float()}


def pretrain(config: PretrainConfig, *, root: str | os.PathLike | None = None, device: str | None = "auto",
             force: bool = False, progress: bool = True, stop_after: int | None = None,
             epoch_hooks: list[Callable] | None = None) -> PretrainRun:
    """Train ``config`` (resuming its run folder), or load it if already finished.

    force: train again into a staging folder beside the run, which replaces the old run
    folder only once the new run has finished (a failed or stopped forced run leaves the
    old one as it was). stop_after: stop after that many
    epochs of this call (the run resumes later). epoch_hooks: functions
    ``hook(model, epoch) -> dict`` whose results are added to the epoch's metrics.
    """
    dev = resolve_device(device)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    final_dir = run_dir = runs_dir(root) / config.run_name
    torch.manual_seed(config.seed)  # the initial weights
    model = build_mae(config.model, mask_ratio=config.mask_ratio).to(dev)
    if not force and is_finished(run_dir, config):
        load_weights(model, latest_checkpoint(run_dir))
        return PretrainRun(run_dir, config, model, read_metrics(run_dir), trained_now=False)
    if force:  # train beside the old run; it is replaced only when the new one finishes
        run_dir = staging_dir(final_dir)
        if dist.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)

    # Everything that can fail on bad input happens before the run folder is written.
    precision = resolve_precision(dev, config.precision)
    attention = resolve_attention(dev, precision, config.attention)
    set_attention(model, attention)
    full = load_dataset(config.dataset, "train")
    train = full.subset(config.n_train, seed=config.seed) if config.n_train is not None else full
    images = train.to_tensor()
    if fits_on(dev, images.numel()):
        images = images.to(dev)
    basis = None
    spec = parse_target(config.target)
    if spec.needs_basis:
        basis = dataset_basis(config.dataset, images=full.to_tensor() if config.n_train is not None else images.cpu(),
                              root=root, device=dev)
    target_fn = make_target(config.target, basis=basis, patch_size=model.config.patch_size,
                            image_shape=tuple(images.shape[1:]), device=dev, method=config.pca_method)
    pc_masking = make_pc_masking(spec, basis, device=dev) if spec.masks_components else None
    if dist.is_main:
        open_run_folder(run_dir, config, str(dev), seed=config.seed, precision=precision, attention=attention,
                        world_size=dist.world_size,
                        pca_basis=basis_provenance(basis) if basis is not None else None)
    recon_x = load_dataset(config.dataset, "test").to_tensor(dev)[:8].float() / 255

    data = DeviceData(images, torch.as_tensor(train.labels), config.batch_size, dist=dist, device=dev)
    peak = scaled_lr(config.base_lr, config.batch_size)
    optimizer = build_optimizer(model, kind="adamw", lr=peak, weight_decay=config.weight_decay,
                                betas=config.betas, device=dev)
    net: nn.Module = model
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dist.local_rank] if dev.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def loss_fn(m, x_u8, labels, gen):
        x01 = augment(x_u8, config.augment, gen)
        if pc_masking is not None:
            with torch.autocast(dev.type, enabled=False):
                idx, _ = pc_masking.draw(gen)
                x_in, coords = pc_masking.split(x01, idx)
            _, pred, _ = m(normalize(x_in), None, generator=gen)  # config.mask_ratio: 0 in PMAE's setting
            with torch.autocast(dev.type, enabled=False):
                return pc_masking.loss(denormalize(unwrap(m).unpatchify(pred.float())), coords, idx)
        with torch.autocast(dev.type, enabled=False):  # PCA filtering stays in float32 under bf16
            target = target_fn(x01)
        loss, _, _ = m(normalize(x01), target, generator=gen)
        return loss

    hooks = list(epoch_hooks or ())
    if config.probe_every:
        probe = validation_probe(images, train.labels, seed=config.seed, device=dev, precision=precision)
        hooks.append(lambda m, epoch: {"probe_val": probe(m.encoder)}
                     if epoch % config.probe_every == 0 or epoch == config.epochs else {})
        first = run_dir / "probe-epoch0.json"
        if dist.is_main and latest_checkpoint(run_dir) is None and not first.is_file():
            atomic_write_json(first, {"epoch": 0, "probe_val": probe(unwrap(model).encoder)})

    others = OtherLoad()

    def on_epoch_end(epoch: int, metrics: dict) -> dict:
        extra = {}
        busy = others()
        if busy is not None:  # cores other processes kept busy during the epoch
            extra["other_cores"] = round(busy, 3)
        for hook in hooks:
            extra.update(hook(unwrap(model), epoch) or {})
        every = config.recon_every or config.epochs
        if dist.is_main and (epoch == 1 or epoch % every == 0 or epoch == config.epochs):
            rec = reconstruct(model, recon_x, target_fn, seed=config.seed, pc_masking=pc_masking)
            (run_dir / "recon").mkdir(exist_ok=True)
            tmp = run_dir / "recon" / f".epoch-{epoch:04d}.tmp"
            save_file({k: v.to(torch.float16).cpu().contiguous() for k, v in rec.items()}, str(tmp))
            os.replace(tmp, run_dir / "recon" / f"epoch-{epoch:04d}.safetensors")
            extra["recon_loss"] = float(rec["loss"])
        return extra

    loop = LoopConfig(epochs=config.epochs, peak_lr=peak, warmup_epochs=config.warmup_epochs, seed=config.seed,
                      accum_steps=config.accum_steps, precision=precision)
    start = time.perf_counter()
    metrics = train_loop(run_dir, net, optimizer, data, loss_fn, loop, dev, dist=dist,
                         on_epoch_end=on_epoch_end, progress=progress, stop_after=stop_after)
    if dist.is_main and len(metrics) >= config.epochs:
        atomic_write_json(run_dir / "summary.json", {
            "run_name": config.run_name, "final_loss": metrics[-1]["loss"], "epochs": len(metrics),
            "train_seconds": sum(m["seconds"] for m in metrics),
            "images_per_s": sum(m["images_per_s"] for m in metrics) / len(metrics),
            "wall_seconds_this_call": time.perf_counter() - start, "precision": precision, "attention": attention,
            "parameters": sum(p.numel() for p in model.parameters()),
            "probe_curve": probe_curve(run_dir),
            "other_cores_max": max((m["other_cores"] for m in metrics if "other_cores" in m), default=None),
        })
        if run_dir != final_dir:
            replace_run(run_dir, final_dir)
            run_dir = final_dir
    return PretrainRun(run_dir, config, model, metrics, trained_now=True)


# Images of the calibration probe: a seeded subset of the training part of the evaluation's
# validation split (10% of the training split, as lowvar_mae.evaluate cuts it), and all of
# its validation part. The test split is never looked at during pretraining.
PROBE_TRAIN_IMAGES = 10_000


def validation_probe(images: torch.Tensor, labels, *, seed: int, device: torch.device, precision: str,
                     n_train: int = PROBE_TRAIN_IMAGES, val_fraction: float = 0.1) -> Callable:
    """``probe(encoder) -> {pooling: validation accuracy}``: softmax regression (L-BFGS, to
    convergence) on each pooling of the frozen encoder's features (lowvar_mae.models.POOLINGS),
    fitted on up to ``n_train`` images of the training part and scored on the validation part.

    images: the pretraining images, uint8 (N, C, H, W); labels: their (N,) labels. Runs no
    random draw of torch's, so probing does not change what pretraining learns.
    """
    import numpy as np

    from .analysis import LinearConfig, linear_accuracy
    from .evaluate import extract_pooled, validation_split

    labels = np.asarray(labels)
    train_idx, val_idx = validation_split(labels, val_fraction, seed)
    if len(train_idx) > n_train:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, size=n_train, replace=False))
    parts = {name: (images[torch.as_tensor(idx, device=images.device)], torch.as_tensor(labels[idx]))
             for name, idx in (("train", train_idx), ("val", val_idx))}
    num_classes = int(labels.max()) + 1

    def probe(encoder) -> dict[str, float]:
        feats = {name: extract_pooled(encoder, x, batch_size=512, device=device, precision=precision)
                 for name, (x, _) in parts.items()}
        return {p: linear_accuracy(feats["train"][p], parts["train"][1], feats["val"][p], parts["val"][1],
                                   num_classes, LinearConfig(weight_decay=1e-4, max_iter=200))["test_accuracy"]
                for p in feats["train"]}

    return probe


def probe_curve(run_dir: str | Path) -> list[dict]:
    """The calibration probe's validation accuracies by epoch (0: the initial weights)."""
    run_dir = Path(run_dir)
    first = run_dir / "probe-epoch0.json"
    curve = [json.loads(first.read_text())] if first.is_file() else []
    return curve + [{"epoch": m["epoch"], "probe_val": m["probe_val"]} for m in read_metrics(run_dir)
                    if "probe_val" in m]


def load_run(run_dir: str | Path, device: str = "cpu") -> PretrainRun:
    """A finished (or partly trained) run folder: config, metrics, and the model at its last checkpoint."""
    run_dir = Path(run_dir)
    raw = json.loads((run_dir / "config.json").read_text())
    raw.pop("run_name", None)
    config = PretrainConfig.from_dict(raw)
    model = build_mae(config.model, mask_ratio=config.mask_ratio).to(device)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint yet")
    load_weights(model, ckpt)
    return PretrainRun(run_dir, config, model, read_metrics(run_dir), trained_now=False)
