"""Evaluating pretrained encoders: fine-tuning and the evaluation cell (linear probe, kNN) with its records.

The configs and recipes are ``lowvar_mae.recipes`` (:class:`FinetuneConfig`,
:class:`KNNConfig`); the probes' pieces (features, pooling choice, the BatchNorm + linear
head, kNN votes, softmax regression) are ``lowvar_mae.probes``.

Three protocols, all on the CLS token of a :class:`~lowvar_mae.models.ViTEncoder`:

* ``finetune``: the whole :class:`~lowvar_mae.models.ViTClassifier` is trained
  (AdamW, RandAugment(2, 9), label smoothing 0.1, dropout 0.1 before the head in the
  paper recipe);
* ``linprobe``: the encoder is frozen (no gradients, eval mode, weights unchanged) and
  only the official MAE head ``BatchNorm1d(affine=False) -> Linear`` is trained (SGD,
  momentum 0.9). Without augmentation the CLS features are extracted once and the head
  trains on the cached features (the fast path); with augmentation the encoder runs on
  every augmented batch;
* ``knn``: weighted k-nearest-neighbour votes on cosine similarity of frozen CLS
  features (k=20, temperature 0.07, as in DINO); nothing is trained.

The encoder comes from a pretraining run folder (``lowvar_mae.pretrain``), loaded
strictly with :func:`~lowvar_mae.checkpoint.load_weights` (``prefix="encoder."``): a
missing run, an unfinished run, a run without checkpoint, or weights that do not fit
raise :class:`~lowvar_mae.checkpoint.CheckpointError`. Target ``"none"`` is the
"without pretraining" baseline: the encoder keeps the random initial weights that
pretraining with the same seed would have started from.

Training goes through the shared loop (:func:`lowvar_mae.train.train_loop`): run
folders, ``metrics.jsonl``, safetensors checkpoints, exact resume, bf16 via
``precision``, torchrun. An evaluation run folder holds ``config.json``,
``provenance.json``, ``metrics.jsonl`` (loss, lr, val_accuracy, val_loss per epoch),
the latest checkpoint, ``best/`` (the weights of the best validation epoch, as a
safetensors checkpoint) and, once finished, ``summary.json``. A finished config loads
instead of training again.

Protocol, and how it differs from the original work
------------------------------------------------------
* A validation split (``lowvar_mae.data.validation_split``: stratified, seeded, default 10%) is cut
  from the *training* split only. Every choice made while training (the best epoch)
  looks at validation accuracy; the test split is evaluated once, at the end.
* Two test numbers are recorded: ``value``, the test accuracy of the final weights (the
  fixed-schedule number, comparable to Table 1), and ``test_at_best``, the test
  accuracy of the weights of the best validation epoch (``best_val_value``).
* The original work reported test-split accuracy under the name "validation", with no
  held-out validation split; if the best epoch was picked on it, the numbers are
  optimistic. It trained on the whole training split; we train on 90% of it by default,
  which costs a little accuracy. It reported single runs; records here carry a seed and
  tables report mean and spread over seeds.

Every evaluation writes one record with :func:`lowvar_mae.results.write_record`
(``kind="eval"``); :mod:`lowvar_mae.report` presents them (mean and spread over seeds,
the presentation's Table 1 beside them, figures).
"""

from __future__ import annotations

import functools
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import (CheckpointError, check_writable, command_lock, latest_checkpoint, load_weights,
                         open_run_folder, recover_replacement, refuse_link, replace_run, save_checkpoint,
                         staging_dir)
from .data import load_dataset, validation_split
from .models import POOLINGS, ViTClassifier, ViTEncoder, build_mae, set_attention
from .pretrain import is_finished, pretrain_provenance
from .probes import (LinearConfig, LinearProbe, _batched, build_head, choose_pooling, choose_weight_decay,
                     extract_features, extract_pooled, knn_accuracy, linear_accuracy)
from .provenance import OtherLoad, atomic_write_json, read_json, results_dir, runs_dir
from .recipes import NO_TARGET, FinetuneConfig, KNNConfig, _EvalConfig, read_run_config
from .results import write_record
from .targets import parse_target
from .train import (DeviceData, Distributed, LoopConfig, augment, build_optimizer, fits_on, init_distributed, normalize,
                    read_metrics, resolve_attention, resolve_device, resolve_precision, scaled_lr, train_loop)

RECORD_KIND = "eval"


