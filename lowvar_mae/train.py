"""The training loop shared by pretraining and fine-tuning, and its parts.

* data held as a uint8 tensor on the device, shuffled and augmented in batches there;
* AdamW (or SGD) with weight decay on weights only, per-step warm-up + cosine schedule;
* gradient accumulation, bf16 autocast where the hardware has it, optional torch.compile;
* DistributedDataParallel under torchrun (the same code path with world size 1);
* one JSON line of metrics per epoch, an atomic checkpoint per epoch, exact resume.

Every random choice of an epoch (order, augmentation, masks, dropout) is seeded from
``(seed, epoch, rank)``, so a resumed run repeats exactly what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (CheckpointError, check_finite, latest_checkpoint, load_checkpoint, run_lock,
                         save_checkpoint, unwrap)
from .hardware import cpu_has_fast_bf16
from .provenance import atomic_write_bytes, dumps_json

PRECISIONS = ("auto", "fp32", "bf16")
ATTENTIONS = ("auto", "sdpa", "math")  # lowvar_mae.models.set_attention's kernels, or the device's choice
AUGMENTATIONS = ("none", "flip", "crop-flip")
# Parameters that never get weight decay besides biases and norms (as in MAE).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ---------------------------------------------------------------- schedule and optimiser


def lr_at(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate at optimiser step ``step``: linear warm-up from 0, then cosine to ``min_lr``."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule: lr = base_lr * batch / 256."""
    return base_lr * batch_size / 256


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (decayed) and biases, norms, tokens, position embeddings (not decayed)."""
    decay, no_decay = [], []
    for name, p in unwrap(model).named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(n in name.split(".")[-1] for n in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, kind: str = "adamw", lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                    nesterov: bool = False, device: torch.device | str = "cpu") -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, weight decay on weights only.

    AdamW is the fused kernel on CPU and CUDA (one pass over all parameters, no
    per-parameter Python loop or host reads of the step count; 2.7x faster than the
    default on a 2-core CPU for ViT-Tiny), the default implementation elsewhere.
    """
    groups = param_groups(model, weight_decay)
    if kind == "adamw":
        fused = torch.device(device).type in ("cpu", "cuda")
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {kind!r}")


# ---------------------------------------------------------------- precision and devices


def resolve_device(device: str | None) -> torch.device:
    """'auto' or None: CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:<index>")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but this machine has no usable CUDA GPU "
                             "(torch.cuda.is_available() is False); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) here")
    return dev


def resolve_precision(device: torch.device, precision: str) -> str:
    """'auto' -> bf16 on CUDA and on CPUs with native bf16, fp32 otherwise (bf16 is ~20x slower on AVX2)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_attention(device: torch.device, precision: str, attention: str = "auto") -> str:
    """The attention kernel for a resolved ``precision`` ("fp32" or "bf16") on ``device``.

    'auto' -> "math" (written out, ``models.set_attention``) on CPU under bf16, "sdpa"
    elsewhere. On CPU the fused flash-attention kernel is as fast or faster in fp32, but
    in bf16 it is the slower one by far: there the written-out form runs its two
    products as bf16 matmuls, and a ViT-Tiny MAE step on a 2-core AVX512-BF16 CPU runs
    1.5 to 1.7 times faster (``bench/pretrain_throughput.py`` times both kernels in both
    precisions). On CUDA the fused kernel is the faster one.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be resolved to 'fp32' or 'bf16' first, got {precision!r}")
    if attention != "auto":
        return attention
    return "math" if device.type == "cpu" and precision == "bf16" else "sdpa"


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class Distributed:
    """Where this process stands under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group when started by torchrun; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    info = Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A seed for everything random in one epoch of one process."""
    return (seed * 1_000_003 + epoch * 7_919 + rank * 104_729) % (2**62)


# ---------------------------------------------------------------- data on the device


class DeviceData:
    """A labelled image set held as uint8 (N, C, H, W) (or cached features (N, D)), best on the training device.

    ``epoch(e, seed)`` yields (images uint8 (B, C, H, W), labels (B,)) batches on ``device``
    in an order seeded from (seed, e); under torchrun each rank takes every world_size-th
    item of each batch. When the set does not fit on the device (see ``fits_on``), keep it
    in pinned CPU memory and pass ``device``: each batch is then copied asynchronously.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, *, drop_last: bool = True,
                 dist: Distributed = Distributed(), device: torch.device | str | None = None):
        if not ((images.dtype == torch.uint8 and images.ndim == 4) or (images.is_floating_point() and images.ndim == 2)):
            raise ValueError("images must be uint8 (N, C, H, W) or cached float features (N, D), "
                             f"got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size % dist.world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {dist.world_size}")
        self.device = torch.device(device) if device is not None else images.device
        if self.device != images.device and self.device.type == "cuda" and not images.is_pinned():
            images = images.pin_memory()
        self.images, self.labels = images, labels.to(images.device)
        self.batch_size, self.drop_last, self.dist = batch_size, drop_last, dist
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(images)} images give no full batch of {batch_size}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def steps_per_epoch(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator(device="cpu").manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(len(self.images), generator=g).to(self.images.device)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size:(step + 1) * self.batch_size]
            idx = idx[self.dist.rank::self.dist.world_size]
            yield (self.images[idx].to(self.device, non_blocking=True),
                   self.labels[idx].to(self.device, non_blocking=True))


