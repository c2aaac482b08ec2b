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
# # MAE pretraining on a filtered target
#
# The model always sees the original image, three quarters of its patches hidden. What
# changes is the image it must reconstruct: the original, or its component image of low
# (or high) variance. This chapter trains one run (or loads it, if this configuration
# finished before), shows its loss curve and what it reconstructs, and sets it beside a run
# of the same recipe that reconstructs the pixels.

# %% tags=["parameters", "hide-cell"]
dataset = "synthetic"     # synthetic | cifar10 | cifar100 | stl10
real_dataset = "cifar10"  # whose committed pretraining records the CIFAR section shows
target = "pca-bottom"     # pixels | norm-pix | pca-bottom | pca-top (or a full spec such as "pca-top:0.75")
share = 0.25              # share of variance for pca-* targets
recipe = "quick"          # quick (CPU minutes) | paper (the presentation's 400 epochs)
epochs = None             # None: the recipe's number of epochs
n_train = None            # None: the whole training split
batch_size = None         # None: the recipe's batch
augment = "none"          # none | flip | crop-flip
device = "auto"           # auto | cpu | cuda
seed = 0
retrain = False           # True: delete the run folder and train again
compare = "pixels"        # a second run of the same recipe on this target, to compare with ("" for none)

# %% tags=["remove-cell"]
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae.linear_fill import FILL_IN_KIND, fill_in_reference
from lowvar_mae.plots import (data_label, dataset_note, glue, plot_curves, plot_recorded_losses, reconstruction_grid,
                              reproduce, takeaway)
from lowvar_mae.pretrain import PRETRAINING_KIND, masked_relative_error, pretrain, recorded_reconstructions
from lowvar_mae.reference import target_label
from lowvar_mae.results import load_records
from lowvar_mae.recipes import make_config

spec = f"{target}:{share:g}" if target.startswith("pca-") and ":" not in target else target

# %% tags=["remove-input"]
dataset_note(dataset)

# %%
config = make_config(recipe, dataset, spec, epochs=epochs, n_train=n_train, batch_size=batch_size,
                     augment=augment, seed=seed)
run = pretrain(config, device=device, force=retrain)
print(("trained" if run.trained_now else "loaded"), run.run_dir.name)
pd.DataFrame({"setting": ["dataset", "target", "model", "epochs", "batch", "learning rate (base)", "augmentation",
                          "training images", "seed"],
              "value": [config.dataset, config.target, config.model, config.epochs, config.batch_size, config.base_lr,
                        config.augment, "all" if config.n_train is None else f"{config.n_train:,}", config.seed]}
             ).style.hide(axis="index")

# %% tags=["remove-cell"]
metrics = pd.DataFrame(run.metrics)
n_params = sum(p.numel() for p in run.model.parameters())
glue("target", spec)
glue("model", config.model)
glue("n_params_m", n_params / 1e6)
glue("epochs", len(metrics))
glue("final_loss", float(metrics["loss"].iloc[-1]))
glue("first_loss", float(metrics["loss"].iloc[0]))
glue("images_per_s", float(metrics["images_per_s"].median()))
glue("train_minutes", float(metrics["seconds"].sum()) / 60)

# %% [markdown]
# The {glue:text}`model` preset ({glue:text}`n_params_m:.2f` M parameters) was trained for
# {glue:text}`epochs` epochs to reconstruct the {glue:text}`target` target. The training loss
# (mean squared error on masked patches, on the model's input scale) fell from
# {glue:text}`first_loss:.4f` in the first epoch to {glue:text}`final_loss:.4f` in the last, at
# {glue:text}`images_per_s:.0f` images/s ({glue:text}`train_minutes:.1f` minutes of training).

# %%
fig = plot_curves({spec: metrics}, y="loss", ylabel="masked-patch MSE")

# %% [markdown]
# ## What the model reconstructs
#
# A fixed batch of test images with a fixed mask, at the first and the last epoch. The
# prediction is pasted into the masked patches of the input. A filtered target is shown
# with a per-image contrast stretch (1st to 99th percentile); its loss is small in absolute
# terms because the target's variance is small.

# %%
recons = run.reconstructions()
first, last = min(recons), max(recons)
fig = reconstruction_grid(recons[first], stretch_target=spec.startswith("pca-bottom"))
fig.suptitle(f"epoch {first}", y=1.02);

# %%
fig = reconstruction_grid(recons[last], stretch_target=spec.startswith("pca-bottom"))
fig.suptitle(f"epoch {last}", y=1.02);

# %% [markdown]
# ## Against a pixel target
#
# The same recipe, data, seed and mask, trained to reconstruct the original pixels: its
# reconstructions at the last epoch, and the error of both runs on the masked patches.