# ---------------------------------------------------------------- configs


# ---------------------------------------------------------------- data and protocol


@dataclass
class Splits:
    """Labelled images of one evaluation: uint8 (N, C, H, W) and int64 (N,), all on one device
    (the training device, or the CPU when they do not fit there; batches are then copied)."""

    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    num_classes: int

    @property
    def sizes(self) -> dict[str, int]:
        return {"n_train": len(self.train_images), "n_val": len(self.val_images), "n_test": len(self.test_images)}


@functools.lru_cache(maxsize=2)
def _load_split(dataset: str, split: str):
    """load_dataset, keeping the last two splits in memory: the synthetic set is generated
    on every call (seconds), and a notebook evaluates many runs on the same data."""
    return load_dataset(dataset, split)


def load_splits(dataset: str, *, n_train: int | None, n_test: int | None, val_fraction: float, seed: int,
                device: torch.device | str = "cpu") -> Splits:
    """The training split (optionally a seeded subset, as pretraining draws it) cut into
    train and validation parts by :func:`validation_split`, and the test split (optionally
    a fixed subset, the same for every seed). The tensors go to ``device`` when they take
    at most half its free memory (:func:`lowvar_mae.train.fits_on`), else stay on the CPU."""
    train = _load_split(dataset, "train")
    if n_train is not None:
        train = train.subset(n_train, seed=seed)
    test = _load_split(dataset, "test")
    if n_test is not None:
        test = test.subset(n_test, seed=0)
    train_idx, val_idx = validation_split(train.labels, val_fraction, seed)
    device = torch.device(device)
    if not fits_on(device, train.images.nbytes + test.images.nbytes):
        device = torch.device("cpu")
    images, labels = train.to_tensor(device), torch.as_tensor(train.labels, device=device)
    t_idx, v_idx = torch.as_tensor(train_idx, device=device), torch.as_tensor(val_idx, device=device)
    return Splits(images[t_idx], labels[t_idx], images[v_idx], labels[v_idx], test.to_tensor(device),
                  torch.as_tensor(test.labels, device=device), len(train.classes))


# ---------------------------------------------------------------- encoders and heads


def random_encoder(model: str, seed: int) -> ViTEncoder:
    """The encoder of preset ``model`` with the initial weights pretraining with ``seed`` starts from."""
    torch.manual_seed(seed)
    return build_mae(model).encoder


def load_pretrained_encoder(run_dir: str | os.PathLike, model: str | None = None) -> tuple[ViTEncoder, dict]:
    """The encoder of a finished pretraining run folder, loaded strictly; and the run's config.json.

    model: the preset the caller expects; another one raises. Raises CheckpointError when
    the folder, its config or its checkpoint is missing, when the run is unfinished, or when
    the weights do not fit (missing, unexpected or misshaped keys): never a random encoder.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise CheckpointError(f"no pretraining run at {run_dir} (no config.json); pretrain it first")
    raw = read_json(run_dir / "config.json", "the pretraining run folder is damaged: train it again (--force)")
    if model is not None and raw.get("model") != model:
        raise CheckpointError(f"pretraining run {run_dir} used model {raw.get('model')!r}, "
                              f"the evaluation expects {model!r}")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise CheckpointError(f"pretraining run {run_dir} has no checkpoint (latest.json is missing)")
    config = read_run_config(run_dir)
    if not is_finished(run_dir, config):
        done = len(read_metrics(run_dir))
        raise CheckpointError(f"pretraining run {run_dir} is unfinished ({done} of {config.epochs} epochs, "
                              "no summary.json); finish it with lowvar_mae.pretrain.pretrain first")
    encoder = build_mae(config.model).encoder
    load_weights(encoder, ckpt, prefix="encoder.")
    return encoder, raw


def build_classifier(encoder: ViTEncoder, num_classes: int, config: FinetuneConfig,
                     pooling: str | None = None) -> ViTClassifier:
    """ViTClassifier (finetune) or LinearProbe (linprobe) on ``encoder``, head from ``config``.

    pooling: the probe's features (default ``config.features``, which must then not be "auto")."""
    pooling = pooling or config.features
    if pooling not in POOLINGS:
        raise ValueError(f"a classifier needs a pooling of {POOLINGS}, got {pooling!r} (resolve 'auto' first)")
    head = build_head(encoder.feature_dim(pooling), num_classes, norm=config.head_norm,
                      init_std=config.head_init_std, seed=config.seed)
    if config.frozen_encoder:
        probe = LinearProbe(encoder, head, pooling)
        probe.head_drop.p = config.head_dropout
        return probe
    classifier = ViTClassifier(encoder, num_classes, head_dropout=config.head_dropout)
    classifier.head = head
    return classifier


