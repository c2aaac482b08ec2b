"""Leading eigenpairs of a covariance without forming it: the solver behind ``fit_pca(solver="topk")``.

The complement filter behind ``pca-bottom:q`` needs only the top components that carry
``1 - q`` of the variance (about 20 of CIFAR-10's 3,072 for q = 0.25) and the total
variance, which is the trace of the covariance. This module finds those components
from the images as an operator, C q = Xc^T (Xc q) / (N - 1), one pass over the images
per block product, never holding a D x D or N x N matrix:

* :class:`DataCovariance`: the operator, float32 or float64 passes, float64 sums;
* :func:`topk_eigh`: restarted block Lanczos on any such operator;
* :func:`spread_tail`: the full (D,) eigenvalue vector a ``PCABasis`` stores, the
  variance left outside the top k spread evenly over the other D - k directions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def _unit_float(images: Tensor, dtype: torch.dtype) -> Tensor:
    """uint8 -> [0, 1]; floats kept as they are (``lowvar_mae.pca.as_unit_float``)."""
    return images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)


def spread_tail(top: Tensor, total_variance: float, dim: int) -> Tensor:
    """(D,) eigenvalues: the computed ``top`` ones, then the remaining variance spread
    evenly over the other D - k, so the sum is the total variance and top-share counts up
    to k are exact (the tail is no estimate of single eigenvalues; its mean is at most the
    k-th eigenvalue, so the order stays decreasing for converged ``top``)."""
    top = top.clamp_min(0)
    k = len(top)
    tail = max(total_variance - float(top.sum()), 0.0) / max(dim - k, 1)
    return torch.cat([top, torch.full((dim - k,), tail, dtype=top.dtype, device=top.device)])


EXACT_ROWS = 256  # 256 * 255^2 < 2^24: float32 sums of x^2 over this many uint8 images are exact
EXACT_MAX_IMAGES = 2 ** 18  # (255 N)^2 and N^2 255^2 stay below 2^53: the moments' float64 sums are exact
CACHE_SHARE = 0.75  # default cache limit: this share of the device's free memory
FALLBACK_CACHE_BYTES = 2 ** 31  # where the free memory cannot be read


def free_bytes(device: torch.device) -> int | None:
    """Memory free on ``device`` now: CUDA's free memory, or the host's available pages (Linux)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class DataCovariance:
    """The sample covariance of in-memory images as an operator that is never formed.

    images: (N, C, H, W) uint8 or float in [0, 1]. ``self(q, fine)`` returns
    C q = Xc^T (Xc q) / (N - 1) for q (D, m) float64, in one pass over the images,
    computed in float32 (``fine=False``) or float64, accumulated in float64. The
    centred images are cached per dtype when they fit in ``max_cache_bytes`` (default:
    ``CACHE_SHARE`` of the device's free memory when the operator is made; a cached pass
    is about twice as fast); otherwise each pass converts the images batch by batch, with
    the centring folded into the two products.

    The mean and the total variance of uint8 images come from exact sums of x and x^2
    per pixel, in the same pass that fills the float32 cache; of float images, from
    float64 sums taken around a shift.
    """

    def __init__(self, images: Tensor | np.ndarray, *, batch_size: int = 4096,
                 device: torch.device | str | None = None, max_cache_bytes: int | None = None):
        self.images = torch.as_tensor(images)
        if self.images.ndim != 4 or len(self.images) < 2:
            raise ValueError(f"need images (N >= 2, C, H, W), got shape {tuple(self.images.shape)}")
        self.device = torch.device(device) if device is not None else self.images.device
        self.n = len(self.images)
        self.image_shape = tuple(int(s) for s in self.images.shape[1:])
        self.dim = math.prod(self.image_shape)
        if max_cache_bytes is None:
            free = free_bytes(self.device)
            max_cache_bytes = int(CACHE_SHARE * free) if free is not None else FALLBACK_CACHE_BYTES
        self.batch_size, self.max_cache_bytes = batch_size, max_cache_bytes
        self._cache: dict[torch.dtype, Tensor] = {}
        if self.images.dtype == torch.uint8 and self.n <= EXACT_MAX_IMAGES:
            raw = self._empty(torch.float32) if self._fits(torch.float32) else None
            self.mean, self.total_variance = self._uint8_moments(raw)
            if raw is not None:  # the float32 copy made on the way becomes the float32 cache
                self._cache[torch.float32] = self._centre_(raw)
        else:
            self.mean, self.total_variance = self._float_moments()

    def _batches(self):
        """(start, images[start:start + batch_size] on the device as (B, D)), in order."""
        for start in range(0, self.n, self.batch_size):
            yield start, self.images[start:start + self.batch_size].to(self.device).flatten(1)

    def _fits(self, dtype: torch.dtype) -> bool:
        return self.n * self.dim * torch.finfo(dtype).bits // 8 <= self.max_cache_bytes

    def _empty(self, dtype: torch.dtype) -> Tensor:
        return torch.empty(self.n, self.dim, dtype=dtype, device=self.device)

    def _centre_(self, x: Tensor) -> Tensor:
        """Raw pixel values (N, D) -> centred images in [0, 1] units, in place: (x - mu / s) * s."""
        return x.sub_(self.mean.to(x.dtype) / self._scale()).mul_(self._scale())

    def _uint8_moments(self, raw: Tensor | None) -> tuple[Tensor, float]:
        """Mean (D,) float64 in [0, 1] and trace of C from exact sums of x and x^2 per pixel.

        The sums run in float32 over chunks of ``EXACT_ROWS`` images, where every partial
        sum is an integer below 2^24 and so exact, and add up in float64 (exact below
        2^53 for up to ``EXACT_MAX_IMAGES`` images). Per pixel, N sum(x^2) - (sum x)^2 is
        then exact too: the only rounding is the final sum over the D pixels. ``raw``
        (N, D) float32, if given, receives the images' float32 copy.
        """
        s1 = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        s2 = torch.zeros_like(s1)
        for start, batch in self._batches():
            x = raw[start:start + len(batch)].copy_(batch) if raw is not None else batch.to(torch.float32)
            for chunk in x.split(EXACT_ROWS):
                s1 += chunk.sum(0).double()
                s2 += (chunk * chunk).sum(0).double()
        total = float((self.n * s2 - s1 * s1).sum()) / (self.n * (self.n - 1)) / 255.0 ** 2
        return s1 / (self.n * 255.0), total

    def _float_moments(self) -> tuple[Tensor, float]:
        """Mean and trace of C in float64, sums taken around a shift (any input dtype)."""
        shift = s1 = s2 = None
        for x in self._unit_batches(torch.float64):
            if shift is None:
                shift = x.mean(0)
                s1, s2 = torch.zeros_like(shift), torch.zeros_like(shift)
            x = x - shift
            s1 += x.sum(0)
            s2 += (x * x).sum(0)
        m1 = s1 / self.n
        return shift + m1, float(((s2 - self.n * m1 * m1) / (self.n - 1)).sum())

    def _unit_batches(self, dtype: torch.dtype):
        for _, batch in self._batches():
            yield _unit_float(batch, dtype)

    def _scale(self) -> float:
        """Pixel values -> [0, 1]: 1/255 for uint8 images."""
        return 1 / 255.0 if self.images.dtype == torch.uint8 else 1.0

    def _cached(self, dtype: torch.dtype) -> Tensor | None:
        """The centred images (N, D) in ``dtype``, built on first use if they fit; else None."""
        if dtype not in self._cache and self._fits(dtype):
            self._cache.clear()
            cache = self._empty(dtype)
            for start, batch in self._batches():
                cache[start:start + len(batch)].copy_(batch)
            self._cache[dtype] = self._centre_(cache)
        return self._cache.get(dtype)

    def __call__(self, q: Tensor, fine: bool = True) -> Tensor:
        dtype = torch.float64 if fine else torch.float32
        qd = q.to(dtype)
        out = torch.zeros(self.dim, q.shape[1], dtype=torch.float64, device=q.device)
        cached = self._cached(dtype)
        if cached is not None:
            for xc in cached.split(self.batch_size):
                out += (xc.T @ (xc @ qd)).to(torch.float64)
            return out / (self.n - 1)
        # Not cached: one conversion per batch, the centring folded into the products,
        # Xc q = s X q - 1 (mu^T q) and Xc^T y = s X^T y - mu (1^T y), s the pixel scale.
        scale, mean = self._scale(), self.mean.to(dtype)
        mean_q = mean @ qd
        for _, batch in self._batches():
            x = batch.to(dtype)
            y = (x @ qd).mul_(scale).sub_(mean_q)
            out += ((x.T @ y).mul_(scale) - torch.outer(mean, y.sum(0))).to(torch.float64)
        return out / (self.n - 1)


