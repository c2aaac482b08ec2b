# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
bench_dir = None        # folder of benchmark records (None: results/bench, committed and this build's)
batch = 64              # batch size of the bar chart and of the ratios quoted below

# %% [markdown]
# # Performance: the pretraining step and the PCA fit
#
# How fast does one MAE pretraining step run, and how long does a PCA fit take? The
# scripts in `bench/` measure it (see `bench/README.md`): `pretrain_throughput.py` times
# a straightforward baseline (a DataLoader of PIL images, the PCA target projected per
# sample with numpy, fp32, attention written out, plain AdamW) against the package's fast
# path (uint8 data on the device, batched augmentation and PCA target, attention through
# `scaled_dot_product_attention`, bf16 autocast and `torch.compile` where the hardware has
# them, fused AdamW), side by side on the same model and batch;
# `pca_bench.py` times the exact eigendecomposition against a top-k solver that computes
# only the components the complement filter needs. This chapter reads their latest
# records; it runs nothing itself.

# %% tags=["remove-cell"]
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae.plots import glue
from lowvar_mae.results import record_dirs

KINDS = ("pretrain_throughput", "pca_bench")
NA = "n/a"  # glued where a record is missing, so the prose always renders


def fmt(value, spec: str) -> str:
    return NA if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


# %%
folders = [Path(bench_dir)] if bench_dir is not None else [d / "bench" for d in record_dirs()]
folder = folders[0]
paths = {p.name: p for f in reversed(folders) if f.is_dir() for p in sorted(f.glob("*.json"))}
records = []
for path in paths.values():
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        continue
    if isinstance(record, dict) and record.get("kind") in KINDS:
        records.append({**record, "file": path.name})

inventory = pd.DataFrame([{
    "file": r["file"], "kind": r["kind"], "quick": r.get("quick"),
    "device": r.get("provenance", {}).get("device_name"),
    "cpu capability": r.get("provenance", {}).get("cpu_capability"),
    "threads": r.get("provenance", {}).get("threads"),
    "load average (1 min)": (r.get("provenance", {}).get("load_average") or [None])[0],
    "date (UTC)": r.get("provenance", {}).get("time_utc"),
    "git revision": str(r.get("provenance", {}).get("git_revision", ""))[:12],
} for r in records])
latest = {kind: max((r for r in records if r["kind"] == kind),
                    key=lambda r: (r.get("provenance", {}).get("time_utc", ""), r["file"]), default=None)
          for kind in KINDS}
if not records:
    display(Markdown(f"**no benchmark results yet** in `{folder}`: run `python bench/pretrain_throughput.py "
                     "--quick` and `python bench/pca_bench.py --quick` (see `bench/README.md`)."))
else:
    display(inventory)

# %% [markdown]
# All benchmark records found, with the device and date of each. The tables below use the
# latest record of each kind. On a shared CPU the timings are noisy: each step time is
# the median of interleaved repeats, and the load average at the end of the run is listed.

# %% [markdown]
# ## The pretraining step

# %%
tp = latest["pretrain_throughput"]
if tp is None:
    print("no pretraining-throughput record yet")
    throughput = pd.DataFrame()
else:
    throughput = pd.DataFrame(tp["rows"])
    shown = throughput.assign(**{
        "MFU %": 100 * throughput["mfu"], "GFLOP/step": throughput["flops_per_step"] / 1e9,
    })[["preset", "batch", "path", "precision", "compiled", "img_per_s", "ms_per_step", "ms_min", "ms_max",
        "repeats", "ratio_vs_baseline", "GFLOP/step", "MFU %"]]
    print(f"{tp['file']}: {tp['provenance']['device_name']}, target {tp['target']}, "
          f"{tp['settings']['warmup']} warm-up + {tp['settings']['repeats']} timed steps per path")
    display(shown.round(2))

# %% [markdown]
# `img_per_s` is the batch over the median step time; `ratio_vs_baseline` the fast path's
# images/s over the baseline's at the same preset and batch; `fast-loop` is
# `train.run_epoch` itself (one epoch of a few steps after a warm-up epoch), a check that
# the composed step is what the training loop does. MFU is the model FLOPs of forward
# and backward over the step time, divided by the device's peak for that precision.

# %%
chart_batch = None
if not throughput.empty:
    batches = sorted(throughput["batch"].unique())
    chart_batch = batch if batch in batches else batches[-1]
    at = throughput[throughput["batch"] == chart_batch].pivot_table(
        index="preset", columns="path", values="img_per_s", sort=False)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    at.plot.bar(ax=ax, rot=0, logy=True)
    ax.set_ylabel("images / s (log scale)")
    ax.set_xlabel("")
    ax.set_title(f"Pretraining step, batch {chart_batch}, {tp['provenance']['device_name']}")
    ax.legend(title="")
    fig.tight_layout()
    plt.show()