# ---------------------------------------------------------------- augmentation and forward passes


def rand_augment(images: Tensor, num_ops: int, magnitude: int, group: int = 1) -> Tensor:
    """torchvision's RandAugment(num_ops, magnitude) on uint8 images (N, C, H, W), on their device.

    ``v2.RandAugment`` draws one set of operations (and their signs) per call and applies
    it to the whole tensor it is given. It is called once per ``group`` consecutive images
    of the batch (which is already in shuffled order): group=1 gives every image its own
    draw, as a per-image data loader does; larger groups share a draw among that many
    images and cost N / group calls. The loop runs over one batch, never the dataset.
    Randomness comes from torch's global RNG, which ``run_epoch`` seeds per epoch, so a
    resumed run repeats the same draws.
    """
    from torchvision.transforms import v2

    op = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)
    return torch.cat([op(chunk) for chunk in images.split(group)])


def augment_batch(images: Tensor, config: FinetuneConfig, generator: torch.Generator | None) -> Tensor:
    """uint8 (N, C, H, W) -> float [0, 1]: RandAugment (if asked), then ``config.augment``."""
    if config.rand_augment_ops:
        images = rand_augment(images, config.rand_augment_ops, config.rand_augment_magnitude,
                              config.rand_augment_group)
    return augment(images, config.augment, generator)


def _accuracy_and_loss(fn, inputs: Tensor, labels: Tensor, batch_size: int, device: torch.device,
                       precision: str) -> tuple[float, float]:
    logits = _batched(fn, inputs, batch_size, device, precision)
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits, labels)
    return float((logits.argmax(1) == labels).float().mean()), float(loss)


# ---------------------------------------------------------------- kNN


# ---------------------------------------------------------------- fine-tuning and linear probing


@dataclass
class EvalResult:
    """One finished (or loaded, or interrupted) evaluation."""

    run_dir: Path
    config: FinetuneConfig | KNNConfig
    summary: dict                      # value, best_val_value, test_at_best, ...; {} if unfinished
    metrics: list[dict] = field(default_factory=list)
    trained_now: bool = True
    model: nn.Module | None = None     # the classifier at its final weights (None when loaded)
    record: Path | None = None

    @property
    def value(self) -> float:
        """Test accuracy of the final weights."""
        return self.summary["value"]


def _best_dir(run_dir: Path) -> Path:
    return run_dir / "best"