# %%
if compare:
    ref_config = make_config(recipe, dataset, compare, epochs=epochs, n_train=n_train, batch_size=batch_size,
                             augment=augment, seed=seed)
    ref = pretrain(ref_config, device=device, progress=False)
    ref_recons = ref.reconstructions()
    fig = reconstruction_grid(ref_recons[max(ref_recons)], stretch_target=compare.startswith("pca-bottom"))
    fig.suptitle(f"{compare}, epoch {max(ref_recons)}", y=1.02);

# %% tags=["remove-input"]
errors = {spec: {e: masked_relative_error(r) for e, r in recons.items()}}
if compare:
    errors[compare] = {e: masked_relative_error(r) for e, r in ref_recons.items()}
first_last = {name: (e[min(e)], e[max(e)]) for name, e in errors.items()}


def _reading(r_last):
    if r_last < 0.8:
        return "it fills in a good part of the target"
    if r_last < 0.95:
        return "it fills in little of the target"
    return "it does no better than the mean image there"


sentences = [f"**{name}**: {a:.2f} at epoch {min(errors[name])}, {b:.2f} at epoch {max(errors[name])}: "
             f"{_reading(b)}." for name, (a, b) in first_last.items()]
text = ("Squared error on the masked patches of these test images over the target's variance there (1.0 is what "
        "predicting the mean image scores):\n\n" + "\n".join(f"* {x}" for x in sentences))
if compare and first_last[spec][1] >= 0.95 and first_last[compare][1] < 0.8:
    text += (
        f"\n\nMuch of the pixel target is per-image brightness and colour, which the visible patches give away; "
        f"the {spec} target has none of that: on the embedded data it is the faster-varying part of the colour "
        "fields and the faint class grating, which must be inferred from the visible patches, and this short run "
        "does not infer them at all: its prediction in the masked patches is the mean image, and its loss fell only "
        "by learning that. Low-variance detail is learned last, if at all, by a short schedule (a 32-epoch run of "
        "this recipe on the embedded data still ends at the mean-image level); the CIFAR-10 runs below, and the "
        "[learning-order chapter](05_learning_order.ipynb), show a longer run leaving that level. A target the "
        "decoder cannot fit is not yet a worse encoder: what the encoder learned is measured in the "
        "[evaluation chapter](03_evaluation.ipynb).")
display(Markdown(text))

# %% [markdown]
# ## Is the target in the visible patches at all?
#
# An error at the mean-image level can mean two things: the visible patches do not carry the
# target, or the model has not yet learned to read it from them. A linear map tells them
# apart: a ridge regression from the visible pixels to the target at the masked pixels, for
# one fixed mask of the same share, fitted on the run's training images (its penalty chosen on a
# held-out tenth) and scored on the test images with the same measure.

# %% tags=["remove-input"]
def named(target):
    """A target's human name inside a sentence: 'bottom 25% variance'."""
    label = target_label(target)
    return label[0].lower() + label[1:]


mae_cfg = run.model.config
fills = {name: fill_in_reference(dataset, name, patch_size=mae_cfg.patch_size, mask_ratio=mae_cfg.mask_ratio,
                                 n_train=n_train)[0] for name in errors}
display(pd.DataFrame({"target": [target_label(n) for n in fills],
                      "MAE, last epoch (8 test images)": [f"{first_last[n][1]:.2f}" for n in fills],
                      "linear map, one mask (all test images)": [f"{f.error:.2f}" for f in fills.values()]}
                     ).style.hide(axis="index"))
glue("fill_error", fills[spec].error)
mae_last = first_last[spec][1]
gap_words = (f"The {named(spec)} target is largely in the visible patches: a linear map fills in all but "
             f"{fills[spec].error:.2f} of its variance on {fills[spec].n_test:,} test images, while this run's MAE "
             f"leaves {mae_last:.2f}: the information is there, and this run does not extract it"
             if fills[spec].error < 0.6 and mae_last > fills[spec].error + 0.2 else
             f"A linear map leaves {fills[spec].error:.2f} of the {named(spec)} target's variance on {fills[spec].n_test:,} "
             f"test images, this run's MAE {mae_last:.2f}")
display(Markdown(gap_words + ". An MAE sees a new mask at every step and is not linear, so the linear map is a "
                 "reference level, not a bound."))

# %% [markdown]
# ## The CPU protocol on CIFAR-10, from its records
#
# The same two targets in the [evaluation chapter](03_evaluation.ipynb)'s CPU protocol: all
# 50,000 CIFAR-10 training images, the 3.6 M-parameter `cpu-cifar` ViT, seed 0. Each
# pretraining run of the grid leaves a record of its loss curve and of the reconstructions
# of a fixed batch of test images at its first and last epoch (4 of them are kept).

# %% tags=["remove-input"]
pre = load_records(PRETRAINING_KIND)
if len(pre):
    pre = pre[(pre["dataset"] == real_dataset) & (pre["recipe"] == "cpu") & (pre["seed"] == 0)]
