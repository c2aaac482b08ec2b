"""How much of a target a linear map fills in from the visible patches.

A reference for what masked reconstruction could learn of a target: one fixed patch mask,
a ridge regression from the visible pixels of the input image to the target at the masked
pixels, fitted on training images (the ridge chosen on a held-out part of them) and scored
on test images as the squared error over the target's variance there, the measure of
:func:`lowvar_mae.pretrain.masked_relative_error` (0 is exact, 1 is what the mean image
scores). An MAE sees a new mask every step and is not linear, so this is neither a bound
nor its goal: it says whether the visible patches carry the target at all. When they do
and an MAE still ends at the mean-image level, its model or training falls short, not its input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # times the mean eigenvalue of the centred X^T X


@dataclass(frozen=True)
class LinearFill:
    error: float        # test error on the masked pixels over the target's variance there
    ridge: float        # the chosen ridge, times the mean eigenvalue of the centred X^T X
    val_error: float    # the same measure on the held-out training images, at the chosen ridge
    n_train: int        # images the map was fitted on (the held-out part excluded)
    n_val: int
    n_test: int
    n_visible: int      # input values the map reads
    n_masked: int       # target values it predicts


def patch_mask(image_size: int, patch_size: int, mask_ratio: float, seed: int = 0) -> np.ndarray:
    """One random patch mask (image_size, image_size) bool, True where masked: the same
    number of patches an MAE of this mask ratio hides, ``int(n * mask_ratio)`` of n."""
    if image_size % patch_size or not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"need patch_size dividing image_size and mask_ratio in (0, 1), got image_size={image_size},"
                         f" patch_size={patch_size}, mask_ratio={mask_ratio}")
    side = image_size // patch_size
    hidden = np.random.default_rng(seed).permutation(side * side)[:int(side * side * mask_ratio)]
    grid = np.zeros(side * side, dtype=bool)
    grid[hidden] = True
    return np.kron(grid.reshape(side, side), np.ones((patch_size, patch_size), dtype=bool)).astype(bool)


def relative_error(prediction: np.ndarray, target: np.ndarray) -> float:
    """Mean squared error over the mean variance across images (unbiased, n - 1), columns
    being the masked values: 1 on average for a prediction of the population mean."""
    n = len(target)
    if n < 2:
        raise ValueError(f"need at least 2 images to measure the target's variance, got {n}")
    var = target.var(axis=0, ddof=1).mean()
    return float(np.square(prediction - target).mean() / var)


def _split(images, target, masked):
    """(visible input values, masked target values) as float64 (N, D) arrays."""
    images, target = np.asarray(images), np.asarray(target)
    if images.ndim != 4 or target.shape[0] != images.shape[0] or target.shape[2:] != images.shape[2:]:
        raise ValueError(f"need images (N, C, H, W) and a target (N, C', H, W) of the same N, H, W; got "
                         f"{images.shape} and {target.shape}")
    if masked.shape != images.shape[2:]:
        raise ValueError(f"the mask is {masked.shape}, the images {images.shape[2:]}")
    return (images[:, :, ~masked].reshape(len(images), -1).astype(np.float64),
            target[:, :, masked].reshape(len(target), -1).astype(np.float64))


def linear_fill(train_images, train_target, test_images, test_target, masked: np.ndarray, *,
                ridges=RIDGES, val_fraction: float = 0.1, seed: int = 0) -> LinearFill:
    """Fit the visible-to-masked ridge map on the training images, choose its ridge on a
    held-out ``val_fraction`` of them, refit on all of them and score it on the test images.

    Images and targets: arrays (N, C, H, W) on any one scale (e.g. the model's input scale);
    masked: (H, W) bool, True where a patch is hidden (:func:`patch_mask`).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    masked = np.asarray(masked, dtype=bool)
    x, y = _split(train_images, train_target, masked)
    xt, yt = _split(test_images, test_target, masked)
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(2, int(round(len(x) * val_fraction)))
    val, fit = order[:n_val], order[n_val:]
    path = _ridge(x[fit], y[fit])
    errors = {r: relative_error(path(r)(x[val]), y[val]) for r in ridges}
    best = min(errors, key=errors.get)
    predict = _ridge(x, y)(best)
    return LinearFill(error=relative_error(predict(xt), yt), ridge=best, val_error=errors[best], n_train=len(fit),
                      n_val=n_val, n_test=len(xt), n_visible=x.shape[1], n_masked=y.shape[1])


def fill_in_reference(dataset: str, target: str, *, patch_size: int, mask_ratio: float = 0.75, seeds=(0,),
                      n_train: int | None = None, root=None) -> dict[int, LinearFill]:
    """:func:`linear_fill` of ``target`` on ``dataset`` for one mask per seed: fitted on its
    training images (``n_train`` of them drawn with seed 0; all by
    default), scored on the whole test split, masks of ``patch_size`` patches drawn with each
    seed; the PCA basis of a pca-* target is the whole training split's, as in pretraining.
    Inputs and targets on the model's input scale, computed once for every mask."""
    import torch

    from .data import load_dataset
    from .targets import dataset_basis, make_target, parse_target

    spec = parse_target(target)
    if spec.masks_components:
        raise ValueError(f"target {target!r} masks components, not patches: a patch fill-in does not apply to it")
    full, test = (load_dataset(dataset, split) for split in ("train", "test"))
    basis = dataset_basis(dataset, images=full.to_tensor(), root=root) if spec.needs_basis else None
    train = (full if n_train is None else full.subset(n_train, seed=0)).to_tensor()
    test = test.to_tensor()
    fn = make_target(spec, basis=basis, patch_size=patch_size, image_shape=tuple(train.shape[1:]))

    def scaled(images):  # (inputs, targets) on the model's input scale, float32, in slices to bound memory
        x = images.float().div_(255)
        with torch.no_grad():
            t = torch.cat([fn(part) for part in x.split(4096)])
        return x.sub_(0.5).div_(0.5).numpy(), t.numpy()

    arrays = (*scaled(train), *scaled(test))
    return {seed: linear_fill(*arrays, patch_mask(train.shape[-1], patch_size, mask_ratio, seed), seed=seed)
            for seed in seeds}


FILL_IN_KIND = "fill_in"  # records under results/fill_in/


def record_fill_in(dataset: str, target: str, *, patch_size: int, mask_ratio: float = 0.75, seeds=(0,),
                   allow_dirty: bool = False, results_root=None, root=None) -> list[tuple]:
    """One record of :func:`fill_in_reference` per mask seed, skipping the seeds recorded
    before with the same dataset, target, patch size and mask ratio; returns (path, fields)
    per seed, path None for a seed recorded before."""
    import time

    from .provenance import require_clean
    from .results import load_records, write_record
    from .targets import parse_target

    target = str(parse_target(target))
    require_clean(allow_dirty)
    done, out = load_records(FILL_IN_KIND, results_root), {}
    for seed in seeds:
        same = done[(done["dataset"] == dataset) & (done["target"] == target) & (done["patch_size"] == patch_size)
                    & (done["mask_ratio"] == mask_ratio) & (done["seed"] == seed)] if len(done) else done
        if len(same):
            out[seed] = (None, same.iloc[0].to_dict())
    todo = [s for s in seeds if s not in out]
    if todo:
        start = time.perf_counter()
        fills = fill_in_reference(dataset, target, patch_size=patch_size, mask_ratio=mask_ratio, seeds=todo,
                                  root=root)
        seconds = (time.perf_counter() - start) / len(todo)
        for seed, fill in fills.items():
            fields = {"dataset": dataset, "target": target, "seed": seed, "patch_size": patch_size,
                      "mask_ratio": mask_ratio, **dataclasses.asdict(fill), "ridges": list(RIDGES),
                      "wall_seconds": seconds}
            out[seed] = (write_record(FILL_IN_KIND, fields, root=results_root), fields)
    return [out[s] for s in seeds]

def _ridge(x: np.ndarray, y: np.ndarray):
    """Ridge regression with intercepts (both sides centred) for any penalty: returns
    ``ridge -> predictor``, the penalty being ``ridge`` times the mean eigenvalue of the
    centred X^T X (one SVD serves every penalty)."""
    mx, my = x.mean(0), y.mean(0)
    u, s, vt = np.linalg.svd(x - mx, full_matrices=False)
    uty = u.T @ (y - my)
    scale = float(np.square(s).sum()) / len(s)

    def at(ridge: float):
        w = (vt.T * (s / (np.square(s) + ridge * scale))) @ uty
        return lambda z: (z - mx) @ w + my

    return at


__all__ = ["RIDGES", "LinearFill", "patch_mask", "relative_error", "linear_fill", "fill_in_reference", "FILL_IN_KIND", "record_fill_in"]
