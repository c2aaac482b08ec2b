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

# %% [markdown]
# # Performance: the pretraining step and the PCA fit
#
# What does the code cost, on the machines it ran on? The scripts in `bench/` (see
# `bench/README.md`) time the pretraining step of the package's fast path (uint8 data on
# the device, batched augmentation and PCA target, bf16 where the CPU computes it
# natively, fused AdamW) against a straightforward baseline (a DataLoader of images, the
# target projected per sample, fp32, plain AdamW) on the same model and batch, and the
# exact PCA fit against a solver of the top components only. This page reads their
# records; it runs nothing.

# %% tags=["parameters", "hide-cell"]
bench_dir = None   # folder of benchmark records (None: results/bench, committed and this build's)

# %% tags=["remove-cell"]
import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae import report
from lowvar_mae.plots import takeaway
from lowvar_mae.recipes import MODEL_PRESETS
from lowvar_mae.results import load_records

records = report.bench_records([bench_dir] if bench_dir else None)
steps = report.throughput_summary(records)
fits = report.pca_summary(records)

# %% [markdown]
# ## The pretraining step

# %% tags=["remove-input"]
if steps.empty:
    display(Markdown("No pretraining-throughput record yet: run `python bench/pretrain_throughput.py`."))
else:
    shown = steps.copy()
    shown["400-epoch recipe, h"] = [f"{h:.0f}" if h == h and h is not None else None for h in shown["400-epoch recipe, h"]]
    shown, machine_line = report.bench_table(shown)
    display(shown.style.hide(axis="index").format({"baseline img/s": "{:.0f}", "fast img/s": "{:.0f}",
                                                   "fast / baseline": "{:.2f}"}))
    display(Markdown(machine_line + " The 400-epoch estimate is made for the presentation's ViT-Tiny only (a dash "
                     "elsewhere)."))
    fig = report.plot_throughput(steps, title="pretraining step, latest full record per machine and model "
                                 "(fast path against baseline, same batch)")

# %% tags=["remove-input"]
if not steps.empty:
    lines = []
    for machine, group in steps.groupby("machine", sort=False):
        parts = ", ".join(f"{r['preset']} {r['fast / baseline']:.1f}x ({r['fast img/s']:.0f} images/s)"
                          for _, r in group.iterrows())
        line = f"- **{machine}**: {parts}"
        paper = group.dropna(subset=["400-epoch recipe, h"])
        if len(paper):
            r = paper.iloc[0]
            line += (f". At that speed the presentation's recipe (400 epochs of CIFAR-10, {r['preset']}) "
                     f"would take about {r['400-epoch recipe, h']:.0f} hours")
        lines.append(line + ".")
    display(Markdown(
        "The fast path against the baseline, by machine:\n\n" + "\n".join(lines) + "\n\nOn CPUs with native bf16 "
        "(AVX512-BF16 or AMX) most of the gain is cheaper arithmetic; on AVX2 both paths do the same fp32 "
        "arithmetic (emulated bf16 is about 20 times slower there), so only the overheads around it can go. "
        "That is why the evaluation chapter uses a smaller model on CPUs, and why the presentation's recipe "
        "is for a GPU."))

# %% [markdown]
# ### The evaluation protocol's step
#
# The [evaluation chapter](03_evaluation.ipynb)'s CPU protocol pretrains the `cpu-cifar`
# ViT; its step against the machine's own matrix-product rate, and its profile:

# %% tags=["remove-input"]
model_name = MODEL_PRESETS[("cpu", 32)]
bench = [r for r in load_records("bench").to_dict("records") if r.get("kind") == "pretrain_throughput"
         and any(row.get("preset") == model_name for row in r.get("rows") or [])]
if bench:
    rec = max(bench, key=lambda r: r["time_utc"])
    fast = max((row for row in rec["rows"] if row["preset"] == model_name and row["path"] == "fast"),
               key=lambda row: row["batch"])
    peak = rec["peak"][fast["precision"]]["measured_flops"]
    achieved = fast["flops_per_step"] / (fast["ms_per_step"] / 1e3)
    text = (f"**The step.** The benchmark `bench/pretrain_throughput.py` ({rec['device_name']}, {rec['time_utc'][:10]}) "
            f"times the `{model_name}` pretraining step at batch {fast['batch']}: {fast['img_per_s']:.0f} images/s in "
            f"{fast['precision']}, {fast['flops_per_step'] / fast['batch'] / 1e9:.2f} GFLOP per image (forward and "
            f"backward), so {achieved / 1e9:.0f} GFLOP/s, {achieved / peak:.0%} of a 2048 x 2048 {fast['precision']} "
            f"matmul on the same machine in the same run ({peak / 1e9:.0f} GFLOP/s).")
    prof = rec.get("profile") or {}
    if prof.get("preset") == model_name:
        ops = prof["fast"]["top_ops"]
        matmul = sum(o["share"] for o in ops if o["name"] in ("aten::mm", "aten::addmm", "aten::bmm"))
        named = ", ".join(f"{o['name'].replace('aten::', '')} {o['share']:.0%}" for o in ops[:6])
        text += (f" In its profile, matrix products take {matmul:.0%} of the step's CPU time; the largest "
                 f"operations are {named}: elementwise work (activations, dtype conversions, additions) "
                 "costs nearly as much as the products at this width, which is why a smaller model is "
                 "not proportionally faster.")
    display(Markdown(text))

# %% [markdown]
# ## The PCA fit

# %% tags=["remove-input"]
if fits.empty:
    display(Markdown("No PCA benchmark record yet: run `python bench/pca_bench.py`."))
else:
    fit_table, machine_line = report.bench_table(fits)
    display(fit_table.style.hide(axis="index").format({"exact / top-k": "{:.1f}"}))
    display(Markdown(machine_line))
    best = fits.loc[fits["exact / top-k"].idxmax()]
    display(Markdown(
        f"Fitting only the top components that the bottom filter removes is faster than the exact "
        f"eigendecomposition on every case measured, up to {best['exact / top-k']:.1f} times ({best['case']}, "
        f"{best['images']:,} images of {best['D']:,} pixels, {best['machine']})."
        + (" Rows marked *shortened* come from a shortened run." if "run" in fit_table else "")))

# %% tags=["remove-input"]
points = ["Every time on this page names the machine it was measured on; compare the ratios of one run, "
          "not times across machines."]
if not fits.empty:
    points.append(f"The bottom filter needs only the top components: fitting those alone was up to "
                  f"{best['exact / top-k']:.1f} times faster than the full eigendecomposition here.")
points.append("On a 2-core CPU the presentation's ViT-Tiny recipe takes days: the evaluation chapter's CPU protocol "
              "uses a smaller model of the same width, and the full recipe is for a GPU.")
display(takeaway(points))
