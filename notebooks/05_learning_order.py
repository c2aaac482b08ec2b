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
# # In which order does an MAE learn the spectrum?
#
# Balestriero & LeCun {cite}`balestriero2024` argue that reconstruction learns the
# high-variance part of the image
# first and the low-variance part, where perception features live, last, which is why
# masked autoencoders need long schedules. This chapter measures that order directly. After
# every epoch, a fixed batch of held-out test images is reconstructed with a fixed mask, and
# the error of the prediction in the masked patches is split along the PCA eigenbasis of the
# training images into ten bands of eigen-directions: the components that hold the first 10%
# of the variance (counted from the largest eigenvalue), the next 10%, and so on; the last
# band also holds the directions the basis does not store. Each band's squared error is
# divided by the data's variance in that band. A band scores 0 when it is reconstructed
# exactly; predicting the mean image in the masked patches scores about the mask ratio, 0.75.

# %% tags=["parameters", "hide-cell"]
real_dataset = "cifar10"               # whose committed learning-order records the first section shows
real_recipe = "cpu"                    # the protocol of those records
dataset = "synthetic"                  # the teaching run: synthetic | cifar10 | cifar100 | stl10
targets = ["pixels", "pca-bottom:0.25"]  # reconstruction targets, one pretraining run each
recipe = "quick"                       # quick (CPU minutes) | paper (the presentation's 400 epochs)
epochs = 4                             # None: the recipe's number of epochs
n_train = 512                          # None: the whole training split
batch_size = 64                        # None: the recipe's batch
n_eval = 64                            # held-out test images reconstructed after every evaluated epoch
every = 1                              # evaluate the bands every k epochs (and after the first)
missing = "retrain"                    # a finished run without band metrics: retrain | skip
n_fit = None                           # images for the bands' PCA basis (None: the whole split, cached; for tests)
device = "auto"                        # auto | cpu | cuda
seed = 0

# %% tags=["remove-cell"]
import pandas as pd
from IPython.display import Markdown, display

from lowvar_mae import basis_io, conclusions, pca, schedule
from lowvar_mae.data import load_dataset
from lowvar_mae.learning_order import (LEARNING_ORDER_KIND, band_metrics, learning_order_records, learning_order_run,
                                       read_band_metrics)
from lowvar_mae.plots import dataset_note, glue, plot_learning_order, reproduce, takeaway
from lowvar_mae.recipes import PRETRAIN_RECIPES, make_config
from lowvar_mae.results import load_records

# %% [markdown]
# ## On CIFAR-10
#
# The committed records of the `cpu` protocol's pretraining runs (the encoder of the
# evaluation chapter: all 50,000 training images, 6 epochs), each measured on 256 held-out
# test images after every epoch.

# %% tags=["remove-cell"]
all_lo_records = load_records(LEARNING_ORDER_KIND)
lo_records = all_lo_records
if len(lo_records):  # the protocol's own length here; longer runs have their own section
    lo_records = lo_records[(lo_records["dataset"] == real_dataset) & (lo_records["recipe"] == real_recipe)]
    lo_records = lo_records[[schedule.run_epochs(r) == PRETRAIN_RECIPES[real_recipe]["epochs"]
                             for _, r in lo_records.iterrows()]]
real_frames = learning_order_records(lo_records)


def _at(frame, band, which):
    rows = frame[frame["band"] == band].dropna(subset=["rel_error"]).sort_values("epoch")
    return float(rows["rel_error"].iloc[0 if which == "first" else -1]) if len(rows) else float("nan")


# %% tags=["remove-input"]
if real_frames:
    r = lo_records.sort_values("time_utc").drop_duplicates("run_name", keep="last")
    src = (f"{real_dataset}, 50,000 training images, {', '.join(sorted({c['model'] for c in r['config']}))}, "
           f"{int(max(len(e) for e in r['epochs']))} epochs, seed {', '.join(str(s) for s in sorted(set(r['seed'])))}; "
           + "; ".join(sorted(set(r["device_name"].dropna()))))
    fig = plot_learning_order(real_frames)
    display(reproduce("python -m lowvar_mae learning-order", "learning_order"))
    fig.suptitle(src, fontsize=9, y=1.02)
else:
    print(f"No learning-order records of {real_dataset} yet: python -m lowvar_mae learning-order makes them.")

