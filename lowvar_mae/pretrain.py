"""MAE pretraining runs: a run folder named from its config, and the loop that fills it.

The config and the recipes are ``lowvar_mae.recipes`` (:class:`PretrainConfig`,
``make_config``). A run folder holds ``config.json``, ``provenance.json`` (versions, git
revision, device, seed, and every later start of a resumed run), ``metrics.jsonl`` (one
line per epoch: loss, the cores other processes kept busy, the calibration probe of
``lowvar_mae.probes.validation_probe`` every ``probe_every`` epochs), the latest checkpoint
(safetensors), ``recon/epoch-NNNN.safetensors`` (reconstructions of a fixed test batch)
and, when the run is finished, ``summary.json``. Running a finished config again loads it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .checkpoint import (NonFiniteWeightsError, command_lock, latest_checkpoint, load_weights, open_run_folder,
                         recover_replacement, refuse_link, replace_run, staging_dir, unwrap)
from .data import load_dataset
from .models import MAE, build_mae, set_attention
from .probes import validation_probe
from .provenance import OtherLoad, atomic_write_json, read_json, runs_dir
from .recipes import PretrainConfig, read_run_config
from .results import pack_array
from .targets import PCMasking, basis_provenance, dataset_basis, make_pc_masking, make_target, parse_target
from .train import (DeviceData, LoopConfig, augment, build_optimizer, denormalize, fits_on, init_distributed, normalize,
                    read_metrics, resolve_attention, resolve_device, resolve_precision, scaled_lr, train_loop)


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
    pred_img = model.unpatchify(pred.float())
    if hasattr(target_fn, "to_image"):  # a target normalised per patch: shown and measured on the image's scale
        target, pred_img = target_fn.image(x01), target_fn.to_image(pred_img, x01)
    return {"input": x01, "target": denormalize(target), "prediction": denormalize(pred_img),
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
    with command_lock(runs_dir(root) / config.run_name):
        return _pretrain(config, root=root, device=device, force=force, progress=progress, stop_after=stop_after,
                         epoch_hooks=epoch_hooks)


def _pretrain(config: PretrainConfig, *, root: str | os.PathLike | None = None, device: str | None = "auto",
              force: bool = False, progress: bool = True, stop_after: int | None = None,
              epoch_hooks: list[Callable] | None = None) -> PretrainRun:
    dev = resolve_device(device)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    final_dir = run_dir = runs_dir(root) / config.run_name
    if dist.is_main:
        recover_replacement(final_dir)  # a replacement killed between its renames
    torch.manual_seed(config.seed)  # the initial weights
    model = build_mae(config.model, mask_ratio=config.mask_ratio).to(dev)
    if not force and is_finished(run_dir, config):
        load_weights(model, latest_checkpoint(run_dir))
        return PretrainRun(run_dir, config, model, read_metrics(run_dir), trained_now=False)
    if force:
        refuse_link(final_dir)
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
                              root=root, device=dev, standardized=config.pc_basis == "standardized")
    target_fn = make_target(config.target, basis=basis, patch_size=model.config.patch_size,
                            image_shape=tuple(images.shape[1:]), device=dev, method=config.pca_method)
    pc_masking = make_pc_masking(spec, basis, device=dev, count=config.pc_count) if spec.masks_components else None
    if len(train) < config.batch_size:
        raise ValueError(f"{len(train)} training images are fewer than one batch of {config.batch_size}: lower "
                         "batch_size or raise n_train")
    if tuple(images.shape[-2:]) != (model.config.img_size, model.config.img_size):
        raise ValueError(f"model {config.model!r} takes {model.config.img_size}x{model.config.img_size} images, "
                         f"{config.dataset} has {images.shape[-2]}x{images.shape[-1]}: choose a model preset for it")
    recon_x = load_dataset(config.dataset, "test").to_tensor(dev)[:8].float() / 255
    if dist.is_main:
        open_run_folder(run_dir, config, str(dev), seed=config.seed, precision=precision, attention=attention,
                        world_size=dist.world_size,
                        pca_basis=basis_provenance(basis) if basis is not None else None)

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
            if not bool(torch.isfinite(rec["prediction"]).all()):
                raise NonFiniteWeightsError(f"the reconstructions of epoch {epoch} are not finite: the run "
                                            "diverged (try a lower learning rate, or fp32); its record is not written")
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


def probe_curve(run_dir: str | Path) -> list[dict]:
    """The calibration probe's validation accuracies by epoch (0: the initial weights)."""
    run_dir = Path(run_dir)
    first = run_dir / "probe-epoch0.json"
    curve = [read_json(first, "delete it: the curve then starts at the first probed epoch")] if first.is_file() else []
    return curve + [{"epoch": m["epoch"], "probe_val": m["probe_val"]} for m in read_metrics(run_dir)
                    if "probe_val" in m]