def fit_classifier(config: FinetuneConfig, encoder: ViTEncoder, splits: Splits, run_dir: str | os.PathLike, *,
                   device: torch.device | str = "cpu", dist: Distributed = Distributed(), progress: bool = True,
                   stop_after: int | None = None, pooling: str | None = None,
                   features: dict[str, Tensor] | None = None) -> EvalResult:
    """Fine-tune or linearly probe ``encoder`` on ``splits`` in ``run_dir`` with the shared loop.

    Per epoch the validation accuracy is measured; the best epoch's weights (first best on
    ties) go to ``run_dir/best/``. At the end the test split is evaluated twice: with the
    final weights (``value``) and with the best validation epoch's (``test_at_best``).

    pooling: the probe's features when ``config.features`` is "auto" (chosen by the caller);
    features: {"train", "val", "test": features of that pooling}, already extracted (the
    feature-cache path then skips the encoder).
    """
    run_dir, dev = Path(run_dir), torch.device(device)
    precision = resolve_precision(dev, config.precision)
    attention = resolve_attention(dev, precision, config.attention)
    pooling = pooling or config.features
    classifier = build_classifier(set_attention(encoder, attention), splits.num_classes, config, pooling).to(dev)
    eb = config.eval_batch_size

    if config.uses_feature_cache:
        feats = features or {name: extract_features(classifier.encoder, getattr(splits, f"{name}_images"),
                                                    batch_size=eb, device=dev, precision=precision, pooling=pooling)
                             for name in ("train", "val", "test")}
        data = DeviceData(feats["train"], splits.train_labels, config.batch_size, dist=dist)
        trained: nn.Module = classifier.head
        inputs = {"val": feats["val"], "test": feats["test"]}

        def predict(x):
            return classifier.head(x)

        def loss_fn(m, x, labels, gen):
            return F.cross_entropy(m(x).float(), labels, label_smoothing=config.label_smoothing)
    else:
        data = DeviceData(splits.train_images, splits.train_labels, config.batch_size, dist=dist, device=dev)
        trained = classifier
        inputs = {"val": splits.val_images, "test": splits.test_images}

        def predict(x):
            return classifier(normalize(x.float() / 255))

        def loss_fn(m, x_u8, labels, gen):
            logits = m(normalize(augment_batch(x_u8, config, gen)))
            return F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)

    peak = scaled_lr(config.base_lr, config.batch_size)
    optimizer = build_optimizer(trained, kind=config.optimizer, lr=peak, weight_decay=config.weight_decay,
                                betas=config.betas, momentum=config.momentum, device=dev)
    net: nn.Module = trained
    if dist.world_size > 1:
        net = nn.parallel.DistributedDataParallel(trained, device_ids=[dist.local_rank] if dev.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)

    def evaluate_on(split: str) -> tuple[float, float]:
        was_training = trained.training
        trained.eval()
        result = _accuracy_and_loss(predict, inputs[split], getattr(splits, f"{split}_labels"), eb, dev, precision)
        trained.train(was_training)
        return result

    best_ckpt = latest_checkpoint(_best_dir(run_dir))
    best = {"val": -1.0, "epoch": 0, "state": None}
    if best_ckpt is not None:  # resuming: the best epoch so far is on disk
        state = read_json(best_ckpt / "state.json", "the best checkpoint is damaged: evaluate again (--force)")
        best.update(val=state["val_accuracy"], epoch=state["epoch"])

    def on_epoch_end(epoch: int, metrics: dict) -> dict:
        val_acc, val_loss = evaluate_on("val")
        if val_acc > best["val"]:
            best.update(val=val_acc, epoch=epoch,
                        state={k: v.detach().clone() for k, v in classifier.state_dict().items()})
            if dist.is_main:
                save_checkpoint(_best_dir(run_dir), epoch, classifier, None, {"val_accuracy": val_acc})
        return {"val_accuracy": val_acc, "val_loss": val_loss}

    loop = LoopConfig(epochs=config.epochs, peak_lr=peak, warmup_epochs=config.warmup_epochs, seed=config.seed,
                      accum_steps=config.accum_steps, precision=precision, checkpoint_every=config.checkpoint_every)
    metrics = train_loop(run_dir, net, optimizer, data, loss_fn, loop, dev, dist=dist, on_epoch_end=on_epoch_end,
                         progress=progress, stop_after=stop_after)
    if len(metrics) < config.epochs:
        return EvalResult(run_dir, config, {}, metrics, trained_now=True, model=classifier)

    value, _ = evaluate_on("test")
    final_state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    if best["state"] is not None:
        classifier.load_state_dict(best["state"])
    else:
        load_weights(classifier, latest_checkpoint(_best_dir(run_dir)))
    test_at_best, _ = evaluate_on("test")
    classifier.load_state_dict(final_state)
    summary = {"metric": config.metric, "value": value, "best_val_value": best["val"], "test_at_best": test_at_best,
               "best_epoch": best["epoch"], "final_val_value": metrics[-1]["val_accuracy"],
               "train_seconds": sum(m["seconds"] for m in metrics), "epochs": config.epochs,
               "precision": precision, "attention": attention, "feature_cache": config.uses_feature_cache,
               "features": pooling, **splits.sizes}
    return EvalResult(run_dir, config, summary, metrics, trained_now=True, model=classifier)


