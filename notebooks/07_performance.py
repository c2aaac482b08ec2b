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
# path (uint8 data on the device, batched augmentation and PCA target, bf16 autocast where
# the hardware has it, the attention kernel that is faster at that precision, `torch.compile`
# on GPUs, fused AdamW), side by side on the same model and batch;
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
FULL = {"pretrain_throughput": {"vit-tiny-cifar", "vit-tiny-stl", "small-cifar"},
        "pca_bench": {"cifar", "stl-train", "stl-unlabeled"}}


def is_full(record: dict) -> bool:
    """Whether a record covers every default preset (throughput) or case (PCA)."""
    parts = {r.get("preset") for r in record.get("rows", [])} | {c.get("case") for c in record.get("cases", [])}
    return FULL[record["kind"]] <= parts


# The latest record of each kind, full runs first (a partial one, e.g. one compiled preset, does not hide them).
latest = {kind: max((r for r in records if r["kind"] == kind),
                    key=lambda r: (is_full(r), r.get("provenance", {}).get("time_utc", ""), r["file"]), default=None)
          for kind in KINDS}
if not records:
    display(Markdown(f"**no benchmark results yet** in `{folder}`: run `python bench/pretrain_throughput.py "
                     "--quick` and `python bench/pca_bench.py --quick` (see `bench/README.md`)."))
else:
    display(inventory)

# %% [markdown]
# All benchmark records found, with the device and date of each. On a shared CPU the
# timings are noisy: each step time is the median of interleaved repeats, and the load
# average at the end of the run is listed.

# %% tags=["remove-cell"]
def row_at(rows: list[dict], preset: str, path: str, at_batch: int):
    """The row of ``path`` for ``preset`` at ``at_batch`` (else the largest batch measured), or None."""
    rows = [r for r in rows if r["preset"] == preset and r["path"] == path]
    exact = [r for r in rows if r["batch"] == at_batch]
    return (exact or sorted(rows, key=lambda r: r["batch"]))[-1] if rows else None


per_machine = {}
for r in sorted((r for r in records if r["kind"] == "pretrain_throughput"),
                key=lambda r: (r.get("provenance", {}).get("time_utc", ""), r["file"])):
    fast, base = (row_at(r["rows"], "vit-tiny-cifar", p, batch) for p in ("fast", "baseline"))
    if fast is not None and base is not None:  # the latest record of each machine and fast-path setup wins
        setup = (fast["precision"], fast.get("attention", "sdpa"), bool(fast.get("compiled")))
        per_machine[(r.get("provenance", {}).get("device_name"), setup)] = (r, fast, base)
summary_rows = []
for (name, _), (r, fast, base) in per_machine.items():
    summary_rows.append({
        "machine": name, "date (UTC)": r["provenance"]["time_utc"][:10], "batch": fast["batch"],
        "fast path": f"{fast['precision']}, attention {fast.get('attention', 'sdpa')}"
                     + (", compiled" if fast.get("compiled") else ""),
        "baseline img/s": base["img_per_s"], "fast img/s": fast["img_per_s"],
        "fast / baseline": fast["ratio_vs_baseline"],
        "paper recipe, h": (r.get("paper_estimate") or {}).get("hours"), "file": r["file"]})
machines = pd.DataFrame(summary_rows)
glue("n_machines", str(len(machines)))

# %% [markdown]
# ## The pretraining step on every machine measured
#
# The vit-tiny-cifar step (the `paper` recipe's model) in the latest record of each machine
# and fast-path setup ({glue:text}`n_machines` in all): the baseline's and the fast
# path's images/s, their ratio, and the wall time of the `paper` recipe (400 epochs of
# CIFAR-10) at the fast path's throughput. What the fast path can gain depends on the
# hardware far more than on the code: on a CPU without native bf16 both paths do the same
# fp32 arithmetic, so only the overheads around it can go.

# %%
if machines.empty:
    print("no pretraining-throughput record with vit-tiny-cifar yet")
else:
    display(machines.round(2))

# %% [markdown]
# The sections below show the latest record of each kind in full (the latest that covers
# every preset or case, where there is one).

# %% [markdown]
# ## The pretraining step, latest record

# %%
tp = latest["pretrain_throughput"]
if tp is None:
    print("no pretraining-throughput record yet")
    throughput = pd.DataFrame()