# %% tags=["remove-cell"]
def ratio_at(preset: str):
    if throughput.empty or chart_batch is None:
        return None
    row = throughput[(throughput.preset == preset) & (throughput.batch == chart_batch) & (throughput.path == "fast")]
    return float(row["ratio_vs_baseline"].iloc[0]) if len(row) and row["ratio_vs_baseline"].iloc[0] else None


def ips_at(preset: str, path: str):
    if throughput.empty or chart_batch is None:
        return None
    row = throughput[(throughput.preset == preset) & (throughput.batch == chart_batch) & (throughput.path == path)]
    return float(row["img_per_s"].iloc[0]) if len(row) else None


glue("tp_device", tp["provenance"]["device_name"] if tp else NA)
glue("tp_date", tp["provenance"]["time_utc"][:10] if tp else NA)
glue("tp_batch", str(chart_batch) if chart_batch is not None else NA)
for preset in ("vit-tiny-cifar", "vit-tiny-stl", "small-cifar"):
    key = preset.replace("-", "_")
    glue(f"ratio_{key}", fmt(ratio_at(preset), ".1f"))
    glue(f"fast_ips_{key}", fmt(ips_at(preset, "fast"), ".0f"))
    glue(f"baseline_ips_{key}", fmt(ips_at(preset, "baseline"), ".0f"))
paper = tp.get("paper_estimate") if tp else None
glue("paper_hours", fmt(paper["hours"] if paper else None, ".0f"))
glue("paper_days", fmt(paper["days"] if paper else None, ".1f"))
glue("paper_batch", str(paper["measured_batch"]) if paper else NA)
glue("paper_epochs", str(paper["epochs"]) if paper else NA)
glue("paper_images", f"{paper['images_per_epoch']:,}" if paper else NA)

# %% [markdown]
# On {glue:text}`tp_device` ({glue:text}`tp_date`), at batch {glue:text}`tp_batch`, the fast
# path runs vit-tiny-cifar at {glue:text}`fast_ips_vit_tiny_cifar` images/s against the
# baseline's {glue:text}`baseline_ips_vit_tiny_cifar`, a ratio of
# {glue:text}`ratio_vit_tiny_cifar`; vit-tiny-stl {glue:text}`ratio_vit_tiny_stl` and
# small-cifar {glue:text}`ratio_small_cifar`. At the fast path's vit-tiny-cifar throughput
# (batch {glue:text}`paper_batch`), the `paper` recipe, {glue:text}`paper_epochs` epochs of
# {glue:text}`paper_images` CIFAR-10 images, would take about {glue:text}`paper_hours` hours
# ({glue:text}`paper_days` days) on this device.

# %% [markdown]
# ### fp32 against bf16 autocast

# %%
pc = tp.get("precision_comparison") if tp else None
if pc is None:
    print("no precision comparison in the latest record")
else:
    print(f"{pc['preset']} batch {pc['batch']} on {pc['device']}: CPU capability {pc['cpu_capability']}, "
          f"native bf16 {pc['cpu_has_fast_bf16']}, precision chosen by resolve_precision('auto'): {pc['auto_precision']}")
    display(pd.DataFrame(pc["rows"])[["precision", "img_per_s", "ms_per_step", "repeats", "warmup", "mfu"]].round(3))
glue("bf16_over_fp32", fmt(pc["bf16_time_over_fp32"] if pc else None, ".1f"))
glue("cpu_capability", pc["cpu_capability"] if pc else NA)
glue("auto_precision", pc["auto_precision"] if pc else NA)

# %% [markdown]
# A bf16-autocast step takes {glue:text}`bf16_over_fp32` times as long as an fp32 step here
# (CPU capability {glue:text}`cpu_capability`): without native bf16 instructions every
# bf16 matmul is emulated. `resolve_precision("auto")` therefore chose
# {glue:text}`auto_precision`.

# %% [markdown]
# ### Where the time goes

# %%
prof = tp.get("profile") if tp else None
if prof is None:
    print("no profile in the latest record")
else:
    for name in ("fast", "baseline"):
        part = prof[name]
        print(f"{name}: {prof['preset']} batch {prof['batch']}, {part['self_cpu_ms_per_step']:.0f} ms self CPU "
              f"per step; host-sync calls per step: {part['sync_calls_per_step'] or 'none'}")
        if part["stages_ms_per_step"]:
            display(pd.Series(part["stages_ms_per_step"], name="ms per step").round(1).to_frame())
        display(pd.DataFrame(part["top_ops"]).head(10).round(3))

# %% tags=["remove-cell"]
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product")


def matmul_share(part: dict) -> float:
    """Share of self CPU time in matrix products and attention kernels (of the ops listed)."""
    return sum(op["share"] for op in part["top_ops"] if op["name"].startswith(MATMUL_OPS))


fast_row = (throughput[(throughput.preset == "vit-tiny-cifar") & (throughput.path == "fast")
                       & (throughput.batch == chart_batch)] if not throughput.empty else throughput)
glue("fast_matmul_share", fmt(100 * matmul_share(prof["fast"]) if prof else None, ".0f"))
glue("fast_mfu", fmt(100 * float(fast_row["mfu"].iloc[0]) if len(fast_row) else None, ".0f"))
glue("peak_fp32", fmt(tp["peak"]["fp32"]["flops"] / 1e9 if tp and "fp32" in tp["peak"] else None, ".0f"))

