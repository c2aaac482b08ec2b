"""Reconstruction targets, computed per batch on the batch's device from the augmented input.

Target names:

* ``pixels``: the (normalised) input image itself;
* ``norm-pix``: pixels normalised to zero mean and unit variance within each patch
  (the official MAE target);
* ``pca-bottom:q`` / ``pca-top:p``: the image projected onto the bottom-q / top-p
  variance subspace of the dataset's PCA (see ``lowvar_mae.pca``), mean image added;
* ``pca-bottom-norm:q``: the bottom-q image normalised within each patch, as norm-pix
  normalises pixels (:class:`PatchNormalized`): its loss does not shrink with the small
  variance of the bottom components;
* ``fft-low:r`` / ``fft-high:r``: the 2-D Fourier coefficients of each channel inside /
  outside the radius r (a share of the Nyquist radius, 0 < r <= 1), as in frequency-
  filtered MAE targets (PixMIM uses low-pass ones). The two are exact complements on the
  model's input scale: fft-low:r + fft-high:r = pixels (the mean, a zero frequency, is in
  the low part). :func:`fft_variance_share` says how much of a dataset's pixel variance a
  radius keeps.
* ``pc-mask`` / ``pc-mask:s``: masking in PCA space instead of pixel space (PMAE, Bizeul
  et al., "Components Beat Patches: Eigenvector Masking for Visual Representation
  Learning", github.com/alicebizeul/pmae). Each step draws a random set of principal
  components holding a share s of the variance (``pc-mask``: s uniform in [0.1, 0.9] per
  step, the paper's "sampling_pc" setting), removes them from the input, and the loss is
  the squared error of the predicted image's coordinates on the removed components. The
  encoder sees every patch (mask_ratio 0). See :class:`PCMasking`.

All pixel-space targets are images (N, C, H, W) on the model's input scale; the loss is the same
for all of them (``MAE.forward_loss``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import basis_io, pca
from .models import patchify, unpatchify
from .provenance import runs_dir

TARGET_KINDS = ("pixels", "norm-pix", "pca-bottom", "pca-bottom-norm", "pca-top", "fft-low", "fft-high", "pc-mask")
SHARED_KINDS = ("pca-bottom", "pca-bottom-norm", "pca-top", "fft-low", "fft-high")  # kinds written kind:<number>
PC_MASK_RANGE = (0.1, 0.9)  # PMAE's "sampling_pc": masked share of variance, uniform per step
PC_MASK_COUNTS = ("nearest", "reference")  # how many components a share takes (PCMasking)
PC_MASK_BASES = ("centred", "standardized")  # the PCA PC masking draws from
NORM_PIX_EPS = 1e-6


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    share: float | None = None

    @property
    def needs_basis(self) -> bool:
        return self.kind.startswith("pca-") or self.kind == "pc-mask"

    @property
    def masks_components(self) -> bool:
        """True for PC masking: the input changes and the encoder sees every patch."""
        return self.kind == "pc-mask"

    @property
    def side(self) -> str | None:
        if not self.needs_basis or self.kind == "pc-mask":
            return None
        return "bottom" if self.kind.startswith("pca-bottom") else "top"

    def __str__(self) -> str:
        return f"{self.kind}:{self.share:g}" if self.share is not None else self.kind


def parse_target(spec: str) -> TargetSpec:
    """'pixels', 'norm-pix', 'pca-bottom:0.25', 'pca-top:0.75', 'fft-low:0.3', 'fft-high:0.3' -> TargetSpec.

    For fft-* targets the number is a radius (a share of the Nyquist radius), not a share of
    variance."""
    kind, sep, share = str(spec).partition(":")
    if kind not in TARGET_KINDS:
        raise ValueError(f"unknown target {spec!r}; use one of pixels, norm-pix, pca-bottom:<share>, "
                         "pca-bottom-norm:<share>, pca-top:<share>, "
                         "fft-low:<radius>, fft-high:<radius>, pc-mask, pc-mask:<share>")
    if kind == "pc-mask":
        if not sep:
            return TargetSpec(kind)
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"target {spec!r}: share {share!r} is not a number") from None
        if not 0.0 < value < 1.0:
            raise ValueError(f"target {spec!r}: the masked share of variance must lie in (0, 1), got {value}")
        return TargetSpec(kind, value)
    if kind in SHARED_KINDS:
        what = "radius" if kind.startswith("fft-") else "share"
        if not sep:
            raise ValueError(f"target {spec!r} needs a {what}, e.g. {kind}:0.25")
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"target {spec!r}: {what} {share!r} is not a number") from None
        if kind.startswith("fft-"):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"target {spec!r}: the radius is a share of the Nyquist radius and must lie in "
                                 f"(0, 1], got {value}")
            return TargetSpec(kind, value)
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


class PatchNormalized:
    """A target normalised within each patch to zero mean and unit variance (as norm-pix does
    for pixels), with the way back: ``image(x01)`` is the target before normalisation and
    ``to_image(pred, x01)`` maps a prediction on the normalised scale back onto it, with the
    true target's patch mean and standard deviation (as the MAE paper's figures do), so that
    reconstructions and their band errors are measured in pixel space."""

    def __init__(self, base: Callable[[Tensor], Tensor], patch_size: int):
        self.base, self.patch_size = base, patch_size

    def __call__(self, x01: Tensor) -> Tensor:
        return norm_pix(self.base(x01), self.patch_size)

    def image(self, x01: Tensor) -> Tensor:
        return self.base(x01)

    def to_image(self, pred: Tensor, x01: Tensor) -> Tensor:
        target = patchify(self.base(x01), self.patch_size)
        mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + NORM_PIX_EPS).sqrt()
        return unpatchify(patchify(pred, self.patch_size) * std + mean, self.patch_size, pred.shape[1])


def frequency_radius(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Radius of each coefficient of ``torch.fft.rfft2`` on (height, width) images, as a share
    of the Nyquist radius: sqrt(fy^2 + fx^2) / 0.5 with frequencies in cycles per pixel; shape
    (height, width // 2 + 1). 0 is the mean; 1 the Nyquist frequency of one axis; the corner
    (both axes at Nyquist) is sqrt(2)."""
    fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(width, device=device).view(1, -1)
    return torch.sqrt(fy ** 2 + fx ** 2) / 0.5


