"""Training throughput of the subspace chapter's conv net, and what a curve point costs.

Times the training step of ``curve.SmallConvNet`` as ``curve.convnet_accuracy`` runs
it (uint8 batch -> ``pad_crop_flip`` -> projection -> standardise -> forward, label-smoothed
cross-entropy, backward, SGD step; fp32), side by side:

* memory format: NCHW against channels_last (what the package uses);
* projection: none (full images) against the bottom-25% complement filter of a PCA basis
  (the most expensive kind: the top components explaining 75% are subtracted);
* CPU kernels: the machine's own (e.g. AVX-512) against AVX2 only, each in its own
  subprocess with ``ATEN_CPU_CAPABILITY=avx2`` and ``ONEDNN_MAX_CPU_ISA=AVX2`` set before
  torch loads (same clock and cores, only the vector instructions change: an estimate of
  an AVX2 machine, not a measurement of one).

From the channels_last rows it estimates the minutes of one curve point
(``ConvNetConfig().epochs`` passes over 50,000 images). The record goes to
``results/bench/convnet_throughput-<device>-<time>.json`` (``--out`` to change it).

    python bench/convnet_throughput.py --quick     # about 1 minute on a quiet 2-core CPU
    python bench/convnet_throughput.py             # more timed steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ISAS = {"native": {}, "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
N_TRAIN = 50_000


def time_steps(channels_last: bool, projection: str, batch: int, warmup: int, repeats: int, threads: int) -> dict:
    """Median seconds of one training step (after ``warmup`` steps) over ``repeats`` steps."""
    import torch
    import torch.nn.functional as F

    from lowvar_mae import pca
    from lowvar_mae.curve import ConvNetConfig, SmallConvNet, pad_crop_flip
    from lowvar_mae.data import make_synthetic
    from lowvar_mae.train import build_optimizer

    torch.set_num_threads(threads)
    cfg = ConvNetConfig()
    images, labels = make_synthetic(max(batch, 512), 0, 32)
    x_u8 = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()
    if projection == "bottom25":
        basis = pca.fit_pca(x_u8, method="covariance")
        project = pca.make_filter(basis, "bottom", 0.25, method="complement")
    else:
        project = lambda x: x  # noqa: E731
    torch.manual_seed(0)
    model = SmallConvNet(10, 3, cfg.width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, kind="sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, nesterov=True)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(warmup + repeats):
        idx = torch.randint(0, len(x_u8), (batch,), generator=gen)
        start = time.perf_counter()
        x = project(pad_crop_flip(x_u8[idx], cfg.pad, gen))
        x = (x - 0.45) / 0.25
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y[idx], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"channels_last": channels_last, "projection": projection, "batch": batch, "step_s": median,
            "step_s_min": min(times), "step_s_max": max(times), "images_per_s": batch / median,
            "capability": torch.backends.cpu.get_cpu_capability()}


def worker(args) -> None:
    rows = [time_steps(cl, proj, args.batch, args.warmup, args.repeats, args.threads)
            for proj in ("none", "bottom25") for cl in (False, True)]
    print(json.dumps(rows))


def run_isa(isa: str, args) -> list[dict]:
    env = {**os.environ, **ISAS[isa]}
    cmd = [sys.executable, __file__, "--worker", "--batch", str(args.batch), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    return [{"isa": isa, **r} for r in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps (CI size)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--isas", nargs="+", default=list(ISAS), choices=list(ISAS))
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    args.repeats = args.repeats if args.repeats is not None else (4 if args.quick else 12)
    args.threads = args.threads or os.cpu_count() or 1
    if args.worker:
        worker(args)
        return 0

    from lowvar_mae.curve import ConvNetConfig
    from lowvar_mae.results import write_bench_record

    rows = [r for isa in args.isas for r in run_isa(isa, args)]
    epochs = ConvNetConfig().epochs
    base = {(r["isa"], r["projection"]): r["images_per_s"] for r in rows if not r["channels_last"]}
    native = {(r["projection"], r["channels_last"]): r["images_per_s"] for r in rows if r["isa"] == "native"}
    print(f"conv-net training step, batch {args.batch}, {args.threads} threads, fp32")
    print(f"{'kernels':8} {'capability':11} {'projection':10} {'format':14} {'images/s':>9} {'vs NCHW':>8} "
          f"{'vs native':>9} {'min/point':>9}")
    for r in rows:
        r["vs_nchw"] = r["images_per_s"] / base[(r["isa"], r["projection"])]
        ref = native.get((r["projection"], r["channels_last"]))
        r["vs_native"] = r["images_per_s"] / ref if ref else None
        r["point_minutes"] = epochs * N_TRAIN / r["images_per_s"] / 60
        print(f"{r['isa']:8} {r['capability']:11} {r['projection']:10} "
              f"{'channels_last' if r['channels_last'] else 'NCHW':14} {r['images_per_s']:9.0f} {r['vs_nchw']:8.2f} "
              f"{r['vs_native'] if r['vs_native'] is not None else float('nan'):9.2f} {r['point_minutes']:9.1f}")
    record = {"kind": "convnet_throughput", "batch": args.batch, "threads": args.threads, "epochs": epochs,
              "n_train": N_TRAIN, "warmup": args.warmup, "repeats": args.repeats, "rows": rows,
              "note": "min/point: training steps only (no evaluation, no data loading); avx2 rows emulate an "
                      "AVX2 CPU on this one by restricting torch's and oneDNN's kernels"}
    path = write_bench_record("convnet_throughput", record, "cpu", args.out)
    print(f"record: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
