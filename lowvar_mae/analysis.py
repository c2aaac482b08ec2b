"""The reference's two analyses: classifying images seen through one variance subspace,
and the order in which an MAE learns the bands of the PCA spectrum.

Subspace classification (Balestriero & LeCun)
---------------------------------------------
Project the training and test images onto the top or bottom subspace that explains a
share of the pixel variance (``lowvar_mae.pca``; basis fitted on the training split
only), train the same supervised classifier on each projection and compare test
accuracies. Two classifiers:

* ``"linear"``: softmax regression with a small L2 penalty on the projected pixels
  minus the mean image, divided by one scalar (their RMS per-pixel std), full batch,
  L-BFGS. It is fitted on the subspace's PCA coordinates ``V_S^T (x - mean)``: a
  linear function of the projected image ``mean + V_S V_S^T (x - mean)`` is a linear
  function of these coordinates and back, and the penalty is carried over exactly
  (see :func:`linear_accuracy`). The training split is rotated once for the whole
  grid, and L-BFGS runs in whitened variables, so it converges in tens of iterations
  whatever the subspace. No augmentation.
* ``"convnet"``: a small conv net (:class:`SmallConvNet`) trained with the shared
  training loop (``lowvar_mae.train``), with the standard CIFAR augmentation: reflect
  padding by 4 pixels, a random 32 x 32 crop and a random horizontal flip. Augmentation
  runs on the uint8 originals and the projection is applied *after* it, per batch on
  the device (the filter is a function, as for MAE targets); test images are projected
  once. Its run folder is named from its settings, so a re-run loads it.

Both classifiers get inputs of unit scale (standardised coordinates; for the conv net
the projection minus the mean image, divided by one scalar, the RMS deviation the
subspace keeps), so that a bottom subspace holding 1% of the variance is not
handicapped by the scale of its pixels.

Learning order
--------------
:func:`band_errors` splits a reconstruction error ``pred - target`` (images in [0, 1],
flattened CHW) along the PCA eigenbasis into bands of eigen-directions grouped by
cumulative share of variance counted from the top (deciles by default), and divides
the squared error of each band by the data's variance in that band.
:func:`learning_order_hook` evaluates it once per epoch inside ``pretrain`` on a fixed
held-out batch with a fixed mask, so each line of ``metrics.jsonl`` carries the bands.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import pca
from .checkpoint import unwrap
from .provenance import atomic_write_json, runs_dir

DEFAULT_SHARES_TOP = (0.5, 0.75, 0.9, 0.95, 0.99)
DEFAULT_SHARES_BOTTOM = (0.01, 0.05, 0.1, 0.2, 0.25, 0.5)
CLASSIFIERS = ("linear", "convnet")
DECILES = tuple(i / 10 for i in range(11))  # band edges: cumulative share of variance, from the top


# ================================================================ subspace classification


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
        mean += pca.as_unit_float(flat[i:i + batch_size], torch.float64).sum(0)
    mean /= n
    sq = torch.zeros((), dtype=torch.float64, device=flat.device)
    for i in range(0, n, batch_size):
        sq += ((pca.as_unit_float(flat[i:i + batch_size], torch.float64) - mean) ** 2).sum()
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


def subspace_dim(basis: pca.PCABasis, side: str, share: float | None) -> int:
    """Dimension of the subspace: n_components(share, side); all D pixels for side 'full'."""
    return basis.dim if side == "full" else basis.n_components(share, side)


def eigen_share(basis: pca.PCABasis, side: str, share: float | None) -> float:
    """Share of the training variance the subspace holds by the eigenvalues (1 for 'full')."""
    if side == "full":
        return 1.0
    k = basis.n_components(share, side)
    return float(basis.cumulative_share(side)[k - 1]) if k > 0 else 0.0


def project_split(images: Tensor, basis: pca.PCABasis, side: str, share: float | None, *,
                  method: str = "complement") -> Tensor:
    """images: (N, C, H, W) uint8 or float in [0, 1] -> projections (mean image added), in the
    images' float dtype (float32 for uint8). side 'full' returns the images as floats."""
    x = pca.as_unit_float(images, images.dtype if images.is_floating_point() else torch.float32)
    return x if side == "full" else pca.project(x, basis, side, share, method=method)


def pca_coordinates(images: Tensor, basis: pca.PCABasis, batch_size: int = 4096) -> Tensor:
    """images: (N, C, H, W) uint8 or float in [0, 1] -> (N, K) float32 coordinates
    ``(x - mean) @ components`` on the K stored components, batch by batch."""
    basis.check_images(images)
    mean = basis.mean.to(device=images.device, dtype=torch.float32)
    comps = basis.components.to(device=images.device, dtype=torch.float32)
    return torch.cat([(pca.as_unit_float(images[i:i + batch_size]).flatten(1) - mean) @ comps
                      for i in range(0, len(images), batch_size)])


def subspace_columns(basis: pca.PCABasis, side: str, share: float | None) -> slice:
    """Which coordinates of :func:`pca_coordinates` span the subspace.

    top p: the first n(top, p); bottom q: the stored components outside the top-(1 - q)
    subspace, i.e. the bottom-q subspace within the training span (the directions a
    Gram-path basis does not store carry no training variance, so a classifier fitted on
    the training images gives them no weight anyway); full: all stored components.
    """
    if side != "full":
        pca.check_share(share)
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


# ---------------------------------------------------------------- linear classifier


@dataclass(frozen=True)
class LinearConfig:
    """Softmax regression with an L2 penalty, full-batch L-BFGS (see :func:`linear_accuracy`).

    weight_decays: candidates for the penalty, chosen on a validation part of the
    training split by :func:`fit_linear` (empty: use ``weight_decay``).
    """

    weight_decay: float = 1e-4   # (wd / 2) ||W||^2 added to the mean cross-entropy; W acts on standardised pixels
    max_iter: int = 100          # L-BFGS iterations at most, over all restarts (each about two passes over the data)
    history_size: int = 20
    tolerance_grad: float = 1e-4  # converged when the objective's largest gradient entry is below this
    weight_decays: tuple[float, ...] = ()
    val_fraction: float = 0.1     # share of the training images held out to choose the penalty (then refitted on all)
    dtype: str = "float32"        # float64: slower, but the line search never stalls on rounding


