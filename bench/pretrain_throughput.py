"""Throughput of the MAE pretraining step: a straightforward baseline against the project's fast path.

Both paths train the same MAE (same initial weights, batch and target ``pca-bottom:0.25``
from the same PCA basis) and are timed side by side, their steps interleaved:

* ``baseline`` (``bench/baseline.py``): DataLoader over PIL images with torchvision
  transforms, the PCA target projected per sample with numpy in ``__getitem__``, fp32,
  eager, attention written out (the attention matrix materialised), plain AdamW
  (``foreach=False``), ``loss.item()`` every step;
* ``fast``: the package's pieces composed as ``lowvar_mae.pretrain`` does: uint8 images
  on the device in ``DeviceData`` (pinned CPU memory if they do not fit), batched
  ``augment`` -> ``targets.make_target`` (the basis on the device, float32 outside
  autocast) -> model, under ``train.autocast`` with ``resolve_precision`` ("auto": bf16 on
  CUDA and on CPUs with native bf16, fp32 otherwise), the attention kernel of
  ``resolve_attention`` (``scaled_dot_product_attention``, or written out on CPU under
  bf16), ``torch.compile`` on CUDA, ``train.build_optimizer`` (fused AdamW on CPU and CUDA);
* ``fast-loop`` (some presets): ``train.run_epoch`` itself on the same data, as a check
  that the step above is what the real loop does.

Per (preset, batch) it reports images/s and the median step time after warm-up, the
ratio to the baseline, model FLOPs per step (``FlopCounterMode`` on forward + backward)
and the model FLOPs utilisation (achieved FLOP/s over the device's peak: a matmul
microbenchmark, or a datasheet number for known GPUs). It also times fp32 against bf16
autocast, each with both attention kernels, for one preset and batch, profiles the fast
path once, and estimates the wall time of the ``paper`` recipe (400 epochs of 50,000
CIFAR-10 images) from the fast path's vit-tiny-cifar throughput.

    python bench/pretrain_throughput.py --quick          # < 4 minutes on a quiet 2-core CPU
    python bench/pretrain_throughput.py                  # batches 32, 64, 128, more repeats
    python bench/pretrain_throughput.py --device cuda    # on a GPU (compile and bf16 by default)

The record goes to ``results/bench/pretrain_throughput-<device>-<time>.json``
(``--out`` to change it); ``notebooks/07_performance.py`` reads it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils import flop_counter

from lowvar_mae import pca
from lowvar_mae.data import load_dataset, make_synthetic
from lowvar_mae.models import build_mae, get_config, set_attention
from lowvar_mae.recipes import PRETRAIN_RECIPES as RECIPES
from lowvar_mae.results import write_bench_record
from lowvar_mae.targets import make_target, parse_target
from lowvar_mae.train import (ATTENTIONS, DeviceData, LoopConfig, augment, autocast, build_optimizer, cpu_has_fast_bf16,
                              fits_on, normalize, resolve_attention, resolve_precision, run_epoch, scaled_lr)


def _load_sibling(name: str):
    """bench/ is not a package: load bench/<name>.py by path."""
    path = Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


baseline = _load_sibling("baseline")

KIND = "pretrain_throughput"
SCHEMA = 1
PRESETS = ("vit-tiny-cifar", "vit-tiny-stl", "small-cifar")
TARGET = "pca-bottom:0.25"
PAPER = RECIPES["paper"]            # epochs, batch_size, base_lr, weight_decay, betas
PAPER_IMAGES = 50_000               # CIFAR-10 training split
# Dense bf16 tensor-core peaks from the vendors' datasheets, FLOP/s; matched in order
# against torch.cuda.get_device_name (all words must occur).
KNOWN_BF16_PEAKS = (
    (("H100", "PCIe"), 756e12),
    (("H100",), 989e12),            # SXM5
    (("H200",), 989e12),
    (("A100",), 312e12),
)


def _as_raw(formula: Callable) -> Callable:
    """A registered (already shape-wrapped) FLOP formula, marked so FlopCounterMode takes it as is."""
    def counted(*args, **kwargs):
        return formula(*args, **kwargs)
    counted._get_raw = True
    return counted


# CPU flash attention is missing from FlopCounterMode's table (torch 2.x); it does the
# FLOPs of the CUDA flash kernel, whose formulas are reused.
_aten = torch.ops.aten
SDPA_CPU_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        _as_raw(flop_counter.flop_registry[_aten._scaled_dot_product_flash_attention]),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        _as_raw(flop_counter.flop_registry[_aten._scaled_dot_product_flash_attention_backward]),
}


# ---------------------------------------------------------------- data and basis


def synthetic_images(n: int, img_size: int, seed: int = 0) -> np.ndarray:
    """(n, S, S, 3) uint8: lowvar_mae's synthetic training split at 32x32, its generator otherwise."""
    if img_size == 32:
        return load_dataset("synthetic", "train", n=n).images
    return make_synthetic(n, seed, img_size)[0]


