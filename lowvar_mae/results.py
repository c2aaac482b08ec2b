"""Result records: one small JSON file per measurement, committed under ``results/``.

Every record carries its provenance (device, versions, git revision, time), so
the book can show every run that was ever made and say where each came from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .provenance import atomic_write_json, provenance, results_dir


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


def load_records(kind: str, root: str | os.PathLike | None = None):
    """All records of ``kind`` as a pandas DataFrame (provenance flattened to columns)."""
    import pandas as pd

    folder = results_dir(root) / kind
    rows = []
    for path in sorted(folder.glob("*.json")):
        rec = json.loads(path.read_text())
        prov = rec.pop("provenance", {})
        rows.append({**rec, **{k: v for k, v in prov.items() if k != "versions"},
                     "torch": prov.get("versions", {}).get("torch"), "file": path.name})
    return pd.DataFrame(rows)