# The subspace chapter's linear classifier: the penalty chosen on 10% of the training
# images held out (5,000 of CIFAR-10's), fitted in float64 until the largest gradient entry is below 1e-4.
SUBSPACE_LINEAR = LinearConfig(weight_decays=(1e-4, 1e-3, 1e-2, 1e-1), max_iter=1000, dtype="float64")


def _moments(train: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std (N - 1) of train (N, F), computed in float64, returned as ``dtype``."""
    x = train.double()
    std = x.std(0)
    floor = 1e-6 * float(std.max()) if std.numel() else 0.0
    return x.mean(0).to(dtype), std.clamp_min(max(floor, 1e-12)).to(dtype)


def linear_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                    cfg: LinearConfig = LinearConfig(), *, pixel_dim: int | None = None) -> dict:
    """Fit softmax regression on train_x, return test accuracy and fit statistics.

    train_x: (N, F) float features (images are flattened): pixels, or orthonormal
    coordinates of pixels (:func:`pca_coordinates`); train_y: (N,) int64 labels;
    test_x, test_y likewise. pixel_dim: the number of pixels D the features stand for
    (default F).

    The problem solved is the same for pixels and for any orthonormal coordinates of
    them: features minus their training mean, divided by one scalar s (the RMS
    per-pixel std, s^2 = sum of feature variances / D), weights W with the penalty
    (wd / 2) ||W||^2. It is solved in whitened, preconditioned variables (each feature
    divided by its own std and by the square root of the objective's curvature along it,
    the penalty reweighted to match), where L-BFGS converges even when the feature
    variances span orders of magnitude; ``grad_max`` is the largest gradient entry in
    those variables. The returned ``weight`` acts on whitened features (x - mean) / std.
    Deterministic (zero initialisation, full batch). The weight is stored (classes,
    features) so that its gradient is the fast ``G^T X`` product on CPU.
    """
    if cfg.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {cfg.dtype!r}")
    dtype = getattr(torch, cfg.dtype)
    xtr, xte = train_x.flatten(1).to(dtype), test_x.flatten(1).to(dtype)
    mean, std = _moments(xtr, dtype)
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std
    scale_sq = float((std.double() ** 2).sum()) / (pixel_dim or xtr.shape[1])
    # W_pixels_i = W_white_i * s / std_i, so the penalty on W_white is weighted s^2 / std_i^2.
    penalty = scale_sq / std.double() ** 2
    # Diagonal preconditioning: the objective's curvature along W_white_i is about
    # c + wd s^2 / std_i^2 (c ~ p (1 - p) at p = 1 / classes: the cross-entropy's part on a
    # standardised feature); optimise V = W_white * sqrt(that) so that every direction has
    # curvature about 1, whether the data or the penalty dominates it.
    curvature = (1 / num_classes) * (1 - 1 / num_classes) + cfg.weight_decay * penalty
    precond = curvature.sqrt().to(dtype)
    xtr, xte = xtr / precond, xte / precond
    penalty = (penalty / curvature).to(dtype)
    ytr, yte = train_y.to(xtr.device).long(), test_y.to(xtr.device).long()
    weight = torch.zeros(num_classes, xtr.shape[1], device=xtr.device, dtype=dtype, requires_grad=True)
    bias = torch.zeros(num_classes, device=xtr.device, dtype=dtype, requires_grad=True)
    def objective():
        return (F.cross_entropy(F.linear(xtr, weight, bias), ytr)
                + 0.5 * cfg.weight_decay * (weight ** 2 * penalty).sum())

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        return loss

    # torch's L-BFGS ends a call early when its float32 line search stalls (once after 23 of
    # 100 iterations on CIFAR-10 pixels, far from the optimum): restart it from where it
    # stopped, with a fresh history, until the gradient is small or the budget is spent.
    iterations, evals, grad_max, grad_norm = 0, 0, float("inf"), float("inf")
    while iterations < cfg.max_iter:
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=cfg.max_iter - iterations,
                                max_eval=2 * (cfg.max_iter - iterations), history_size=cfg.history_size,
                                tolerance_grad=cfg.tolerance_grad, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")
        opt.step(closure)
        state = opt.state[weight]
        done = int(state.get("n_iter", 0))
        iterations, evals = iterations + done, evals + int(state.get("func_evals", 0))
        weight.grad, bias.grad = None, None
        objective().backward()
        grad_max = float(torch.maximum(weight.grad.abs().max(), bias.grad.abs().max()))
        grad_norm = float(torch.cat([weight.grad.flatten(), bias.grad]).norm())
        if grad_max <= cfg.tolerance_grad or done <= 1:
            break
    with torch.no_grad():
        train_logits = F.linear(xtr, weight, bias)
        train_loss = float(F.cross_entropy(train_logits, ytr))
        if not math.isfinite(train_loss):
            raise FloatingPointError("softmax regression diverged: non-finite training loss")
        train_acc = float((train_logits.argmax(1) == ytr).float().mean())
        test_acc = float((F.linear(xte, weight, bias).argmax(1) == yte).float().mean())
    return {"test_accuracy": test_acc, "train_accuracy": train_acc, "train_loss": train_loss,
            "iterations": iterations, "function_evals": evals, "grad_max": grad_max, "grad_norm": grad_norm,
            "converged": grad_max <= cfg.tolerance_grad, "weight_decay": cfg.weight_decay,
            "weight": weight.detach() / precond, "bias": bias.detach(), "mean": mean, "std": std}


def choose_weight_decay(fit_x: Tensor, fit_y: Tensor, val_x: Tensor, val_y: Tensor, num_classes: int,
                        cfg: LinearConfig, *, pixel_dim: int | None = None) -> tuple[float, dict[float, dict]]:
    """The candidate of ``cfg.weight_decays`` with the best validation accuracy (ties: the
    larger penalty), and every candidate's fit."""
    if not cfg.weight_decays or any(not (wd >= 0) for wd in cfg.weight_decays):
        raise ValueError(f"weight_decays must be a non-empty list of penalties >= 0, got {cfg.weight_decays!r}")
    fits = {wd: linear_accuracy(fit_x, fit_y, val_x, val_y, num_classes, replace(cfg, weight_decay=wd),
                                pixel_dim=pixel_dim) for wd in cfg.weight_decays}
    chosen = max(sorted(cfg.weight_decays, reverse=True), key=lambda wd: fits[wd]["test_accuracy"])
    return chosen, fits


def fit_linear(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
               cfg: LinearConfig = SUBSPACE_LINEAR, *, pixel_dim: int | None = None, seed: int = 0) -> dict:
    """:func:`linear_accuracy` with the penalty chosen on held-out training images.

    With ``cfg.weight_decays``: a seeded ``cfg.val_fraction`` of the training rows is held
    out, each candidate fitted on the rest and scored on it; the chosen one is refitted
    on all training rows and scored once on the test rows. The result adds
    ``val_accuracy`` (by candidate) and the chosen ``weight_decay``; without candidates it
    is one fit with ``cfg.weight_decay``. The fitted weights are dropped.
    """
    drop = ("weight", "bias", "mean", "std")
    if not cfg.weight_decays:
        out = linear_accuracy(train_x, train_y, test_x, test_y, num_classes, cfg, pixel_dim=pixel_dim)
        return {k: v for k, v in out.items() if k not in drop}
    n = len(train_x)
    n_val = round(cfg.val_fraction * n)
    if not 0 < n_val < n:
        raise ValueError(f"val_fraction must leave at least one of the {n} training rows on each side, "
                         f"got {cfg.val_fraction!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(train_x.device)
    fit, val = order[n_val:], order[:n_val]
    ytr = train_y.to(train_x.device)
    chosen, fits = choose_weight_decay(train_x[fit], ytr[fit], train_x[val], ytr[val], num_classes, cfg,
                                       pixel_dim=pixel_dim)
    out = linear_accuracy(train_x, train_y, test_x, test_y, num_classes, replace(cfg, weight_decay=chosen),
                          pixel_dim=pixel_dim)
    out = {k: v for k, v in out.items() if k not in drop}
    out["val_accuracy"] = {str(wd): f["test_accuracy"] for wd, f in fits.items()}
    out["val_converged"] = all(f["converged"] for f in fits.values())
    return out


def _objective_and_grad(xs: Tensor, y: Tensor, weight: Tensor, bias: Tensor, weight_decay: float):
    """Mean cross-entropy + (wd / 2) ||W||^2 at (W, b) on features xs, and its largest gradient entry and norm."""
    w, b = weight.detach().clone().requires_grad_(True), bias.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(F.linear(xs, w, b), y) + 0.5 * weight_decay * (w ** 2).sum()
    loss.backward()
    grad = torch.cat([w.grad.flatten(), b.grad])
    return float(loss.detach()), float(grad.abs().max()), float(grad.norm())


def sklearn_agreement(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                      weight_decay: float, *, pixel_dim: int | None = None, cfg: LinearConfig = SUBSPACE_LINEAR,
                      tol: float = 1e-6, max_iter: int = 5000) -> dict:
    """Solve one penalised problem twice: :func:`linear_accuracy` and scikit-learn's lbfgs
    ``LogisticRegression``; their accuracies, iterations, objectives and gradients.

    Both see the same standardised features z = (x - mean) / s (s^2: the mean per-pixel
    variance, as in :func:`linear_accuracy`); scikit-learn's objective, mean loss +
    ||W||^2 / (2 C N), is ours for C = 1 / (wd N). Each solution's objective and
    gradient are evaluated by the same float64 code, so ``objective_gap`` (ours minus
    scikit-learn's) and the gradients compare like with like.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    ours = linear_accuracy(train_x, train_y, test_x, test_y, num_classes,
                           replace(cfg, weight_decays=(), weight_decay=weight_decay), pixel_dim=pixel_dim)
    ours_seconds = time.perf_counter() - start
    x, xt = train_x.flatten(1).double(), test_x.flatten(1).double()
    y, yt = train_y.to(x.device).long(), test_y.to(x.device).long()
    mean, std = ours["mean"].double(), ours["std"].double()
    scale = math.sqrt(float((std ** 2).sum()) / (pixel_dim or x.shape[1]))
    z, zt = (x - mean) / scale, (xt - mean) / scale
    w_ours = ours["weight"].double() * scale / std  # from whitened to scalar-standardised features
    b_ours = ours["bias"].double()

    start = time.perf_counter()
    ref = LogisticRegression(C=1.0 / (weight_decay * len(z)), tol=tol, max_iter=max_iter)
    ref.fit(z.cpu().numpy(), y.cpu().numpy())
    ref_seconds = time.perf_counter() - start
    w_ref = torch.as_tensor(ref.coef_, dtype=torch.float64, device=z.device)
    b_ref = torch.as_tensor(ref.intercept_, dtype=torch.float64, device=z.device)

    def side(w, b, seconds, iterations):
        objective, grad_max, grad_norm = _objective_and_grad(z, y, w, b, weight_decay)
        pred_test = F.linear(zt, w, b).argmax(1)
        return {"train_accuracy": float((F.linear(z, w, b).argmax(1) == y).double().mean()),
                "test_accuracy": float((pred_test == yt).double().mean()), "objective": objective,
                "grad_max": grad_max, "grad_norm": grad_norm, "iterations": int(iterations),
                "seconds": seconds}, pred_test

    mine, pred_mine = side(w_ours, b_ours, ours_seconds, ours["iterations"])
    theirs, pred_ref = side(w_ref, b_ref, ref_seconds, int(max(ref.n_iter_)))
    theirs["version"] = sklearn.__version__
    theirs["tol"] = tol
    return {"weight_decay": weight_decay, "ours": mine, "sklearn": theirs,
            "objective_gap": mine["objective"] - theirs["objective"],
            "test_prediction_agreement": float((pred_mine == pred_ref).double().mean()),
            "weight_rel_diff": float((w_ours - w_ref).norm() / w_ref.norm().clamp_min(1e-300))}


# ---------------------------------------------------------------- conv net


def _conv_bn(c_in: int, c_out: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    return layers + ([nn.MaxPool2d(2)] if pool else []) + [nn.BatchNorm2d(c_out), nn.GELU()]


class SmallConvNet(nn.Sequential):
    """A narrow airbench-style net (KellerJordan/cifar10-airbench, its widths quartered).

    stem conv (3/4 width) -> three blocks of [conv, max-pool 2, BN, GELU, conv, BN, GELU]
    with width, 2 width and 4 width channels -> global max pool -> linear head (no bias).
    imgs: (N, C, H, W) standardised -> logits (N, num_classes). Width 32 on 32x32 images:
    0.58 M parameters, 40 M multiply-adds per image.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 32):
        if width < 4 or width % 4:
            raise ValueError(f"width must be a multiple of 4 and >= 4, got {width!r}")
        stem, chans = 3 * width // 4, [width, 2 * width, 4 * width]
        layers = _conv_bn(in_chans, stem, pool=False)
        for c_in, c_out in zip([stem] + chans[:-1], chans):
            layers += _conv_bn(c_in, c_out, pool=True) + _conv_bn(c_out, c_out, pool=False)
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes, bias=False)]
        super().__init__(*layers)