def fit_basis(images: np.ndarray, device: torch.device) -> pca.PCABasis:
    """The package's fit_pca on (N, H, W, C) uint8 images (Gram path when N < D)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    return pca.fit_pca(x, dataset="synthetic", split="train")


# ---------------------------------------------------------------- the fast path, composed


def device_batches(data: DeviceData, seed: int) -> Iterator[Tensor]:
    """Endless uint8 batches from DeviceData, epoch after epoch."""
    epoch = 0
    while True:
        for images, _ in data.epoch(epoch, seed):
            yield images
        epoch += 1


def fast_loss(model: nn.Module, images_u8: Tensor, target_fn: Callable[[Tensor], Tensor],
              gen: torch.Generator | None, augmentation: str = "none") -> Tensor:
    """pretrain's loss_fn: augment on the device -> target (float32, outside autocast) -> MAE loss."""
    with record_function("fast/augment+target"):
        x01 = augment(images_u8, augmentation, gen)
        with torch.autocast(images_u8.device.type, enabled=False):
            target = target_fn(x01)
    with record_function("fast/forward"):
        loss, _, _ = model(normalize(x01), target, generator=gen)
    return loss


def fast_step(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterator[Tensor],
              target_fn: Callable, gen: torch.Generator, device: torch.device, precision: str) -> Tensor:
    """One step as run_epoch takes it (accum_steps 1); returns the detached loss, no host sync."""
    with record_function("fast/data"):
        images = next(batches)
    with autocast(device, precision):
        loss = fast_loss(model, images, target_fn, gen)
    with record_function("fast/backward"):
        loss.backward()
    with record_function("fast/optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class FastPath:
    """The fast path's state for one preset and batch size."""

    def __init__(self, model: nn.Module, images_nchw: Tensor, basis: pca.PCABasis, batch_size: int,
                 device: torch.device, precision: str, compile: bool, seed: int = 0, attention: str = "auto"):
        self.attention = resolve_attention(device, precision, attention)
        self.model = set_attention(model, self.attention).to(device)
        cfg = model.config
        self.device, self.precision = device, precision
        if fits_on(device, images_nchw.numel()):  # as pretrain does: on the device, else pinned CPU memory
            images_nchw = images_nchw.to(device)
        self.data = DeviceData(images_nchw, torch.zeros(len(images_nchw), dtype=torch.long), batch_size, device=device)
        self.optimizer = build_optimizer(self.model, kind="adamw", lr=scaled_lr(PAPER["base_lr"], batch_size),
                                         weight_decay=PAPER["weight_decay"], betas=PAPER["betas"], device=device)
        self.target_fn = make_target(TARGET, basis=basis, patch_size=cfg.patch_size,
                                     image_shape=tuple(images_nchw.shape[1:]), device=device)
        self.net = torch.compile(self.model) if compile else self.model
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.batches = device_batches(self.data, seed)
        self.last_loss: Tensor | None = None

    def step(self) -> None:
        self.last_loss = fast_step(self.net, self.optimizer, self.batches, self.target_fn, self.gen,
                                   self.device, self.precision)


class BaselinePath:
    """The baseline's state for one preset and batch size."""

    def __init__(self, model: nn.Module, images_nhwc: np.ndarray, basis: pca.PCABasis, batch_size: int,
                 device: torch.device, workers: int, seed: int = 0):
        self.model = set_attention(model, "math").to(device)
        self.device = device
        dataset = baseline.PILPCADataset(images_nhwc, basis, parse_target(TARGET).share)
        self.loader = baseline.make_loader(dataset, batch_size, workers=workers, pin_memory=device.type == "cuda",
                                           seed=seed)
        self.batches = baseline.batches(self.loader)
        self.optimizer = baseline.build_optimizer(self.model, lr=scaled_lr(PAPER["base_lr"], batch_size),
                                                  weight_decay=PAPER["weight_decay"], betas=PAPER["betas"])
        self.last_loss: float | None = None

    def step(self) -> None:
        self.last_loss = baseline.train_step(self.model, self.optimizer, next(self.batches), self.device)


# ---------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                repeats: int) -> dict[str, list[float]]:
    """Warm each path up, then time them in alternating order (ABBA...) so drift hits both."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(time_call(steps[name], device))
    return times


def model_flops_per_image(preset: str) -> float:
    """Forward + backward FLOPs of the MAE loss per image (counted on CPU, batch 2, fp32)."""
    torch.manual_seed(0)
    model = build_mae(preset)
    cfg = model.config
    x = torch.rand(2, cfg.in_chans, cfg.img_size, cfg.img_size)
    with flop_counter.FlopCounterMode(display=False, custom_mapping=SDPA_CPU_FLOPS) as counter:
        loss, _, _ = model(x, x)
        loss.backward()
    return counter.get_total_flops() / 2


def known_peak(device_name: str) -> float | None:
    for words, flops in KNOWN_BF16_PEAKS:
        if all(w in device_name for w in words):
            return flops
    return None


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matmul on the device (a practical peak, not the datasheet's).

    Best of ``repeats``: on a shared or frequency-scaling CPU single runs vary by 1.5x,
    and a low "peak" would make utilisation look better than it is.
    """
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(time_call(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n ** 3 / best


def peaks(device: torch.device, precisions: set[str]) -> dict[str, dict]:
    out = {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    for p in sorted(precisions):
        dtype = torch.bfloat16 if p == "bf16" else torch.float32
        slow = device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_fast_bf16()
        # emulated bf16: about a second per 1024 x 1024 matmul, so fewer and smaller
        n, repeats = (1024, 2) if slow else (None, 10)
        measured = matmul_peak(device, dtype, n=n, repeats=repeats)
        entry = {"measured_flops": measured, "flops": measured,
                 "source": f"matmul microbenchmark (best of {repeats})"}
        table = known_peak(name) if p == "bf16" else None
        if table:
            entry.update(flops=table, source=f"datasheet dense bf16 for {name}")
        out[p] = entry
    return out


def summarize(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {"ms_per_step": 1e3 * median, "img_per_s": batch / median, "ms_min": 1e3 * min(times),
            "ms_max": 1e3 * max(times), "repeats": len(times), "ms_all": [1e3 * t for t in times]}


def loop_images_per_s(model: nn.Module, images_nchw: Tensor, basis: pca.PCABasis, batch: int, steps: int,
                      device: torch.device, precision: str, attention: str) -> float:
    """train.run_epoch itself: one warm-up epoch of ``steps`` steps, then one measured epoch."""
    model = set_attention(model, attention).to(device)
    images = images_nchw[:batch * steps]
    data = DeviceData(images.to(device) if fits_on(device, images.numel()) else images,
                      torch.zeros(len(images), dtype=torch.long), batch, device=device)
    lr = scaled_lr(PAPER["base_lr"], batch)
    optimizer = build_optimizer(model, kind="adamw", lr=lr, weight_decay=PAPER["weight_decay"],
                                betas=PAPER["betas"], device=device)
    target_fn = make_target(TARGET, basis=basis, patch_size=model.config.patch_size,
                            image_shape=tuple(images_nchw.shape[1:]), device=device)

    def loss_fn(m, x_u8, labels, gen):
        return fast_loss(m, x_u8, target_fn, gen)

    cfg = LoopConfig(epochs=2, peak_lr=lr, warmup_epochs=0, seed=0, precision=precision)
    run_epoch(model, optimizer, data, loss_fn, 0, cfg, device)
    return run_epoch(model, optimizer, data, loss_fn, 1, cfg, device)["images_per_s"]


# ---------------------------------------------------------------- the parts of the run


def measure_preset(preset: str, batch_sizes: list[int], *, device: torch.device, images: np.ndarray,
                   basis: pca.PCABasis, warmup: int, repeats: int, workers: int, compile: bool,
                   loop_steps: int, attention: str = "auto", log=print) -> list[dict]:
    """Rows (baseline, fast[, fast-loop]) for one preset over the batch sizes."""
    precision = resolve_precision(device, "auto")
    attention = resolve_attention(device, precision, attention)
    flops_image = model_flops_per_image(preset)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    rows = []
    for batch in batch_sizes:
        torch.manual_seed(0)
        model = build_mae(preset)
        base = BaselinePath(copy.deepcopy(model), images, basis, batch, device, workers)
        fast = FastPath(copy.deepcopy(model), nchw, basis, batch, device, precision, compile, attention=attention)
        times = interleaved({"baseline": base.step, "fast": fast.step}, device, warmup, repeats)
        paths = {"baseline": ("fp32", "math", False, base.last_loss),
                 "fast": (precision, attention, compile, float(fast.last_loss))}
        if loop_steps:
            ips = loop_images_per_s(copy.deepcopy(model), nchw, basis, batch, loop_steps, device, precision, attention)
            times["fast-loop"] = [batch / ips]
            paths["fast-loop"] = (precision, attention, False, None)
        for path, (prec, attn, compiled, loss) in paths.items():
            row = {"preset": preset, "batch": batch, "path": path, "precision": prec, "attention": attn,
                   "compiled": compiled, **summarize(times[path], batch), "flops_per_step": flops_image * batch,
                   "loss": loss}
            rows.append(row)
            log(f"{preset:15s} batch {batch:4d} {path:9s} {row['img_per_s']:9.1f} img/s "
                f"{row['ms_per_step']:9.1f} ms/step")
        del base, fast
    return rows


def precision_comparison(preset: str, batch: int, *, device: torch.device, images: np.ndarray,
                         basis: pca.PCABasis, fp32_repeats: int, bf16_repeats: int, bf16_warmup: int,
                         log=print) -> dict:
    """The fast path's step in fp32 and under bf16 autocast, each with both attention kernels
    (``sdpa``, ``math``): same model and data, steps interleaved.

    Where bf16 is emulated (a CPU without native bf16: seconds per matmul), only the
    kernel that ``resolve_attention`` picks for bf16 is timed.
    """
    torch.manual_seed(0)
    model = build_mae(preset)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    auto = {p: resolve_attention(device, p) for p in ("fp32", "bf16")}
    variants = [(p, a) for p in ("fp32", "bf16") for a in ("sdpa", "math")]
    if device.type == "cpu" and not cpu_has_fast_bf16():
        variants = [(p, a) for p, a in variants if p == "fp32" or a == auto["bf16"]]
    paths = {v: FastPath(copy.deepcopy(model), nchw, basis, batch, device, v[0], compile=False, attention=v[1])
             for v in variants}
    repeats = {v: fp32_repeats if v[0] == "fp32" else bf16_repeats for v in variants}
    warmups = {v: 1 if v[0] == "fp32" else bf16_warmup for v in variants}
    for v, path in paths.items():
        for _ in range(warmups[v]):
            path.step()
    times = {v: [] for v in variants}
    for r in range(max(repeats.values())):
        for v in variants if r % 2 == 0 else variants[::-1]:
            if len(times[v]) < repeats[v]:
                times[v].append(time_call(paths[v].step, device))
    rows = [{"precision": p, "attention": a, **summarize(times[(p, a)], batch), "warmup": warmups[(p, a)]}
            for p, a in variants]
    for row in rows:
        log(f"{preset} batch {batch} {row['precision']} {row['attention']}: {row['img_per_s']:.1f} img/s, "
            f"{row['ms_per_step']:.0f} ms/step")
    chosen = {r["precision"]: r for r in rows if r["attention"] == auto[r["precision"]]}
    return {"preset": preset, "batch": batch, "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_has_fast_bf16": cpu_has_fast_bf16(),
            "auto_precision": resolve_precision(device, "auto"), "auto_attention": auto, "rows": rows,
            "bf16_time_over_fp32": chosen["bf16"]["ms_per_step"] / chosen["fp32"]["ms_per_step"]}


def profile_paths(preset: str, batch: int, *, device: torch.device, images: np.ndarray, basis: pca.PCABasis,
                  steps: int, workers: int, top: int = 15) -> dict:
    """torch.profiler over ``steps`` steps of each path after one warm-up step."""
    torch.manual_seed(0)
    model = build_mae(preset)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    precision = resolve_precision(device, "auto")
    paths = {"fast": FastPath(copy.deepcopy(model), nchw, basis, batch, device, precision, compile=False),
             "baseline": BaselinePath(copy.deepcopy(model), images, basis, batch, device, workers)}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {"preset": preset, "batch": batch, "steps": steps, "precision": precision}
    for name, path in paths.items():
        path.step()
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(steps):
                if name == "baseline":
                    with record_function("baseline/step"):
                        path.step()
                else:
                    path.step()
            sync(device)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) or 1
        # Annotations (record_function: the fast path's stages, the DataLoader's and the
        # optimiser's own) stay in: their self time is Python work outside aten ops.
        ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
        staged = [e for e in events if e.key.startswith(("fast/", "baseline/", "enumerate(DataLoader)", "Optimizer."))]
        stages = {e.key: e.cpu_time_total / 1e3 / steps for e in staged}
        syncs = {e.key: e.count / steps for e in events
                 if e.key in ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "cudaStreamSynchronize",
                              "cudaDeviceSynchronize", "cudaMemcpyAsync")}
        out[name] = {
            "top_ops": [{"name": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                         "share": e.self_cpu_time_total / total, "calls_per_step": e.count / steps}
                        for e in ops[:top]],
            "stages_ms_per_step": stages, "sync_calls_per_step": syncs,
            "self_cpu_ms_per_step": total / 1e3 / steps,
        }
        if device.type == "cuda":  # what the GPU spent, next to what the host spent launching it
            def dev(e, attr: str) -> float:  # device_time_* in recent torch, cuda_time_* before
                return getattr(e, attr, getattr(e, attr.replace("device", "cuda"), 0)) / 1e3 / steps

            out[name]["top_device_ops"] = [
                {"name": e.key, "self_device_ms_per_step": dev(e, "self_device_time_total"),
                 "calls_per_step": e.count / steps}
                for e in sorted(events, key=lambda e: dev(e, "self_device_time_total"), reverse=True)[:top]]
            out[name]["stages_device_ms_per_step"] = {e.key: dev(e, "device_time_total") for e in staged}
    return out


def paper_estimate(rows: list[dict]) -> dict | None:
    """Wall time of the paper recipe from the fast path's vit-tiny-cifar img/s at its largest measured batch."""
    fast = [r for r in rows if r["preset"] == "vit-tiny-cifar" and r["path"] == "fast"]
    if not fast:
        return None
    row = max(fast, key=lambda r: r["batch"])
    seconds = PAPER["epochs"] * PAPER_IMAGES / row["img_per_s"]
    return {"preset": "vit-tiny-cifar", "epochs": PAPER["epochs"], "images_per_epoch": PAPER_IMAGES,
            "recipe_batch": PAPER["batch_size"], "measured_batch": row["batch"], "img_per_s": row["img_per_s"],
            "seconds": seconds, "hours": seconds / 3600, "days": seconds / 86400}


def add_ratios_and_mfu(rows: list[dict], peak: dict[str, dict]) -> None:
    base = {(r["preset"], r["batch"]): r for r in rows if r["path"] == "baseline"}
    for r in rows:
        b = base.get((r["preset"], r["batch"]))
        r["ratio_vs_baseline"] = r["img_per_s"] / b["img_per_s"] if b else None
        achieved = r["flops_per_step"] / (r["ms_per_step"] / 1e3)
        r["achieved_flops"] = achieved
        r["mfu"] = achieved / peak[r["precision"]]["flops"] if r["precision"] in peak else None


def print_table(record: dict) -> None:
    print(f"\n{'preset':15s} {'batch':>5s} {'path':9s} {'prec':4s} {'attn':4s} {'img/s':>9s} {'ms/step':>9s} "
          f"{'min-max ms':>15s} {'fast/base':>9s} {'GFLOP/step':>10s} {'MFU %':>6s}")
    for r in record["rows"]:
        ratio = f"{r['ratio_vs_baseline']:.2f}" if r["ratio_vs_baseline"] else ""
        mfu = f"{100 * r['mfu']:.1f}" if r["mfu"] is not None else ""
        spread = f"{r['ms_min']:.0f}-{r['ms_max']:.0f}"
        print(f"{r['preset']:15s} {r['batch']:5d} {r['path']:9s} {r['precision']:4s} {r['attention']:4s} "
              f"{r['img_per_s']:9.1f} {r['ms_per_step']:9.1f} {spread:>15s} {ratio:>9s} "
              f"{r['flops_per_step'] / 1e9:10.1f} {mfu:>6s}")
    for p, e in record["peak"].items():
        print(f"peak {p}: {e['flops'] / 1e9:.1f} GFLOP/s ({e['source']})")
    pc = record.get("precision_comparison")
    if pc:
        print(f"\nfp32 vs bf16 autocast, {pc['preset']} batch {pc['batch']} on {pc['device']} "
              f"(cpu capability {pc['cpu_capability']}, native bf16: {pc['cpu_has_fast_bf16']}, "
              f"auto precision: {pc['auto_precision']}, auto attention: {pc['auto_attention']}):")
        for r in pc["rows"]:
            print(f"  {r['precision']} {r['attention']}: {r['img_per_s']:.2f} img/s, {r['ms_per_step']:.0f} ms/step "
                  f"({r['repeats']} timed, {r['warmup']} warm-up)")
        print(f"  bf16 step takes {pc['bf16_time_over_fp32']:.2f}x the fp32 step (each with its auto attention)")
    est = record.get("paper_estimate")
    if est:
        print(f"\npaper recipe ({est['epochs']} epochs x {est['images_per_epoch']} images) at "
              f"{est['img_per_s']:.1f} img/s (vit-tiny-cifar, batch {est['measured_batch']}): "
              f"{est['hours']:.1f} h = {est['days']:.2f} days")
    prof = record.get("profile")
    if prof:
        for name in ("fast", "baseline"):
            p = prof[name]
            print(f"\nprofile {name} ({prof['preset']} batch {prof['batch']}, {p['self_cpu_ms_per_step']:.0f} ms "
                  f"self CPU per step); host syncs per step: {p['sync_calls_per_step'] or 'none'}")
            for stage, ms in p["stages_ms_per_step"].items():
                print(f"  stage {stage:22s} {ms:9.1f} ms")
            for op in p["top_ops"][:10]:
                print(f"  {op['name'][:50]:50s} {op['self_cpu_ms_per_step']:9.1f} ms {100 * op['share']:5.1f}% "
                      f"{op['calls_per_step']:6.0f} calls")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 64 only, fewer repeats (CI; < 4 min on a quiet 2-core CPU)")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default 32 64 128 (--quick: 64)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per path (default 2, 1 with --quick, 3 compiled)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per path (default 5, 3 with --quick)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile the fast path (auto: on CUDA)")
    parser.add_argument("--attention", default="auto", choices=ATTENTIONS,
                        help="the fast path's attention kernel (auto: train.resolve_attention)")
    parser.add_argument("--workers", type=int, default=None, help="baseline DataLoader workers (default 0 on CPU, 4 on CUDA)")
    parser.add_argument("--n-images", type=int, default=None, help="training images per preset (default 1024, 256 with --quick)")
    parser.add_argument("--n-pca-images", type=int, default=None, help="images the PCA basis is fitted on (default 2000, 1000 with --quick)")
    parser.add_argument("--loop-presets", nargs="*", default=None,
                        help="presets also timed through train.run_epoch (default all; small-cifar with --quick)")
    parser.add_argument("--loop-steps", type=int, default=None, help="steps per run_epoch epoch (default 5, 3 with --quick)")
    parser.add_argument("--precision-preset", default="vit-tiny-cifar", help="preset of the fp32 vs bf16 comparison ('' to skip)")
    parser.add_argument("--precision-batch", type=int, default=64)
    parser.add_argument("--bf16-repeats", type=int, default=None, help="timed bf16 steps (default 2, 1 with --quick)")
    parser.add_argument("--profile-preset", default="vit-tiny-cifar", help="preset profiled ('' to skip)")
    parser.add_argument("--profile-batch", type=int, default=None, help="default 64, 32 with --quick")
    parser.add_argument("--profile-steps", type=int, default=None, help="default 3, 1 with --quick")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="JSON path (default results/bench/pretrain_throughput-<device>-<time>.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    quick = args.quick
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    batch_sizes = args.batch_sizes or ([64] if quick else [32, 64, 128])
    warmup = args.warmup if args.warmup is not None else (3 if compile else 1 if quick else 2)
    repeats = args.repeats or (3 if quick else 5)
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    n_images = max(args.n_images or (256 if quick else 1024), 2 * max(batch_sizes, default=1),
                   args.precision_batch, args.profile_batch or 0,
                   (args.loop_steps or 0) * max(batch_sizes, default=1))
    n_pca = args.n_pca_images or (1000 if quick else 2000)
    loop_presets = args.loop_presets if args.loop_presets is not None else (["small-cifar"] if quick else list(args.presets))
    loop_steps = args.loop_steps or (3 if quick else 5)
    bf16_repeats = args.bf16_repeats or (1 if quick else 2)
    profile_batch = args.profile_batch or (32 if quick else 64)
    profile_steps = args.profile_steps or (1 if quick else 3)
    for name in {*args.presets, *filter(None, [args.precision_preset, args.profile_preset])}:
        get_config(name)  # unknown presets fail before anything runs

    wall = time.perf_counter()
    data: dict[int, tuple[np.ndarray, pca.PCABasis]] = {}

    def data_for(preset: str) -> tuple[np.ndarray, pca.PCABasis]:
        size = get_config(preset).img_size
        if size not in data:
            start = time.perf_counter()
            images = synthetic_images(max(n_images, n_pca), size)
            basis = fit_basis(images[:n_pca], device)
            print(f"{size}x{size}: {len(images)} synthetic images, PCA basis ({basis.method}) of {n_pca} "
                  f"in {time.perf_counter() - start:.1f} s; {TARGET} removes "
                  f"{basis.n_components(1 - parse_target(TARGET).share, 'top')} top components", flush=True)
            data[size] = (images[:n_images], basis)
        return data[size]

    rows = []
    for preset in args.presets:
        images, basis = data_for(preset)
        rows += measure_preset(preset, batch_sizes, device=device, images=images, basis=basis, warmup=warmup,
                               repeats=repeats, workers=workers, compile=compile, attention=args.attention,
                               loop_steps=loop_steps if preset in loop_presets else 0)
    precisions = {r["precision"] for r in rows}
    comparison = None
    if args.precision_preset:
        images, basis = data_for(args.precision_preset)
        comparison = precision_comparison(args.precision_preset, args.precision_batch, device=device, images=images,
                                          basis=basis, fp32_repeats=2 if quick else 3, bf16_repeats=bf16_repeats,
                                          bf16_warmup=0 if quick else 1)
        precisions |= {"fp32", "bf16"}
    peak = peaks(device, precisions)
    add_ratios_and_mfu(rows, peak)
    if comparison:
        flops = model_flops_per_image(args.precision_preset) * args.precision_batch
        for r in comparison["rows"]:
            r["mfu"] = flops / (r["ms_per_step"] / 1e3) / peak[r["precision"]]["flops"]
    prof = None
    if args.profile_preset:
        images, basis = data_for(args.profile_preset)
        prof = profile_paths(args.profile_preset, profile_batch, device=device, images=images, basis=basis,
                             steps=profile_steps, workers=workers)
    record = {
        "kind": KIND, "schema": SCHEMA, "quick": quick, "target": TARGET, "device": str(device),
        "settings": {"presets": args.presets, "batch_sizes": batch_sizes, "warmup": warmup, "repeats": repeats,
                     "workers": workers, "compile": compile, "n_images": n_images, "n_pca_images": n_pca,
                     "loop_presets": loop_presets, "loop_steps": loop_steps,
                     "fast_precision": resolve_precision(device, "auto"),
                     "fast_attention": resolve_attention(device, resolve_precision(device, "auto"), args.attention),
                     "threads": torch.get_num_threads()},
        "rows": rows, "peak": peak, "precision_comparison": comparison, "profile": prof,
        "paper_estimate": paper_estimate(rows), "wall_seconds": time.perf_counter() - wall,
    }
    print_table(record)
    out = write_bench_record(KIND, record, str(device), args.out)
    print(f"\nwrote {out} ({record['wall_seconds']:.0f} s)")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
