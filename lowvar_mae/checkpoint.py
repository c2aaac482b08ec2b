"""Checkpoints: model weights and optimiser state as safetensors, bookkeeping as JSON.

A checkpoint is a folder ``checkpoint-eNNNN/`` holding ``model.safetensors``,
``optimizer.safetensors`` and ``state.json``. It is written under a temporary
name and renamed when complete; ``latest.json`` then points to it (also written
atomically). An interrupted write therefore leaves the previous checkpoint as
the one that loads. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .provenance import atomic_write_json

LATEST = "latest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, plain = {}, {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta["plain_state"].items():
        state.setdefault(int(idx), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: str | Path, epoch: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, state: dict) -> Path:
    """Write ``checkpoint-e{epoch}`` atomically and point ``latest.json`` to it.

    Older checkpoints are removed once the new one is in place.
    """
    run_dir = Path(run_dir)
    name = f"checkpoint-e{epoch:04d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    meta: dict = {"epoch": epoch, **state}
    if optimizer is not None:
        tensors, opt_meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    atomic_write_json(run_dir / LATEST, {"checkpoint": name, "epoch": epoch})
    for old in run_dir.glob("checkpoint-e*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``latest.json`` points to, or None if the run has no checkpoint yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = Path(run_dir) / json.loads(pointer.read_text())["checkpoint"]
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{pointer} points to {path}, which has no model.safetensors")
    return path


def load_weights(model: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load ``model.safetensors`` (or a checkpoint folder) into ``model``, strictly.

    prefix: take only the keys under this prefix (e.g. ``"encoder."`` to load an
    MAE's encoder into a classifier's encoder). Missing, unexpected or misshaped
    keys raise CheckpointError naming them: a model never silently keeps random weights.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    weights = load_file(str(file))
    if prefix:
        weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not weights:
            raise CheckpointError(f"{file} has no weights under {prefix!r}")
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(weights)) if weights[k].shape != own[k].shape]
    if missing or extra or shapes:
        def few(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "",
                 f"unexpected keys: {few(extra)}" if extra else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise CheckpointError(f"{file} does not fit {type(target).__name__}: " + "; ".join(p for p in parts if p))
    target.load_state_dict(weights, strict=True)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimiser) from a checkpoint folder; returns its state.json."""
    path = Path(path)
    load_weights(model, path)
    meta = json.loads((path / "state.json").read_text())
    if optimizer is not None:
        # load_state_dict moves each state tensor to its parameter's device.
        _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    return meta