def knn_probe(config: KNNConfig, encoder: ViTEncoder, splits: Splits, *, device: torch.device | str = "cpu",
              features: dict[str, dict[str, Tensor]] | None = None) -> dict:
    """kNN accuracy of frozen features (``config.features``; "auto": the pooling with the best
    validation accuracy): the training part is the bank, validation and test rows are
    classified against it. features: {"train", "val", "test": {pooling: features}}, already
    extracted. Returns the summary fields."""
    dev = torch.device(device)
    precision = resolve_precision(dev, config.precision)
    attention = resolve_attention(dev, precision, config.attention)
    encoder = set_attention(encoder, attention).to(dev)
    poolings = POOLINGS if config.features == "auto" else (config.features,)
    feats = features or {name: extract_pooled(encoder, getattr(splits, f"{name}_images"), poolings,
                                              batch_size=config.eval_batch_size, device=dev, precision=precision)
                         for name in ("train", "val", "test")}
    kw = dict(k=config.k, T=config.temperature, num_classes=splits.num_classes)
    vals = {p: knn_accuracy(feats["train"][p], splits.train_labels, feats["val"][p], splits.val_labels, **kw)
            for p in poolings}
    pooling = max(vals, key=vals.get)
    test = knn_accuracy(feats["train"][pooling], splits.train_labels, feats["test"][pooling], splits.test_labels, **kw)
    # The only choice (the pooling) is made on validation, so the "best" numbers are the final ones.
    return {"metric": "knn", "value": test, "best_val_value": vals[pooling], "test_at_best": test, "best_epoch": None,
            "final_val_value": vals[pooling], "train_seconds": 0.0, "precision": precision, "attention": attention,
            "features": pooling, "features_val": vals, **splits.sizes}


# ---------------------------------------------------------------- runs and records


def _record_fields(config: FinetuneConfig | KNNConfig, summary: dict, run_dir: Path) -> dict:
    spec = parse_target(config.target) if config.target != NO_TARGET else None
    share = spec.share if spec is not None and spec.needs_basis else None  # a share of variance (fft-*: a radius)
    fields_ = {"dataset": config.dataset, "target": config.target, "share": share,
               "recipe": getattr(config, "recipe", "knn"), "seed": config.seed, "run": run_dir.name,
               "run_dir": str(run_dir), "model": config.model, "pretrain_run": config.pretrain_run,
               "n_train_subset": config.n_train, **summary}
    if isinstance(config, KNNConfig):
        fields_.update(k=config.k, temperature=config.temperature)
    return fields_


def has_record(run_name: str, metric: str, results_root=None) -> bool:
    """Whether a record of evaluation run ``run_name`` and ``metric`` exists: under ``results_root``
    if given, else in any folder records are read from (``lowvar_mae.results.record_dirs``: the
    committed results/ and $LOWVAR_MAE_RESULTS)."""
    from .results import record_dirs

    for folder in record_dirs(results_root):
        for path in (folder / RECORD_KIND).glob("*.json"):
            try:
                rec = read_json(path, "repair or delete it")
            except ValueError as err:  # one bad record does not stop the others being found
                warnings.warn(f"skipping record: {err}", stacklevel=2)
                continue
            if rec.get("run") == run_name and rec.get("metric") == metric:
                return True
    return False


def evaluate(config: FinetuneConfig | KNNConfig, *, root: str | os.PathLike | None = None,
             results_root: str | os.PathLike | None = None, device: str | None = "auto", force: bool = False,
             progress: bool = True, stop_after: int | None = None, record: bool = True) -> EvalResult:
    """Run ``config`` (resuming its run folder) or load it if finished; write its record.

    root: the runs folder (pretraining runs are looked up there too); results_root: where
    records go (default $LOWVAR_MAE_RESULTS or the checkout's results/). A loaded run
    writes its record only if none of that run is under ``results_root`` yet, so
    re-running a notebook does not count a run twice. force: evaluate again into a staging
    folder that replaces the run folder (not the pretraining run) only when it finishes.
    """
    with command_lock(runs_dir(root) / config.run_name):
        return _evaluate(config, root=root, results_root=results_root, device=device, force=force,
                         progress=progress, stop_after=stop_after, record=record)