real_targets = [t for t in ("pixels", "pca-bottom:0.25") if len(pre) and (pre["target"] == t).any()]
if real_targets:
    fig = plot_recorded_losses(pre, real_targets, labels={t: target_label(t) for t in real_targets})
    fig.suptitle(f"{real_dataset}, 50,000 training images, cpu-cifar ViT, seed 0 (records)", y=1.02, fontsize=11)
    display(reproduce("python -m lowvar_mae grid --targets pixels pca-bottom:0.25 --seeds 0 --epochs 24",
                      PRETRAINING_KIND))
else:
    display(Markdown(f"No pretraining records of {real_dataset} yet: "
                     "`python -m lowvar_mae grid --targets pixels pca-bottom:0.25 --seeds 0` writes them."))

# %% tags=["remove-input"]
fill_records = load_records(FILL_IN_KIND)
real_fills = {}
if len(fill_records):
    for t, g in fill_records[(fill_records["dataset"] == real_dataset) & (fill_records["patch_size"] == 4)].groupby("target"):
        real_fills[t] = {"mean": float(g["error"].mean()), "lo": float(g["error"].min()), "hi": float(g["error"].max()),
                         "n": len(g)}
shown = []
for t in real_targets:
    longest = pre[pre["target"] == t].sort_values("pretrain_epochs").iloc[-1]
    recs = recorded_reconstructions(longest.to_dict())
    if not recs:
        continue
    errs = longest["reconstructions"]["relative_error"]
    for e in sorted(recs) if t.startswith("pca-bottom") else [max(recs)]:
        fig = reconstruction_grid(recs[e], n=4, stretch_target=t.startswith("pca-bottom"))
        fig.suptitle(f"{real_dataset} test images, {target_label(t)} target, epoch {e} of {longest['pretrain_epochs']}",
                     y=1.03, fontsize=11)
        plt.show()
    line = (f"**{target_label(t)}**, {longest['pretrain_epochs']} epochs: masked-patch error "
            + ", ".join(f"{v:.2f} at epoch {k}" for k, v in sorted(errs.items(), key=lambda kv: int(kv[0])))
            + " of the target's variance (8 test images; 1.0 is the mean image)")
    if t in real_fills:
        f = real_fills[t]
        spread = f", {f['lo']:.2f} to {f['hi']:.2f}" if f["n"] > 1 else ""
        line += (f"; a linear map from the visible patches leaves {f['mean']:.2f} (all test images, "
                 f"{f['n']} mask{'s' * (f['n'] > 1)}{spread})")
    shown.append(line)
if shown:
    display(Markdown("\n".join(f"* {s}" for s in shown)))
    display(reproduce("python -m lowvar_mae grid --targets pixels pca-bottom:0.25 --seeds 0 --epochs 24",
                      PRETRAINING_KIND))
    if real_fills:
        display(reproduce(f"python -m lowvar_mae fill-in --dataset {real_dataset}", FILL_IN_KIND))

# %% [markdown]
# ## The run folder
#
# Everything the run produced lives in one folder named from its configuration:
# `config.json`, `provenance.json` (versions, git revision, device, seed), `metrics.jsonl`
# (one line per epoch, read above with pandas), the latest checkpoint as safetensors, the
# reconstructions, and `summary.json`. Running the same configuration again loads it.

# %%
pd.DataFrame([{"file": p.name + ("/" if p.is_dir() else ""),
               "size": f"{sum(f.stat().st_size for f in p.rglob('*')) if p.is_dir() else p.stat().st_size:,} bytes"}
              for p in sorted(run.run_dir.iterdir())]).style.hide(axis="index")

# %% tags=["remove-input"]
where = "the embedded synthetic set" if dataset == "synthetic" else dataset
points = ["The encoder always sees the original image with three quarters of its patches hidden; only the image "
          "it must reconstruct changes."]
points += [f"In this page's teaching run on {where}, the {named(name)} target's masked-patch error went from "
           f"{a:.2f} to {b:.2f} of its variance: {_reading(b)}; a linear map from the visible patches leaves "
           f"{fills[name].error:.2f}." for name, (a, b) in first_last.items()]
for t in real_targets:
    longest = pre[pre["target"] == t].sort_values("pretrain_epochs").iloc[-1]
    errs = {int(k): v for k, v in longest["reconstructions"]["relative_error"].items()}
    points.append(f"In the recorded {real_dataset} run ({longest['pretrain_epochs']} epochs), the {named(t)} "
                  f"target's error went from {errs[min(errs)]:.2f} to {errs[max(errs)]:.2f}: {_reading(errs[max(errs)])}"
                  + (f" (a linear map: {real_fills[t]['mean']:.2f})." if t in real_fills else "."))
points.append("A low-variance target has a small loss in absolute terms; compare errors relative to the target's "
              "variance, as here, and judge the encoder by probing it ([evaluation](03_evaluation.ipynb)).")
display(takeaway(points))
