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
# # Which subspace carries the class?
#
# Balestriero & LeCun {cite}`balestriero2024` trained a supervised classifier on TinyImageNet images projected onto
# the top subspace that explains 90% of the pixel variance and reached 45% test accuracy; on
# the bottom subspace that explains only 20% of the variance they reached 55%. If the
# variance that a pixel loss rewards is not where the class information lives, a
# reconstruction objective spends its capacity on the wrong part of the image.
#
# This chapter repeats the measurement for a grid of shares. The PCA basis is fitted on the
# training split only. Each classifier is trained and tested on projected images:
#
# * **linear**: softmax regression with a small L2 penalty on the projected pixels (minus
#   the mean image, divided by their RMS standard deviation), fitted with full-batch
#   L-BFGS in the subspace's PCA coordinates, which is the same problem solved faster;
# * **convnet**: a narrow airbench-style conv net (three conv blocks of 32, 64 and 128
#   channels, 0.58 M parameters) trained 6 epochs with SGD, label smoothing and the
#   standard CIFAR augmentation (reflect padding by 2, random crop, horizontal flip). The
#   training images are augmented first and projected afterwards, batch by batch; test
#   images are projected once. The net's input is scaled by the RMS deviation the subspace
#   keeps, so a faint subspace is not a small input.
#
# The first section reads the committed runs on the whole CIFAR-10; the second runs the
# same code on the embedded data, to show the machinery at work.

# %% tags=["parameters", "hide-cell"]
real_dataset = "cifar10"  # whose committed records the first section shows
dataset = "synthetic"     # the teaching run: synthetic | cifar10 | cifar100 | stl10
shares_top = [0.5, 0.75, 0.9, 0.95, 0.99]           # top subspaces: share of the variance they reach
shares_bottom = [0.01, 0.05, 0.1, 0.2, 0.25, 0.5]   # bottom subspaces: share they stay within
classifiers = ["linear", "convnet"]                  # linear (seconds) | convnet (minutes)
epochs = 6                # conv-net epochs of the teaching run
width = 8                 # conv-net width of the teaching run (the curve on CIFAR-10 uses 32)
batch_size = 128          # conv-net batch of the teaching run
lr = 0.05                 # conv-net peak learning rate of the teaching run
seed = 0
n_train = None            # training images for the classifiers (None: the whole training split)
n_fit = None              # training images for the PCA fit (None: the whole split, cached)
device = "auto"           # auto | cpu | cuda
record = False            # write one result record per row under results/subspace/

# %% tags=["remove-cell"]
import dataclasses
import math
import time

import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae import conclusions, report
from lowvar_mae.curve import ConvNetConfig, subspace_classification
from lowvar_mae.plots import data_label, dataset_note, glue, plot_subspace_accuracy, reproduce, takeaway
from lowvar_mae.results import load_records

# %% [markdown]
# ## The answer on CIFAR-10
#
# Both classifiers on all 50,000 training and 10,000 test images of CIFAR-10, PCA fitted on
# the training images only. The linear classifier's penalty is chosen per subspace on 5,000
# held-out training images, then refitted on all of them to convergence (largest gradient
# entry below 1e-4; three of its fits are solved again by scikit-learn, below). The conv
# net has one seed per point and three on the points that carry the comparison.

# %% tags=["remove-cell"]
real = report.current_subspace_records(load_records("subspace"), real_dataset)
curves = report.subspace_curves(real) if real is not None and len(real) else pd.DataFrame()
have_real = len(curves) > 0
cfg = ConvNetConfig()


def _point(classifier, side, share):
    part = curves[(curves["classifier"] == classifier) & (curves["side"] == side)
                  & ((curves["share"] - share).abs() < 1e-9)]
    return part.iloc[0] if len(part) else None


def _fmt(row):
    if row is None:
        return "not run yet"
    spread = f" ± {100 * row['std']:.1f}" if row["n"] > 1 else ""
    return f"{100 * row['mean']:.1f}%{spread} ({row['n']} seed{'s' if row['n'] > 1 else ''})"


if have_real:
    seeds_ = sorted({int(x) for x in real["seed"]})
    source = (f"{real_dataset}, 50,000 train / 10,000 test images, PCA of the training split; conv net width "
              f"{cfg.width}, {cfg.epochs} epochs; linear: penalty chosen on validation; seeds "
              f"{','.join(map(str, seeds_))} (1 to 3 per point); " + "; ".join(sorted(set(real["device_name"].dropna()))))

# %% tags=["remove-input"]
if have_real:
    fig = report.plot_subspace_curves(curves, title=source)
    display(reproduce("python -m lowvar_mae linear; python -m lowvar_mae curve", "subspace"))