def _evaluate(config: FinetuneConfig | KNNConfig, *, root: str | os.PathLike | None = None,
              results_root: str | os.PathLike | None = None, device: str | None = "auto", force: bool = False,
              progress: bool = True, stop_after: int | None = None, record: bool = True) -> EvalResult:
    dev = resolve_device(device)
    dist = init_distributed(dev)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    if record and dist.is_main:  # before anything is computed, not after
        check_writable(results_dir(results_root) / RECORD_KIND, "the records folder",
                       "set LOWVAR_MAE_RESULTS to a writable folder")
    final_dir = run_dir = runs_dir(root) / config.run_name
    if dist.is_main:
        recover_replacement(final_dir)
    if force:
        refuse_link(final_dir)
    if force:  # evaluate again beside the old run; it is replaced only when the new one finishes
        run_dir = staging_dir(final_dir)
        if dist.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)

    summary_file = run_dir / "summary.json"
    if summary_file.is_file():
        summary = read_json(summary_file, "the evaluation run folder is damaged: evaluate again (--force)")
        result = EvalResult(run_dir, config, summary, read_metrics(run_dir), trained_now=False)
        if record and dist.is_main and not has_record(config.run_name, config.metric, results_root):
            result.record = write_record(RECORD_KIND, _record_fields(config, summary, run_dir),
                                         device=summary.get("device"), root=results_root)
        return result

    start = time.perf_counter()
    others = OtherLoad()
    pretrain_info: dict = {"pretrain_recipe": None, "pretrain_epochs": None}
    if config.pretrain_run is None:
        encoder = random_encoder(config.model, config.seed)
    else:
        encoder, raw = load_pretrained_encoder(runs_dir(root) / config.pretrain_run, model=config.model)
        theirs = {"dataset": raw["dataset"], "target": str(parse_target(raw["target"]))}
        for name, value in theirs.items():
            if getattr(config, name) != value:
                raise ValueError(f"config says {name}={getattr(config, name)!r}, "
                                 f"pretraining run {config.pretrain_run} has {value!r}")
        source_dir = runs_dir(root) / config.pretrain_run
        done = read_json(source_dir / "summary.json", "the pretraining run folder is damaged: train it again (--force)")
        pretrain_info = {"pretrain_recipe": raw.get("recipe"), "pretrain_epochs": raw.get("epochs"),
                         "pretrain_seconds": done.get("train_seconds"),
                         "pretrain_images_per_s": done.get("images_per_s"),
                         "pretrain_final_loss": done.get("final_loss"),
                         "pretrain_probe_curve": done.get("probe_curve", []),
                         "pretrain_other_cores_max": done.get("other_cores_max"),
                         "pretrain_settings": {k: raw.get(k) for k in ("augment", "mask_ratio", "pc_basis", "pc_count")
                                               if k in raw},
                         "pretrain_provenance": pretrain_provenance(source_dir, done)}
    encoder = encoder.to(dev)
    splits = load_splits(config.dataset, n_train=config.n_train, n_test=config.n_test,
                         val_fraction=config.val_fraction, seed=config.seed, device=dev)

    if dist.is_main:
        open_run_folder(run_dir, config, str(dev), seed=config.seed, world_size=dist.world_size)
    if isinstance(config, KNNConfig):
        feats = _pooled_splits(config, encoder, splits, dev) if config.features == "auto" else None
        result = EvalResult(run_dir, config, knn_probe(config, encoder, splits, device=dev, features=feats),
                            model=encoder)
    else:
        pooling, features, chosen = _resolve_pooling(config, encoder, splits, dev)
        result = fit_classifier(config, encoder, splits, run_dir, device=dev, dist=dist, progress=progress,
                                stop_after=stop_after, pooling=pooling, features=features)
        if not result.summary:
            return result
        result.summary.update(chosen)
    result.summary.update(pretrain_info, wall_seconds=time.perf_counter() - start, device=str(dev),
                          other_cores=others())
    if dist.is_main:
        atomic_write_json(summary_file, result.summary)
        if run_dir != final_dir:
            run_dir = replace_run(run_dir, final_dir)
            result.run_dir = run_dir
        if record:
            result.record = write_record(RECORD_KIND, _record_fields(config, result.summary, run_dir),
                                         device=str(dev), root=results_root)
    return result


# The pooled features of the last encoder evaluated, shared by its probes (a linear probe and
# a kNN of one encoder extract them once): {"key": ..., "features": {split: {pooling: (N, F)}}}.
_FEATURES: dict = {}


def _pooled_splits(config: _EvalConfig, encoder: ViTEncoder, splits: Splits, dev: torch.device) -> dict:
    """Every pooling of the train, val and test parts; reused while the encoder (its pretraining
    run, or the random weights of model and seed) and the images (dataset, subsets, split seed)
    and the precision are the same as for the last call."""
    precision = resolve_precision(dev, config.precision)
    with torch.no_grad():  # the weights themselves, in case a run of the same name was trained again
        weights = float(sum(p.double().sum() + p.double().square().sum() for p in encoder.parameters()))
    key = (config.pretrain_run, config.model, config.dataset, config.n_train, config.n_test, config.val_fraction,
           config.seed, precision, str(dev), splits.sizes["n_train"], splits.sizes["n_test"], weights)
    if _FEATURES.get("key") != key:
        _FEATURES.clear()
        set_attention(encoder, resolve_attention(dev, precision, config.attention))
        _FEATURES["features"] = {
            name: extract_pooled(encoder, getattr(splits, f"{name}_images"), batch_size=config.eval_batch_size,
                                 device=dev, precision=precision) for name in ("train", "val", "test")}
        _FEATURES["key"] = key
    return _FEATURES["features"]


