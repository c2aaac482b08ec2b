"""The schedule study on a borrowed GPU, in one go: throughput first, then the longest run that fits.

A GPU machine is lent for minutes (start-up included), has PyTorch, timm, safetensors,
scikit-learn, pandas and scipy but no network, and receives a copy of the checkout of at
most 64 MiB a call. So CIFAR-10 travels in parts of 10,000 images, two parts a call, and
the machine is kept warm by chained calls:

    python bench/gpu_study.py pack --out .shards           # here: 6 parts in .shards/call1..3
    # on the GPU, calls 1-3 (carry .shards/callK):
    python bench/gpu_study.py receive .shards/callK --data /tmp/lowvar-data
    # call 4: throughput, then both targets at the longest length that fits, both probes
    python bench/gpu_study.py run --data /tmp/lowvar-data --out "$OUT" --budget-s 420 --revision <commit>

``run`` does, in order:

1. **throughput**: one epoch of the ``gpu`` recipe (ViT-Tiny, patch 2, batch 512) on
   ``--probe-images`` training images with the pixel target, timed from its metrics;
2. **length**: the most pretraining epochs E such that both targets' pretraining and
   their probes fit in what is left of ``--budget-s`` (a margin of ``--margin`` kept);
3. **study**: ``python -m lowvar_mae grid --recipe gpu --epochs E`` for pixels and
   pca-bottom:0.25, seed 0, linear probe and kNN: evaluation and learning-order records.

Every record goes to ``<out>/results`` and, packed with a throughput record and the log,
to ``<out>/records.tar.gz`` (what comes back from the machine; unpack it into the checkout).
Records name the commit given by ``--revision`` ("<commit> (copy)": the copy has no git
folder), the device, the epochs and the time. ``launch`` prints the command, after checking
here that the checkout is clean. ``--tiny`` runs the same steps on a few images of a CPU
(a test of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("pixels", "pca-bottom:0.25")
TRAIN_IMAGES = 50_000
# Seconds per pretraining epoch that the band and probe hooks add, as a share of an epoch,
# and the evaluation of one encoder (linear probe + kNN) in epochs' worth of time. Rough:
# used only to choose the length, and the margin covers them.
HOOK_SHARE = 0.15
EVAL_EPOCHS = 4.0


def cmd_pack(args) -> int:
    """Parts of 10,000 images, two to a folder ``<out>/callK/cifar10/``."""
    sys.path.insert(0, str(ROOT))
    from lowvar_mae.data import load_dataset, save_shards

    out = Path(args.out)
    tmp = out / "all"
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty; remove it first")
    for split in ("train", "test"):
        save_shards(load_dataset(args.dataset, split), tmp, size=args.size)
    parts = sorted((tmp / args.dataset).glob("*.npz"))
    for i, part in enumerate(parts):
        dest = out / f"call{i // 2 + 1}" / args.dataset
        dest.mkdir(parents=True, exist_ok=True)
        part.rename(dest / part.name)
    shutil.rmtree(tmp)
    for folder in sorted(out.glob("call*")):
        size = sum(p.stat().st_size for p in folder.rglob("*.npz")) / 2**20
        print(f"{folder}: {', '.join(p.name for p in sorted(folder.rglob('*.npz')))} ({size:.0f} MiB)")
    return 0


def cmd_receive(args) -> int:
    """Copy one call's parts into the data root that ``run`` reads."""
    src = Path(args.parts)
    files = sorted(src.rglob("*.npz"))
    if not files:
        raise SystemExit(f"no parts (*.npz) under {src}")
    for f in files:
        dest = Path(args.data) / f.parent.name / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
        print(f"{dest} ({dest.stat().st_size / 2**20:.1f} MiB)")
    return 0


def choose_epochs(seconds_per_epoch: float, budget_s: float, n_targets: int = len(TARGETS),
                  max_epochs: int = 400) -> int:
    """The most epochs E with n_targets * (E * (1 + HOOK_SHARE) + EVAL_EPOCHS) epochs' time
    inside ``budget_s``; 0 when not even one epoch fits."""
    if seconds_per_epoch <= 0 or not math.isfinite(seconds_per_epoch):
        raise ValueError(f"seconds_per_epoch must be positive, got {seconds_per_epoch!r}")
    per_target = budget_s / n_targets / seconds_per_epoch - EVAL_EPOCHS
    return max(0, min(max_epochs, int(per_target / (1 + HOOK_SHARE))))


# --tiny: the same steps on a few images (a test of the script on any machine)
TINY_PRE = dict(model="small-cifar", n_train=96, batch_size=32)
TINY_EVAL = dict(n_test=40, batch_size=32, epochs=3)