else:
    print(f"No subspace records of {real_dataset} with the current settings yet: "
          "python -m lowvar_mae linear and python -m lowvar_mae curve make them.")

# %% [markdown]
# Each point is one subspace, placed at the share of variance its projection keeps on the
# test images (log scale: the bottom subspaces keep 1% to 50%); circles are top subspaces,
# squares bottom ones; bars are ± one standard deviation over seeds where there are three.
# Dotted lines: the same classifier on the full images.

# %% tags=["remove-input"]
if have_real:
    wide = []
    for (side, share), g in curves.groupby(["side", "share"], sort=False):
        row = {"subspace": "full image" if side == "full" else f"{side} {share:.0%}",
               "components": int(g["n_components"].iloc[0]), "variance kept": f"{g['kept_share'].mean():.1%}"}
        for classifier in ("linear", "convnet"):
            row[report.SUBSPACE_LABELS[classifier]] = _fmt(_point(classifier, side, share))
        wide.append(row)
    display(pd.DataFrame(wide).style.hide(axis="index"))
    glue("subspace_points", report.curves_json(curves))  # what the page shows, for the page-to-record test

# %% tags=["remove-cell"]
def _words(classifier):
    label = report.SUBSPACE_LABELS[classifier]
    full, top90, b20 = (_point(classifier, "full", 1.0), _point(classifier, "top", 0.9),
                        _point(classifier, "bottom", 0.2))
    if full is None or top90 is None or b20 is None:
        return None, f"The {label}'s points are not all recorded yet."
    diff = report.subspace_difference(real, classifier, ("bottom", 0.2), ("top", 0.9))
    better = b20["mean"] > top90["mean"]
    text = (f"The **{label}** reaches {_fmt(full)} on full images, {_fmt(top90)} on the top-90% subspace and "
            f"{_fmt(b20)} on the bottom-20% one: the bottom subspace is "
            f"{'better' if better else 'worse'} by {100 * abs(b20['mean'] - top90['mean']):.1f} points")
    if diff is not None and diff["n"] > 1:
        text += f" (paired over {diff['n']} seeds: {diff['verdict']})."
    else:
        text += " (one seed: no spread to compare with)."
    return better, text


if have_real:
    deep_better, deep_text = _words("convnet")
    lin_better, lin_text = _words("linear")
    parts = [deep_text, lin_text]
    if deep_better is not None and lin_better is not None:
        if deep_better and not lin_better:
            parts.append(
                "**So the claim holds for the deep network and not for the linear one.** A linear model's decision "
                "is one weighted sum of pixels; its weights on the faint bottom directions must be very large to "
                "matter, so the penalty and the high-variance directions dominate it, and the top subspace, which "
                "holds most of what the full image holds, serves it best. A conv net builds local, nonlinear "
                "features and normalises them layer by layer: it can amplify faint, fine detail (edges, texture) "
                "that the bottom 20% of the variance holds, and the class lives there at least as much as in "
                "the blurry colour fields of the top components.")
        elif deep_better and lin_better:
            parts.append("**Both classifiers do better on the bottom subspace than on the top one.**")
        elif not deep_better:
            parts.append(
                "**At this scale the deep-network claim does not hold**: the conv net does better on the top "
                "subspace. The presentation's result (TinyImageNet, a larger network trained longer) is not "
                "reproduced by this 6-epoch conv net on CIFAR-10.")
    display(Markdown("\n\n".join(parts)))

# %% tags=["remove-input"]
if have_real:
    conv = real[real["classifier"] == "convnet"]
    full_runs = conv[conv["side"] == "full"]
    cost = []
    if len(full_runs):
        cost.append(f"One conv-net point took {conv['wall_seconds'].median() / 60:.1f} minutes (median of "
                    f"{len(conv)} runs; full images: {', '.join(f'{a:.1%}' for a in full_runs['test_accuracy'])} "
                    f"test accuracy) on {', '.join(sorted(set(conv['device_name'].dropna())))}.")
    bench = [r for r in report.bench_records() if r["kind"] == "convnet_throughput"]
    if bench:
        rows = {(r["isa"], r["projection"]): r for r in bench[-1]["rows"] if r["channels_last"]}
        if ("native", "none") in rows and ("avx2", "none") in rows:
            nat, avx2 = rows[("native", "none")], rows[("avx2", "none")]
            cost.append(
                f"The training steps alone, benchmarked ({bench[-1]['provenance']['device_name']}): "
                f"{nat['images_per_s']:.0f} images/s with the machine's {nat['capability']} kernels, "
                f"{avx2['images_per_s']:.0f} images/s with torch and oneDNN limited to AVX2 "
                f"({avx2['vs_native']:.2f}x), so about {avx2['point_minutes']:.1f} minutes of training steps "
                f"per point on an AVX2 CPU of the same clock (an emulation, not an AVX2 machine).")
    if cost:
        display(Markdown(" ".join(cost)))