def load_run(run_dir: str | Path, device: str = "cpu") -> PretrainRun:
    """A finished (or partly trained) run folder: config, metrics, and the model at its last checkpoint."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = build_mae(config.model, mask_ratio=config.mask_ratio).to(device)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"run {run_dir} has no checkpoint yet")
    load_weights(model, ckpt)
    return PretrainRun(run_dir, config, model, read_metrics(run_dir), trained_now=False)


def pretrain_provenance(run_dir: Path, summary: dict) -> dict:
    """What made a pretrained encoder, from its run folder: the code (git revision, and that
    of every resumed start), the machine (and every machine a start ran on), threads,
    precision and wall time."""
    path = run_dir / "provenance.json"
    prov = read_json(path, "the pretraining run folder is damaged") if path.is_file() else {}
    machines = dict.fromkeys(p.get("device_name") for p in [prov, *prov.get("resumes", [])] if p.get("device_name"))
    return {"git_revision": prov.get("git_revision"), "device_name": prov.get("device_name"),
            "machines": list(machines),
            "threads": prov.get("threads"), "host": prov.get("host"), "time_utc": prov.get("time_utc"),
            "precision": summary.get("precision", prov.get("precision")), "train_seconds": summary.get("train_seconds"),
            "images_per_s": summary.get("images_per_s"), "other_cores_max": summary.get("other_cores_max"),
            "resumes": [r.get("git_revision") for r in prov.get("resumes", [])]}


PRETRAINING_KIND = "pretraining"
RECORD_IMAGES = 4  # reconstructions a pretraining record keeps (of the run's fixed batch of 8)


def pretraining_fields(run_dir: str | Path, n_images: int = RECORD_IMAGES) -> dict:
    """What a pretraining record holds, read from a finished run folder: its name and config,
    the loss curve (loss, seconds and images/s of every epoch), what made it, and the
    reconstructions of the first ``n_images`` images of its fixed test batch at its first and
    last saved epoch (input and mask as uint8, target and predictions as float16: a faint
    target needs more than 8 bits to be shown stretched) with the masked-patch relative error
    of the whole batch at each."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    metrics = read_metrics(run_dir)
    summary_path = run_dir / "summary.json"
    if len(metrics) < config.epochs or not summary_path.is_file():
        raise ValueError(f"run {run_dir} is not finished ({len(metrics)} of {config.epochs} epochs): a pretraining "
                         "record is written for finished runs only")
    summary = read_json(summary_path, "the run folder is damaged")
    curve = [{k: m[k] for k in ("epoch", "loss", "seconds", "images_per_s", "lr") if k in m} for m in metrics]
    fields = {"dataset": config.dataset, "target": config.target, "recipe": config.recipe, "seed": config.seed,
              "model": config.model, "pretrain_epochs": config.epochs, "run_name": run_dir.name,
              "config": asdict(config), "curve": curve,
              "pretrain_seconds": sum(float(m.get("seconds", 0.0)) for m in metrics),
              "pretrain_provenance": pretrain_provenance(run_dir, summary)}
    recons = load_reconstructions(run_dir)
    if recons:
        first, last = min(recons), max(recons)
        shown = recons[last]
        fields["reconstructions"] = {
            "epochs": [first, last],
            "input": pack_array((shown["input"][:n_images] * 255).round().clamp(0, 255).to(torch.uint8).numpy()),
            "mask": pack_array(shown["mask"][:n_images].round().to(torch.uint8).numpy()),
            "target": pack_array(shown["target"][:n_images].half().numpy()),
            "prediction": {str(e): pack_array(recons[e]["prediction"][:n_images].half().numpy()) for e in (first, last)},
            "relative_error": {str(e): masked_relative_error(recons[e]) for e in (first, last)},
        }
    return fields


def recorded_reconstructions(record: dict) -> dict[int, dict[str, torch.Tensor]]:
    """The reconstructions of a pretraining record by epoch, as :func:`load_reconstructions`
    gives them from a run folder (images in [0, 1])."""
    from .results import unpack_array

    rec = record.get("reconstructions")
    if not isinstance(rec, dict):
        return {}
    x = torch.from_numpy(unpack_array(rec["input"])).float() / 255
    mask = torch.from_numpy(unpack_array(rec["mask"])).float()
    target = torch.from_numpy(unpack_array(rec["target"])).float()
    return {int(e): {"input": x, "mask": mask, "target": target,
                     "prediction": torch.from_numpy(unpack_array(p)).float()} for e, p in rec["prediction"].items()}