# %% tags=["remove-cell"]
said = []
if real_frames:  # why some bands are empty: one component can straddle several deciles
    some = next(iter(real_frames.values()))
    empty = [lab for b, lab in dict(zip(some["band"], some["band_label"])).items()
             if some[some["band"] == b]["rel_error"].isna().all()]
    fits = load_records("pca")
    fits = fits[(fits["dataset"] == real_dataset) & fits["summary"].notna()] if len(fits) and "summary" in fits else []
    if empty and len(fits):
        first = float(basis_io.basis_from_summary(fits.sort_values("time_utc").iloc[-1]["summary"])
                      .explained_variance_ratio()[0])
        said.append(f"Bands are cut at every 10% of the variance, counted from the top, but components are not "
                    f"divisible: the first principal component of {real_dataset} alone holds {first:.0%} of the "
                    f"variance, so the 0-10% band is that one component; a band that one component spans "
                    f"from edge to edge holds no component of its own and is left empty: here {', '.join(empty)}.")
for name, frame in real_frames.items():
    bands = sorted(frame.dropna(subset=["rel_error"])["band"].unique())
    labels = dict(zip(frame["band"], frame["band_label"]))
    last_epoch = int(frame["epoch"].max())
    top, bottom = bands[0], bands[-1]
    first = {b: _at(frame, b, "first") for b in bands}
    final = {b: _at(frame, b, "last") for b in bands}
    ordered = sorted(bands, key=lambda b: final[b])
    said.append(
        f"**{name}**: after epoch 1 the top band ({labels[top]} of the variance) has a relative error of "
        f"{first[top]:.3f} and the last band ({labels[bottom]}) {first[bottom]:.3f}; after epoch {last_epoch}, "
        f"{final[top]:.3f} and {final[bottom]:.3f}. Best fitted at the end: {labels[ordered[0]]} "
        f"({final[ordered[0]]:.3f}); worst: {labels[ordered[-1]]} ({final[ordered[-1]]:.3f}).")
if "pixels" in real_frames:
    f = real_frames["pixels"]
    bands = sorted(f.dropna(subset=["rel_error"])["band"].unique())
    top_first, bottom_first = _at(f, bands[0], "first"), _at(f, bands[-1], "first")
    said.append(
        "So the pixel MAE " + ("fits the high-variance bands first: its error is lowest in the top band from the "
                               "first epoch on and highest in the bottom ones, where the fine detail lives."
                               if top_first < bottom_first else
                               "does not fit the top band first here: its first-epoch error is not lower there.")
        + " A filtered target changes what is measured: the bottom-25% target holds (nearly) nothing in the top "
        "bands, so there its curve shows how much variance the model wrongly predicts, and its own bands are the "
        "bottom ones.")

bottom_name = next((n for n in real_frames if n.startswith("pca-bottom")), None)
if "pixels" in real_frames and bottom_name:
    share = float(bottom_name.split(":")[1]) if ":" in bottom_name else 0.25
    fp, fb = real_frames["pixels"], real_frames[bottom_name]
    held = [b for b in sorted(fb.dropna(subset=["rel_error"])["band"].unique())
            if float(fb.loc[fb["band"] == b, "lo"].iloc[0]) >= 1 - share - 1e-9]
    labels = dict(zip(fb["band"], fb["band_label"]))
    last_epoch = int(fb["epoch"].max())
    pairs = [(labels[b], _at(fp, b, "last"), _at(fb, b, "last")) for b in held]
    mask_ratio = float(lo_records.iloc[0]["config"].get("mask_ratio", 0.75))
    listed = "; ".join(f"{lab}: {p:.3f} (pixels) and {q:.3f} ({bottom_name})" for lab, p, q in pairs)
    better = [lab for lab, p, q in pairs if q < p]
    above = [lab for lab, p, q in pairs if min(p, q) >= mask_ratio]
    words = (f"In the bands the {bottom_name} target wholly holds, after epoch {last_epoch}: {listed}; predicting "
             f"the mean image scores about {mask_ratio:.2f}. ")
    if not better:
        words += ("**Reconstructing only the low-variance part did not make the MAE fit it better in this "
                  "schedule**: the pixel MAE, which spends most of its loss on the top bands, has the lower error "
                  "in every one of these bands. ")
    else:
        words += f"The {bottom_name} target fits {', '.join(better)} better than the pixel target. "
    if above:
        words += (f"In {', '.join(above)} neither run does better than the mean image: the finest detail of "
                  "held-out images is not yet inferred from the visible patches at all. ")
    words += ("These are 6-epoch runs, one seed each, and the reconstruction error is not the evaluation: what "
              "each encoder learned is measured in the evaluation chapter.")
    said.append(words)

