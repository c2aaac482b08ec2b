"""Probes of frozen features: extraction and pooling, softmax regression, the BatchNorm +
linear head, kNN, and the calibration probe that pretraining runs on itself.

* :func:`extract_features`, :func:`extract_pooled`: an encoder's features of a set of
  images, pooled as the CLS token, the mean of the patch tokens, or both
  (``lowvar_mae.models.POOLINGS``); :func:`choose_pooling` picks one on a validation split;
* :func:`linear_accuracy` (:class:`LinearConfig`): softmax regression fitted to
  convergence by L-BFGS in whitened variables, its penalty chosen on validation
  (:func:`choose_weight_decay`), checked against scikit-learn (:func:`sklearn_agreement`);
  the probe of pooling choices, of the calibration curve and of the subspace curve;
* :func:`build_head`, :class:`LinearProbe`: MAE's linear probe, ``BatchNorm1d(affine=False)
  -> Linear`` on a frozen encoder (trained by ``lowvar_mae.evaluate``);
* :func:`knn_accuracy`: weighted k-nearest-neighbour votes on cosine similarity (DINO's);
* :func:`validation_probe`: the softmax regression on the validation split that a
  pretraining run calls every few epochs (``probe_every``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import validation_split
from .models import POOLINGS, ViTClassifier, ViTEncoder, pool_tokens
from .train import autocast, normalize

# ---------------------------------------------------------------- features


# Feature choices of the probes: a pooling of lowvar_mae.models.POOLINGS, or "auto" (chosen
# on the validation split).
FEATURES = (*POOLINGS, "auto")


KNN_K = 20


KNN_TEMPERATURE = 0.07


def build_head(embed_dim: int, num_classes: int, *, norm: bool, init_std: float, seed: int) -> nn.Module:
    """Linear head (N, D) -> (N, classes), weights ~ trunc normal(init_std) from ``seed``, bias 0;
    with ``norm``: BatchNorm1d(D, affine=False, eps=1e-6) before it (official MAE linear probe)."""
    linear = nn.Linear(embed_dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=init_std, generator=torch.Generator().manual_seed(seed))
    nn.init.zeros_(linear.bias)
    if not norm:
        return linear
    return nn.Sequential(nn.BatchNorm1d(embed_dim, affine=False, eps=1e-6), linear)


class LinearProbe(ViTClassifier):
    """A :class:`ViTClassifier` whose encoder is frozen: no gradients, always in eval mode.

    ``train()`` switches only the head; the encoder runs under ``torch.no_grad``.
    """

    def __init__(self, encoder: ViTEncoder, head: nn.Module, pooling: str = "cls") -> None:
        super().__init__(encoder, num_classes=1)
        self.head = head
        self.pooling = pooling
        encoder.requires_grad_(False)
        encoder.eval()

    def train(self, mode: bool = True) -> LinearProbe:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, imgs: Tensor) -> Tensor:
        """imgs: (N, C, H, W) -> logits (N, num_classes)."""
        with torch.no_grad():
            features = self.encoder.pooled_features(imgs, self.pooling)
        return self.head(self.head_drop(features))


@torch.no_grad()
def _batched(fn, inputs: Tensor, batch_size: int, device: torch.device, precision: str) -> Tensor:
    """fn over ``inputs`` in batches (each moved to ``device``) under autocast; float32 outputs, concatenated."""
    outs = []
    for chunk in inputs.split(batch_size):
        with autocast(device, precision):
            outs.append(fn(chunk.to(device, non_blocking=True)).float())
    return torch.cat(outs)


def extract_features(encoder: ViTEncoder, images: Tensor, *, batch_size: int = 256,
                     device: torch.device | str = "cpu", precision: str = "fp32", pooling: str = "cls") -> Tensor:
    """Features of uint8 images (N, C, H, W) by ``pooling`` (default the CLS token): (N, F)
    float32, in eval mode, without gradients."""
    return extract_pooled(encoder, images, (pooling,), batch_size=batch_size, device=device,
                          precision=precision)[pooling]


def extract_pooled(encoder: ViTEncoder, images: Tensor, poolings=POOLINGS, *, batch_size: int = 256,
                   device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, Tensor]:
    """Every pooling of ``poolings`` from one forward pass per batch: {pooling: (N, F) float32}."""
    poolings = tuple(poolings)
    was_training = encoder.training
    encoder.eval()

    def pooled(x_u8: Tensor) -> Tensor:
        tokens = encoder.forward_features(normalize(x_u8.float() / 255))
        return torch.cat([pool_tokens(tokens, p) for p in poolings], dim=1)

    joined = _batched(pooled, images, batch_size, torch.device(device), precision)
    encoder.train(was_training)
    widths = [encoder.feature_dim(p) for p in poolings]
    return dict(zip(poolings, joined.split(widths, dim=1)))


def choose_pooling(train: dict[str, Tensor], train_labels: Tensor, val: dict[str, Tensor], val_labels: Tensor,
                   num_classes: int, *, by: str = "linear") -> tuple[str, dict[str, float]]:
    """The pooling whose features classify the validation part best, and every pooling's score.

    train, val: {pooling: features} of the training and validation parts. by="linear":
    softmax regression fitted to convergence by L-BFGS (:func:`linear_accuracy`,
    deterministic); by="knn": :func:`knn_accuracy`. Ties go to the first pooling in order.
    The test split is never looked at.
    """
    if by not in ("linear", "knn"):
        raise ValueError(f"by must be 'linear' or 'knn', got {by!r}")
    scores = {}
    for pooling in train:
        if by == "knn":
            scores[pooling] = knn_accuracy(train[pooling], train_labels, val[pooling], val_labels,
                                           num_classes=num_classes)
        else:
            scores[pooling] = linear_accuracy(train[pooling], train_labels, val[pooling], val_labels, num_classes,
                                              LinearConfig(weight_decay=1e-4, max_iter=200))["test_accuracy"]
    return max(scores, key=scores.get), scores


def knn_votes(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, *, k: int = KNN_K,
              T: float = KNN_TEMPERATURE, num_classes: int, batch_size: int = 1024) -> Tensor:
    """Weighted kNN votes (M, num_classes), as in DINO's ``knn_classifier``.

    Features are L2-normalised; each test row takes its k most cosine-similar training
    rows and adds exp(similarity / T) to the vote of each neighbour's class. Batched over
    test rows: memory (batch_size, N_train).
    """
    if k > len(train_feats):
        raise ValueError(f"k={k} neighbours but only {len(train_feats)} training features")
    bank = F.normalize(train_feats.float(), dim=1)
    train_labels = train_labels.to(bank.device)
    votes = []
    for chunk in test_feats.split(batch_size):
        sims, idx = (F.normalize(chunk.float().to(bank.device), dim=1) @ bank.T).topk(k, dim=1)
        weights = (sims / T).exp()
        v = torch.zeros(len(chunk), num_classes, device=bank.device)
        votes.append(v.scatter_add_(1, train_labels[idx], weights))
    return torch.cat(votes)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 k: int = KNN_K, T: float = KNN_TEMPERATURE, num_classes: int | None = None,
                 batch_size: int = 1024) -> float:
    """Top-1 accuracy of :func:`knn_votes` (cosine similarity, k=20, T=0.07 by default)."""
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    votes = knn_votes(train_feats, train_labels, test_feats, k=k, T=T, num_classes=num_classes,
                      batch_size=batch_size)
    return float((votes.argmax(1) == test_labels.to(votes.device)).float().mean())


# ---------------------------------------------------------------- softmax regression


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


# ---------------------------------------------------------------- the calibration probe


# Images of the calibration probe: a seeded subset of the training part of the evaluation's
# validation split (10% of the training split, ``lowvar_mae.data.validation_split``), and all of
# its validation part. The test split is never looked at during pretraining.
PROBE_TRAIN_IMAGES = 10_000


def validation_probe(images: torch.Tensor, labels, *, seed: int, device: torch.device, precision: str,
                     n_train: int = PROBE_TRAIN_IMAGES, val_fraction: float = 0.1) -> Callable:
    """``probe(encoder) -> {pooling: validation accuracy}``: softmax regression (L-BFGS, to
    convergence) on each pooling of the frozen encoder's features (lowvar_mae.models.POOLINGS),
    fitted on up to ``n_train`` images of the training part and scored on the validation part.

    images: the pretraining images, uint8 (N, C, H, W); labels: their (N,) labels. Runs no
    random draw of torch's, so probing does not change what pretraining learns.
    """
    import numpy as np


    labels = np.asarray(labels)
    train_idx, val_idx = validation_split(labels, val_fraction, seed)
    if len(train_idx) > n_train:
        train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, size=n_train, replace=False))
    parts = {name: (images[torch.as_tensor(idx, device=images.device)], torch.as_tensor(labels[idx]))
             for name, idx in (("train", train_idx), ("val", val_idx))}
    num_classes = int(labels.max()) + 1

    def probe(encoder) -> dict[str, float]:
        feats = {name: extract_pooled(encoder, x, batch_size=512, device=device, precision=precision)
                 for name, (x, _) in parts.items()}
        return {p: linear_accuracy(feats["train"][p], parts["train"][1], feats["val"][p], parts["val"][1],
                                   num_classes, LinearConfig(weight_decay=1e-4, max_iter=200))["test_accuracy"]
                for p in feats["train"]}

    return probe


__all__ = ["FEATURES", "KNN_K", "KNN_TEMPERATURE", "extract_features", "extract_pooled", "choose_pooling",
           "LinearConfig", "SUBSPACE_LINEAR", "linear_accuracy", "choose_weight_decay", "fit_linear",
           "sklearn_agreement", "build_head", "LinearProbe", "knn_votes", "knn_accuracy", "PROBE_TRAIN_IMAGES",
           "validation_probe"]