@dataclass(frozen=True)
class ConvNetConfig:
    """Training settings of the conv-net classifier (units in comments): SGD with Nesterov
    momentum, label smoothing, crop + flip, a schedule sized for a 2-core CPU (what each
    run took is in its record)."""

    width: int = 32               # channels of the first block (then 2x and 4x; stem 3/4 x)
    epochs: int = 6               # passes over the training images
    batch_size: int = 256         # images per optimiser step
    lr: float = 0.2               # SGD (Nesterov momentum 0.9) peak learning rate
    weight_decay: float = 5e-3    # on conv and linear weights, not on BN
    warmup_epochs: float = 1.2    # linear warm-up, then cosine to 0
    label_smoothing: float = 0.2
    pad: int = 2                  # reflect padding before the random crop, pixels
    precision: str = "fp32"       # fp32 everywhere: the same arithmetic on AVX2, AVX-512 and GPUs


def pad_crop_flip(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Standard CIFAR augmentation, batched: reflect-pad by ``pad``, random crop back to
    (H, W), random horizontal flip. images: (N, C, H, W) uint8 or float in [0, 1] ->
    float (N, C, H, W) in [0, 1]. Reflect padding (as in KellerJordan/cifar10-airbench)
    adds no black border for the PCA projection applied afterwards to smear.
    """
    x = pca.as_unit_float(images)
    n, _, h, w = x.shape
    dev = generator.device if generator is not None else torch.device("cpu")
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        x = x.gather(2, rows.expand(n, x.shape[1], h, x.shape[3]))
        x = x.gather(3, cols.expand(n, x.shape[1], h, w))
    flip = (torch.rand(n, generator=generator, device=dev) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def _run_name(fields: dict) -> str:
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
    share = "" if fields["side"] == "full" else f"{fields['share']:g}"
    return f"convnet-{fields['dataset']}-{fields['side']}{share}-e{fields['epochs']}-s{fields['seed']}-{digest}"


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, transform: Callable[[Tensor], Tensor],
            batch_size: int = 1024) -> Tensor:
    """Class predictions (N,) for images (N, C, H, W); ``transform`` maps a float batch in
    [0, 1] to the model's input."""
    model.eval()
    out = [model(transform(pca.as_unit_float(images[i:i + batch_size]))).argmax(1)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


def convnet_accuracy(train_u8: Tensor, train_y: Tensor, test_u8: Tensor, test_y: Tensor, num_classes: int,
                     project: Callable[[Tensor], Tensor], scale: float, mean_image: Tensor, *,
                     cfg: ConvNetConfig = ConvNetConfig(), seed: int = 0, run_dir: str | Path,
                     device: torch.device | str = "cpu", stop_after: int | None = None) -> dict:
    """Train :class:`SmallConvNet` on projected, augmented training images; test accuracy.

    train_u8, test_u8: (N, C, H, W) uint8 on ``device``; project: float batch in [0, 1]
    -> its projection (a ``pca.SubspaceFilter``, or the identity for full images);
    input to the net: (project(augmented) - mean_image) / scale. Trains with
    ``train.train_loop`` in ``run_dir`` (resumes, or loads a finished run).
    """
    from .train import DeviceData, LoopConfig, build_optimizer, resolve_precision, train_loop

    device = torch.device(device)
    mean_image = mean_image.to(device=device, dtype=torch.float32).view(1, *train_u8.shape[1:])

    def to_input(x01: Tensor) -> Tensor:
        # Project in float32 even under bf16 autocast: a bottom subspace is a small
        # difference of large numbers, which bf16 (8 bits of mantissa) would drown.
        with torch.autocast(device.type, enabled=False):
            x = (project(x01.float()) - mean_image) / scale
        return x.contiguous(memory_format=torch.channels_last)

    torch.manual_seed(seed)  # the initial weights
    # channels_last: 1.7x the training throughput of NCHW on a 2-core CPU (oneDNN).
    model = SmallConvNet(num_classes, train_u8.shape[1], cfg.width).to(device, memory_format=torch.channels_last)
    data = DeviceData(train_u8, train_y.to(device), min(cfg.batch_size, len(train_u8)))
    optimizer = build_optimizer(model, kind="sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, nesterov=True,
                                device=device)

    def loss_fn(m, x_u8, labels, gen):
        logits = m(to_input(pad_crop_flip(x_u8, cfg.pad, gen)))
        return F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)

    loop = LoopConfig(epochs=cfg.epochs, peak_lr=cfg.lr, warmup_epochs=min(cfg.warmup_epochs, cfg.epochs),
                      seed=seed, precision=resolve_precision(device, cfg.precision))
    start = time.perf_counter()
    history = train_loop(run_dir, model, optimizer, data, loss_fn, loop, device, progress=False,
                         stop_after=stop_after)
    trained_seconds = time.perf_counter() - start
    test_pred = predict(model, test_u8, to_input)
    return {"test_accuracy": float((test_pred == test_y.to(test_pred.device)).float().mean()),
            "train_loss": history[-1]["loss"] if history else float("nan"),
            "epochs_done": len(history), "train_seconds_this_call": trained_seconds}


# ---------------------------------------------------------------- the grid


def share_grid(shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
               shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM) -> list[tuple[str, float | None]]:
    """[('full', None), ('top', p) ..., ('bottom', q) ...], shares checked."""
    return ([("full", None)] + [("top", pca.check_share(p)) for p in shares_top]
            + [("bottom", pca.check_share(q)) for q in shares_bottom])


def classify_subspaces(train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
                       basis: pca.PCABasis, *, num_classes: int, dataset: str,
                       shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                       shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM,
                       classifiers: Sequence[str] = ("linear",), seed: int = 0,
                       linear: LinearConfig = SUBSPACE_LINEAR, convnet: ConvNetConfig = ConvNetConfig(),
                       method: str = "complement", device: torch.device | str = "cpu",
                       root: str | os.PathLike | None = None,
                       on_row: Callable[[dict], None] | None = None,
                       points: Sequence[tuple[str, float | None]] | None = None,
                       sklearn_check: Sequence[tuple[str, float | None]] = ()) -> list[dict]:
    """Train every classifier on every subspace of the grid; one dict per (subspace, classifier).

    train_images, test_images: (N, C, H, W) uint8; labels (N,) int64; basis: PCA of the
    training split (fitted on training images only). The first rows are the full
    images (side 'full', share 1.0), whose accuracy every later row carries as
    ``full_accuracy``. Each row also holds ``variance_share`` (the kept eigenvalues'
    share) and ``kept_share_test`` (:func:`kept_variance_share` of the projected test
    images). on_row: called with each row as soon as it exists (to record it).

    The linear classifier sees the subspace's PCA coordinates (:func:`pca_coordinates`,
    :func:`subspace_columns`): a linear function of the projected pixels
    ``mean + V_S V_S^T (x - mean)`` is a linear function of ``V_S^T (x - mean)`` and
    back, and :func:`linear_accuracy` solves the same penalised problem in either, so
    this is the linear classifier of the projected images, fitted faster.
    """
    unknown = [c for c in classifiers if c not in CLASSIFIERS]
    if unknown or not classifiers:
        raise ValueError(f"classifiers must be a non-empty subset of {CLASSIFIERS}, got {list(classifiers)!r}")
    basis.check_images(train_images)
    device = torch.device(device)
    train_u8, test_u8 = train_images.to(device), test_images.to(device)
    ytr, yte = torch.as_tensor(train_labels).to(device), torch.as_tensor(test_labels).to(device)
    if (ytr < 0).any() or (yte < 0).any():
        raise ValueError("subspace classification needs labelled images (labels >= 0)")
    basis_dev = basis.to(device)
    coords, coords_seconds = None, 0.0
    if "linear" in classifiers:
        start = time.perf_counter()
        coords = pca_coordinates(train_u8, basis_dev), pca_coordinates(test_u8, basis_dev)
        coords_seconds = time.perf_counter() - start
    full_accuracy: dict[str, float] = {}
    rows = []
    for side, share in share_grid(shares_top, shares_bottom) if points is None else points:
        start = time.perf_counter()
        kept_test = kept_variance_share(project_split(test_u8, basis_dev, side, share, method=method), test_u8) \
            if side != "full" else 1.0
        var_share = eigen_share(basis, side, share)
        measure_seconds = time.perf_counter() - start
        for classifier in classifiers:
            start = time.perf_counter()
            if classifier == "linear":
                cols = subspace_columns(basis, side, share)
                out = fit_linear(coords[0][:, cols], ytr, coords[1][:, cols], yte, num_classes, linear,
                                 pixel_dim=basis.dim, seed=seed)
                if (side, share) in sklearn_check:
                    out["sklearn"] = sklearn_agreement(coords[0][:, cols], ytr, coords[1][:, cols], yte, num_classes,
                                                       out["weight_decay"], pixel_dim=basis.dim, cfg=linear)
                out["coordinates_seconds"] = coords_seconds
                settings = asdict(linear)
            else:
                if side == "full":
                    flt: Callable[[Tensor], Tensor] = lambda x: x  # noqa: E731
                else:
                    flt = pca.make_filter(basis_dev, side, share, method=method, device=device)
                fields = {"dataset": dataset, "side": side, "share": 1.0 if share is None else share,
                          "seed": seed, "n_train": len(train_u8), "method": method,
                          "basis_samples": basis.n_samples, **asdict(convnet)}
                run_dir = runs_dir(root) / "subspace" / _run_name(fields)
                run_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_json(run_dir / "config.json", fields)
                # Input scale: the RMS pixel deviation the subspace keeps (training eigenvalues).
                scale = math.sqrt(max(var_share * basis.total_variance / basis.dim, 1e-20))
                out = convnet_accuracy(train_u8, ytr, test_u8, yte, num_classes, flt, scale, basis.mean,
                                       cfg=convnet, seed=seed, run_dir=run_dir, device=device)
                out["run_dir"] = str(run_dir)
                settings = asdict(convnet)
            seconds = time.perf_counter() - start
            if side == "full":
                full_accuracy[classifier] = out["test_accuracy"]
            row = {"dataset": dataset, "side": side, "share": 1.0 if share is None else share,
                   "n_components": subspace_dim(basis, side, share), "dim": basis.dim,
                   "variance_share": var_share, "kept_share_test": kept_test, "classifier": classifier,
                   "seed": seed, "test_accuracy": out["test_accuracy"],
                   "full_accuracy": full_accuracy.get(classifier), "chance": 1.0 / num_classes,
                   "wall_seconds": seconds, "measure_seconds": measure_seconds,
                   "n_train": len(train_u8), "n_test": len(test_u8), "pca_method": method,
                   "basis_samples": basis.n_samples, "settings": settings,
                   "details": {k: v for k, v in out.items() if k != "test_accuracy"}}
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def subspace_classification(dataset: str = "synthetic", *, shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                            shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM,
                            classifiers: Sequence[str] = ("linear",), epochs: int | None = None, seed: int = 0,
                            n_train: int | None = None, n_fit: int | None = None, device: str | None = "auto",
                            linear: LinearConfig = SUBSPACE_LINEAR, convnet: ConvNetConfig = ConvNetConfig(),
                            method: str = "complement", record: bool = False,
                            root: str | os.PathLike | None = None,
                            results_root: str | os.PathLike | None = None,
                            sklearn_check: Sequence[tuple[str, float | None]] = ()):
    """Load a dataset, take its PCA basis, run :func:`classify_subspaces`; a DataFrame.

    n_train: a seeded subset of the training split for the classifiers; n_fit: fit the
    PCA on a seeded subset of that many training images (not cached); default: the
    whole training split through ``targets.dataset_basis`` (cached under the runs
    folder). epochs: the conv net's epochs (None: ``convnet.epochs``). record: write
    one ``results.write_record('subspace', ...)`` per row. The frame's ``attrs`` hold
    ``basis_seconds`` (loading the data and the basis) and ``wall_seconds`` (all).
    """
    import pandas as pd

    from .data import DATASETS, load_dataset
    from .results import write_record
    from .targets import dataset_basis
    from .train import resolve_device

    dev = resolve_device(device)
    if epochs is not None:
        convnet = ConvNetConfig(**{**asdict(convnet), "epochs": int(epochs)})
    fit_start = time.perf_counter()
    train_full = load_dataset(dataset, "train")
    test = load_dataset(dataset, "test")
    if n_fit is None:
        basis = dataset_basis(dataset, root=root, device=dev)
    else:
        fit_images = train_full.subset(n_fit, seed=seed).to_tensor(dev)
        basis = pca.fit_pca(fit_images, dataset=dataset, split="train")
    basis_seconds = time.perf_counter() - fit_start
    train = train_full if n_train is None else train_full.subset(n_train, seed=seed)

    def on_row(row: dict) -> None:
        if record:
            write_record("subspace", row, device=str(dev), root=results_root)

    rows = classify_subspaces(
        train.to_tensor(dev), torch.from_numpy(train.labels), test.to_tensor(dev), torch.from_numpy(test.labels),
        basis, num_classes=DATASETS[dataset].num_classes, dataset=dataset, shares_top=shares_top,
        shares_bottom=shares_bottom, classifiers=classifiers, seed=seed, linear=linear, convnet=convnet,
        method=method, device=dev, root=root, on_row=on_row, sklearn_check=sklearn_check)
    frame = pd.DataFrame(rows)
    frame.attrs["basis_seconds"] = basis_seconds
    frame.attrs["wall_seconds"] = time.perf_counter() - fit_start
    return frame


# Where the linear fit is checked against scikit-learn: the full images and two subspaces.
SKLEARN_CHECK = (("full", None), ("top", 0.9), ("bottom", 0.25))


def linear_subspace_benchmark(dataset: str = "cifar10", *, shares_top: Iterable[float] = DEFAULT_SHARES_TOP,
                              shares_bottom: Iterable[float] = DEFAULT_SHARES_BOTTOM, device: str | None = "cpu",
                              sklearn_check: Sequence[tuple[str, float | None]] = SKLEARN_CHECK,
                              root: str | os.PathLike | None = None,
                              results_root: str | os.PathLike | None = None):
    """The linear classifier on every subspace of a real dataset, every row recorded.

    Run with ``LOWVAR_MAE_DATA`` pointing at the data (e.g. /work/shared/datasets). The
    penalty of each subspace is chosen on held-out training images (``SUBSPACE_LINEAR``);
    the points of ``sklearn_check`` are solved again by scikit-learn. Returns the
    DataFrame of :func:`subspace_classification` (its ``wall_seconds`` per row).
    """
    return subspace_classification(dataset, shares_top=shares_top, shares_bottom=shares_bottom,
                                   classifiers=("linear",), device=device, record=True, root=root,
                                   results_root=results_root, sklearn_check=sklearn_check)


def plot_subspace_accuracy(frame, classifier: str | None = None, ax=None):
    """Test accuracy against the share of variance kept (measured on the test images): one
    curve for top and one for bottom subspaces per classifier, the full-image accuracy as a
    horizontal line, chance as a dotted line. frame: rows of :func:`classify_subspaces`."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.0))
    names = [classifier] if classifier else list(dict.fromkeys(frame["classifier"]))
    for i, name in enumerate(names):
        part = frame[frame["classifier"] == name]
        for side, marker, ls in (("top", "o", "-"), ("bottom", "s", "--")):
            rows = part[part["side"] == side].sort_values("kept_share_test")
            if len(rows):
                ax.plot(rows["kept_share_test"], rows["test_accuracy"], marker=marker, ls=ls, color=f"C{i}",
                        label=f"{name}: {side} subspace")
        full = part[part["side"] == "full"]
        if len(full):
            ax.axhline(float(full["test_accuracy"].iloc[0]), color=f"C{i}", lw=1, ls=":",
                       label=f"{name}: full image")
    if len(frame):
        ax.axhline(float(frame["chance"].iloc[0]), color="grey", lw=0.8, ls=(0, (1, 3)), label="chance")
    ax.set_xlabel("share of pixel variance kept (test images)")
    ax.set_ylabel("test accuracy")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


# ================================================================ learning order


@dataclass(frozen=True)
class Bands:
    """Eigen-directions grouped by cumulative share of variance, counted from the top.

    edges: (B + 1,) shares 0 = e_0 < e_1 < ... < e_B = 1. Band b holds the components
    of the top-e_{b+1} subspace that are not in the top-e_b one (``pca`` share
    convention: top p = the fewest components that reach p), components
    ``starts[b] .. starts[b + 1] - 1``; a component that straddles several edges
    leaves the bands it jumps over empty. The last band also holds every direction the
    basis does not store (the residual outside its K stored components).
    stored_variance: (B,) sum of the eigenvalues of the band's stored components.
    """

    edges: tuple[float, ...]
    starts: tuple[int, ...]
    stored_variance: tuple[float, ...]
    n_stored: int
    dim: int

    @property
    def n_bands(self) -> int:
        return len(self.edges) - 1

    @property
    def n_directions(self) -> tuple[int, ...]:
        """(B,) eigen-directions in each band (the last band's include the unstored ones)."""
        return tuple(b - a for a, b in zip(self.starts[:-1], self.starts[1:]))

    def labels(self) -> list[str]:
        return [f"{100 * a:g}-{100 * b:g}%" for a, b in zip(self.edges[:-1], self.edges[1:])]


def make_bands(basis: pca.PCABasis, edges: Sequence[float] = DECILES) -> Bands:
    """Group the basis' directions into bands of cumulative share ``edges`` (see :class:`Bands`)."""
    edges = tuple(float(e) for e in edges)
    if len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 1.0 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"band edges must increase from 0 to 1, got {edges}")
    d = basis.dim
    starts = (0,) + tuple(basis.n_components(e, "top") for e in edges[1:-1]) + (d,)
    if basis.n_stored < starts[-2]:
        raise ValueError(
            f"the basis stores {basis.n_stored} components, but the band starting at share {edges[-2]:g} "
            f"starts at component {starts[-2]}; use coarser bands or a basis with more components")
    ev = basis.eigenvalues.double().cpu()
    stored = tuple(float(ev[a:min(b, basis.n_stored)].sum()) for a, b in zip(starts[:-1], starts[1:]))
    return Bands(edges, starts, stored, basis.n_stored, d)


@dataclass(frozen=True)
class BandErrors:
    """Squared reconstruction error per band. sq_error, variance: (B,) float64, both per image
    (mean over the batch of squared norms); rel_error = sq_error / variance (NaN for an
    empty band); total_sq_error: mean squared norm of the whole error."""

    bands: Bands
    sq_error: Tensor
    variance: Tensor
    total_sq_error: float

    @property
    def rel_error(self) -> Tensor:
        return self.sq_error / self.variance

    @property
    def edges(self) -> tuple[float, ...]:
        return self.bands.edges


def _residual_sq(x: Tensor, components: Tensor) -> tuple[Tensor, Tensor]:
    """x: (N, D) -> squared coefficients (N, K) on the components, squared norm (N,) of the rest."""
    coef = x @ components
    rest = x - coef @ components.T
    return coef ** 2, (rest ** 2).sum(1)


def band_errors(pred: Tensor, target: Tensor, basis: pca.PCABasis, bands: Bands | Sequence[float] = DECILES, *,
                mask: Tensor | None = None, images: Tensor | None = None) -> BandErrors:
    """Split the squared error of ``pred`` against ``target`` into bands of eigen-directions.

    pred, target: (N, C, H, W) (or (N, D)) images in [0, 1], flattened in CHW order;
    basis: the dataset's PCA (on the images' device); bands: a :class:`Bands` or its
    edges (deciles by default). mask: (N, 1, H, W) or (N, C, H, W), 1 = count this
    pixel (e.g. the masked patches of an MAE); the error elsewhere is set to 0 first.
    images: the data whose variance normalises the residual band (default ``target``).

    The error e = pred - target is expanded as e = V V^T e + r (V: the K stored
    components, r: the residual); band b's squared error is the sum of (v_i . e)^2 over
    its components, the last band adds |r|^2, so the bands add up to |e|^2 (Parseval).
    Band b's variance is the sum of its stored eigenvalues; the last band adds the
    measured variance of ``images`` outside the stored components (mean of
    |r(x - mean)|^2), which the eigenvalues do not hold when K < D.
    """
    split = bands if isinstance(bands, Bands) else make_bands(basis, bands)
    if split.dim != basis.dim or split.n_stored != basis.n_stored:
        raise ValueError("bands were made for another basis")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    comps = basis.components
    err = (pred.to(comps.dtype) - target.to(comps.dtype))
    if mask is not None:
        err = err * mask.to(comps.dtype).expand_as(err)
    err = err.flatten(1)
    if err.shape[1] != basis.dim:
        raise ValueError(f"images of {err.shape[1]} values per image, basis of dimension {basis.dim}")
    coef_sq, rest_sq = _residual_sq(err, comps)
    per_comp = coef_sq.mean(0)
    index = torch.bucketize(torch.arange(split.n_stored, device=comps.device),
                            torch.tensor(split.starts[1:-1], device=comps.device), right=True)
    sq = torch.zeros(split.n_bands, dtype=comps.dtype, device=comps.device).index_add_(0, index, per_comp)
    sq[-1] += rest_sq.mean()
    ref = (images if images is not None else target).flatten(1).to(comps.dtype) - basis.mean
    _, ref_rest = _residual_sq(ref, comps)
    variance = torch.tensor(split.stored_variance, dtype=comps.dtype, device=comps.device)
    variance[-1] += ref_rest.mean()
    return BandErrors(split, sq.cpu(), variance.cpu(), float((err ** 2).sum(1).mean()))


def _json_floats(values: Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(float(v)) else None for v in values]


def learning_order_hook(batch01: Tensor, basis: pca.PCABasis, target_fn: Callable[[Tensor], Tensor],
                        bands: Sequence[float] = DECILES, every: int = 1, seed: int = 0, *,
                        masked_only: bool = True, last: int | None = None) -> Callable[[nn.Module, int], dict]:
    """A ``hook(model, epoch) -> dict`` for ``pretrain(..., epoch_hooks=[hook])``.

    At epoch 1, every ``every`` epochs and at epoch ``last`` (if given) it reconstructs ``batch01`` (N, C, H, W) in
    [0, 1] (held-out images) with a fixed mask drawn from ``seed``
    (``pretrain.reconstruct``) and returns {"band_rel_error": [B floats, null for an
    empty band], "band_edges": [B + 1 shares]}. target_fn: images in [0, 1] -> the
    target on the model's input scale (``targets.make_target``). masked_only: count
    the error on masked patches only (the prediction pasted into the input, as the loss
    sees it); a model that predicts the mean image there then scores about the mask
    ratio, not 1, in each band.
    """
    from .pretrain import reconstruct

    if every < 1:
        raise ValueError(f"every must be a positive integer, got {every}")
    split = make_bands(basis, bands)
    on_device: dict[torch.device, tuple[Tensor, pca.PCABasis]] = {}

    def hook(model: nn.Module, epoch: int) -> dict:
        if epoch != 1 and epoch % every and epoch != last:
            return {}
        model = unwrap(model)
        device = next(model.parameters()).device
        if device not in on_device:
            on_device[device] = (batch01.to(device=device, dtype=torch.float32), basis.to(device))
        x01, dev_basis = on_device[device]
        rec = reconstruct(model, x01, target_fn, seed=seed)
        result = band_errors(rec["prediction"], rec["target"], dev_basis, split,
                             mask=rec["mask"] if masked_only else None, images=x01)
        return {"band_rel_error": _json_floats(result.rel_error), "band_edges": list(split.edges)}

    return hook


def band_metrics(metrics: Iterable[dict]):
    """Band errors of metrics lines (dicts, as ``train.read_metrics`` returns them) as a
    long DataFrame: epoch, band (0 = top), band_label, lo, hi, rel_error. Lines without
    band metrics are skipped."""
    import pandas as pd

    rows = []
    for m in metrics:
        if "band_rel_error" not in m:
            continue
        edges = m["band_edges"]
        for b, value in enumerate(m["band_rel_error"]):
            rows.append({"epoch": m["epoch"], "band": b, "band_label": f"{100 * edges[b]:g}-{100 * edges[b + 1]:g}%",
                         "lo": edges[b], "hi": edges[b + 1],
                         "rel_error": float("nan") if value is None else float(value)})
    return pd.DataFrame(rows, columns=["epoch", "band", "band_label", "lo", "hi", "rel_error"])


def read_band_metrics(run_dir: str | os.PathLike):
    """The band errors in ``<run_dir>/metrics.jsonl`` as a long DataFrame (see :func:`band_metrics`)."""
    from .train import read_metrics

    return band_metrics(read_metrics(run_dir))


def has_band_metrics(metrics: Sequence[dict]) -> bool:
    """True when there are metrics lines and every one carries band errors."""
    return bool(metrics) and all("band_rel_error" in m for m in metrics)


def band_hook(config, *, n_eval: int = 256, every: int = 1, bands: Sequence[float] = DECILES,
              device: str | None = "auto", root: str | os.PathLike | None = None) -> Callable[[nn.Module, int], dict]:
    """:func:`learning_order_hook` for pretraining run ``config``: band errors of the first
    ``n_eval`` test images at epoch 1, every ``every`` epochs and at the last epoch, in the
    bands of the dataset's PCA (the basis a pca-* target is filtered with), the mask drawn
    from the config's seed. The hook draws no random number of the training."""
    from .data import load_dataset
    from .models import get_config
    from .targets import dataset_basis, make_target
    from .train import resolve_device

    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 2:
        raise ValueError(f"n_eval must be an integer >= 2 (band variances need two images), got {n_eval!r}")
    dev = resolve_device(device)
    basis = dataset_basis(config.dataset, root=root, device=dev)
    batch01 = load_dataset(config.dataset, "test").to_tensor(dev)[:n_eval].float() / 255
    target_fn = make_target(config.target, basis=basis, patch_size=get_config(config.model).patch_size,
                            image_shape=tuple(batch01.shape[1:]), device=dev, method=config.pca_method)
    return learning_order_hook(batch01, basis, target_fn, bands, every=every, seed=config.seed, last=config.epochs)


def learning_order_run(config, *, n_eval: int = 64, bands: Sequence[float] = DECILES, every: int = 1,
                       missing: str = "retrain", basis: pca.PCABasis | None = None, device: str | None = "auto",
                       root: str | os.PathLike | None = None, progress: bool = False):
    """Pretrain ``config`` with :func:`learning_order_hook`, or load it; returns (run, note).

    The hook is not part of the run name, so a run trained without it (by another
    chapter) has the same folder and no band metrics. missing: what to do then:
    "retrain" deletes the run folder and trains it again with the hook (the hook draws
    no random numbers of the training, so the retrained weights are the same);
    "skip" loads the run as it is (its band metrics stay missing). The held-out batch is
    the first ``n_eval`` test images, the mask is drawn from the config's seed. basis:
    the PCA whose bands are measured (default: ``targets.dataset_basis``, the one a pca-*
    target is filtered with; another basis is for quick checks only). A run that already
    has band metrics is loaded with them, whatever n_eval, bands and every they were
    measured with.
    """
    from .data import load_dataset
    from .models import get_config
    from .pretrain import is_finished, pretrain
    from .targets import dataset_basis, make_target
    from .train import read_metrics, resolve_device

    if missing not in ("retrain", "skip"):
        raise ValueError(f"missing must be 'retrain' or 'skip', got {missing!r}")
    dev = resolve_device(device)
    run_dir = runs_dir(root) / config.run_name
    existing = read_metrics(run_dir)
    force, note = False, "trained with band metrics"
    if existing and not has_band_metrics(existing):
        if missing == "retrain":
            force = True
            note = "retrained: the finished run had no band metrics" if is_finished(run_dir, config) else \
                "retrained: the partial run had epochs without band metrics"
        else:
            note = "loaded without band metrics for every epoch (missing='skip')"
    elif existing and is_finished(run_dir, config):
        note = "loaded with band metrics"
    target_basis = None
    if basis is None or config.target.startswith("pca-"):
        target_basis = dataset_basis(config.dataset, root=root, device=dev)
    basis = target_basis if basis is None else basis.to(dev)
    test = load_dataset(config.dataset, "test")
    batch01 = test.to_tensor(dev)[:n_eval].float() / 255
    model_cfg = get_config(config.model)
    target_fn = make_target(config.target, basis=target_basis, patch_size=model_cfg.patch_size,
                            image_shape=tuple(batch01.shape[1:]), device=dev, method=config.pca_method)
    hook = learning_order_hook(batch01, basis, target_fn, bands, every=every, seed=config.seed)
    run = pretrain(config, root=root, device=device, force=force, progress=progress, epoch_hooks=[hook])
    return run, note


LEARNING_ORDER_KIND = "learning_order"


def learning_order_fields(run, note: str = "") -> dict:
    """What a learning-order record holds: the run's name and config, and per epoch its
    training loss, seconds and band errors (the lines of metrics.jsonl that have them)."""
    from .pretrain import probe_curve

    lines = [{k: m[k] for k in ("epoch", "loss", "seconds", "band_rel_error", "band_edges", "probe_val") if k in m}
             for m in run.metrics if "band_rel_error" in m]
    cfg = run.config
    return {"dataset": cfg.dataset, "target": cfg.target, "recipe": cfg.recipe, "seed": cfg.seed,
            "pretrain_epochs": cfg.epochs, "run_name": run.run_dir.name, "config": asdict(cfg), "epochs": lines,
            "note": note, "probe_curve": probe_curve(run.run_dir),
            "pretrain_seconds": sum(float(m.get("seconds", 0.0)) for m in run.metrics)}


def learning_order_records(records) -> dict:
    """Target -> long DataFrame of :func:`band_metrics` for each learning-order record
    (``load_records('learning_order')``); the newest record of a run name wins."""
    if records is None or not len(records):
        return {}
    newest = records.sort_values("time_utc").drop_duplicates("run_name", keep="last")
    return {r["target"]: band_metrics(r["epochs"]) for _, r in newest.iterrows()}


def plot_learning_order(frames: dict, ax_width: float = 4.2):
    """One panel per target: each band's relative error against epoch, top band darkest.

    frames: target name -> long DataFrame of :func:`band_metrics`.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n = max(1, len(frames))
    fig, axes = plt.subplots(1, n, figsize=(ax_width * n, 3.6), squeeze=False, sharey=True)
    for ax, (name, frame) in zip(axes[0], frames.items()):
        bands = sorted(frame["band"].unique()) if len(frame) else []
        cmap = plt.get_cmap("viridis")
        for b in bands:
            rows = frame[frame["band"] == b].sort_values("epoch")
            if rows["rel_error"].notna().any():
                ax.plot(rows["epoch"], rows["rel_error"], marker=".", color=cmap(b / max(1, len(bands) - 1)),
                        label=rows["band_label"].iloc[0])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("squared error / data variance in band")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, title="band (from the top)", fontsize=7, title_fontsize=8,
                   loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig
