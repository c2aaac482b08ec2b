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
# # Conclusions: what the records say
#
# The question of this book, from Balestriero & LeCun {cite}`balestriero2024`: does
# a masked autoencoder learn better features for perception when it reconstructs the
# low-variance principal components of an image instead of its pixels? This page puts
# together what the other chapters measured. Every number on it is computed from the
# committed records under `results/` when the book is built
# (`lowvar_mae.conclusions.findings`); nothing is typed by hand.

# %% tags=["parameters", "hide-cell"]
dataset = "cifar10"   # whose records the page reads
recipe = "cpu"        # the protocol: cpu | gpu

# %% tags=["remove-cell"]
import math

from IPython.display import Markdown, display

from lowvar_mae import verdicts
from lowvar_mae.conclusions import findings, takeaways
from lowvar_mae.plots import glue, takeaway
from lowvar_mae.report import PROBE_LABELS
from lowvar_mae.reference import target_label

f = findings(dataset, recipe)
GLUED = ("convnet_full", "convnet_top90", "convnet_bottom25", "convnet_bottom20", "short_lin_mean", "short_lin_margin",
         "short_lin_outcome", "short_knn_mean", "short_knn_outcome", "pixels_margin", "study_longest", "long_lin_mean",
         "long_lin_outcome", "long_knn_mean", "long_knn_outcome", "short_finest_error", "long_finest_error",
         "fill_bottom", "mae_bottom_error")
for key in GLUED:
    if key in f:
        glue(key, f[key])


def pts(x: float) -> str:
    return f"{x * 100:+.1f} points"


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


def interval(prefix: str) -> str:
    if f.get(f"{prefix}_n", 0) < 2:
        return "one seed, no interval"
    return f"95% interval {f[prefix + '_low'] * 100:+.1f} to {f[prefix + '_high'] * 100:+.1f}, {f[prefix + '_n']} seeds"


# %% [markdown]
# ## The premise: the class is in the low-variance components
#
# From the [subspace chapter](04_subspace_classification.ipynb): a conv net trained on
# images projected onto a PCA subspace.

# %% tags=["remove-input"]
if "convnet_bottom25" in f and not math.isnan(f["convnet_bottom25"]):
    holds = f["convnet_bottom25"] > f["convnet_top90"]
    display(Markdown(
        f"On {dataset}, the conv net reaches **{pct(f['convnet_bottom25'])}** on the bottom subspace that holds 25% "
        f"of the pixel variance ({f['convnet_bottom25_n']} seeds), {pct(f['convnet_bottom20'])} on the bottom 20%, "
        f"against **{pct(f['convnet_top90'])}** on the top subspace that holds 90% and {pct(f['convnet_full'])} on "
        "the full images. "
        + ("The premise holds: the low-variance components carry nearly all of what a deep classifier needs, the "
           "high-variance ones much less." if holds else
           "The premise does not hold here: the top subspace carries more than the bottom one.")))
else:
    display(Markdown("No subspace records yet."))

# %% [markdown]
# ## The verdict at the protocol's length
#
# From the [evaluation chapter](03_evaluation.ipynb): the `cpu` protocol (all 50,000
# training images, a 3.6 M-parameter ViT, 6 pretraining epochs, three seeds), the
# bottom-25% target against the pixel target on the same seeds, by the book's one rule:

# %% tags=["remove-input"]
display(Markdown("> " + verdicts.rule_text(f.get("short_lin_family", 0)).replace("on this page", "of the evaluation chapter")))
if "short_lin_mean" in f:
    short = (f"At {f['epochs']} epochs the bottom-25% encoder's linear probe is {pts(f['short_lin_mean'])} from the "
             f"pixel target's ({interval('short_lin')}), its kNN {pts(f['short_knn_mean'])} "
             f"({interval('short_knn')}). The pixel encoder clears the random encoder by {pts(f['pixels_margin'])}; "
             f"the bottom-25% encoder by {pts(f['short_lin_margin'])}. ")
    if f["short_lin_outcome"] == "not trained enough at this length":
        short += ("So at this length the bottom-25% encoder **has not learned enough to judge its target**: the "
                  "records say the pixel target is ahead at 6 epochs, and they do not say that the idea is wrong.")
    else:
        short += f"The rule's outcome: **{f['short_lin_outcome']}** (linear probe), **{f['short_knn_outcome']}** (kNN)."
    display(Markdown(short))
else:
    display(Markdown("No evaluation records of this protocol yet."))

# %% [markdown]
# ## The verdict as training grows
#
# The schedule study of the [evaluation chapter](03_evaluation.ipynb) trains both targets
# longer, with only the length changed.