def topk_eigh(apply_cov: Callable[[Tensor, bool], Tensor], dim: int, total_variance: float, *,
              wanted: int | Callable[[Tensor], int], max_rank: int | None = None,
              block: int = 32, depth: int = 4, oversample: int = 16, tol: float = 5e-5, coarse_tol: float = 1e-2,
              max_cycles: int = 100, seed: int = 0, device: torch.device | str = "cpu",
              ) -> tuple[Tensor, Tensor, dict]:
    """Leading eigenpairs of a symmetric positive semi-definite operator C.

    Restarted block Lanczos with full reorthogonalisation (Golub & Underwood 1977;
    thick restart as in Wu & Simon 2000; the randomized block Krylov method of Musco &
    Musco 2015). A cycle builds the Krylov basis V = [X, C X, ..., C^(depth-1) X]
    (orthonormalised, ``block`` columns per step), keeps W = C V from the same operator
    calls, takes the Rayleigh-Ritz pairs of V^T W and restarts from the top ``block`` Ritz
    vectors, whose C-product it already has: ``depth - 1`` calls of ``apply_cov`` per
    cycle. ``apply_cov(q, fine)`` returns C q for q (D, m) float64 orthonormal;
    ``fine=False`` may compute in lower precision, used until the residual is below
    ``coarse_tol`` and stops falling (the rounding floor). ``wanted`` is the number k of
    pairs wanted, or a function that chooses it from a (D,) eigenvalue vector (the Ritz values
    so far, completed by :func:`spread_tail` with ``total_variance``), such as the count
    for a share of the variance; the block doubles until it holds k + ``oversample``
    columns. Converged when every wanted Ritz pair has
    ||C v - theta v|| <= ``tol`` times the gap theta_k - theta_(k+1): by Davis-Kahan, the
    angle to the true top-k subspace (what the complement filter depends on) is then at
    most ``tol``, so a filtered image moves by at most ``tol`` times its distance to the
    mean image (5e-5 keeps filtered images within 1e-4 of the exact ones). Raises
    RuntimeError after ``max_cycles`` (a share boundary between two nearly equal
    eigenvalues has no well-defined top-k subspace). Small problems
    (D <= 2 * block * depth) are solved by a dense ``eigh``.

    Returns eigenvalues (k,) float64 decreasing, eigenvectors (D, k) float64, info.
    """
    cap = min(dim, max_rank or dim)
    fixed = None if callable(wanted) else int(wanted)
    if fixed is not None and not 0 < fixed <= cap:
        raise ValueError(f"wanted must be in 1..{cap} (the operator's rank bound), got {wanted}")

    def count(theta: Tensor) -> int:
        """k from the leading Ritz values (the rest of the variance spread evenly)."""
        return fixed if fixed is not None else min(int(wanted(spread_tail(theta, total_variance, dim))), cap)

    if dim <= 2 * block * depth:  # small: form C and decompose it
        full = apply_cov(torch.eye(dim, dtype=torch.float64, device=device), True)
        theta, u = torch.linalg.eigh((full + full.T) / 2)
        theta, u = theta.flip(0).clamp_min(0), u.flip(1)
        k = count(theta)
        return theta[:k].clone(), u[:, :k], {"cycles": 0, "block": dim, "k": k, "relative_residual": 0.0,
                                             "operator_calls": 1, "column_passes": dim, "float64_passes": True}
    gen = torch.Generator(device=device).manual_seed(seed)

    def random_block(m: int) -> Tensor:
        return torch.randn(dim, m, generator=gen, device=device, dtype=torch.float64)

    def orthonormal_to(basis: Tensor, y: Tensor) -> Tensor:
        """Columns spanning y's part orthogonal to ``basis``: Gram-Schmidt twice, QR, once more."""
        for _ in range(2):
            y = y - basis @ (basis.T @ y)
        y = torch.linalg.qr(y)[0]
        return y - basis @ (basis.T @ y)

    b = min(cap // 2, max(block, (fixed or 0) + oversample))
    if b < 1:
        raise ValueError(f"rank {cap} is too small for the top-k solver; use the exact solver")
    x = torch.linalg.qr(random_block(b))[0]
    cx = None  # C x when already known (after a restart)
    fine, previous_sum, previous_resid, calls, columns = False, None, None, 0, 0
    for cycle in range(1, max_cycles + 1):
        steps = max(2, min(depth, cap // b))
        vs, ws = [x], []
        for j in range(steps):
            if j == 0 and cx is not None:
                w = cx
            else:
                w = apply_cov(vs[j], fine)
                calls, columns = calls + 1, columns + w.shape[1]
            ws.append(w)
            if j < steps - 1:
                vs.append(orthonormal_to(torch.cat(vs, dim=1), w))
        v, w = torch.cat(vs, dim=1), torch.cat(ws, dim=1)
        small = v.T @ w
        theta, u = torch.linalg.eigh((small + small.T) / 2)
        theta, u = theta.flip(0), u.flip(1)
        k = count(theta[:b])
        kk = min(k, b)
        resid = torch.linalg.vector_norm(w @ u[:, :kk] - (v @ u[:, :kk]) * theta[:kk], dim=0)
        gap = theta[kk - 1] - theta[kk]
        rel_resid = float(resid.max() / gap.clamp_min(torch.finfo(torch.float64).tiny))
        settled = previous_sum is not None and abs(float(theta[:b].sum()) - previous_sum) <= 1e-2 * float(theta[:b].sum())
        previous_sum = float(theta[:b].sum())
        if k + oversample > b and 2 * b <= cap and settled:
            grown = min(cap // 2, 2 * b)  # keep the current Ritz vectors, add random columns
            x = orthonormal_to(v @ u[:, :b], random_block(grown - b))
            x = torch.cat([v @ u[:, :b], x], dim=1)
            b, cx, previous_sum, previous_resid = grown, None, None, None
            continue
        if k <= b and rel_resid <= tol:
            break
        switch = (not fine and k <= b and rel_resid <= coarse_tol and previous_resid is not None
                  and rel_resid > 0.9 * previous_resid)  # the low-precision floor: go on in float64
        fine, previous_resid = fine or switch, rel_resid
        x = v @ u[:, :b]
        cx = None if switch else w @ u[:, :b]  # C x of the restart block, known from this cycle
    else:
        raise RuntimeError(
            f"top-k eigensolver did not converge in {max_cycles} cycles (k={k}, block {b}, "
            f"relative residual {rel_resid:.2e} > {tol:.0e}); use the exact solver")
    info = {"cycles": cycle, "block": b, "k": k, "relative_residual": rel_resid, "operator_calls": calls,
            "column_passes": columns, "float64_passes": fine}
    return theta[:k].clone(), v @ u[:, :k], info