# %% [markdown]
# ### The linear fits, solved twice
#
# The linear classifier is softmax regression on the subspace's standardised PCA
# coordinates, fitted by L-BFGS in float64 with a diagonal preconditioner. On the full images
# and two subspaces the same penalised problem was solved again by scikit-learn's lbfgs
# `LogisticRegression`; both solutions are scored by one piece of code.

# %% tags=["remove-input"]
if have_real and "details" in real:
    checks, fits = [], []
    for _, r in real[real["classifier"] == "linear"].iterrows():
        check = r["details"].get("sklearn") if isinstance(r["details"], dict) else None
        if not check:
            continue
        where = "full image" if r["side"] == "full" else f"{r['side']} {r['share']:.0%}"
        checks.append({
            "subspace": where, "penalty": f"{check['weight_decay']:g}",
            "train accuracy": f"{check['ours']['train_accuracy']:.4f} / {check['sklearn']['train_accuracy']:.4f}",
            "test accuracy": f"{check['ours']['test_accuracy']:.4f} / {check['sklearn']['test_accuracy']:.4f}",
            "same predictions": f"{check['test_prediction_agreement']:.2%}"})
        fits.append({
            "subspace": where, "iterations": f"{check['ours']['iterations']} / {check['sklearn']['iterations']}",
            "largest gradient": f"{check['ours']['grad_max']:.1e} / {check['sklearn']['grad_max']:.1e}",
            "objective gap": f"{check['objective_gap']:+.1e}"})
    if checks:  # ours / scikit-learn's, in two tables that fit the column
        display(Markdown("Accuracy, ours / scikit-learn's:"))
        display(pd.DataFrame(checks).style.hide(axis="index"))
        display(Markdown("How far each fit went, ours / scikit-learn's:"))
        display(pd.DataFrame(fits).style.hide(axis="index"))
    else:
        print("No linear record carries the scikit-learn check yet.")

# %% [markdown]
# ## The same code on the embedded data
#
# A teaching run: the same grid on a small subset, here on the embedded data unless the
# parameters name another dataset.

# %% tags=["remove-input"]
dataset_note(dataset)

# %%
start = time.perf_counter()
# The embedded set's classes are grating orientations, which a horizontal flip swaps
# (18 deg becomes 162 deg): there the flip would teach the net that the classes are the same.
teaching_net = dataclasses.replace(ConvNetConfig(), width=width, epochs=epochs, batch_size=batch_size, lr=lr,
                                   weight_decay=5e-4, label_smoothing=0.0, warmup_epochs=min(1.0, epochs),
                                   flip=dataset != "synthetic")
frame = subspace_classification(dataset, shares_top=shares_top, shares_bottom=shares_bottom,
                                classifiers=classifiers, seed=seed, n_train=n_train, n_fit=n_fit,
                                device=device, record=record, convnet=teaching_net)
wall = time.perf_counter() - start
print(f"{len(frame)} classifiers trained in {wall:.0f} s (data and PCA basis ready in "
      f"{frame.attrs['basis_seconds']:.0f} s)")

# %% tags=["remove-cell"]
main = classifiers[0]
part = frame[frame["classifier"] == main]


def nearest(side, share):
    """The row of the main classifier whose share on ``side`` is nearest to ``share``."""
    rows = part[part["side"] == side]
    return rows.loc[(rows["share"] - share).abs().idxmin()]


top, bottom = nearest("top", 0.9), nearest("bottom", 0.2)
glue("main", main)
glue("wall_min", wall / 60)
glue("n_train", int(frame["n_train"].iloc[0]))
glue("n_test", int(frame["n_test"].iloc[0]))
glue("dim", int(frame["dim"].iloc[0]))
glue("chance_pct", 100 * float(frame["chance"].iloc[0]))
glue("full_pct", 100 * float(part["full_accuracy"].iloc[0]))
glue("top_share_pct", 100 * float(top["share"]))
glue("top_k", int(top["n_components"]))
glue("top_pct", 100 * float(top["test_accuracy"]))
glue("bottom_share_pct", 100 * float(bottom["share"]))
glue("bottom_k", int(bottom["n_components"]))
glue("bottom_kept_pct", 100 * float(bottom["kept_share_test"]))
glue("bottom_pct", 100 * float(bottom["test_accuracy"]))
best = part[part["side"] != "full"].loc[part.loc[part["side"] != "full", "test_accuracy"].idxmax()]
glue("best_label", f"{best['side']} {100 * best['share']:g}%")
glue("best_pct", 100 * float(best["test_accuracy"]))
verdict = ("higher than" if bottom["test_accuracy"] > top["test_accuracy"]
           else "lower than" if bottom["test_accuracy"] < top["test_accuracy"] else "equal to")