def frequency_filter(images: Tensor, radius: float, side: str) -> Tensor:
    """The part of ``images`` (N, C, H, W) whose 2-D spatial frequencies lie inside (side="low",
    radius <= ``radius``) or outside (side="high") the radius, per channel, in float32. The two
    sides add up to the images exactly (up to rounding); the mean is in the low side."""
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    h, w = images.shape[-2:]
    keep = frequency_radius(h, w, images.device) <= radius
    if side == "high":
        keep = ~keep
    coeffs = torch.fft.rfft2(images.float())
    return torch.fft.irfft2(coeffs * keep, s=(h, w))


def fft_variance_share(images: Tensor, radius: float, side: str = "low", batch_size: int = 2048) -> float:
    """Share of the pixel variance of ``images`` (N, C, H, W), uint8 or float (about their mean
    image), that the ``side`` part at ``radius`` keeps. The Fourier transform is unitary, so
    variance splits exactly between the two sides: low + high = 1."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean = x.mean(0, keepdim=True)
    kept = total = 0.0
    for chunk in x.split(batch_size):
        centred = chunk - mean
        part = frequency_filter(centred, radius, side)
        kept += float(part.double().square().sum())
        total += float(centred.double().square().sum())
    return kept / total if total else float("nan")


def fft_radius_for_share(images: Tensor, share: float, side: str = "low", batch_size: int = 2048) -> float:
    """The radius whose ``side`` part keeps ``share`` of the pixel variance of ``images`` (as
    near as the discrete radii allow: the smallest radius whose low part reaches the share,
    or for side="high" the largest whose high part still holds it). Per-coefficient variance
    from one pass of the full 2-D FFT (Parseval: it adds up to the pixel variance)."""
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    pca.check_share(share)
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean = x.mean(0, keepdim=True)
    h, w = x.shape[-2:]
    energy = torch.zeros(h, w, dtype=torch.float64, device=x.device)
    for chunk in x.split(batch_size):
        energy += torch.fft.fft2(chunk - mean).abs().double().square().sum((0, 1))
    fy = torch.fft.fftfreq(h, device=x.device).view(-1, 1)
    fx = torch.fft.fftfreq(w, device=x.device).view(1, -1)
    radius = (torch.sqrt(fy ** 2 + fx ** 2) / 0.5).flatten().double()
    radii, inverse = torch.unique(radius, return_inverse=True)  # sorted distinct radii
    per_radius = torch.zeros_like(radii).scatter_add_(0, inverse, energy.flatten())
    low = per_radius.cumsum(0) / per_radius.sum()  # share kept by fft-low at each radius
    if side == "low":
        k = int(torch.searchsorted(low, torch.tensor(share - 1e-12, dtype=low.dtype)))
        return float(radii[min(k, len(radii) - 1)])
    high = 1 - low  # share kept by fft-high at each radius (strictly outside it)
    ok = torch.nonzero(high >= share - 1e-12).flatten()
    return float(radii[int(ok[-1])]) if len(ok) else float(radii[0])


class PCMasking:
    """PC masking (PMAE): remove a random set of principal components from the input and
    score the prediction on them.

    Per step, one draw for the whole batch: a random permutation of the stored components,
    and the first k of them in that order, k set by the share s (fixed, or uniform in
    :data:`PC_MASK_RANGE`) and the counting rule:

    * ``count="nearest"``: the k >= 1 whose cumulative share is nearest to s (this
      project's first rule, kept for its records);
    * ``count="reference"``: the reference code's rule, k = argmin_j |cum_j - s| counted
      from zero, one component fewer, and zero when the first component alone is nearest
      (that step then masks nothing and its loss is zero).

    With U_m the masked components, mu the mean image and z = (x - mu) / sigma the image
    in the basis's coordinates (sigma = 1 for the centred basis, the per-pixel standard
    deviation for the standardised one, :func:`lowvar_mae.pca.fit_standardized`):

    * input = mu + sigma (z - z U_m U_m^T) (the image with those components removed);
    * target = z U_m (its coordinates on them);
    * loss = mean over images and masked components of (z(y) U_m - target)^2, y the
      predicted image in [0, 1] (the decoder's output on the input scale, mapped back).

    Where this deviates from the reference code, which draws a permutation per image in its
    data loader: one draw per batch here.
    """

    def __init__(self, basis: pca.PCABasis, share: float | None = None, device: torch.device | str = "cpu",
                 count: str = "nearest"):
        if count not in PC_MASK_COUNTS:
            raise ValueError(f"count must be one of {PC_MASK_COUNTS}, got {count!r}")
        self.share, self.count = share, count
        self.scale = None if basis.scale is None else basis.scale.to(device=device, dtype=torch.float32)
        self.mean = basis.mean.to(device=device, dtype=torch.float32)
        self.components = basis.components.to(device=device, dtype=torch.float32)
        ratio = basis.eigenvalues[: basis.n_stored].double()
        self.ratio = (ratio / basis.eigenvalues.double().sum()).to(device)
        self.image_shape = tuple(basis.image_shape)

    def draw(self, generator: torch.Generator | None = None) -> tuple[Tensor, float]:
        """(indices of the masked components, the share of variance they hold)."""
        device = self.ratio.device
        if self.share is None:
            lo, hi = PC_MASK_RANGE
            u = torch.rand((), generator=generator, device=device, dtype=torch.float64)
            share = lo + (hi - lo) * float(u)
        else:
            share = self.share
        order = torch.randperm(len(self.ratio), generator=generator, device=device)
        cum = self.ratio[order].cumsum(0)
        nearest = int(torch.argmin((cum - share).abs()))
        k = nearest + 1 if self.count == "nearest" else nearest
        return order[:k], float(cum[k - 1]) if k else 0.0

    def _coordinates(self, flat: Tensor) -> Tensor:
        z = flat - self.mean
        return z if self.scale is None else z / self.scale

    def split(self, x01: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(input images in [0, 1] with the components ``idx`` removed, (N, k) coordinates on them)."""
        n = x01.shape[0]
        flat = x01.float().reshape(n, -1)
        u = self.components[:, idx]
        coords = self._coordinates(flat) @ u
        removed = coords @ u.T
        if self.scale is not None:
            removed = removed * self.scale
        return (flat - removed).reshape(x01.shape), coords

    def loss(self, pred01: Tensor, coords: Tensor, idx: Tensor) -> Tensor:
        """Mean squared error of the predicted images' (N, C, H, W) coordinates on ``idx``
        (zero, still attached to the prediction, when no component is masked)."""
        pred = self._coordinates(pred01.float().reshape(pred01.shape[0], -1)) @ self.components[:, idx]
        if pred.numel() == 0:
            return pred01.float().sum() * 0.0
        return (pred - coords).square().mean()


def make_pc_masking(spec: str | TargetSpec, basis: pca.PCABasis | None, *, image_shape=None,
                    device: torch.device | str = "cpu", count: str = "nearest") -> PCMasking:
    spec = parse_target(spec) if isinstance(spec, str) else spec
    if spec.kind != "pc-mask":
        raise ValueError(f"target '{spec}' is not a PC-masking target")
    if basis is None:
        raise ValueError(f"target '{spec}' needs a fitted PCA basis of the training images; none was given")
    _check_basis_shape(spec, basis, image_shape)
    return PCMasking(basis, spec.share, device=device, count=count)


def _check_basis_shape(spec, basis: pca.PCABasis, image_shape) -> None:
    if image_shape is not None and tuple(image_shape) != tuple(basis.image_shape):
        raise ValueError(
            f"target '{spec}': PCA basis fitted on images of shape {tuple(basis.image_shape)} "
            f"({basis.dataset or 'unnamed'}/{basis.split}), but the training images have shape {tuple(image_shape)}"
        )


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
    if spec.kind.startswith("fft-"):
        side = spec.kind.removeprefix("fft-")
        # On the input scale (x - 0.5) / 0.5: the constant 0.5 is a zero frequency, so it
        # stays with the low side and fft-low + fft-high = the pixels target.
        return lambda x01: frequency_filter((x01 - 0.5) / 0.5, spec.share, side)
    if spec.kind == "pc-mask":
        # The image itself: what the whole prediction is compared with when it is shown
        # (the loss looks at the masked components only, see PCMasking).
        make_pc_masking(spec, basis, image_shape=image_shape, device=device)
        return lambda x01: (x01 - 0.5) / 0.5
    if basis is None:
        raise ValueError(f"target '{spec}' needs a fitted PCA basis of the training images; none was given")
    _check_basis_shape(spec, basis, image_shape)
    flt = pca.make_filter(basis, spec.side, spec.share, method=method, device=device)
    if spec.kind == "pca-bottom-norm":
        if patch_size is None:
            raise ValueError(f"target '{spec}' needs the model's patch_size")
        return PatchNormalized(lambda x01: (flt(x01) - 0.5) / 0.5, patch_size)
    return lambda x01: (flt(x01) - 0.5) / 0.5


def images_digest(images: Tensor) -> str:
    """SHA-256 (hex) of a uint8 image tensor's shape and bytes: which images a basis saw."""
    import hashlib

    if images.dtype != torch.uint8:
        raise ValueError(f"images_digest needs the uint8 images, got {images.dtype}")
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def basis_path(dataset: str, source: str, root: str | os.PathLike | None = None, standardized: bool = False) -> Path:
    """Where the cached PCA basis of a dataset's training images lives (under the runs
    folder), keyed by the images' digest: another data root, subset or copy gets its own."""
    return runs_dir(root) / "pca" / f"{dataset}-train-{source[:12]}{'-std' if standardized else ''}.safetensors"


def dataset_basis(dataset: str, *, images: Tensor | None = None, root: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", refit: bool = False, standardized: bool = False) -> pca.PCABasis:
    """The PCA basis of ``dataset``'s training split: loaded from the cache, or fitted and cached.

    images: the training images (N, C, H, W) uint8 to fit on; loaded when not given.
    standardized: the PCA of per-pixel standardised images (PC masking's option,
    :func:`lowvar_mae.pca.fit_standardized`) instead of pixels centred by the mean image.
    The fit always uses the training split only. The cache is keyed by the digest of the
    images; a cached file whose recorded source is not that digest is refused.
    """
    if images is None:
        from .data import load_dataset

        images = load_dataset(dataset, "train").to_tensor()
    source = images_digest(images)
    path = basis_path(dataset, source, root=root, standardized=standardized)
    if path.is_file() and not refit:
        try:
            basis = basis_io.load_basis(path, device=device)
        except basis_io.BasisWithoutDigest:  # a cache from before digests: fit it again (the fit is deterministic)
            return dataset_basis(dataset, images=images, root=root, device=device, refit=True,
                                 standardized=standardized)
        if basis.source != source or basis.dataset != dataset or basis.split != "train":
            raise ValueError(f"{path} was fitted on other images ({basis.dataset}/{basis.split}, source "
                             f"{basis.source[:12] or 'unknown'}) than {dataset}'s training split here "
                             f"(source {source[:12]}); delete it to fit again")
        return basis
    fit = pca.fit_standardized if standardized else pca.fit_pca
    basis = dataclasses.replace(fit(images.to(device), dataset=dataset, split="train"), source=source)
    basis_io.save_basis(basis, path)
    return basis


def basis_provenance(basis: pca.PCABasis) -> dict:
    """What a run records about the basis its target used."""
    return {"dataset": basis.dataset, "split": basis.split, "n_samples": basis.n_samples, "method": basis.method,
            "source": basis.source, "n_stored": basis.n_stored, "standardized": basis.scale is not None}

def kept_variance(spec: str | TargetSpec, images: Tensor | None = None,
                  basis: pca.PCABasis | None = None) -> dict:
    """How much of the training images' pixel variance a target keeps (about the mean image).

    pca-*: the kept components' eigenvalues over the total (exact on the images the basis
    was fitted on); fft-*: :func:`fft_variance_share` on ``images``; pixels: 1; pc-mask:
    the share removed from the input and scored, drawn per step (its range). norm-pix is
    not a subspace of the image and has no share. Returns {"target", "kept", "components",
    "note"}."""
    spec = parse_target(spec) if isinstance(spec, str) else spec
    out = {"target": str(spec), "kept": None, "components": None, "note": ""}
    if spec.kind == "pixels":
        out["kept"] = 1.0
    elif spec.kind.startswith("pca-"):
        if basis is None:
            raise ValueError(f"target '{spec}' needs the PCA basis to say what it keeps")
        k = basis.n_components(spec.share, spec.side)
        out["kept"] = float(basis.cumulative_share(spec.side)[k - 1]) if k else 0.0
        out["components"] = int(k)
    elif spec.kind.startswith("fft-"):
        if images is None:
            raise ValueError(f"target '{spec}' needs the training images to say what it keeps")
        out["kept"] = fft_variance_share(images, spec.share, spec.kind.removeprefix("fft-"))
    elif spec.kind == "pc-mask":
        if spec.share is not None:
            out["note"] = (f"input keeps about {1 - spec.share:.0%} of the variance; the other {spec.share:.0%} is "
                           "the target, a new random set of components each step")
        else:
            lo, hi = PC_MASK_RANGE
            out["note"] = (f"input keeps {1 - hi:.0%}-{1 - lo:.0%} of the variance; the rest is the target, "
                           "a new random set of components each step")
    else:
        out["note"] = "not a subspace of the image"
    return out