def cmd_run(args) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    results, runs = out / "results", Path(args.runs)
    results.mkdir(parents=True, exist_ok=True)
    log_path = out / "gpu_study.log"
    os.environ.update({"LOWVAR_MAE_DATA": str(args.data), "LOWVAR_MAE_RESULTS": str(results),
                       "LOWVAR_MAE_RUNS": str(runs)})
    if args.revision:
        os.environ["LOWVAR_MAE_GIT_REVISION"] = args.revision
    sys.path.insert(0, str(ROOT))
    from lowvar_mae import grid
    from lowvar_mae.pretrain import pretrain
    from lowvar_mae.provenance import device_info
    from lowvar_mae.recipes import make_config
    from lowvar_mae.results import write_bench_record
    from lowvar_mae.train import resolve_device

    with log_path.open("a") as log_file:
        def log(text: str) -> None:
            print(text, flush=True)
            log_file.write(text + "\n")
            log_file.flush()

        device = str(resolve_device(args.device))
        log(f"{device_info(device)['device_name']}; budget {args.budget_s:.0f} s")
        # 1. throughput: one epoch of the gpu recipe, pixel target
        tiny_pre = TINY_PRE if args.tiny else {}
        n_probe = TINY_PRE["n_train"] if args.tiny else args.probe_images
        probe = make_config("gpu", "cifar10", "pixels", **{**tiny_pre, "n_train": n_probe}, epochs=1, warmup_epochs=0,
                            probe_every=0)
        run = pretrain(probe, root=runs / "throughput", device=device, progress=False)
        images_per_s = float(run.metrics[-1]["images_per_s"])
        n_train = TINY_PRE["n_train"] if args.tiny else TRAIN_IMAGES
        per_epoch = n_train / images_per_s
        left = args.budget_s - (time.perf_counter() - start) - args.margin
        epochs = args.epochs or choose_epochs(per_epoch, left)
        log(f"throughput: {images_per_s:.0f} images/s (one epoch of {n_probe} images, batch {probe.batch_size}, "
            f"{probe.model}); an epoch of {n_train} images {per_epoch:.1f} s; {left:.0f} s left -> {epochs} epochs")
        write_bench_record("gpu_throughput", {
            "kind": "gpu_throughput", "recipe": "gpu", "model": probe.model, "target": "pixels", "images": n_probe,
            "batch_size": probe.batch_size, "images_per_s": images_per_s, "seconds_per_epoch": per_epoch,
            "epochs_chosen": epochs, "budget_s": args.budget_s, "tiny": args.tiny,
            "device_name": device_info(device)["device_name"],
        }, device, out=results / "bench" / f"gpu_throughput-{device.split(':')[0]}.json")
        # 2. the study: both targets at that length, seed 0, both probes; records as each cell ends
        if epochs < 1:
            log("not one epoch of both targets fits the budget: no study run")
        else:
            cells = grid.plan(["cifar10"], TARGETS, [0], ["linprobe", "knn"], "gpu",
                              pretrain_overrides={**grid.length_overrides("gpu", epochs), **tiny_pre},
                              eval_overrides=TINY_EVAL if args.tiny else None)
            grid.run_grid(cells, device=device, allow_dirty=args.tiny, log=log)
        log(f"done in {time.perf_counter() - start:.0f} s")
    with tarfile.open(out / "records.tar.gz", "w:gz") as tar:
        tar.add(results, arcname="results")
        tar.add(log_path, arcname="gpu_study.log")
    return 0


def cmd_launch(args) -> int:
    """The ``run`` command for the device, naming this clean checkout's commit."""
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    if dirty:
        raise SystemExit("the checkout has uncommitted changes: commit them first, so that the records name "
                         "the code that made them")
    rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    print(f"python3 bench/gpu_study.py run --data /tmp/lowvar-data --out \"$OUT\" --budget-s {args.budget_s} "
          f"--revision {rev}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: the dataset in parts of 10,000 images, two parts to a call folder")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--out", default=".shards")
    p.add_argument("--size", type=int, default=10_000)
    p.set_defaults(func=cmd_pack)
    p = sub.add_parser("receive", help="on the GPU machine: copy one call's parts into the data root")
    p.add_argument("parts")
    p.add_argument("--data", default="/tmp/lowvar-data")
    p.set_defaults(func=cmd_receive)
    p = sub.add_parser("run", help="on the GPU machine: throughput, then the study at the longest length that fits")
    p.add_argument("--data", default="/tmp/lowvar-data")
    p.add_argument("--out", required=True)
    p.add_argument("--runs", default="/tmp/lowvar-runs")
    p.add_argument("--budget-s", type=float, default=420, help="seconds this command may take in all")
    p.add_argument("--margin", type=float, default=45, help="seconds kept back from the budget")
    p.add_argument("--probe-images", type=int, default=20_000, help="images of the throughput epoch")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs (default: the most that fit)")
    p.add_argument("--revision", default=None, help="the commit the copied checkout was made from")
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="a few images on any device: a test of the script")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("launch", help="here: print the run command with this clean checkout's commit")
    p.add_argument("--budget-s", type=float, default=420)
    p.set_defaults(func=cmd_launch)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