glue("verdict", verdict)
nets = frame[frame["classifier"] == "convnet"]
if len(nets):
    near = {side: nets[nets["side"] == side] for side in ("top", "bottom")}
    net_top = near["top"].loc[(near["top"]["share"] - 0.9).abs().idxmin()]
    net_bottom = near["bottom"].loc[(near["bottom"]["share"] - 0.2).abs().idxmin()]
    glue("net_text", f"The conv net ({teaching_net.width}-channel first block, {teaching_net.epochs} epochs"
         f"{'' if teaching_net.flip else ', crop without flip'}) reaches "
         f"{100 * float(nets['full_accuracy'].iloc[0]):.1f}% on the full images, "
         f"{100 * float(net_top['test_accuracy']):.1f}% on the top-{100 * float(net_top['share']):.0f}% subspace and "
         f"{100 * float(net_bottom['test_accuracy']):.1f}% on the bottom-{100 * float(net_bottom['share']):.0f}% one.")
else:
    glue("net_text", "")

# %% [markdown]
# With the **{glue:text}`main`** classifier, trained on {glue:text}`n_train` images and
# tested on {glue:text}`n_test`, the full images give {glue:text}`full_pct:.1f`% test accuracy
# (chance: {glue:text}`chance_pct:.0f`%). The top-{glue:text}`top_share_pct:.0f`% subspace
# ({glue:text}`top_k` of {glue:text}`dim` components) gives {glue:text}`top_pct:.1f`%; the
# bottom-{glue:text}`bottom_share_pct:.0f`% subspace ({glue:text}`bottom_k` components, which
# keep {glue:text}`bottom_kept_pct:.1f`% of the test images' variance) gives
# {glue:text}`bottom_pct:.1f`%, {glue:text}`verdict` the top subspace. The best subspace of the
# grid is {glue:text}`best_label` at {glue:text}`best_pct:.1f`%. The whole grid took
# {glue:text}`wall_min:.1f` minutes. {glue:text}`net_text`

# %%
fig = plot_subspace_accuracy(frame, title=data_label(dataset))

# %% [markdown]
# Each point is one subspace, placed at the share of variance its projection actually keeps
# on the test images. Top shares take the fewest components that *reach* the share and
# bottom shares the most that *stay within* it, so a component that straddles the cut puts a
# point to the right of its nominal top share, or to the left of its nominal bottom share.
# Dotted horizontal lines: the same classifier on the full images.

# %% tags=["remove-input"]
table = frame.pivot_table(index=["side", "share", "n_components", "kept_share_test"], columns="classifier",
                          values="test_accuracy", sort=False).reset_index()
table.columns.name = None
table = table.sort_values(["side", "share"], key=lambda c: c.map({"full": 0, "top": 1, "bottom": 2}) if c.name == "side"
                          else c, kind="stable")
table = table.rename(columns={"side": "subspace", "share": "share asked", "n_components": "components",
                              "kept_share_test": "variance kept (test)", "linear": "linear: test accuracy",
                              "convnet": "conv net: test accuracy"})
formats = {"share asked": "{:.0%}", "variance kept (test)": "{:.1%}", "linear: test accuracy": "{:.1%}",
           "conv net: test accuracy": "{:.1%}"}
table.style.hide(axis="index").format({k: v for k, v in formats.items() if k in table})

# %% [markdown]
# ## What this run shows, and what it does not
#
# On the embedded synthetic dataset the answer is built in: its images were generated so that
# almost all pixel variance is class-independent (brightness, colour casts, smooth colour
# fields) and the class is a faint, fine grating. The top subspaces hold the smooth fields,
# the bottom ones the grating, so a run on it checks the machinery (the PCA fit on the
# training split, the share convention, both classifiers, the records), not the claim about
# natural images. The conv net is trained for a few epochs, without the horizontal flip
# (which would swap the orientation classes); every number is one seed, with no spread. The claim itself is tested on CIFAR-10 in the
# first section.

# %% tags=["remove-input"]
display(takeaway(conclusions.takeaways(conclusions.findings(real_dataset), "subspace") + [
    "The teaching run on the synthetic set checks the machinery (the PCA fit on the training split, the share "
    "convention, both classifiers), not the claim about natural images."]))