# %% tags=["remove-input"]
if said:
    display(Markdown("\n\n".join(said)))

# %% [markdown]
# ## As pretraining grows longer
#
# The schedule study of the evaluation chapter pretrains the same two targets for longer
# (only the length changes) and measures the bands of every run at epoch 1, at every probe
# epoch and at the end, beside the validation probe. For the longest length both targets
# have (seed 0): does the bottom target's finest detail ever fall below the mean-image
# level, and does the probe gap between the targets move when it does?

# %% tags=["remove-cell"]
long_epochs, long_runs = schedule.longest_runs(all_lo_records, real_dataset, real_recipe)
long_frames = {f"{t} ({long_epochs} epochs)": band_metrics(r["epochs"]) for t, r in long_runs.items()}
have_long = long_epochs is not None and long_epochs > PRETRAIN_RECIPES[real_recipe]["epochs"]

# %% tags=["remove-input"]
if have_long:
    runs_ = list(long_runs.values())
    fig = plot_learning_order(long_frames)
    display(reproduce(f"python -m lowvar_mae grid --targets pixels pca-bottom:0.25 --seeds 0 --epochs {long_epochs}",
                      "learning_order"))
    fig.suptitle(f"{real_dataset}, 50,000 training images, {runs_[0]['config']['model']}, {long_epochs} epochs, "
                 f"seed 0; " + "; ".join(sorted({r['device_name'] for r in runs_})), fontsize=9, y=1.02)
else:
    display(Markdown("No longer runs of both targets are recorded yet: `python -m lowvar_mae grid --targets "
                     "pixels pca-bottom:0.25 --seeds 0 --epochs 12 24 48` makes them."))

# %% tags=["remove-input"]
if have_long:
    bottom_t = next(t for t in long_runs if t.startswith("pca-bottom"))
    share_ = float(bottom_t.split(":")[1])
    level = schedule.MEAN_IMAGE_LEVEL
    crossed = {t: schedule.band_crossings(band_metrics(r["epochs"]), level) for t, r in long_runs.items()}
    held_ = crossed[bottom_t][[lo >= 1 - share_ - 1e-9 for lo in
                               [float(label.split("-")[0]) / 100 for label in crossed[bottom_t]["band_label"]]]]
    gap_ = schedule.probe_gap(long_runs, target=bottom_t)
    lines_ = []
    for _, row in held_.iterrows():
        pix_row = crossed["pixels"][crossed["pixels"]["band"] == row["band"]]
        pix_txt = ""
        if len(pix_row):
            p = pix_row.iloc[0]
            pix_txt = (f"; pixels: {p['first']:.3f} -> {p['last']:.3f}, "
                       + (f"below from epoch {p['below_from']}" if p["below_from"] is not None else "never below"))
        when = f"below {level} from epoch {row['below_from']}" if row["below_from"] is not None else f"never below {level}"
        lines_.append(f"- band {row['band_label']}: {bottom_t} {row['first']:.3f} -> {row['last']:.3f} "
                      f"(epoch {row['first_epoch']} to {row['last_epoch']}), {when}{pix_txt}.")
    finest = held_.iloc[-1] if len(held_) else None
    text = (f"Bands the {bottom_t} target holds, relative error on masked patches at the first and last "
            f"measured epoch (predicting the mean image scores about {level}):\n\n" + "\n".join(lines_))
    if len(gap_):
        g0, g1 = gap_.iloc[0], gap_.iloc[-1]
        text += (f"\n\nValidation probe gap ({bottom_t} minus pixels, best pooling): {g0['gap'] * 100:+.1f} points "
                 f"at epoch {int(g0['epoch'])}, {g1['gap'] * 100:+.1f} at epoch {int(g1['epoch'])}.")
        if finest is not None and finest["below_from"] is not None:
            e = int(finest["below_from"])
            before = gap_[gap_["epoch"] < e]
            after = gap_[gap_["epoch"] >= e]
            if len(before) and len(after):
                text += (f" The finest band falls below the mean-image level at epoch {e}; the gap is "
                         f"{before['gap'].iloc[-1] * 100:+.1f} points at the last probe before it and "
                         f"{after['gap'].iloc[0] * 100:+.1f} at the first probe from then on, "
                         f"{after['gap'].iloc[-1] * 100:+.1f} at the end.")
        elif finest is not None:
            text += (f" The finest band ({finest['band_label']}) never falls below the mean-image level in "
                     f"{long_epochs} epochs, so this run cannot show whether learning it moves the gap.")
    text += " One seed per target: the gaps across seeds, with intervals, are in the evaluation chapter."
    display(Markdown(text))

