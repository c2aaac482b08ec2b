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

records = report.bench_records([bench_dir] if bench_dir else None)
steps = report.throughput_summary(records)
fits = report.pca_summary(records)

# %% [markdown]
# ## The pretraining step

# %% tags=["remove-input"]
if steps.empty:
    display(Markdown("No pretraining-throughput record yet: run `python bench/pretrain_throughput.py`."))
else:
    shown = steps.drop(columns="file").copy()
    shown["400-epoch recipe, h"] = [f"{h:.0f}" if h == h and h is not None else "" for h in shown["400-epoch recipe, h"]]
    display(shown.style.hide(axis="index").format({"baseline img/s": "{:.0f}", "fast img/s": "{:.0f}",
                                                   "fast / baseline": "{:.2f}"}))
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
# ## The PCA fit

# %% tags=["remove-input"]
if fits.empty:
    display(Markdown("No PCA benchmark record yet: run `python bench/pca_bench.py`."))
else:
    display(fits.drop(columns="file").style.hide(axis="index").format({"exact / top-k": "{:.1f}"}))
    best = fits.loc[fits["exact / top-k"].idxmax()]
    display(Markdown(
        f"Fitting only the top components that the bottom filter removes is faster than the exact "
        f"eigendecomposition on every case measured, up to {best['exact / top-k']:.1f} times ({best['case']}, "
        f"{best['images']:,} images of {best['D']:,} pixels, {best['machine']}); rows marked `quick` come from "
        "a shortened run."))

# %% tags=["remove-input"]
points = ["Every time on this page names the machine it was measured on; compare the ratios of one run, "
          "not times across machines."]
if not fits.empty:
    points.append(f"The bottom filter needs only the top components: fitting those alone was up to "
                  f"{best['exact / top-k']:.1f} times faster than the full eigendecomposition here.")
points.append("On a 2-core CPU the presentation's ViT-Tiny recipe takes days: the evaluation chapter's CPU protocol "
              "uses a smaller model of the same width, and the full recipe is for a GPU.")
display(takeaway(points))