# %% tags=["remove-input"]
if "study_longest" in f:
    lengths = ", ".join(str(e) for e in f["study_lengths"])
    both = ", ".join(str(e) for e in f["gap_lengths"])
    lengths += " epochs" + (f" (both targets at {both})" if both != lengths else "")
    text = (f"Lengths recorded: {lengths}. At the longest with both, {f['study_longest']} epochs, "
            f"bottom 25% minus pixels "
            f"is {pts(f['long_lin_mean'])} by linear probe ({interval('long_lin')}; outcome: "
            f"**{f['long_lin_outcome']}**) and {pts(f['long_knn_mean'])} by kNN ({interval('long_knn')}; "
            f"**{f['long_knn_outcome']}**); the bottom-25% encoder's linear probe clears the random encoder by "
            f"{pts(f['long_lin_margin'])}.")
    if not math.isnan(f.get("crossing_epochs", math.nan)):
        text += (f" If the linear-probe gap kept closing at the rate it has (a straight line in log(epochs)), it "
                 f"would reach zero near {f['crossing_epochs']:.0f} epochs: an extrapolation, not a measurement.")
    display(Markdown(text))
else:
    display(Markdown("The schedule study has no records beyond the protocol's own length yet."))

# %% [markdown]
# ## The rivals
#
# From the [other-targets chapter](06_other_targets.ipynb): other published ideas of a
# better target than pixels, on the same protocol and by the same rule.

# %% tags=["remove-input"]
if f.get("rivals"):
    said = []
    for key, outcome in f["rivals"].items():
        target, metric = key.rsplit(" ", 1)
        said.append(f"{target_label(target)}, {PROBE_LABELS[metric]}: {outcome}")
    holding = f.get("rivals_holding") or []
    display(Markdown("- " + "\n- ".join(said) + "\n\n"
                     + ("No rival beats the pixel target at this scale." if not holding else
                        f"Beating the pixel target at this scale: {', '.join(target_label(t) for t in holding)}.")))

# %% [markdown]
# ## Caveats, with their evidence
#
# - **Short schedules.** The presentation's numbers come from a ViT-Tiny pretrained for
#   400 epochs on 256 patches; the `cpu` protocol's model is half as deep, sees 64 patches
#   and trains for a few epochs. The idea under test says the features for perception are
#   learned last, so a short schedule is where it is weakest.

# %% tags=["remove-input"]
notes = []
if "short_finest_error" in f:
    level = f["mean_image_level"]
    later = ""
    if "long_finest_error" in f:
        below = f["long_finest_error"] < level
        later = (f" After {f['study_longest']} epochs it is {f['long_finest_error']:.3f}, "
                 + ("below that level: the MAE has begun to infer the finest detail from the visible patches, "
                    "and the schedule study's verdicts are the ones that count." if below else
                    "still above it."))
    notes.append(f"- **The finest detail is learned late.** From the [learning-order chapter]"
                 f"(05_learning_order.ipynb): after {f['epochs']} epochs the bottom-25% MAE's error in its finest "
                 f"band ({f['short_finest_band']} of the variance) is {f['short_finest_error']:.3f} of the data's "
                 f"variance there, worse than predicting the mean image ({level:.2f})." + later)
if "fill_bottom" in f and "mae_bottom_error" in f:
    ahead = f["mae_bottom_error"] < f["fill_bottom"]
    notes.append(f"- **What the visible patches give away.** A linear map from the visible pixels to the masked ones "
                 f"(one fixed mask, [pretraining chapter](02_mae_pretraining.ipynb)) leaves {f['fill_bottom']:.2f} of "
                 f"the bottom-25% target's variance ({f['fill_bottom_n']} masks, {f['fill_bottom_low']:.2f} to "
                 f"{f['fill_bottom_high']:.2f}); the MAE after {f['mae_bottom_epochs']} epochs leaves "
                 f"{f['mae_bottom_error']:.2f} on its recorded test batch of 8 images. "
                 + ("The MAE already infers more of the target than the linear map, so the target is learnable from "
                    "what the encoder sees; it is learned later than pixels, not never." if ahead else
                    "The MAE does not yet infer as much of the target as a linear map does: it is still short of "
                    "training for this target."))
notes.append("- **Three seeds.** Intervals at n = 3 are wide, and the correction for several comparisons on a "
             "page widens what a difference must be to count; a difference that is not shown may still exist, it is "
             "only not measured.")
display(Markdown("\n".join(notes)))

# %% [markdown]
# ## What would settle it
#
# The comparison at a length where both encoders clear the bar with room to spare, with
# three seeds, ideally at the presentation's scale.

# %% tags=["remove-input"]
if "minutes_per_epoch" in f and not math.isnan(f["minutes_per_epoch"]):
    m = f["minutes_per_epoch"]
    display(Markdown(
        f"On the recorded 2-core CPU a pretraining epoch of the `cpu` protocol takes about {m:.1f} minutes, so three "
        f"seeds of both targets cost about {6 * 48 * m / 60:.0f} hours at 48 epochs and {6 * 100 * m / 60:.0f} hours "
        "at 100 epochs, one run at a time. The `gpu` recipe (the presentation's ViT-Tiny, 100 epochs) is the "
        "settling experiment; `bench/gpu_study.py` measures its throughput and runs as much of it as a lent GPU "
        "allows."))

# %% tags=["remove-input"]
display(takeaway(takeaways(f, "conclusions")))