# %% [markdown]
# ## A teaching run
#
# The same measurement on the embedded data (unless the parameters name another dataset): a
# few epochs on a small subset, to show the hook at work.

# %% tags=["remove-input"]
dataset_note(dataset)

# %% [markdown]
# The hook that measures the bands is not part of a run's name: a run that another chapter
# trained with the same configuration has the same folder but no band metrics. With
# `missing="retrain"` (the default) such a run is deleted and trained again with the hook;
# the hook draws none of the training's random numbers, so the retrained weights are the
# same. With `missing="skip"` the run is loaded as it is and its target is left out of the
# figure.

# %%
basis = None  # the dataset's cached basis, the one pca-* targets are filtered with
if n_fit is not None:
    basis = pca.fit_pca(load_dataset(dataset, "train").subset(n_fit, seed=seed).to_tensor(), dataset=dataset)
runs, notes = {}, []
for spec in targets:
    config = make_config(recipe, dataset, spec, epochs=epochs, n_train=n_train, batch_size=batch_size, seed=seed)
    run, note = learning_order_run(config, n_eval=n_eval, every=every, missing=missing, basis=basis,
                                   device=device)
    runs[spec] = run
    notes.append({"target": spec, "run": run.run_dir.name, "status": note, "epochs": len(run.metrics),
                  "train minutes": sum(m["seconds"] for m in run.metrics) / 60})
pd.DataFrame(notes).style.hide(axis="index").format({"train minutes": "{:.1f}"})

# %% tags=["remove-cell"]
frames = {spec: read_band_metrics(run.run_dir) for spec, run in runs.items()}
frames = {spec: f for spec, f in frames.items() if len(f)}
if not frames:
    raise RuntimeError("no run has band metrics; run with missing='retrain'")


def band_change(frame, band):
    rows = frame[frame["band"] == band].dropna(subset=["rel_error"]).sort_values("epoch")
    return float(rows["rel_error"].iloc[0]), float(rows["rel_error"].iloc[-1])


first = next(iter(frames))
f0 = frames[first]
filled = sorted(f0.dropna(subset=["rel_error"])["band"].unique())
top_band, last_band = filled[0], filled[-1]
top_start, top_end = band_change(f0, top_band)
last_start, last_end = band_change(f0, last_band)
label = dict(zip(f0["band"], f0["band_label"]))
glue("first_target", first)
glue("n_epochs", int(f0["epoch"].max()))
glue("top_label", label[top_band])
glue("last_label", label[last_band])
glue("top_start", top_start)
glue("top_end", top_end)
glue("last_start", last_start)
glue("last_end", last_end)
glue("top_drop_pct", 100 * (1 - top_end / top_start))
glue("last_drop_pct", 100 * (1 - last_end / last_start))
glue("empty_bands", ", ".join(label[b] for b in sorted(set(f0["band"]) - set(filled))) or "none")
faster = "faster than" if top_end / top_start < last_end / last_start else "no faster than"
glue("order_sentence", f"the top band's error fell {faster} the last band's")

# %% [markdown]
# For the {glue:text}`first_target` target, after {glue:text}`n_epochs` epochs, the relative
# error of the top band ({glue:text}`top_label` of the variance) went from
# {glue:text}`top_start:.3f` to {glue:text}`top_end:.3f` ({glue:text}`top_drop_pct:.0f`% lower),
# that of the last band ({glue:text}`last_label`) from {glue:text}`last_start:.3f` to
# {glue:text}`last_end:.3f` ({glue:text}`last_drop_pct:.0f`% lower): {glue:text}`order_sentence`.
# Bands left empty because one component straddles several deciles:
# {glue:text}`empty_bands`.

# %%
fig = plot_learning_order(frames)

# %% [markdown]
# One panel per target; each line is one band, darkest for the top of the spectrum. The error
# is measured against each run's own target: a filtered target has (nearly) nothing in the
# bands it filtered out, so there the curve shows how much of the image's variance in those
# bands the model wrongly predicts.
#
# These teaching runs are short (a few epochs on a subset of the training split, one seed)
# and say little about the paper's 400-epoch schedules, and so are the CIFAR-10 runs above
# (6 epochs): they show the measurement and the first steps of the order, not its end. On the
# embedded synthetic data the top components are smooth colour fields, easy to infer from
# the visible patches.

# %% tags=["remove-input"]
display(takeaway(conclusions.takeaways(conclusions.findings(real_dataset), "learning-order")))
