"""Result records: one small JSON file per measurement, committed under ``results/``.

Every record carries its provenance (device, versions, git revision, time), so
the book can show every run that was ever made and say where each came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path

from .provenance import atomic_write_json, provenance, repo_root, results_dir


def write_record(kind: str, fields: dict, *, device: str | None = None,
                 root: str | os.PathLike | None = None) -> Path:
    """Write ``fields`` plus provenance as ``<root>/<kind>/<name>.json``; returns the path.

    The file name joins the identifying fields (dataset, target, ...) with a short
    hash of the whole record, so records never overwrite each other.
    """
    record = {"kind": kind, **fields, "provenance": provenance(device)}
    text = json.dumps(record, sort_keys=True)
    keys = [str(fields[k]) for k in ("dataset", "target", "recipe", "metric", "seed") if k in fields]
    stem = "-".join(keys + [hashlib.sha1(text.encode()).hexdigest()[:10]]).replace(":", "").replace("/", "_")
    return atomic_write_json(results_dir(root) / kind / f"{stem}.json", record)


def pack_array(array, dtype: str | None = None) -> dict:
    """A numpy array as a small JSON-able dict: dtype, shape and its bytes zlib-compressed in
    base64 (for the few arrays a record carries: a spectrum, some eigen-images)."""
    import base64
    import zlib

    import numpy as np

    a = np.ascontiguousarray(np.asarray(array, dtype=dtype))
    return {"dtype": str(a.dtype), "shape": list(a.shape),
            "zlib_b64": base64.b64encode(zlib.compress(a.tobytes(), 9)).decode("ascii")}


def unpack_array(packed: dict):
    """Inverse of :func:`pack_array`."""
    import base64
    import zlib

    import numpy as np

    raw = zlib.decompress(base64.b64decode(packed["zlib_b64"]))
    return np.frombuffer(raw, dtype=np.dtype(packed["dtype"])).reshape(packed["shape"]).copy()


def bench_record_path(kind: str, device: str, root: str | os.PathLike | None = None) -> Path:
    """Where a benchmark writes its record: ``<root>/bench/<kind>-<device type>-<UTC time>.json``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return results_dir(root) / "bench" / f"{kind}-{device.split(':')[0]}-{stamp}.json"


def write_bench_record(kind: str, record: dict, device: str, out: str | os.PathLike | None = None) -> Path:
    """Add provenance (and the load average: timings depend on it) to a benchmark's
    ``record`` and write it atomically to ``out`` or :func:`bench_record_path`."""
    record["provenance"] = {**provenance(device), "load_average": list(os.getloadavg())}
    return atomic_write_json(Path(out) if out else bench_record_path(kind, device), record)


def record_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    """Folders records are read from: ``root`` alone if given; else the committed
    ``<checkout>/results`` plus ``$LOWVAR_MAE_RESULTS`` when that points elsewhere
    (where a book build keeps the records of its own runs on the embedded data)."""
    if root is not None:
        return [Path(root)]
    dirs = [results_dir()]
    committed = repo_root()
    if committed is not None and (committed / "results") not in dirs:
        dirs.append(committed / "results")
    return dirs


def load_records(kind: str, root: str | os.PathLike | None = None):
    """All records of ``kind`` as a pandas DataFrame (provenance flattened to columns).

    Reads every folder of ``record_dirs(root)``; a file name seen twice is read once.
    """
    import pandas as pd

    paths = {}
    for folder in record_dirs(root):
        for path in sorted((folder / kind).glob("*.json")):
            paths.setdefault(path.name, path)
    rows = []
    for path in paths.values():
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or not isinstance(rec.get("provenance", {}), dict):
                raise ValueError("not a JSON object with a provenance object")
        except (OSError, ValueError) as err:  # one bad file must not hide the others
            warnings.warn(f"skipping record {path}: {err}; repair or delete it", stacklevel=2)
            continue
        prov = rec.pop("provenance", {})
        rows.append({**rec, **{k: v for k, v in prov.items() if k != "versions"},
                     "torch": prov.get("versions", {}).get("torch"), "file": path.name})
    return pd.DataFrame(rows)
