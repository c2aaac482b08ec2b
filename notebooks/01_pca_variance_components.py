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
# # PCA: where the variance of images lives
#
# This chapter fits PCA on the training split (Algorithm 1) and looks at how the pixel
# variance spreads over the components, what the top components look like, and what is
# left of an image when only its top or only its bottom variance is kept.

# %% tags=["parameters", "hide-cell"]
dataset = "synthetic"   # synthetic | cifar10 | cifar100 | stl10
n_images = None         # training images used for the fit (None: the whole training split)
top_share = 0.75        # share of variance kept by the top image
bottom_share = 0.25     # share of variance kept by the bottom image
shares = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]  # shares of the component-count table
n_eigenimages = 16
n_examples = 8
device = "cpu"          # where PCA is fitted and images are filtered ("cuda" on a GPU)
seed = 0
record = False          # write a result record under results/pca/ (for real datasets)

# %% tags=["remove-cell"]
import time

import pandas as pd
import torch

from lowvar_mae import basis_io, pca
from lowvar_mae.data import load_dataset
from IPython.display import Markdown, display

from lowvar_mae.plots import data_label, dataset_note, glue, image_grid, plot_spectrum, reproduce, show_eigenimages
from lowvar_mae.results import unpack_array

# %% tags=["remove-input"]
train = load_dataset(dataset, "train")
if n_images is not None:
    train = train.subset(n_images, seed=seed)
test = load_dataset(dataset, "test")
dataset_note(dataset)

# %%
images = train.to_tensor(device)  # (N, C, H, W) uint8
start = time.perf_counter()
basis = pca.fit_pca(images, dataset=dataset, split="train")
fit_seconds = time.perf_counter() - start
print(f"{basis.n_samples} images of shape {basis.image_shape}: D = {basis.dim} pixels, "
      f"{basis.method} path, fitted in {fit_seconds:.1f} s")

# %% tags=["remove-cell"]
glue("n_images", basis.n_samples)
glue("dim", basis.dim)
glue("fit_seconds", fit_seconds)
glue("method", basis.method)
k_top = {p: basis.n_components(p, "top") for p in (0.75, 0.9)}
glue("k75", k_top[0.75])
glue("k90", k_top[0.9])
glue("k75_pct", 100 * k_top[0.75] / basis.dim)
glue("k90_pct", 100 * k_top[0.9] / basis.dim)
glue("top1_pct", 100 * float(basis.explained_variance_ratio()[0]))
glue("top_share_pct", 100 * top_share)

# %% [markdown]
# The fit used {glue:text}`n_images` training images of {glue:text}`dim` pixels each
# ({glue:text}`method` path, {glue:text}`fit_seconds:.1f` s). The first component alone
# carries {glue:text}`top1_pct:.1f`% of the variance; {glue:text}`k75` components
# ({glue:text}`k75_pct:.1f`% of them) hold 75% of the variance, and {glue:text}`k90`
# ({glue:text}`k90_pct:.1f`%) hold 90%.

# %%
fig = plot_spectrum(basis, marks=(0.75, 0.9))
fig.suptitle(data_label(dataset), fontsize=10, y=1.03);

# %% [markdown]
# ## How many components make up a share of the variance
#
# Top shares count from the largest eigenvalue and take the fewest components that
# *reach* the share; bottom shares count from the smallest and take the most components
# that *stay within* it. Top $1-q$ and bottom $q$ therefore add up to all components.

# %% tags=["remove-input"]
rows = []
for p in shares:
    rows.append({"share": p, "top components": basis.n_components(p, "top"),
                 "bottom components": basis.n_components(p, "bottom")})
counts = pd.DataFrame(rows)
counts["top + bottom of 1 - share"] = [basis.n_components(p, "top") + basis.n_components(1 - p, "bottom")
                                       for p in counts["share"]]
counts.style.hide(axis="index").format({"share": "{:.0%}"})

# %% [markdown]
# ## The first eigen-images
#
# The top components are smooth: global brightness, colour balance, slow gradients.
# Each component is shown as 0.5 + 0.5 v / max|v| per colour channel (mid-grey is zero);
# the title gives its share of variance.

# %%
fig = show_eigenimages(basis, n_eigenimages)
fig.suptitle(data_label(dataset), fontsize=10, y=1.03);

# %% [markdown]
# ## Top and bottom images
#
# Each column is one test image (PCA was fitted on the training split only). The bottom
# image keeps the components that together explain only a small share of the variance;
# it is shown with a per-image contrast stretch (1st to 99th percentile), without which
# it would look like the flat mean image.

# %%
g = torch.Generator().manual_seed(seed)
idx = torch.randperm(len(test), generator=g)[:n_examples]
x = pca.as_unit_float(test.to_tensor(device)[idx])
top = pca.project(x, basis, "top", top_share)
bottom = pca.project(x, basis, "bottom", bottom_share)
fig = image_grid(
    {"original": x, f"bottom {bottom_share:.0%}\n(stretched)": bottom, f"top {top_share:.0%}": top},
    stretch=[f"bottom {bottom_share:.0%}\n(stretched)"],
    titles=[test.classes[int(test.labels[i])] for i in idx],
)

# %% tags=["remove-cell"]
flat = x.flatten(1).double()
check = (top + bottom).flatten(1).double() - basis.mean.to(flat.device)
glue("complement_error", float((check - flat).abs().max()))
err_top = ((top - x) ** 2).mean().sqrt()
glue("rmse_top_255", 255 * float(err_top))
glue("rmse_bottom_255", 255 * float(((bottom - x) ** 2).mean().sqrt()))

