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
# Balestriero & LeCun trained a supervised classifier on TinyImageNet images projected onto
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
# * **convnet**: a small three-block conv net trained with cross-entropy and the standard
#   CIFAR augmentation (reflect padding by 4, random crop, horizontal flip). The training
#   images are augmented first and projected afterwards, batch by batch; test images are
#   projected once.

# %% tags=["parameters", "hide-cell"]
dataset = "synthetic"     # synthetic | cifar10 | cifar100 | stl10
shares_top = [0.5, 0.75, 0.9, 0.95, 0.99]           # top subspaces: share of the variance they reach
shares_bottom = [0.01, 0.05, 0.1, 0.2, 0.25, 0.5]   # bottom subspaces: share they stay within
classifiers = ["linear", "convnet"]                  # linear (seconds) | convnet (minutes)
epochs = 3                # conv-net epochs
seed = 0
n_train = 1000            # training images for the classifiers (None: the whole training split)
n_fit = None              # training images for the PCA fit (None: the whole split, cached)
device = "auto"           # auto | cpu | cuda
record = False            # write one result record per row under results/subspace/

# %% tags=["remove-cell"]
import time

from IPython.display import Markdown, display

from lowvar_mae.analysis import plot_subspace_accuracy, subspace_classification
from lowvar_mae.plots import dataset_note, glue
from lowvar_mae.results import load_records

# %% tags=["remove-input"]
dataset_note(dataset)

# %%
start = time.perf_counter()
frame = subspace_classification(dataset, shares_top=shares_top, shares_bottom=shares_bottom,
                                classifiers=classifiers, epochs=epochs, seed=seed, n_train=n_train,
                                n_fit=n_fit, device=device, record=record)
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

# %% [markdown]
# With the **{glue:text}`main`** classifier, trained on {glue:text}`n_train` images and
# tested on {glue:text}`n_test`, the full images give {glue:text}`full_pct:.1f`% test accuracy
# (chance: {glue:text}`chance_pct:.0f`%). The top-{glue:text}`top_share_pct:.0f`% subspace
# ({glue:text}`top_k` of {glue:text}`dim` components) gives {glue:text}`top_pct:.1f`%; the
# bottom-{glue:text}`bottom_share_pct:.0f`% subspace ({glue:text}`bottom_k` components, which
# keep {glue:text}`bottom_kept_pct:.1f`% of the test images' variance) gives
# {glue:text}`bottom_pct:.1f`%, {glue:text}`verdict` the top subspace. The best subspace of the
# grid is {glue:text}`best_label` at {glue:text}`best_pct:.1f`%. The whole grid took
# {glue:text}`wall_min:.1f` minutes.

# %%
fig = plot_subspace_accuracy(frame)

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
table.style.hide(axis="index").format(
    {"share": "{:.0%}", "kept_share_test": "{:.1%}", **{c: "{:.1%}" for c in classifiers}})

# %% [markdown]
# ## What this run shows, and what it does not
#
# On the embedded synthetic dataset the answer is built in: its images were generated so that
# almost all pixel variance is class-independent (brightness, colour casts, smooth colour
# fields) and the class is a faint, fine grating. The top subspaces hold the smooth fields,
# the bottom ones the grating, so a run on it checks the machinery (the PCA fit on the
# training split, the share convention, both classifiers, the records), not the claim about
# natural images. The conv net is trained for a few epochs on a subset, far from converged;
# every number is one seed, with no spread. The claim itself is tested by the same code on
# CIFAR-10 (`dataset="cifar10"`), whose recorded runs are listed below.

# %% [markdown]
# ## Runs on real data
#
# Every subspace-classification run recorded under `results/subspace/` on a real dataset,
# with the machine it ran on.

# %% tags=["remove-input"]
records = load_records("subspace")
if len(records):
    records = records[records["dataset"] != "synthetic"]
if len(records):
    cols = ["dataset", "classifier", "side", "share", "n_components", "kept_share_test", "test_accuracy",
            "full_accuracy", "n_train", "seed", "wall_seconds", "device_name", "time_utc", "git_revision"]
    shown = records[cols].sort_values(["dataset", "classifier", "side", "share"])
    display(shown.style.hide(axis="index").format(
        {"share": "{:.0%}", "kept_share_test": "{:.1%}", "test_accuracy": "{:.1%}", "full_accuracy": "{:.1%}",
         "wall_seconds": "{:.0f}"}))
else:
    print("No subspace-classification records of real datasets yet.")

# %% tags=["remove-input"]
def _said(recs, classifier):
    sub = recs[recs["classifier"] == classifier].sort_values("time_utc").drop_duplicates(["side", "share"], keep="last")
    if not len(sub):
        return None
    pick = lambda side, share: sub[(sub["side"] == side) & (sub["share"] == share)]["test_accuracy"]
    top90, bottom20, bottom25 = pick("top", 0.9), pick("bottom", 0.2), pick("bottom", 0.25)
    bottom = bottom20 if len(bottom20) else bottom25
    if not (len(top90) and len(bottom)):
        return None
    b_share = 0.2 if len(bottom20) else 0.25
    converged = [d.get("converged") for d in sub["details"] if isinstance(d, dict)]
    return {"top90": float(top90.iloc[0]), "bottom": float(bottom.iloc[0]), "bottom_share": b_share,
            "full": float(sub["full_accuracy"].iloc[0]), "n": len(sub),
            "converged": None if any(c is None for c in converged) else all(converged)}


if len(records):
    real = records[records["dataset"] == "cifar10"]
    lin, deep = _said(real, "linear"), _said(real, "convnet")
    parts = []
    if lin:
        parts.append(
            f"**The linear classifier on CIFAR-10** reaches {lin['full']:.1%} on full images, {lin['top90']:.1%} on "
            f"the top-90% subspace and {lin['bottom']:.1%} on the bottom-{lin['bottom_share']:.0%} one: "
            + ("the top subspace wins, the opposite of the deep-network result this chapter began with. "
               if lin["top90"] > lin["bottom"] else "the bottom subspace wins. ")
            + "That is what a linear model should do: its decision is a weighted sum of pixels, and on the "
            "bottom subspace it must read directions whose variance is orders of magnitude below the top ones', fine and "
            "local patterns a single global template cannot pick out; a deep network can build such local "
            "features and amplify them, which is the claim in question. A linear result therefore neither "
            "supports nor refutes the claim about deep networks."
            + ("" if lin["converged"] else " These linear fits predate the convergence check (their records carry "
               "no gradient norm) and may stop before the optimum; rerunning the grid regenerates them."))
    if deep:
        parts.append(f"**The conv net on CIFAR-10**: {deep['full']:.1%} on full images, {deep['top90']:.1%} on the "
                     f"top-90% subspace, {deep['bottom']:.1%} on the bottom-{deep['bottom_share']:.0%} one.")
    else:
        parts.append("**The deep-network curve on CIFAR-10 has no record yet**: the conv net of this chapter has "
                     "not been trained on real images at a size that reaches a useful accuracy, so this book does "
                     "not yet show the presentation's deep-network result on CIFAR-10.")
    display(Markdown("\n\n".join(parts)))