def fits_on(device: torch.device, n_bytes: int, share: float = 0.5) -> bool:
    """Whether ``n_bytes`` take at most ``share`` of the device's free memory (always true on CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return n_bytes <= share * free


def augment(images: Tensor, kind: str, generator: torch.Generator | None = None,
            scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Tensor:
    """Batched augmentation on the images' device; returns float (N, C, H, W) in [0, 1].

    "none": as they are; "flip": random horizontal flips; "crop-flip": random resized
    crops (area share in ``scale``, aspect ratio in ``ratio``, bilinear, as in MAE)
    and flips. Each image gets its own draw; no Python loop over samples.
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {kind!r}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if kind == "none":
        return x
    n, device = len(x), x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=generator.device if generator else "cpu").to(device)

    flip = rand(n) < 0.5
    if kind == "flip":
        return torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    area = scale[0] + (scale[1] - scale[0]) * rand(n)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * rand(n)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)   # crop width as a share of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (rand(n) * 2 - 1) * (1 - w)               # crop centre in [-1, 1] coordinates
    cy = (rand(n) * 2 - 1) * (1 - h)
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(x01: Tensor) -> Tensor:
    """[0, 1] -> the model's input scale (mean 0.5, std 0.5 per channel, i.e. [-1, 1])."""
    return (x01 - 0.5) / 0.5


def denormalize(x: Tensor) -> Tensor:
    return x * 0.5 + 0.5


# ---------------------------------------------------------------- the loop


