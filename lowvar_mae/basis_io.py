"""PCA bases on disk and in records.

:func:`save_basis` writes a :class:`~lowvar_mae.pca.PCABasis` as safetensors with its
metadata and the SHA-256 of its tensors; :func:`load_basis` reads it back and refuses a
file that cannot be read or whose tensors changed since. :func:`basis_summary` is what a
result record keeps of a fit (the spectrum, the mean image and the first components,
quantised), :func:`basis_from_summary` a basis rebuilt from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .pca import FORMAT, PCABasis

def save_basis(basis: PCABasis, path: str | os.PathLike) -> Path:
    """Write the basis as safetensors with its metadata; atomic (temp file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "mean": basis.mean.detach().cpu().to(torch.float64).contiguous(),
        "eigenvalues": basis.eigenvalues.detach().cpu().to(torch.float64).contiguous(),
        "components": basis.components.detach().cpu().to(torch.float32).contiguous(),
    }
    if basis.scale is not None:
        tensors["scale"] = basis.scale.detach().cpu().to(torch.float64).contiguous()
    meta = {k: json.dumps(v) for k, v in basis.metadata().items()}
    meta["sha256"] = json.dumps(_tensors_digest(tensors))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


class BasisWithoutDigest(ValueError):
    """A basis file written before bases carried the SHA-256 of their tensors."""


def _tensors_digest(tensors: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def load_basis(path: str | os.PathLike, device: torch.device | str = "cpu") -> PCABasis:
    """Read a basis written by ``save_basis``, checked against the SHA-256 of its tensors it
    was written with. Components come back as float64. A file that cannot be read, or whose
    tensors changed since they were written, raises ValueError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    remedy = "delete it and the basis is fitted again"
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a PCA basis of format {FORMAT} (found {meta.get('format')!r})")
            names = ("mean", "eigenvalues", "components") + (("scale",) if meta.get("standardized") else ())
            tensors = {k: f.get_tensor(k) for k in names}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path} cannot be read as a PCA basis ({type(err).__name__}: {err}); {remedy}") from None
    if "sha256" not in meta:
        raise BasisWithoutDigest(f"{path} has no digest of its tensors (written by an older version); {remedy}")
    if _tensors_digest(tensors) != meta["sha256"]:
        raise ValueError(f"{path}: its tensors do not match the SHA-256 they were written with (changed or "
                         f"damaged); {remedy}")
    return PCABasis(
        mean=tensors["mean"].to(device),
        eigenvalues=tensors["eigenvalues"].to(device),
        components=tensors["components"].to(device=device, dtype=torch.float64),
        image_shape=tuple(meta["image_shape"]),
        n_samples=int(meta["n_samples"]),
        method=meta["method"],
        dataset=meta["dataset"],
        split=meta["split"],
        source=meta.get("source", ""),
        scale=tensors["scale"].to(device) if "scale" in tensors else None,
    )


def basis_summary(basis: PCABasis, k: int = 32) -> dict:
    """What a record keeps of a fit: the whole spectrum (float32), the mean image (float32)
    and the first ``k`` components quantised to int8 with one scale each (about 100 KB for
    CIFAR-10). :func:`basis_from_summary` turns it back into a basis of those k components,
    enough to draw the spectrum and eigen-images and to filter with top shares up to the
    k-th component (bottom images as their complement)."""
    from .results import pack_array

    k = min(k, basis.n_stored)
    comps = basis.components[:, :k].detach().cpu().double().numpy()
    scale = np.abs(comps).max(0)
    scale[scale == 0] = 1.0
    return {"k": k, "image_shape": list(basis.image_shape), "n_samples": basis.n_samples, "method": basis.method,
            "dataset": basis.dataset, "split": basis.split, "source": basis.source,
            "eigenvalues": pack_array(basis.eigenvalues.cpu().numpy(), "float32"),
            "mean": pack_array(basis.mean.cpu().numpy(), "float32"),
            "scale": [float(v) for v in scale / 127.0],
            "components": pack_array(np.round(comps / scale * 127.0), "int8")}


def basis_from_summary(summary: dict) -> PCABasis:
    """The basis a :func:`basis_summary` describes (components dequantised, float64)."""
    from .results import unpack_array

    comps = unpack_array(summary["components"]).astype(np.float64) * np.asarray(summary["scale"])
    return PCABasis(
        mean=torch.as_tensor(unpack_array(summary["mean"]), dtype=torch.float64),
        eigenvalues=torch.as_tensor(unpack_array(summary["eigenvalues"]), dtype=torch.float64),
        components=torch.as_tensor(comps), image_shape=tuple(summary["image_shape"]),
        n_samples=int(summary["n_samples"]), method=f"{summary['method']} (record, {summary['k']} components)",
        dataset=summary.get("dataset", ""), split=summary.get("split", "train"), source=summary.get("source", ""))


__all__ = ["save_basis", "load_basis", "BasisWithoutDigest", "basis_summary", "basis_from_summary"]