else:
    throughput = pd.DataFrame(tp["rows"])
    shown = throughput.assign(**{
        "MFU %": 100 * throughput["mfu"], "GFLOP/step": throughput["flops_per_step"] / 1e9,
    }).reindex(columns=["preset", "batch", "path", "precision", "attention", "compiled", "img_per_s",
                        "ms_per_step", "ms_min", "ms_max", "repeats", "ratio_vs_baseline", "GFLOP/step", "MFU %"])
    print(f"{tp['file']}: {tp['provenance']['device_name']}, target {tp['target']}, "
          f"{tp['settings']['warmup']} warm-up + {tp['settings']['repeats']} timed steps per path")
    display(shown.round(2))

# %% [markdown]
# `img_per_s` is the batch over the median step time; `attention` the kernel of
# `softmax(q k^T / sqrt(d)) v`: `sdpa` (torch's fused `scaled_dot_product_attention`) or
# `math` (written out, the attention matrix materialised); `ratio_vs_baseline` the fast path's
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
# ### fp32 against bf16 autocast, and the attention kernel

# %%
pc = tp.get("precision_comparison") if tp else None
if pc is None:
    print("no precision comparison in the latest record")
else:
    print(f"{pc['preset']} batch {pc['batch']} on {pc['device']}: CPU capability {pc['cpu_capability']}, "
          f"native bf16 {pc['cpu_has_fast_bf16']}, precision chosen by resolve_precision('auto'): {pc['auto_precision']}")
    display(pd.DataFrame(pc["rows"]).reindex(
        columns=["precision", "attention", "img_per_s", "ms_per_step", "repeats", "warmup", "mfu"]).round(3))


# %% tags=["remove-cell"]
def kernel_ratio(precision: str):
    """Step time with the fused kernel over the written-out one, at ``precision``."""
    rows = {r.get("attention"): r for r in (pc["rows"] if pc else []) if r["precision"] == precision}
    return rows["sdpa"]["ms_per_step"] / rows["math"]["ms_per_step"] if {"sdpa", "math"} <= set(rows) else None


ratio = pc["bf16_time_over_fp32"] if pc else None
if ratio is None:
    precision_text = "No record compares the two precisions yet."
elif ratio > 1:
    precision_text = (f"A bf16-autocast step takes {ratio:.1f} times as long as an fp32 step here: without "
                      "native bf16 instructions every bf16 matmul is emulated, so the automatic choice of "
                      f"precision is {pc['auto_precision']}.")
else:
    precision_text = (f"A bf16-autocast step takes {ratio:.2f} of an fp32 step's time here: the CPU has native "
                      "bf16 instructions (AVX512-BF16 or AMX), so the automatic choice of precision is "
                      f"{pc['auto_precision']}.")
kernel_parts = [f"in {p} the fused kernel's step takes {k:.2f} times the written-out one's"
                for p in ("fp32", "bf16") if (k := kernel_ratio(p)) is not None]
auto_attention = pc.get("auto_attention", {}) if pc else {}
kernel_text = ("Of the two attention kernels, " + " and ".join(kernel_parts) + "; the automatic choice is "
               + " and ".join(f"{auto_attention[p]} in {p}" for p in ("fp32", "bf16") if p in auto_attention) + "."
               if kernel_parts else "")
glue("precision_text", precision_text)
glue("kernel_text", kernel_text)

# %% [markdown]
# {glue:text}`precision_text` {glue:text}`kernel_text`

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
fast_precision = str(fast_row["precision"].iloc[0]) if len(fast_row) else None
glue("fast_precision", fast_precision or NA)
glue("peak_used", fmt(tp["peak"][fast_precision]["flops"] / 1e9 if tp and fast_precision in tp["peak"] else None,
                      ".0f"))

# %% [markdown]
# What the fast path can remove is what is not model arithmetic: per-sample data work,
# host reads, per-parameter optimiser loops; and it can make the arithmetic cheaper, with
# bf16 where the hardware computes it natively and the attention kernel that is faster at
# that precision. In the latest record, matrix products and attention kernels take
# {glue:text}`fast_matmul_share`% of the fast path's CPU time, and its vit-tiny-cifar step
# reaches {glue:text}`fast_mfu`% of the {glue:text}`peak_used` GFLOP/s that a large
# {glue:text}`fast_precision` matmul reaches on the same device. Where that share is high,
# the step is bound by the model's arithmetic: a larger ratio then needs cheaper FLOPs
# (native bf16, or a GPU, where the same code switches to bf16 autocast and
# `torch.compile`), not less Python.

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
