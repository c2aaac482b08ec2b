"""A fingerprint of what the code computes: short runs whose weights, metrics and probe
accuracies are hashed, so two revisions can be shown to compute the same thing bit for bit.

Runs, on one thread (so the kernels' reduction order is fixed), in fresh folders:

* the embedded data: a ``quick``-recipe pretraining of the small ViT on 256 images for 2
  epochs with the bottom-25% target, then a linear probe and a kNN of its encoder;
* where CIFAR-10 is under ``$LOWVAR_MAE_DATA``: one ``cpu``-recipe epoch on 5,000 training
  images (pixels), then a kNN on 1,000 test images.

Prints one line per item (SHA-256 of the weights, of the metrics without their timings,
and the accuracies) and writes them as JSON to ``--out``. Two revisions compute the same
thing when their JSON files are equal:

    python bench/fingerprint.py --out /tmp/before.json
    git checkout OTHER && python bench/fingerprint.py --out /tmp/after.json && cmp /tmp/before.json /tmp/after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMING_KEYS = {"seconds", "images_per_s", "other_cores", "wall_seconds", "train_seconds", "time_utc"}


def _weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _metrics_digest(metrics: list[dict]) -> str:
    kept = [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def fingerprint(cifar: bool) -> dict:
    import torch

    from lowvar_mae.evaluate import evaluate
    from lowvar_mae.pretrain import pretrain
    from lowvar_mae.recipes import make_config, make_eval_config

    torch.set_num_threads(1)
    out = {}
    config = make_config("quick", "synthetic", "pca-bottom:0.25", n_train=256, epochs=2, batch_size=64)
    run = pretrain(config, progress=False)
    out["synthetic_weights"] = _weights_digest(run.model)
    out["synthetic_metrics"] = _metrics_digest(run.metrics)
    for metric, extra in (("linprobe", dict(epochs=2, batch_size=64)), ("knn", {})):
        cfg = make_eval_config(metric, "quick", run, n_test=200, **extra)
        out[f"synthetic_{metric}"] = evaluate(cfg, progress=False, record=False).value
    if cifar:
        config = make_config("cpu", "cifar10", "pixels", n_train=5000, epochs=1, probe_every=0)
        run = pretrain(config, progress=False)
        out["cifar10_weights"] = _weights_digest(run.model)
        out["cifar10_metrics"] = _metrics_digest(run.metrics)
        cfg = make_eval_config("knn", "cpu", run, n_test=1000)
        out["cifar10_knn"] = evaluate(cfg, progress=False, record=False).value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file of the fingerprint")
    parser.add_argument("--no-cifar", action="store_true", help="the embedded data only")
    args = parser.parse_args(argv)
    from lowvar_mae.data import data_root

    cifar = not args.no_cifar and bool(os.environ.get("LOWVAR_MAE_DATA")) and (data_root() / "cifar10").is_dir()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOWVAR_MAE_RUNS"] = str(Path(tmp) / "runs")
        os.environ["LOWVAR_MAE_RESULTS"] = str(Path(tmp) / "results")
        result = fingerprint(cifar)
    for key, value in result.items():
        print(f"{key:22s} {value}")
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
