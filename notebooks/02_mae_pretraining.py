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
# finished before), shows its loss curve and what it reconstructs.

# %% tags=["parameters", "hide-cell"]
dataset = "synthetic"     # synthetic | cifar10 | cifar100 | stl10
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

# %% tags=["remove-cell"]
import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae.plots import dataset_note, glue, plot_curves, reconstruction_grid
from lowvar_mae.pretrain import make_config, pretrain

spec = f"{target}:{share:g}" if target.startswith("pca-") and ":" not in target else target

# %% tags=["remove-input"]
dataset_note(dataset)

# %%
config = make_config(recipe, dataset, spec, epochs=epochs, n_train=n_train, batch_size=batch_size,
                     augment=augment, seed=seed)
run = pretrain(config, device=device, force=retrain)
print(("trained" if run.trained_now else "loaded"), run.run_dir.name)
config

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

# %% tags=["remove-input"]
def relative_error(rec) -> float:
    """Squared error on the masked patches over the target's variance there (1: the mean image)."""
    m = rec["mask"].expand_as(rec["target"]).bool()
    err = (rec["prediction"] - rec["target"])[m].square().mean()
    var = (rec["target"] - rec["target"].mean(0, keepdim=True))[m].square().mean()
    return float(err / var)


r_first, r_last = relative_error(recons[first]), relative_error(recons[last])
display(Markdown(
    f"On the masked patches of these test images the squared error is **{r_first:.2f}** of the target's variance "
    f"at epoch {first} and **{r_last:.2f}** at epoch {last} (1.0 is what predicting the mean image scores). "
    + ("The model has learned to fill in part of the target." if r_last < 0.8 else
       f"The model still does {'no better than' if r_last >= 1 else 'little better than'} the mean image there: "
       "this short teaching run shows the machinery, not a trained model; the evaluation chapter's runs on "
       "CIFAR-10 train for longer.")))

# %% [markdown]
# ## The run folder
#
# Everything the run produced lives in one folder named from its configuration:
# `config.json`, `provenance.json` (versions, git revision, device, seed), `metrics.jsonl`
# (one line per epoch, read above with pandas), the latest checkpoint as safetensors, the
# reconstructions, and `summary.json`. Running the same configuration again loads it.

# %%
sorted(p.name for p in run.run_dir.iterdir())
