"""PCA of an image dataset, and projection of images onto its top or bottom subspace.

This is Algorithm 1 of the reference experiment, written as functions on tensors:
fit once on the training split, save the basis, then filter batches on the
device they live on (so augmentation can run before filtering).

Conventions
-----------
* An image is a tensor ``(C, H, W)`` with values in ``[0, 1]``; it is flattened
  in that (torch) order to a vector of ``D = C * H * W`` pixels.
* ``eigenvalues`` are sorted in decreasing order and always have length ``D``;
  directions the fit could not see (the null space when there are fewer images
  than pixels) have eigenvalue 0.
* Shares of variance are counted from either end of the spectrum:

  - **top p**: the ``k`` largest components, ``k`` the *smallest* count whose
    cumulative share *reaches* ``p`` (``share >= p``);
  - **bottom q**: the ``k`` smallest components, ``k`` the *largest* count whose
    cumulative share *stays within* ``q`` (``share <= q``).

  Shares are compared with a tolerance of ``SHARE_TOL`` so that a boundary met
  exactly (4/10 + 3/10 = 0.7) counts as met despite rounding. With this
  convention ``n_components(top, 1 - q) + n_components(bottom, q) == D``: the
  top-(1-q) and bottom-q subspaces are exact complements, and
  ``top_image + bottom_image == image + mean``.

Two solvers
-----------
* ``fit_pca(images)`` (``solver="exact"``): every eigenpair, from the (D, D)
  covariance or, when N < D, the (N, N) Gram matrix. Needed for spectra and for
  ``method="strict"``.
* ``fit_pca(images, solver="topk", top_share=p)``: only the components carrying
  ``p`` of the variance, by block Lanczos on the images as an operator
  (``lowvar_mae.eigsolver``). Enough for ``pca-top:p`` and ``pca-bottom:(1 - p)``
  with the complement method; the filtered images agree with the exact ones to
  about 1e-4 relative.

Two ways to compute a bottom image
----------------------------------
* ``"complement"`` (default): ``bottom = x - (x - mu) V_top V_top^T`` with
  ``V_top`` the few top components of the complementary share. Cheap (CIFAR-10
  keeps 90% of its variance in about a hundred of 3,072 components) and it
  keeps *everything* outside the top subspace, including directions the
  training set never spanned.
* ``"strict"``: Algorithm 1 literally, ``bottom = (x - mu) V_bot V_bot^T + mu``
  with the bottom eigenvectors the fit found. On training images both agree.
  On images outside the training span (test images when there are fewer
  training images than pixels, as on the Gram path) the strict version drops
  the part outside the span, while the complement puts it in the bottom image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from . import eigsolver

Side = Literal["top", "bottom"]
BottomMethod = Literal["complement", "strict"]

SHARE_TOL = 1e-9
SHARE_CONVENTION = (
    "top p: smallest k with cumulative share >= p; "
    "bottom q: largest k with cumulative share <= q; "
    f"shares compared with tolerance {SHARE_TOL}"
)
FORMAT = "lowvar-mae-pca/1"
SIDES = ("top", "bottom")
BOTTOM_METHODS = ("complement", "strict")
FIT_METHODS = ("auto", "covariance", "gram")
SOLVERS = ("exact", "topk")
TOPK_OPERATORS = ("data", "covariance")


@dataclass(frozen=True, eq=False)
class PCABasis:
    """A fitted PCA of flattened images.

    mean: (D,) float64, the mean training image.
    eigenvalues: (D,) float64, decreasing, variances along the components
        (sample covariance, divided by N - 1); zero where the fit saw nothing.
    components: (D, K) float64, orthonormal eigenvectors as columns, in the
        order of ``eigenvalues``; K <= D (the Gram path keeps only the non-zero
        ones, ``n_components`` may keep fewer).
    image_shape: (C, H, W) of the images the basis was fitted on.
    scale: (D,) float64 per-pixel standard deviations when the PCA is of standardised
        pixels (:func:`fit_standardized`, PC masking's option); None for pixels centred by
        the mean image (every filter of this module).
    """

    mean: Tensor
    eigenvalues: Tensor
    components: Tensor
    image_shape: tuple[int, int, int]
    n_samples: int
    method: str
    dataset: str = ""
    split: str = "train"
    source: str = ""  # digest of the images fitted on (targets.images_digest), "" if unknown
    scale: Tensor | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.numel())

    @property
    def n_stored(self) -> int:
        return int(self.components.shape[1])

    @property
    def total_variance(self) -> float:
        return float(self.eigenvalues.sum())

    def explained_variance_ratio(self) -> Tensor:
        """(D,) share of the total variance carried by each component."""
        return self.eigenvalues / self.eigenvalues.sum()

    def cumulative_share(self, side: Side = "top") -> Tensor:
        """(D,) share of the variance in the first k+1 components from ``side``."""
        return cumulative_share(self.eigenvalues, side)

    def n_components(self, share: float, side: Side) -> int:
        """Number of components for ``share`` of the variance from ``side`` (see module doc)."""
        return n_components(self.eigenvalues, share, side)

    def eigenimages(self, k: int) -> Tensor:
        """(k, C, H, W) the first k components as images."""
        if k > self.n_stored:
            raise ValueError(f"k={k} but the basis stores only {self.n_stored} components")
        return self.components[:, :k].T.reshape(k, *self.image_shape)

    def check_images(self, images: Tensor) -> None:
        """Raise if ``images`` (N, C, H, W) are not of the shape the basis was fitted on."""
        if tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"PCA basis fitted on images of shape {tuple(self.image_shape)} "
                f"({self.dataset or 'unnamed dataset'}/{self.split}) cannot filter images "
                f"of shape {tuple(images.shape[1:])}; fit a basis on this dataset instead"
            )

    def to(self, device: torch.device | str) -> "PCABasis":
        return PCABasis(
            self.mean.to(device), self.eigenvalues.to(device), self.components.to(device),
            self.image_shape, self.n_samples, self.method, self.dataset, self.split, self.source,
            None if self.scale is None else self.scale.to(device),
        )

    def metadata(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "split": self.split,
            "image_shape": list(self.image_shape),
            "layout": "CHW, values in [0, 1]",
            "n_samples": self.n_samples,
            "method": self.method,
            "n_stored": self.n_stored,
            "share_convention": SHARE_CONVENTION,
            "source": self.source,
            "standardized": self.scale is not None,
        }


def check_share(share: float) -> float:
    """Return ``share`` as a float if it lies strictly between 0 and 1, else raise."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 < float(share) < 1.0:
        raise ValueError(f"share must be a number strictly between 0 and 1, got {share!r}")
    return float(share)


def check_side(side: str) -> None:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")


def cumulative_share(eigenvalues: Tensor, side: Side = "top") -> Tensor:
    """(D,) cumulative share of variance of the 1, 2, ... D components counted from ``side``.

    eigenvalues: (D,) in decreasing order.
    """
    check_side(side)
    ev = eigenvalues.to(torch.float64)
    if side == "bottom":
        ev = ev.flip(0)
    return torch.cumsum(ev, 0) / ev.sum()


def n_components(eigenvalues: Tensor, share: float, side: Side) -> int:
    """Number of components that make up ``share`` of the variance from ``side``.

    top: the smallest k whose share reaches ``share``; bottom: the largest k whose
    share stays within ``share`` (tolerance ``SHARE_TOL``). ``n(top, 1 - q) +
    n(bottom, q) == D``.
    """
    share = check_share(share)
    cum = cumulative_share(eigenvalues, side)
    target = torch.tensor([share], dtype=cum.dtype, device=cum.device)
    if side == "top":
        k = int(torch.searchsorted(cum, target - SHARE_TOL, right=False)) + 1
    else:
        k = int(torch.searchsorted(cum, target + SHARE_TOL, right=True))
    return min(k, cum.numel())


# fit_pca and fit_topk take an ``n_components`` argument; this name reaches the function.
n_components_of = n_components


def as_unit_float(images: Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    """Images as floats in [0, 1]: uint8 is divided by 255, floats are kept as they are."""
    images = torch.as_tensor(images)
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    return images.to(dtype)


def check_images(images: Tensor | np.ndarray, where: str = "images") -> None:
    """Raise ValueError unless ``images`` are (N, C, H, W) with 1 or 3 channels, uint8 or
    finite floats in [0, 1]: a channels-last array, a float array on the 0-255 scale or a
    NaN would otherwise give a wrong basis without a word."""
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"{where}: expected images (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        hint = " (channels last? use .permute(0, 3, 1, 2))" if x.shape[-1] in (1, 3) else ""
        raise ValueError(f"{where}: expected 1 or 3 channels in dimension 1 of (N, C, H, W), got shape "
                         f"{tuple(x.shape)}{hint}")
    if x.dtype == torch.uint8 or not len(x):
        return
    if not x.is_floating_point():
        raise ValueError(f"{where}: images must be uint8 or floating point in [0, 1], got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: images hold NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(f"{where}: float images must lie in [0, 1], got values in [{low:g}, {high:g}]"
                         + (" (on the 0-255 scale? divide by 255, or pass uint8)" if high > 1.5 else ""))


def _iter_batches(images: Tensor | np.ndarray | Iterable, batch_size: int) -> Iterable[Tensor]:
    if isinstance(images, (Tensor, np.ndarray)):
        for start in range(0, len(images), batch_size):
            yield torch.as_tensor(images[start:start + batch_size])
    else:
        for i, batch in enumerate(images):
            batch = torch.as_tensor(batch)
            check_images(batch, f"batch {i}")
            yield batch


class CovarianceAccumulator:
    """Streaming mean and covariance of flattened images, in float64.

    Sums are taken around a shift (the first batch's mean) so that the
    covariance does not suffer from cancellation: only D + D*D float64 numbers
    are held, never the dataset.
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.n = 0
        self.shift: Tensor | None = None
        self.sum: Tensor | None = None
        self.sum_sq: Tensor | None = None
        self.image_shape: tuple[int, ...] | None = None

    def update(self, batch: Tensor) -> None:
        """batch: (B, C, H, W), uint8 or float in [0, 1]."""
        if batch.ndim != 4:
            raise ValueError(f"expected a batch of images (B, C, H, W), got shape {tuple(batch.shape)}")
        if self.image_shape is None:
            self.image_shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self.image_shape:
            raise ValueError(f"batch of shape {tuple(batch.shape[1:])} after batches of {self.image_shape}")
        if len(batch) == 0:
            return
        x = as_unit_float(batch.to(self.device or batch.device), torch.float64).flatten(1)
        if self.shift is None:
            self.shift = x.mean(0)
            self.sum = torch.zeros_like(self.shift)
            self.sum_sq = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        x = x - self.shift
        self.sum += x.sum(0)
        self.sum_sq.addmm_(x.T, x)
        self.n += len(x)

    def mean_and_covariance(self) -> tuple[Tensor, Tensor]:
        """Return mean (D,) and sample covariance (D, D), both float64."""
        if self.n < 2:
            raise ValueError(f"PCA needs at least 2 images, got {self.n}")
        m = self.sum / self.n
        cov = (self.sum_sq - self.n * torch.outer(m, m)) / (self.n - 1)
        return self.shift + m, (cov + cov.T) / 2


def _sorted_eigh(sym: Tensor) -> tuple[Tensor, Tensor]:
    evals, evecs = torch.linalg.eigh(sym)
    return evals.flip(0), evecs.flip(1)


def _fix_signs(components: Tensor) -> Tensor:
    """Make the largest-magnitude entry of each component positive (a deterministic sign)."""
    idx = components.abs().argmax(0)
    signs = torch.sign(components[idx, torch.arange(components.shape[1], device=components.device)])
    signs[signs == 0] = 1
    return components * signs


def _fit_covariance(batches: Iterable[Tensor], device) -> tuple[Tensor, Tensor, Tensor, int, tuple]:
    acc = CovarianceAccumulator(device)
    for batch in batches:
        acc.update(batch)
    mean, cov = acc.mean_and_covariance()
    evals, evecs = _sorted_eigh(cov)
    return mean, evals.clamp_min(0), evecs, acc.n, acc.image_shape


def _fit_gram(images: Tensor, device, batch_size: int) -> tuple[Tensor, Tensor, Tensor, int, tuple]:
    """Eigen-decompose the (N, N) Gram matrix instead of the (D, D) covariance (N < D)."""
    n = len(images)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 images, got {n}")
    image_shape = tuple(images.shape[1:])
    x = torch.cat([as_unit_float(b.to(device), torch.float64).flatten(1) for b in _iter_batches(images, batch_size)])
    mean = x.mean(0)
    x -= mean
    gram = x @ x.T / (n - 1)
    evals, u = _sorted_eigh((gram + gram.T) / 2)
    rank = int((evals > evals[0] * n * torch.finfo(torch.float64).eps).sum())
    evals = evals[:rank]
    components = x.T @ u[:, :rank] / torch.sqrt(evals * (n - 1))
    # One step of re-orthonormalisation removes the rounding of the small eigenvalues.
    components, r = torch.linalg.qr(components)
    components = components * torch.sign(torch.diagonal(r))
    all_evals = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    all_evals[:rank] = evals
    return mean, all_evals, components, n, image_shape


def fit_pca(
    images: Tensor | np.ndarray | Iterable[Tensor],
    *,
    method: str = "auto",
    solver: str = "exact",
    top_share: float | None = None,
    n_components: int | None = None,
    batch_size: int = 2048,
    device: torch.device | str | None = None,
    dataset: str = "",
    split: str = "train",
) -> PCABasis:
    """Fit PCA on training images (Algorithm 1, steps 1-4). Fit on the training split only.

    images: (N, C, H, W) uint8 or float in [0, 1], as a tensor or array, or an
        iterable of such batches (streamed; exact covariance path only).
    solver: "exact" computes every eigenpair; "topk" only the leading ones (see
        :func:`fit_topk`), for the complement filters, at a fraction of the cost.
    method (exact solver): "covariance" accumulates the (D, D) covariance in float64
        batch by batch; "gram" eigen-decomposes the (N, N) Gram matrix, cheaper when
        N < D (STL-10's 5,000 labelled 96x96 images); "auto" picks by N and D.
    top_share (topk solver): fit the components that carry this share of the
        variance, enough for ``pca-top:top_share`` and ``pca-bottom:(1 - top_share)``.
    n_components: exact solver: keep only the first K eigenvectors (eigenvalues are
        kept in full); topk solver: compute K components (instead of ``top_share``).
    device: where to accumulate and decompose (default: where the images are).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if method not in FIT_METHODS:
        raise ValueError(f"method must be one of {FIT_METHODS}, got {method!r}")
    in_memory = isinstance(images, (Tensor, np.ndarray))
    if in_memory:
        if images.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        if len(images) == 0:
            raise ValueError("cannot fit PCA on an empty dataset (0 images)")
        check_images(images)
    if solver == "topk":
        if method != "auto":
            raise ValueError(f"method={method!r} applies to the exact solver; the topk solver takes none")
        if not in_memory:
            raise ValueError("the topk solver passes over the images many times: pass a tensor, "
                             "not an iterable of batches")
        return fit_topk(images, top_share=top_share, n_components=n_components, batch_size=batch_size,
                        device=device, dataset=dataset, split=split)[0]
    if top_share is not None:
        raise ValueError("top_share applies to solver='topk'; the exact solver computes every component")
    if method == "auto":
        method = "gram" if in_memory and len(images) < math.prod(images.shape[1:]) else "covariance"
    if method == "gram":
        if not in_memory:
            raise ValueError("the Gram path needs all images at once: pass a tensor, not an iterable of batches")
        mean, evals, components, n, image_shape = _fit_gram(torch.as_tensor(images), device, batch_size)
    else:
        mean, evals, components, n, image_shape = _fit_covariance(_iter_batches(images, batch_size), device)
    if n_components is not None:
        if not 0 < n_components <= len(evals):
            raise ValueError(f"n_components must be in 1..{len(evals)}, got {n_components}")
        components = components[:, :n_components]
    return PCABasis(
        mean=mean, eigenvalues=evals, components=_fix_signs(components),
        image_shape=tuple(int(s) for s in image_shape), n_samples=n, method=method,
        dataset=dataset, split=split,
    )


def fit_standardized(images: Tensor | np.ndarray | Iterable[Tensor], *, batch_size: int = 2048,
                     device: torch.device | str | None = None, dataset: str = "", split: str = "train") -> PCABasis:
    """PCA of per-pixel standardised images (each pixel minus its mean, over its standard
    deviation), as PC masking's reference code fits it: the eigenpairs of the pixels'
    correlation matrix, from the same streamed covariance as :func:`fit_pca`. The basis
    keeps the standard deviations in ``scale``; a pixel that never varies is refused."""
    acc = CovarianceAccumulator(device)
    for batch in _iter_batches(images, batch_size):
        acc.update(batch)
    mean, cov = acc.mean_and_covariance()
    std = cov.diagonal().clamp_min(0).sqrt()
    if bool((std == 0).any()):
        raise ValueError(f"{int((std == 0).sum())} pixels never vary in these images: they cannot be standardised")
    evals, evecs = _sorted_eigh(cov / torch.outer(std, std))
    return PCABasis(mean=mean, eigenvalues=evals.clamp_min(0), components=_fix_signs(evecs),
                    image_shape=tuple(int(s) for s in acc.image_shape), n_samples=acc.n, method="standardized",
                    dataset=dataset, split=split, scale=std)


def fit_topk(
    images: Tensor | np.ndarray,
    *,
    top_share: float | None = None,
    n_components: int | None = None,
    operator: str = "data",
    batch_size: int = 4096,
    device: torch.device | str | None = None,
    seed: int = 0,
    tol: float = 5e-5,
    block: int = 32,
    depth: int = 4,
    dataset: str = "",
    split: str = "train",
) -> tuple[PCABasis, dict]:
    """Fit only the top components: those carrying ``top_share`` of the variance, or ``n_components``.

    The eigenpairs come from :func:`lowvar_mae.eigsolver.topk_eigh`, converged until
    the complement filters move images by less than about ``tol`` relative (the
    Davis-Kahan bound), on one of two operators:

    * ``"data"``: the images themselves (:class:`~lowvar_mae.eigsolver.DataCovariance`),
      no D x D or N x N matrix: the path for STL-10 train + unlabeled, whose
      covariance alone would take 6 GB;
    * ``"covariance"``: the streamed (D, D) covariance, iterated on instead of ``eigh``.

    The basis stores k components. Its eigenvalues are the k computed ones followed by
    the rest of the total variance spread evenly over the other D - k directions, so
    counts of top shares up to ``top_share`` (and of the complementary bottom shares)
    are exact; complement bottom filters and top filters up to that share work,
    strict bottom filters raise. Returns the basis (method ``"topk-<operator>"``)
    and the solver's info (cycles, block, operator calls, final residual).
    """
    if (top_share is None) == (n_components is None):
        raise ValueError("the topk solver needs exactly one of top_share and n_components, "
                         f"got top_share={top_share!r}, n_components={n_components!r}")
    if top_share is not None:
        top_share = check_share(top_share)
    if operator not in TOPK_OPERATORS:
        raise ValueError(f"operator must be one of {TOPK_OPERATORS}, got {operator!r}")
    images = torch.as_tensor(images)
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"the topk solver needs images (N >= 2, C, H, W), got shape {tuple(images.shape)}")
    device = torch.device(device) if device is not None else images.device
    if operator == "data":
        op = eigsolver.DataCovariance(images, batch_size=batch_size, device=device)
        mean, total, apply_cov = op.mean, op.total_variance, op
    else:
        acc = CovarianceAccumulator(device)
        for batch in _iter_batches(images, batch_size):
            acc.update(batch)
        mean, cov = acc.mean_and_covariance()
        total = float(torch.diagonal(cov).sum())

        def apply_cov(q: Tensor, fine: bool = True) -> Tensor:
            return cov @ q
    n, dim = len(images), mean.numel()
    wanted = n_components if n_components is not None else (lambda ev: n_components_of(ev, top_share, "top"))
    top, vectors, info = eigsolver.topk_eigh(apply_cov, dim, total, wanted=wanted, max_rank=n - 1, seed=seed,
                                             tol=tol, block=block, depth=depth, device=device)
    basis = PCABasis(mean=mean, eigenvalues=eigsolver.spread_tail(top, total, dim),
                     components=_fix_signs(vectors), image_shape=tuple(int(s) for s in images.shape[1:]),
                     n_samples=n, method=f"topk-{operator}", dataset=dataset, split=split)
    return basis, info


@dataclass(frozen=True, eq=False)
class SubspaceFilter:
    """Projects images onto a top or bottom variance subspace; build with ``make_filter``.

    Holds the mean and the few components it needs on one device, in one dtype.
    Call it on float images (N, C, H, W) in [0, 1]; it returns filtered images of
    the same shape, *with the mean image added back* (Algorithm 1, step 6).
    """

    side: Side
    share: float
    method: BottomMethod
    mean: Tensor
    components: Tensor
    image_shape: tuple[int, int, int]
    subtract: bool

    @property
    def n_components(self) -> int:
        """Number of components of the subspace (for the complement, of the removed top)."""
        return int(self.components.shape[1])

    def __call__(self, images: Tensor) -> Tensor:
        """images: (N, C, H, W) float in [0, 1] -> (N, C, H, W) filtered, same dtype."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"filter built for images of shape {self.image_shape}, got {tuple(images.shape[1:])}"
            )
        x = images.flatten(1).to(self.mean.dtype)
        xc = x - self.mean
        proj = (xc @ self.components) @ self.components.T
        out = x - proj if self.subtract else proj + self.mean
        return out.view_as(images).to(images.dtype)


def make_filter(
    basis: PCABasis,
    side: Side,
    share: float,
    *,
    method: BottomMethod = "complement",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> SubspaceFilter:
    """Prepare the projection onto the ``side`` subspace explaining ``share`` of the variance.

    Bottom subspaces are computed as the complement of the top-(1 - share) one
    unless ``method="strict"`` (see the module doc for the difference).
    """
    check_side(side)
    share = check_share(share)
    if method not in BOTTOM_METHODS:
        raise ValueError(f"method must be one of {BOTTOM_METHODS}, got {method!r}")
    if basis.scale is not None:
        raise ValueError("this basis is a PCA of standardised pixels (PC masking's option); top and bottom "
                         "images are filtered with the PCA of pixels centred by the mean image")
    d = basis.dim
    if side == "top" or method == "complement":
        k = basis.n_components(share, "top") if side == "top" else d - basis.n_components(share, "bottom")
        cols = slice(0, k)
        if k > basis.n_stored:
            raise ValueError(
                f"{side} {share} needs the first {k} components but the basis stores {basis.n_stored}; "
                "fit with more components"
            )
    else:
        k = basis.n_components(share, "bottom")
        start = d - k
        seen = int((basis.eigenvalues > 0).sum())
        if basis.n_stored < min(d, seen):
            raise ValueError(
                f"strict bottom {share} needs components {start}..{d} but the basis stores only "
                f"the first {basis.n_stored}; use method='complement' or fit without n_components"
            )
        # Components with zero eigenvalue were never seen by the fit: the strict
        # subspace is restricted to the training span (see module doc).
        cols = slice(min(start, basis.n_stored), basis.n_stored)
    device = device if device is not None else basis.mean.device
    return SubspaceFilter(
        side=side, share=share, method=method,
        mean=basis.mean.to(device=device, dtype=dtype),
        components=basis.components[:, cols].to(device=device, dtype=dtype).contiguous(),
        image_shape=tuple(basis.image_shape),
        subtract=(side == "bottom" and method == "complement"),
    )


def project(
    images: Tensor,
    basis: PCABasis,
    side: Side,
    share: float,
    *,
    method: BottomMethod = "complement",
    batch_size: int = 4096,
) -> Tensor:
    """Filter images (N, C, H, W) in [0, 1] onto a subspace, batch by batch, on their device."""
    basis.check_images(images)
    flt = make_filter(basis, side, share, method=method, device=images.device,
                      dtype=images.dtype if images.is_floating_point() else torch.float32)
    x = as_unit_float(images, flt.mean.dtype)
    return torch.cat([flt(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------- variance of subspaces


def total_variance(images: Tensor, batch_size: int = 4096) -> float:
    """Sum over pixels of the per-pixel variance across images (N - 1 in the denominator).

    images: (N, C, H, W) or (N, D), float (or uint8, read as [0, 1]); accumulated in
    float64 batch by batch, two passes (mean, then squared deviations).
    """
    n = len(images)
    if n < 2:
        raise ValueError(f"variance needs at least 2 images, got {n}")
    flat = images.flatten(1)
    mean = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
    for i in range(0, n, batch_size):
        mean += as_unit_float(flat[i:i + batch_size], torch.float64).sum(0)
    mean /= n
    sq = torch.zeros((), dtype=torch.float64, device=flat.device)
    for i in range(0, n, batch_size):
        sq += ((as_unit_float(flat[i:i + batch_size], torch.float64) - mean) ** 2).sum()
    return float(sq) / (n - 1)


def kept_variance_share(projected: Tensor, original: Tensor) -> float:
    """Share of the original images' total pixel variance that their projections keep.

    projected, original: (N, C, H, W) the same images after and before projection.
    On the images the basis was fitted on this is the cumulative eigenvalue share of the
    kept components; on other images (a test split) it is measured, not assumed.
    """
    if projected.shape != original.shape:
        raise ValueError(f"projected {tuple(projected.shape)} and original {tuple(original.shape)} differ in shape")
    return total_variance(projected) / total_variance(original)


def subspace_dim(basis: PCABasis, side: str, share: float | None) -> int:
    """Dimension of the subspace: n_components(share, side); all D pixels for side 'full'."""
    return basis.dim if side == "full" else basis.n_components(share, side)


def eigen_share(basis: PCABasis, side: str, share: float | None) -> float:
    """Share of the training variance the subspace holds by the eigenvalues (1 for 'full')."""
    if side == "full":
        return 1.0
    k = basis.n_components(share, side)
    return float(basis.cumulative_share(side)[k - 1]) if k > 0 else 0.0


def project_split(images: Tensor, basis: PCABasis, side: str, share: float | None, *,
                  method: str = "complement") -> Tensor:
    """images: (N, C, H, W) uint8 or float in [0, 1] -> projections (mean image added), in the
    images' float dtype (float32 for uint8). side 'full' returns the images as floats."""
    x = as_unit_float(images, images.dtype if images.is_floating_point() else torch.float32)
    return x if side == "full" else project(x, basis, side, share, method=method)


def pca_coordinates(images: Tensor, basis: PCABasis, batch_size: int = 4096) -> Tensor:
    """images: (N, C, H, W) uint8 or float in [0, 1] -> (N, K) float32 coordinates
    ``(x - mean) @ components`` on the K stored components, batch by batch."""
    basis.check_images(images)
    mean = basis.mean.to(device=images.device, dtype=torch.float32)
    comps = basis.components.to(device=images.device, dtype=torch.float32)
    return torch.cat([(as_unit_float(images[i:i + batch_size]).flatten(1) - mean) @ comps
                      for i in range(0, len(images), batch_size)])


def subspace_columns(basis: PCABasis, side: str, share: float | None) -> slice:
    """Which coordinates of :func:`pca_coordinates` span the subspace.

    top p: the first n(top, p); bottom q: the stored components outside the top-(1 - q)
    subspace, i.e. the bottom-q subspace within the training span (the directions a
    Gram-path basis does not store carry no training variance, so a classifier fitted on
    the training images gives them no weight anyway); full: all stored components.
    """
    if side != "full":
        check_share(share)
    seen = int((basis.eigenvalues > 0).sum())
    if basis.n_stored < seen:
        raise ValueError(f"the basis stores {basis.n_stored} of the {seen} components with non-zero variance; "
                         "subspace coordinates need all of them (fit without n_components)")
    if side == "full":
        return slice(0, basis.n_stored)
    if side == "top":
        return slice(0, basis.n_components(share, "top"))
    if side == "bottom":
        return slice(basis.dim - basis.n_components(share, "bottom"), basis.n_stored)
    raise ValueError(f"side must be 'full', 'top' or 'bottom', got {side!r}")
