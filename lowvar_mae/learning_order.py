"""The order in which an MAE learns the bands of the PCA spectrum.

:func:`band_errors` splits a reconstruction error ``pred - target`` (images in [0, 1],
flattened CHW) along the PCA eigenbasis into bands of eigen-directions grouped by
cumulative share of variance counted from the top (deciles by default, :class:`Bands`),
and divides the squared error of each band by the data's variance in that band.
:func:`learning_order_hook` (or :func:`band_hook` for a run's config) evaluates it inside
``pretrain`` on a fixed held-out batch with a fixed mask, so lines of ``metrics.jsonl``
carry the bands; :func:`learning_order_run` trains (or loads) such a run and
:func:`learning_order_fields` is what its record holds. ``lowvar_mae.plots.plot_learning_order``
draws them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from . import pca
from .checkpoint import unwrap
from .data import load_dataset
from .models import get_config
from .pretrain import is_finished, pretrain, probe_curve, reconstruct
from .provenance import runs_dir
from .targets import dataset_basis, make_target
from .train import read_metrics, resolve_device

DECILES = tuple(i / 10 for i in range(11))  # band edges: cumulative share of variance, from the top


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
    return band_metrics(read_metrics(run_dir))


def has_band_metrics(metrics: Sequence[dict]) -> bool:
    """True when there are metrics lines and every one carries band errors."""
    return bool(metrics) and all("band_rel_error" in m for m in metrics)


def band_hook(config, *, n_eval: int = 256, every: int = 1, bands: Sequence[float] = DECILES,
              device: str | None = "auto", root: str | os.PathLike | None = None,
              at_most: bool = False) -> Callable[[nn.Module, int], dict]:
    """:func:`learning_order_hook` for pretraining run ``config``: band errors of the first
    ``n_eval`` test images at epoch 1, every ``every`` epochs and at the last epoch, in the
    bands of the dataset's PCA (the basis a pca-* target is filtered with), the mask drawn
    from the config's seed. The hook draws no random number of the training."""
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 2:
        raise ValueError(f"n_eval must be an integer >= 2 (band variances need two images), got {n_eval!r}")
    dev = resolve_device(device)
    basis = dataset_basis(config.dataset, root=root, device=dev)
    test = load_dataset(config.dataset, "test")
    if at_most:  # a small test split (a subset on purpose) gives all it has
        n_eval = min(n_eval, len(test))
    if n_eval > len(test):
        raise ValueError(f"n_eval={n_eval} is more than the {len(test)} test images of {config.dataset}")
    batch01 = test.to_tensor(dev)[:n_eval].float() / 255
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
    if missing not in ("retrain", "skip"):
        raise ValueError(f"missing must be 'retrain' or 'skip', got {missing!r}")
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 2:
        raise ValueError(f"n_eval must be an integer >= 2 (band variances need two images), got {n_eval!r}")
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
    if n_eval > len(test):
        raise ValueError(f"n_eval={n_eval} is more than the {len(test)} test images of {config.dataset}")
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


__all__ = ["DECILES", "Bands", "make_bands", "BandErrors", "band_errors", "learning_order_hook", "band_metrics",
           "read_band_metrics", "has_band_metrics", "band_hook", "learning_order_run", "LEARNING_ORDER_KIND",
           "learning_order_fields", "learning_order_records"]