# %% [markdown]
# The top-{glue:text}`top_share_pct:.0f`% image differs from the original by an RMS error of
# {glue:text}`rmse_top_255:.1f` grey levels (of 255): a pixel loss would call it a good
# reconstruction, yet the fine detail is gone. Top plus bottom image equals the image plus
# the mean image to within {glue:text}`complement_error:.1e`.

# %% [markdown]
# ## The real CIFAR-10
#
# The same fit on the 50,000 CIFAR-10 training images, read from its committed record
# (spectrum, mean image and first components, quantised to 8 bits; the bottom images are
# computed here as the image minus its top projection), beside the teaching set's numbers.

# %% tags=["remove-input"]
from lowvar_mae.results import load_records, pack_array, write_record

real = load_records("pca")
real = real[(real["dataset"] == "cifar10") & real["summary"].notna()] if len(real) and "summary" in real else real.iloc[0:0]
if dataset != "synthetic":
    display(Markdown("This page already runs on a real dataset: see the sections above."))
elif not len(real):
    display(Markdown("No record of a CIFAR-10 fit with its spectrum yet: run this chapter with "
                     "`-p dataset cifar10 -p record true` (see the README)."))
else:
    rec = real.sort_values("time_utc").iloc[-1]
    rbasis = basis_io.basis_from_summary(rec["summary"])
    display(Markdown(f"CIFAR-10 training split, {rbasis.n_samples:,} images of {rbasis.dim:,} pixels, "
                     f"{rec['method']} fit in {rec['fit_seconds']:.0f} s on {rec['device_name']} "
                     f"(revision {str(rec['git_revision'])[:10]}). The first component carries "
                     f"{100 * float(rbasis.explained_variance_ratio()[0]):.1f}% of the variance; "
                     f"{rbasis.n_components(0.75, 'top')} components hold 75% and "
                     f"{rbasis.n_components(0.9, 'top')} hold 90%, against "
                     f"{100 * float(basis.explained_variance_ratio()[0]):.1f}%, {basis.n_components(0.75, 'top')} and "
                     f"{basis.n_components(0.9, 'top')} for the {dataset} set above: CIFAR-10 spreads its variance "
                     + ("over more components" if rbasis.n_components(0.9, "top") > basis.n_components(0.9, "top")
                        else "over fewer components") + "."))
    label = f"CIFAR-10 training split, {int(rec['n_images']):,} images (record)"
    fig = plot_spectrum(rbasis, marks=(0.75, 0.9))
    fig.suptitle(label, fontsize=10, y=1.03)
    display(reproduce("python -m lowvar_mae notebooks 01 -p dataset cifar10 -p record true", "pca"))
    fig = show_eigenimages(rbasis, min(n_eigenimages, rbasis.n_stored))
    fig.suptitle(f"{label}: the first components", fontsize=10, y=1.03)
    ex = torch.as_tensor(unpack_array(rec["examples"]["images"])).float() / 255
    rtop = pca.project(ex, rbasis, "top", top_share)
    rbottom = pca.project(ex, rbasis, "bottom", bottom_share)
    fig = image_grid({"original": ex, f"bottom {bottom_share:.0%}\n(stretched)": rbottom, f"top {top_share:.0%}": rtop},
                     stretch=[f"bottom {bottom_share:.0%}\n(stretched)"], titles=rec["examples"]["labels"])
    fig.suptitle("CIFAR-10 test images, filtered with the training split's PCA", fontsize=10, y=1.03)

# %% [markdown]
# ## Runs on real data
#
# Every PCA fit made on a real dataset and recorded under `results/pca/` is listed here,
# with the machine it ran on.

# %% tags=["remove-input"]
if record:
    write_record("pca", {"dataset": dataset, "n_images": basis.n_samples, "dim": basis.dim,
                         "method": basis.method, "fit_seconds": fit_seconds,
                         "components": {f"top:{p}": basis.n_components(p, "top") for p in shares}
                         | {f"bottom:{p}": basis.n_components(p, "bottom") for p in shares},
                         "summary": basis_io.basis_summary(basis, max(32, basis.n_components(top_share, "top"))),
                         "examples": {"images": pack_array(test.to_tensor()[idx].numpy(), "uint8"),
                                      "labels": [test.classes[int(test.labels[i])] for i in idx]}},
                 device=device)
records = load_records("pca")
if len(records):
    table = pd.DataFrame({
        "dataset": records["dataset"], "images": [f"{n:,}" for n in records["n_images"]],
        "pixels": [f"{d:,}" for d in records["dim"]], "fit": records["method"],
        "seconds": [f"{x:.0f}" for x in records["fit_seconds"]],
        "components for 75% / 90%": [f"{c['top:0.75']} / {c['top:0.9']}" for c in records["components"]],
        "date": [str(t)[:10] for t in records["time_utc"]], "revision": [str(r)[:8] for r in records["git_revision"]]})
    display(table.style.hide(axis="index"))
    display(Markdown("Machines: " + "; ".join(sorted(set(records["device_name"].dropna()))) + "."))
else:
    print("No PCA records of real datasets yet.")

# %% [markdown]
# ```{admonition} What to take from this chapter
# :class: takeaway
# * Variance is concentrated in few components: on this page's data {glue:text}`k90` of
#   {glue:text}`dim` components hold 90% of it, so a "bottom" subspace is most of the
#   dimensions carrying little of the variance.
# * A top image can be close to the original by pixel error and still lose the fine detail:
#   pixel error weighs every direction by its variance.
# * Top and bottom images are exact complements (they add up to the image plus the mean
#   image), so the two kinds of target split one image in two.
# ```