# %% [markdown]
# What the fast path can remove is what is not model arithmetic: per-sample data work,
# host reads, per-parameter optimiser loops, the attention matrix. In the latest record,
# matrix products and attention kernels take {glue:text}`fast_matmul_share`% of the fast
# path's CPU time, and its vit-tiny-cifar step reaches {glue:text}`fast_mfu`% of the
# {glue:text}`peak_fp32` GFLOP/s that a large fp32 matmul reaches on the same device. On a
# CPU without native bf16 there is little left to remove: the ratio to the baseline comes
# from the attention kernel and the fused optimiser, and a larger one needs fewer or
# cheaper FLOPs (bf16 on CPUs with AVX512-BF16 or AMX, or a GPU, where the same code
# switches to bf16 autocast and `torch.compile`).

# %% [markdown]
# ## The PCA fit: exact against top-k

# %%
pb = latest["pca_bench"]
if pb is None:
    print("no PCA benchmark record yet")
    fits = pd.DataFrame()
else:
    fits = pd.DataFrame([r for c in pb["cases"] for r in c["rows"]])
    print(f"{pb['file']}: {pb['provenance']['device_name']}, bottom shares {pb['shares']}")
    display(fits.reindex(columns=["case", "path", "share", "n_images", "dim", "fit_s", "estimated", "k",
                                  "operator_calls"]).round(2))
    accuracy = pd.DataFrame([a for c in pb["cases"] for a in c["accuracy"]])
    if not accuracy.empty:
        display(accuracy[["path", "n_images", "share", "k_exact", "k_topk", "rel_diff", "rel_diff_centred"]])
    display(pd.DataFrame([{"case": c["case"], "images": c["n_images"], "D": c["dim"], "data": c["data"],
                           **{f"exact / {p}": v for p, v in c["speedup_full_size"].items()},
                           "estimated": c["speedup_estimated"]} for c in pb["cases"]]).round(1))

# %%
if not fits.empty:
    full = pd.DataFrame([{**r, "label": r["path"] + (f" q={r['share']:g}" if r.get("share") else "")}
                         for c in pb["cases"] for r in c["rows"] if r["n_images"] == c["n_images"]])
    cases = list(dict.fromkeys(full["case"]))
    paths = list(dict.fromkeys(full["label"]))
    width = 0.8 / len(paths)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, p in enumerate(paths):
        for j, c in enumerate(cases):
            row = full[(full.case == c) & (full.label == p)]
            if len(row):
                est = bool(row["estimated"].iloc[0])
                ax.bar(j + i * width, row["fit_s"].iloc[0], width, color=f"C{i}", hatch="//" if est else None,
                       label=p if j == 0 else None, alpha=0.6 if est else 1.0)
    ax.set_xticks(np.arange(len(cases)) + width * (len(paths) - 1) / 2, cases)
    ax.set_yscale("log")
    ax.set_ylabel("fit time, s (log scale)")
    ax.set_title("PCA fit at full size (hatched: estimated)")
    ax.legend()
    fig.tight_layout()
    plt.show()

# %% tags=["remove-cell"]
pca_share = pb["shares"][0] if pb else None  # the bottom share quoted: the first one benchmarked
speedups = {c["case"]: c["speedup_full_size"].get(f"topk-data q={pca_share:g}") for c in pb["cases"]} if pb else {}
rel = [a["rel_diff"] for c in pb["cases"] for a in c["accuracy"]] if pb else []
glue("pca_device", pb["provenance"]["device_name"] if pb else NA)
glue("pca_share", fmt(pca_share, "g"))
glue("pca_speedup_cifar", fmt(speedups.get("cifar"), ".1f"))
glue("pca_speedup_stl_train", fmt(speedups.get("stl-train"), ".1f"))
glue("pca_speedup_stl_unlabeled", fmt(speedups.get("stl-unlabeled"), ".0f"))
glue("pca_max_rel_diff", fmt(max(rel) if rel else None, ".1e"))
cov_gb = [r["covariance_gb"] for c in (pb["cases"] if pb else []) for r in c["rows"] if "covariance_gb" in r]
glue("pca_covariance_gb", fmt(cov_gb[0] if cov_gb else None, ".1f"))

# %% [markdown]
# On {glue:text}`pca_device`, fitting only the top components that the bottom
# {glue:text}`pca_share` filter removes is {glue:text}`pca_speedup_cifar` times faster than
# the exact fit at CIFAR-10 size, {glue:text}`pca_speedup_stl_train` times at STL-10 train
# size and about {glue:text}`pca_speedup_stl_unlabeled` times at STL-10 train + unlabeled
# size (where the exact fit is estimated: its covariance alone takes
# {glue:text}`pca_covariance_gb` GB). The bottom images the two bases give differ by at
# most {glue:text}`pca_max_rel_diff` (relative, over the checked images).
