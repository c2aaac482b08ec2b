"""Reconstruction targets, computed per batch on the batch's device from the augmented input.

Target names:

* ``pixels``: the (normalised) input image itself;
* ``norm-pix``: pixels normalised to zero mean and unit variance within each patch
  (the official MAE target);
* ``pca-bottom:q`` / ``pca-top:p``: the image projected onto the bottom-q / top-p
  variance subspace of the dataset's PCA (see ``lowvar_mae.pca``), mean image added.

All targets are images (N, C, H, W) on the model's input scale; the loss is the same
for all of them (``MAE.forward_loss``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import pca
from .models import patchify, unpatchify
from .provenance import runs_dir

TARGET_KINDS = ("pixels", "norm-pix", "pca-bottom", "pca-top")
NORM_PIX_EPS = 1e-6


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    share: float | None = None

    @property
    def needs_basis(self) -> bool:
        return self.kind.startswith("pca-")

    @property
    def side(self) -> str | None:
        return self.kind.removeprefix("pca-") if self.needs_basis else None

    def __str__(self) -> str:
        return f"{self.kind}:{self.share:g}" if self.share is not None else self.kind


def parse_target(spec: str) -> TargetSpec:
    """'pixels', 'norm-pix', 'pca-bottom:0.25', 'pca-top:0.75' -> TargetSpec."""
    kind, sep, share = str(spec).partition(":")
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target {spec!r}; use one of pixels, norm-pix, pca-bottom:<share>, pca-top:<share>")
    if kind.startswith("pca-"):
        if not sep:
            raise ValueError(f"target {spec!r} needs a share, e.g. {kind}:0.25")
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"target {spec!r}: share {share!r} is not a number") from None
        return TargetSpec(kind, pca.check_share(value))
    if sep:
        raise ValueError(f"target {kind!r} takes no share, got {spec!r}")
    return TargetSpec(kind)


def norm_pix(images: Tensor, patch_size: int) -> Tensor:
    """Each patch of ``images`` (N, C, H, W) normalised to zero mean and unit variance."""
    patches = patchify(images, patch_size)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    return unpatchify((patches - mean) / (var + NORM_PIX_EPS).sqrt(), patch_size, images.shape[1])


def make_target(spec: str | TargetSpec, *, basis: pca.PCABasis | None = None, patch_size: int | None = None,
                image_shape: tuple[int, int, int] | None = None, device: torch.device | str = "cpu",
                method: str = "complement") -> Callable[[Tensor], Tensor]:
    """A function from augmented images in [0, 1] (N, C, H, W) to the target on the input scale.

    basis: the dataset's PCA, for pca-* targets; image_shape: the training images'
    (C, H, W), checked against the basis; patch_size: for norm-pix.
    """
    spec = parse_target(spec) if isinstance(spec, str) else spec
    if spec.kind == "pixels":
        return lambda x01: (x01 - 0.5) / 0.5
    if spec.kind == "norm-pix":
        if patch_size is None:
            raise ValueError("target 'norm-pix' needs the model's patch_size")
        return lambda x01: norm_pix((x01 - 0.5) / 0.5, patch_size)
    if basis is None:
        raise ValueError(f"target '{spec}' needs a fitted PCA basis of the training images; none was given")
    if image_shape is not None and tuple(image_shape) != tuple(basis.image_shape):
        raise ValueError(
            f"target '{spec}': PCA basis fitted on images of shape {tuple(basis.image_shape)} "
            f"({basis.dataset or 'unnamed'}/{basis.split}), but the training images have shape {tuple(image_shape)}"
        )
    flt = pca.make_filter(basis, spec.side, spec.share, method=method, device=device)
    return lambda x01: (flt(x01) - 0.5) / 0.5


def basis_path(dataset: str, n_images: int | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where the cached PCA basis of a dataset's training split lives (under the runs folder)."""
    suffix = "" if n_images is None else f"-n{n_images}"
    return runs_dir(root) / "pca" / f"{dataset}-train{suffix}.safetensors"


def dataset_basis(dataset: str, *, images: Tensor | None = None, root: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", refit: bool = False) -> pca.PCABasis:
    """The PCA basis of ``dataset``'s training split: loaded from the cache, or fitted and cached.

    images: the training images (N, C, H, W) uint8 to fit on; loaded when not given.
    The fit always uses the training split only.
    """
    path = basis_path(dataset, root=root)
    if path.is_file() and not refit:
        return pca.load_basis(path, device=device)
    if images is None:
        from .data import load_dataset

        images = load_dataset(dataset, "train").to_tensor()
    basis = pca.fit_pca(images.to(device), dataset=dataset, split="train")
    pca.save_basis(basis, path)
    return basis
