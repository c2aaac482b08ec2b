"""Where runs and results live, what produced them, and writing files atomically."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("lowvar-mae", "torch", "torchvision", "timm", "numpy", "scikit-learn", "safetensors")


def repo_root() -> Path | None:
    """The checkout this package was imported from, or None for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


def _default_dir(env: str, name: str, explicit: str | os.PathLike | None) -> Path:
    if explicit is not None:
        if not str(explicit).strip():
            raise ValueError(f"the {name} folder is given as an empty string: name a folder (or leave it out for "
                             f"${env} or the default)")
        return Path(explicit).expanduser()
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    root = repo_root()
    if root is None:
        raise RuntimeError(f"cannot place {name}/ outside a checkout: set {env}")
    return root / name


# Run folders live outside the checkout by default, so that a long run survives a fresh
# clone of the repository and is resumed by the same command in the next session.
DEFAULT_RUNS = Path("~/.cache/lowvar-mae/runs")


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """Run folders (checkpoints, metrics): argument > $LOWVAR_MAE_RUNS > ~/.cache/lowvar-mae/runs."""
    if path is None and not os.environ.get("LOWVAR_MAE_RUNS", "").strip():
        return DEFAULT_RUNS.expanduser()
    return _default_dir("LOWVAR_MAE_RUNS", "runs", path)


def results_dir(path: str | os.PathLike | None = None) -> Path:
    """Result records (small JSON, committed): argument > $LOWVAR_MAE_RESULTS > <checkout>/results."""
    return _default_dir("LOWVAR_MAE_RESULTS", "results", path)


# A copy of a clean checkout without its git folder (the tree sent to a GPU machine) names
# the commit it was copied from in this variable; a real checkout ignores it.
REVISION_ENV = "LOWVAR_MAE_GIT_REVISION"


def git_revision() -> str:
    """The checkout's commit, with '-dirty' if tracked files changed; for a copy without a
    git folder, ``$LOWVAR_MAE_GIT_REVISION`` plus " (copy)"; else 'unknown'."""
    root = repo_root()
    if root is None:
        return "unknown"
    if not (root / ".git").exists():
        given = os.environ.get(REVISION_ENV, "").strip()
        return f"{given} (copy)" if given else "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def require_clean(allow_dirty: bool = False) -> str:
    """The checkout's revision; raises RuntimeError when it has uncommitted changes (a record
    must name the code that made it) unless ``allow_dirty``."""
    revision = git_revision()
    if revision.endswith("-dirty") and not allow_dirty:
        raise RuntimeError(f"the checkout has uncommitted changes ({revision}): commit them first, so that the "
                           "records name the code that made them, or pass allow_dirty=True (--allow-dirty)")
    return revision


def device_info(device: str | None = None) -> dict[str, object]:
    """Name of the device a computation ran on, and the CPU's vector capability."""
    import torch

    from .hardware import cpu_has_amx, cpu_has_fast_bf16, cpu_model

    info = {"device": str(device or "cpu"), "cpu": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpu_amx": cpu_has_amx(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_fast_bf16(),
            "threads": str(torch.get_num_threads())}
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    else:
        # Machines whose steps differ in speed are named apart: AMX ones (a bf16 step about twice
        # as fast as AVX512-BF16 ones) and CPUs of one name but another family (cpu_model).
        native = info["cpu_native_bf16"]
        bf16 = (", AMX" if info["cpu_amx"] and native else "") + (", native bf16" if native else "")
        forced = os.environ.get("ATEN_CPU_CAPABILITY")
        limited = f", kernels limited by ATEN_CPU_CAPABILITY={forced}" if forced else ""
        model = f"{info['cpu_model']}: " if info["cpu_model"] else ""
        info["device_name"] = f"CPU ({model}{info['cpu_capability']}{bf16}, {os.cpu_count()} cores{limited})"
    return info


class OtherLoad:
    """Cores kept busy by other processes since the previous call (since creation for the
    first): the machine's busy CPU time from ``/proc/stat`` less this process's own (all
    its threads), over the wall time, times the number of CPUs. None where ``/proc`` is
    missing. A run that shared its machine says so with it: on 2 cores, one other busy
    process (about 1.0) slows a torch job several-fold."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                values = [int(v) for v in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                after_name = f.read().rsplit(")", 1)[1].split()
            own = int(after_name[11]) + int(after_name[12])  # utime + stime, in the same clock ticks
        except (OSError, ValueError, IndexError):
            return None
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), sum(values) - idle, own

    def __call__(self) -> float | None:
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] <= last[0]:
            return None
        busy, own = now[1] - last[1], now[2] - last[2]
        return max(0.0, (busy - own) / (now[0] - last[0]) * (os.cpu_count() or 1))


def provenance(device: str | None = None) -> dict[str, object]:
    """Everything a result record needs to say where it came from."""
    return {
        "git_revision": git_revision(),
        "versions": versions(),
        **device_info(device),
        "host": platform.node(),
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's entry to disk (a rename is durable once its folder is)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # folders cannot be opened on some systems; nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write to a temporary file beside ``path``, fsync it, rename it over ``path`` and fsync
    the folder: readers never see half a file, and a power cut leaves the old or the new one.
    A failed write (disk full, no permission) leaves no temporary file and says where."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as a plain open() would create it (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path}: {err.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def json_safe(obj: object) -> object:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: object, **kw) -> str:
    """Strict JSON text: non-finite floats become null, anything else non-JSON raises."""
    return json.dumps(json_safe(obj), allow_nan=False, **kw)


def read_json(path: str | os.PathLike, remedy: str, *, kind: type = dict):
    """The JSON in ``path``, which must be a ``kind`` (an object by default). A file that is
    missing, torn or of another shape raises ValueError naming it and saying what to do."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read as JSON ({type(err).__name__}: {err}); {remedy}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not a {kind.__name__}; {remedy}")
    return value


def atomic_write_json(path: str | os.PathLike, obj: object) -> Path:
    return atomic_write_bytes(path, (dumps_json(obj, indent=2, sort_keys=True) + "\n").encode())