def _resolve_pooling(config: FinetuneConfig, encoder: ViTEncoder, splits: Splits, dev: torch.device):
    """(pooling, features of it for the feature cache or None, record fields) for ``config``:
    with features="auto", every pooling is extracted once and :func:`choose_pooling` picks one
    on the validation part."""
    if config.features != "auto":
        return config.features, None, {}
    feats = _pooled_splits(config, encoder, splits, dev)
    pooling, scores = choose_pooling(feats["train"], splits.train_labels, feats["val"], splits.val_labels,
                                     splits.num_classes)
    chosen = {name: feats[name][pooling] for name in feats} if config.uses_feature_cache else None
    return pooling, chosen, {"features_val": scores, "features_chosen_by": "L-BFGS softmax regression, validation"}


BASELINE_KIND = "baseline"
PIXEL_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def pixel_linear_probe(dataset: str, *, seed: int = 0, n_train: int | None = None, n_test: int | None = None,
                       val_fraction: float = 0.1, weight_decays=PIXEL_WEIGHT_DECAYS, max_iter: int = 300,
                       device: str | None = "auto", results_root=None, record: bool = True) -> dict:
    """The bar a pretrained encoder's linear probe must clear: softmax regression on raw pixels.

    The same training / validation / test images as the probes (:func:`load_splits` with
    ``seed``); pixels standardised on the training part; the L2 penalty chosen on the
    validation part among ``weight_decays``; fitted by full-batch L-BFGS to convergence
    (at most ``max_iter`` iterations; the record says how many ran); the test split
    scored once, with the chosen penalty. Writes a record of kind "baseline" unless one of
    the same setting exists (then that record's fields are returned).
    """
    setting = {"dataset": dataset, "target": "raw-pixels", "metric": "linear", "seed": seed, "n_train_subset": n_train,
               "n_test_subset": n_test, "val_fraction": val_fraction, "weight_decays": list(weight_decays),
               "max_iter": max_iter}
    if record:
        for path in sorted((results_dir(results_root) / BASELINE_KIND).glob("*.json")):
            try:
                rec = read_json(path, "repair or delete it")
            except ValueError as err:
                warnings.warn(f"skipping record: {err}", stacklevel=2)
                continue
            if all(rec.get(k) == v for k, v in setting.items()):
                return {**rec, "record": str(path)}
    dev = resolve_device(device)
    start = time.perf_counter()
    splits = load_splits(dataset, n_train=n_train, n_test=n_test, val_fraction=val_fraction, seed=seed, device=dev)
    flat = {name: getattr(splits, f"{name}_images").flatten(1).float() / 255 for name in ("train", "val", "test")}
    chosen, fits = choose_weight_decay(flat["train"], splits.train_labels, flat["val"], splits.val_labels,
                                       splits.num_classes, LinearConfig(weight_decays=tuple(weight_decays),
                                                                        max_iter=max_iter))
    final = linear_accuracy(flat["train"], splits.train_labels, flat["test"], splits.test_labels, splits.num_classes,
                            LinearConfig(weight_decay=chosen, max_iter=max_iter))
    fields_ = {**setting, "recipe": "pixels-linear", "value": final["test_accuracy"],
               "val_value": fits[chosen]["test_accuracy"], "weight_decay": chosen,
               "val_by_weight_decay": {str(wd): fits[wd]["test_accuracy"] for wd in weight_decays},
               "train_accuracy": final["train_accuracy"], "train_loss": final["train_loss"],
               "iterations": final["iterations"], "grad_max": final["grad_max"], "converged": final["converged"],
               "wall_seconds": time.perf_counter() - start, "device": str(dev), **splits.sizes}
    if record:
        fields_["record"] = str(write_record(BASELINE_KIND, fields_, device=str(dev), root=results_root))
    return fields_


__all__ = ["RECORD_KIND", "EvalResult", "Splits", "load_splits", "random_encoder", "load_pretrained_encoder",
           "build_classifier", "rand_augment", "augment_batch", "fit_classifier", "knn_probe",
           "has_record", "evaluate", "BASELINE_KIND", "pixel_linear_probe"]
