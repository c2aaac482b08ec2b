"""Checkpoints: model weights and optimiser state as safetensors, bookkeeping as JSON.

A checkpoint is a folder ``checkpoint-eNNNN/`` holding ``model.safetensors``,
``optimizer.safetensors`` and ``state.json`` (with the SHA-256 of both tensor files).
It is written under a temporary name, every file and the folder fsynced, renamed when
complete, and only then does ``latest.json`` (written atomically) point to it; the
previous checkpoint is deleted after that. An interrupted write, or a power cut, leaves
the previous checkpoint as the one that loads. Loading checks the digests, so a
corrupted or truncated file is named instead of loaded. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .provenance import atomic_write_json, dumps_json, fsync_path, read_json

LATEST = "latest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the model."""


class NonFiniteWeightsError(FloatingPointError):
    """The model has NaN or infinite weights: the run diverged and is not saved."""


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Beyond this absolute value a weight (or buffer) means the run has diverged: the models here
# keep their weights within a few units, and a blown-up run reaches 1e29 while still finite.
WEIGHT_BOUND = 1e6


def check_finite(model: nn.Module, where: str = "") -> None:
    """Raise NonFiniteWeightsError naming the first parameter or buffer with a NaN or
    infinite value, or one above :data:`WEIGHT_BOUND` in absolute value."""
    for name, value in unwrap(model).state_dict().items():
        if not value.is_floating_point():
            continue
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteWeightsError(f"{name} has non-finite values{' ' + where if where else ''}: the run "
                                        "diverged (try a lower learning rate, or fp32); nothing was saved")
        largest = float(value.detach().abs().max()) if value.numel() else 0.0
        if largest > WEIGHT_BOUND:
            raise NonFiniteWeightsError(f"{name} reaches {largest:.3g}, above the bound {WEIGHT_BOUND:g}"
                                        f"{' ' + where if where else ''}: the run diverged (try a lower learning "
                                        "rate); nothing was saved")


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
    """Write ``checkpoint-e{epoch}`` durably and point ``latest.json`` to it.

    Weights are checked for NaN/inf first (NonFiniteWeightsError: nothing is written).
    Older checkpoints are removed once the new one and the pointer are on disk. A failed
    write (disk full) removes its temporary folder and raises CheckpointError.
    """
    check_finite(model, f"at epoch {epoch}")
    run_dir = Path(run_dir)
    name = f"checkpoint-e{epoch:04d}"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        meta: dict = {"epoch": epoch, **state}
        if optimizer is not None:
            tensors, opt_meta = _optimizer_tensors(optimizer)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            meta["optimizer"] = opt_meta
        meta["digests"] = {f.name: file_digest(f) for f in sorted(tmp.glob("*.safetensors"))}
        (tmp / "state.json").write_text(dumps_json(meta, indent=1))
        for f in tmp.iterdir():
            fsync_path(f)
        fsync_path(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_path(run_dir)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"could not write checkpoint {final}: {reason}; the previous "
                              f"checkpoint ({_pointer_name(run_dir)}) is intact: free space and resume") from None
    atomic_write_json(run_dir / LATEST, {"checkpoint": name, "epoch": epoch})
    for old in run_dir.glob("checkpoint-e*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _pointer_name(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / LATEST).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return "none"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder ``latest.json`` points to, or None if the run has no checkpoint yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    try:
        path = Path(run_dir) / json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{pointer} is not a valid pointer (expected {{\"checkpoint\": ...}}); delete it to "
                              "train the run from scratch") from None
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
    verify_digest(file)
    try:
        weights = load_file(str(file))
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise CheckpointError(f"{file} cannot be read ({err}); it is damaged: resume from the previous "
                              "checkpoint or train the run again") from None
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


def verify_digest(file: Path) -> None:
    """Check ``file`` against the SHA-256 its checkpoint's state.json records (when it has one)."""
    state = file.parent / "state.json"
    if not state.is_file():
        return
    try:
        expected = json.loads(state.read_text()).get("digests", {}).get(file.name)
    except ValueError:
        raise CheckpointError(f"{state} is not valid JSON: the checkpoint is damaged; resume from the previous "
                              "checkpoint or train the run again") from None
    if expected and file_digest(file) != expected:
        raise CheckpointError(f"{file} does not match the SHA-256 in {state.name}: the file is corrupted or "
                              "truncated; resume from the previous checkpoint or train the run again")


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict:
    """Restore model (and optimiser) from a checkpoint folder; returns its state.json."""
    path = Path(path)
    load_weights(model, path)
    meta = read_json(path / "state.json", "the checkpoint is damaged: delete it and resume from the run's start, "
                     "or train again (--force)")
    if optimizer is not None:
        verify_digest(path / "optimizer.safetensors")
        # load_state_dict moves each state tensor to its parameter's device.
        _restore_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    return meta


LOCK = ".lock"


class RunLockedError(RuntimeError):
    """Another live process is training into the same run folder."""


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class run_lock:
    """``with run_lock(run_dir):`` holds ``<run_dir>/.lock`` (pid and host) for the block;
    ``run_lock(folder, name)`` holds ``<folder>/<name>`` (the lock of a whole command on one
    run, beside its folder: :func:`command_lock`).

    A second process asking for the same folder gets RunLockedError naming the holder. A
    lock left by a process that no longer runs (on this host) is stale and taken over.
    Reentrant within one process."""

    _held: dict[str, int] = {}

    def __init__(self, run_dir: str | Path, name: str = LOCK):
        self.path = Path(run_dir) / name
        self._made_folder = False

    def __enter__(self):
        import os
        import socket

        key = str(self.path.resolve())
        if key in self._held:
            self._held[key] += 1
            return self
        self._made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        # The lock appears with its content at once (a hard link of a written file), so a
        # process that finds it never reads it half-written and takes it for stale.
        mine = self.path.with_name(f"{self.path.name}.{me['pid']}.tmp")
        mine.write_text(json.dumps(me))
        for _ in range(2):
            try:
                os.link(mine, self.path)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and (host != me["host"] or _pid_alive(pid)):
                    mine.unlink(missing_ok=True)
                    self._forget_folder()
                    raise RunLockedError(f"{self.path.parent} is in use by process {pid} on {host}; wait for it "
                                         f"to finish, or delete {self.path} if that process is gone") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            mine.unlink(missing_ok=True)
            self._held[key] = 1
            return self
        mine.unlink(missing_ok=True)
        self._forget_folder()
        raise RunLockedError(f"could not take {self.path}")

    def _forget_folder(self) -> None:
        """Remove the folder made only to hold the lock, if nothing else landed in it."""
        if self._made_folder:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass

    def __exit__(self, *exc):
        key = str(self.path.resolve())
        self._held[key] -= 1
        if not self._held[key]:
            del self._held[key]
            self.path.unlink(missing_ok=True)
            self._forget_folder()
        return False


def command_lock(run_dir: str | Path) -> run_lock:
    """The lock a command holds on the run ``run_dir`` from before it touches anything (the
    run folder, its ``--force`` staging folder, its record) until it returns:
    ``<runs>/.<run name>.lock``. Only the first process of a torchrun job takes it."""
    run_dir = Path(run_dir)
    if int(os.environ.get("RANK", "0")) != 0:
        return contextlib.nullcontext()
    return run_lock(run_dir.parent, f".{run_dir.name}.lock")


def staging_dir(run_dir: str | Path) -> Path:
    """Where a forced rerun of ``run_dir`` trains until it replaces it."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.new"


def replace_run(staged: str | Path, final: str | Path) -> Path:
    """Swap a finished ``staged`` run folder in for ``final``: the old folder is moved aside,
    the new one renamed into place, and only then the old one deleted. A process killed
    between the two renames leaves ``.<name>.old`` and no ``<name>``: :func:`recover_replacement`
    puts it back on the next start."""
    staged, final = Path(staged), Path(final)
    old = final.parent / f".{final.name}.old"
    recover_replacement(final)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
        fsync_path(final.parent)
    staged.rename(final)
    fsync_path(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def recover_replacement(final: str | Path) -> str | None:
    """Finish or undo a replacement of run folder ``final`` that a kill interrupted between its
    two renames (``.<name>.old`` present, ``<name>`` missing): the old folder is put back (the
    new one, if finished, is still in its staging folder and replaces it on the next
    ``--force``). Returns what was done, or None when there was nothing to recover."""
    final = Path(final)
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        old.rename(final)
        fsync_path(final.parent)
        return f"restored {final} from an interrupted replacement"
    return None


def refuse_link(final: str | Path) -> None:
    """A forced run replaces folders: a run folder that is a symbolic link is refused."""
    final = Path(final)
    if final.is_symlink():
        raise RuntimeError(f"the run folder {final} is a link to {os.readlink(final)}: --force replaces folders, "
                           "not links; point --runs (or LOWVAR_MAE_RUNS) at the folder the link leads to, or "
                           "remove the link")


def check_writable(folder: str | Path, what: str = "the run folder",
                   remedy: str = "set LOWVAR_MAE_RUNS or --runs to a writable folder") -> None:
    """Raise RuntimeError naming ``folder`` (or its first existing parent) if it cannot be written."""
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RuntimeError(f"cannot write {what} {folder}: {probe} is not writable ({remedy})")


def open_run_folder(run_dir: str | Path, config, device: str, **fields) -> Path:
    """Create a run folder (checked writable first) with ``config.json`` (the config and its
    run name) and, unless the run is resuming, ``provenance.json`` (versions, revision,
    device, plus ``fields``)."""
    from .provenance import provenance

    run_dir = Path(run_dir)
    check_writable(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {**config.to_dict(), "run_name": config.run_name})
    path = run_dir / "provenance.json"
    if not path.is_file():
        atomic_write_json(path, {**provenance(device), **fields})
    else:  # a resumed run keeps its first provenance and lists every later start
        first = read_json(path, "restore it, or train the run again (--force)")
        now = provenance(device)
        start = {k: now[k] for k in ("git_revision", "device_name", "threads", "host", "time_utc")}
        atomic_write_json(path, {**first, "resumes": [*first.get("resumes", []), start]})
    return run_dir