LossFn = Callable[[nn.Module, Tensor, Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class LoopConfig:
    """What the loop needs to know; the task-specific parts come in as functions."""

    epochs: int
    peak_lr: float
    warmup_epochs: float
    seed: int
    accum_steps: int = 1
    min_lr: float = 0.0
    precision: str = "fp32"
    checkpoint_every: int = 1
    check_every: int = 50  # steps between host syncs that look for a non-finite loss


def run_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: DeviceData, loss_fn: LossFn,
              epoch: int, cfg: LoopConfig, device: torch.device, dist: Distributed = Distributed(),
              last_good: str = "none") -> dict:
    """Train one epoch; returns its metrics. Raises NonFiniteLossError naming the step."""
    model.train()
    steps = data.steps_per_epoch
    total = cfg.epochs * steps
    warmup = round(cfg.warmup_epochs * steps)
    seed = epoch_seed(cfg.seed, epoch, dist.rank)
    torch.manual_seed(seed)  # dropout and drop-path
    gen = torch.Generator(device=device).manual_seed(seed)  # masks and augmentation
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    start = time.perf_counter()
    batches = data.epoch(epoch, cfg.seed)
    n_images = 0
    for i, (images, labels) in enumerate(batches):
        step = epoch * steps + i
        lr = lr_at(step, peak_lr=cfg.peak_lr, warmup_steps=warmup, total_steps=total, min_lr=cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = zip(images.chunk(cfg.accum_steps), labels.chunk(cfg.accum_steps))
        for j, (x, y) in enumerate(micro):
            sync = contextlib.nullcontext()
            if dist.world_size > 1 and j < cfg.accum_steps - 1:
                sync = model.no_sync()
            with sync:
                with autocast(device, cfg.precision):
                    loss = loss_fn(model, x, y, gen)
                (loss / cfg.accum_steps).backward()
            loss_sum += loss.detach().double() * len(x)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n_images += len(images)
        if (i + 1) % cfg.check_every == 0 or i + 1 == steps:
            if not torch.isfinite(loss_sum):
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, by step {step + 1} (checked every "
                    f"{cfg.check_every} steps); last good checkpoint: {last_good}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    stats = torch.stack([loss_sum, torch.tensor(float(n_images), device=device, dtype=torch.float64)])
    if dist.world_size > 1:
        import torch.distributed as tdist

        tdist.all_reduce(stats)
    return {"epoch": epoch + 1, "loss": float(stats[0] / stats[1]), "lr": lr, "steps": steps,
            "images_per_s": float(stats[1]) / seconds, "seconds": seconds}


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The run's metrics.jsonl as a list of dicts (one per finished epoch).

    A torn last line (a kill while it was appended) is dropped with a warning; a damaged
    line before the last one raises ValueError naming the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                import warnings

                warnings.warn(f"{path}: dropped a torn last line (the run was stopped while writing it)")
                break
            raise ValueError(f"{path}, line {i + 1} is not valid JSON; the metrics file is damaged "
                             "(delete the run folder to train again)") from None
    return out


def append_metrics(run_dir: Path, metrics: dict) -> None:
    """Append one line to metrics.jsonl and flush it to disk."""
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(dumps_json(metrics) + "\n")
        f.flush()
        os.fsync(f.fileno())


def progress_bar(**kwargs):
    """A tqdm bar: the notebook widget where ipywidgets is installed (JupyterLab via the
    ``lab`` extra), the text bar otherwise, so a notebook run headlessly without ipywidgets
    does not warn "IProgress not found" on every run."""
    try:
        import ipywidgets  # noqa: F401
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm(**kwargs)


def train_loop(run_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, data: DeviceData,
               loss_fn: LossFn, cfg: LoopConfig, device: torch.device, *, dist: Distributed = Distributed(),
               on_epoch_end: Callable[[int, dict], dict | None] | None = None,
               progress: bool = True, stop_after: int | None = None) -> list[dict]:
    """Train from the last checkpoint in ``run_dir`` (or from scratch) to ``cfg.epochs``.

    Per epoch: run_epoch -> on_epoch_end(epoch, metrics) may add metrics -> one line
    in metrics.jsonl -> checkpoint (rank 0 only). ``stop_after`` ends the call after
    that many epochs (to test and demonstrate resuming).
    """
    run_dir = Path(run_dir)
    lock = run_lock(run_dir) if dist.is_main else contextlib.nullcontext()
    with lock:
        return _train_loop(run_dir, model, optimizer, data, loss_fn, cfg, device, dist, on_epoch_end,
                           progress, stop_after)


def _train_loop(run_dir, model, optimizer, data, loss_fn, cfg, device, dist, on_epoch_end, progress, stop_after):
    start_epoch, last_good = 0, "none"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None:
        start_epoch = load_checkpoint(ckpt, model, optimizer)["epoch"]
        last_good = str(ckpt)
    # metrics.jsonl may hold lines of epochs after the checkpoint (or, before the first
    # checkpoint, of an epoch whose weights were lost): keep only what the weights reflect.
    history = read_metrics(run_dir)
    kept = [m for m in history if m["epoch"] <= start_epoch]
    if len({m["epoch"] for m in kept}) < start_epoch:  # lines are written before their checkpoint
        raise CheckpointError(
            f"{run_dir}: the checkpoint has trained {start_epoch} epochs but metrics.jsonl holds "
            f"{len(kept)} of their lines: the file was deleted or cut. Restore it, or train the run again "
            "(--force)")
    if dist.is_main and (run_dir / "metrics.jsonl").is_file():  # also drops a torn last line
        atomic_write_bytes(run_dir / "metrics.jsonl", "".join(dumps_json(m) + "\n" for m in kept).encode())
    history = kept
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    epochs = range(start_epoch, end)
    bar = None
    if progress and dist.is_main:
        bar = progress_bar(total=cfg.epochs, initial=start_epoch, desc="epochs")
    for epoch in epochs:
        metrics = run_epoch(model, optimizer, data, loss_fn, epoch, cfg, device, dist, last_good)
        check_finite(model, f"after epoch {epoch + 1} (last good checkpoint: {last_good})")
        if on_epoch_end is not None:
            metrics.update(on_epoch_end(epoch + 1, metrics) or {})
        if dist.is_main:
            append_metrics(run_dir, metrics)
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                last_good = str(save_checkpoint(run_dir, epoch + 1, model, optimizer,
                                                {"step": (epoch + 1) * data.steps_per_epoch}))
        history.append(metrics)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
    if bar is not None:
        bar.close()
    return history
