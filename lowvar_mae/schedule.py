"""The schedule study: how the comparison of two targets moves as pretraining grows longer.

The grid runs one recipe at several lengths (``python -m lowvar_mae grid --epochs 12 24 48``,
:func:`lowvar_mae.grid.length_overrides`: only the epochs change, warm-up scaled with
them); every run writes its evaluation records and a learning-order record. This module
reads them back and never trains:

* :func:`study_records`: the eval records of one dataset and recipe at every length;
* :func:`accuracy_by_length`: mean, sample std and seeds per (target, probe, length);
* :func:`differences_by_length`: a target minus the baseline target on the same seeds,
  per probe and length, with a t interval (``report.paired_differences``);
* :func:`crossing`: where a straight line through the mean differences against
  log(epochs) reaches zero, an extrapolation stated as one;
* :func:`band_crossings`: the first epoch at which each band of a learning-order run
  falls below a level (the mean-image level of masked reconstructions);
* :func:`plot_study`: accuracy against epochs (log axis) for each probe, with the random
  encoder and the raw-pixel regression as horizontal lines, and the paired difference.
"""

from __future__ import annotations

import math

import numpy as np

from .reference import target_label
from .report import PROBE_LABELS, _order, paired_differences

STUDY_TARGETS = ("pixels", "pca-bottom:0.25")
# A masked reconstruction that predicts the mean image scores about the mask ratio in each
# band (the error counts on the masked patches only, the variance on the whole image).
MEAN_IMAGE_LEVEL = 0.75


def study_records(records, dataset: str, recipe: str, targets=STUDY_TARGETS):
    """Eval records of ``dataset`` and ``recipe`` for ``targets`` at every pretraining
    length, one per (run, probe) (the latest), with an integer ``pretrain_epochs``."""
    if records is None or not len(records) or "pretrain_epochs" not in records:
        return records.iloc[:0] if records is not None else records
    df = records[(records["dataset"] == dataset) & (records["recipe"] == recipe)
                 & records["target"].isin(list(targets)) & records["pretrain_epochs"].notna()].copy()
    if "time_utc" in df:
        df = df.sort_values("time_utc", kind="stable")
    df = df.drop_duplicates(["run", "metric"], keep="last")
    df["pretrain_epochs"] = df["pretrain_epochs"].astype(int)
    return df.reset_index(drop=True)


def accuracy_by_length(records):
    """One row per (target, metric, pretrain_epochs): mean, std (ddof 1, NaN for one seed),
    n, seeds and the per-seed values, sorted by target, probe and length."""
    import pandas as pd

    rows = []
    for (target, metric, epochs), group in records.groupby(["target", "metric", "pretrain_epochs"]):
        group = group.sort_values("seed")
        values = group["value"].astype(float)
        rows.append({"target": target, "label": target_label(target), "metric": metric, "epochs": int(epochs),
                     "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "n": len(values), "seeds": [int(s) for s in group["seed"]], "values": list(values)})
    return pd.DataFrame(rows, columns=["target", "label", "metric", "epochs", "mean", "std", "n", "seeds", "values"])


def differences_by_length(records, target: str = "pca-bottom:0.25", baseline: str = "pixels",
                          confidence: float = 0.95):
    """``target`` minus ``baseline`` on the same seeds, per probe and pretraining length:
    the columns of ``report.paired_differences`` plus ``epochs``."""
    import pandas as pd

    parts = []
    for epochs, group in records.groupby("pretrain_epochs"):
        diffs = paired_differences(group[group["target"].isin([target, baseline])], baseline, confidence)
        diffs = diffs[(diffs["target"] == target) & (diffs["n"] > 0)]
        if len(diffs):
            parts.append(diffs.assign(epochs=int(epochs)))
    if not parts:
        return pd.DataFrame(columns=["target", "label", "metric", "n", "differences", "mean", "low", "high",
                                     "verdict", "epochs"])
    return pd.concat(parts).sort_values(["metric", "epochs"]).reset_index(drop=True)


def verdicts_by_length(records, random_records, target: str = "pca-bottom:0.25", baseline: str = "pixels"):
    """The verdict (``lowvar_mae.verdicts``) of ``target`` against ``baseline`` at each
    pretraining length, each length's encoders held to the bar against the random encoder
    (``random_records``: eval records of target "none", which does not depend on the
    length); the comparisons of every length and probe are one family for Holm's correction.
    Columns of ``verdicts.decide`` plus ``epochs``."""
    import pandas as pd

    from . import verdicts

    parts = []
    for epochs, group in records.groupby("pretrain_epochs"):
        frame = pd.concat([group, random_records]) if random_records is not None else group
        table = verdicts.decide(frame, baseline, targets=[target])
        if len(table):
            parts.append(table.assign(epochs=int(epochs)))
    if not parts:
        return pd.DataFrame()
    joined = verdicts.as_family(pd.concat(parts))
    return joined.sort_values(["metric", "epochs"]).reset_index(drop=True)


def crossing(epochs, mean_differences) -> float | None:
    """The number of epochs at which the least-squares line of the mean differences against
    log(epochs) reaches zero, when at least two lengths are given, the line rises towards
    zero from below (or falls towards it from above) and the crossing lies beyond the
    longest length; else None. An extrapolation: it assumes the trend holds."""
    x = np.log(np.asarray(epochs, dtype=float))
    y = np.asarray(mean_differences, dtype=float)
    if len(x) < 2 or len(set(x)) < 2 or not np.isfinite(y).all():
        return None
    slope, intercept = np.polyfit(x, y, 1)
    if slope == 0 or y[np.argmax(x)] * slope >= 0:  # moving away from zero, or already past it
        return None
    at = math.exp(-intercept / slope)
    return at if at > x.max() and math.isfinite(at) else None


def band_crossings(band_frame, level: float = MEAN_IMAGE_LEVEL):
    """For a long frame of band errors (``learning_order.band_metrics``): per band, the error at
    the first and last measured epoch and the first epoch at which it is below ``level``
    (None: never). Empty bands (no eigen-direction) are left out."""
    import pandas as pd

    rows = []
    for band, group in band_frame.groupby("band"):
        group = group.dropna(subset=["rel_error"]).sort_values("epoch")
        if not len(group):
            continue
        below = group[group["rel_error"] < level]
        rows.append({"band": int(band), "band_label": group["band_label"].iloc[0],
                     "first_epoch": int(group["epoch"].iloc[0]), "first": float(group["rel_error"].iloc[0]),
                     "last_epoch": int(group["epoch"].iloc[-1]), "last": float(group["rel_error"].iloc[-1]),
                     "below_from": int(below["epoch"].iloc[0]) if len(below) else None})
    frame = pd.DataFrame(rows, columns=["band", "band_label", "first_epoch", "first", "last_epoch", "last",
                                        "below_from"])
    frame["below_from"] = pd.Series([r["below_from"] for r in rows], dtype=object)  # None stays None
    return frame


def run_epochs(record) -> int:
    """The pretraining length of a learning-order record (older records name it only in their config)."""
    epochs = record.get("pretrain_epochs")
    if epochs is None or (isinstance(epochs, float) and math.isnan(epochs)):
        epochs = record["config"]["epochs"]
    return int(epochs)


def longest_runs(order_records, dataset: str, recipe: str, seed: int = 0, targets=STUDY_TARGETS):
    """The learning-order records of the longest length that every one of ``targets`` has
    for ``seed``: (epochs, {target: record}), or (None, {}) when they share no length."""
    if order_records is None or not len(order_records):
        return None, {}
    df = order_records[(order_records["dataset"] == dataset) & (order_records["recipe"] == recipe)
                       & (order_records["seed"] == seed) & order_records["target"].isin(list(targets))].copy()
    if not len(df):
        return None, {}
    df["_epochs"] = [run_epochs(r) for _, r in df.iterrows()]
    if "time_utc" in df:
        df = df.sort_values("time_utc", kind="stable")
    shared = set.intersection(*[set(df.loc[df["target"] == t, "_epochs"]) for t in targets])
    if not shared:
        return None, {}
    epochs = max(shared)
    rows = df[df["_epochs"] == epochs].drop_duplicates("target", keep="last")
    return epochs, {t: rows[rows["target"] == t].iloc[0].drop("_epochs") for t in targets}


def probe_gap(records: dict, target: str = "pca-bottom:0.25", baseline: str = "pixels"):
    """Validation probe (best pooling) of two learning-order records by epoch, and their
    difference: a frame of epoch, ``baseline``, ``target`` and gap (target minus baseline),
    on the epochs both probed."""
    import pandas as pd

    def best(record):
        return {int(p["epoch"]): max(p["probe_val"].values()) for p in record["probe_curve"]}

    a, b = best(records[target]), best(records[baseline])
    epochs = sorted(set(a) & set(b))
    return pd.DataFrame({"epoch": epochs, baseline: [b[e] for e in epochs], target: [a[e] for e in epochs],
                         "gap": [a[e] - b[e] for e in epochs]})


def plot_study(table, diffs, lines: dict[str, float] | None = None, title: str = ""):
    """Test accuracy against pretraining epochs (log axis) for each probe, one line per
    target, error bars one std over seeds where there are several; ``lines``: label ->
    accuracy drawn across (the random encoder, the raw-pixel regression); last panel: the
    paired difference of the targets with its interval, per probe."""
    import matplotlib.pyplot as plt

    metrics = [m for m in PROBE_LABELS if m in set(table["metric"])]
    # Two rows, 8 inches across: the probes above; the difference and the legend of the
    # probe panels below, so that no legend sits on the data and the page draws 9-pt text
    # at about its size.
    cols = max(2, len(metrics))
    fig, grid_axes = plt.subplots(2, cols, figsize=(8.0, 6.6), squeeze=False)
    axes = list(grid_axes[0][:len(metrics)]) + [grid_axes[1][0]]
    legend_ax = grid_axes[1][1]
    for spare in list(grid_axes[0][len(metrics):]) + list(grid_axes[1][2:]):
        spare.axis("off")
    ticks = sorted(set(table["epochs"])) if len(table) else []
    for ax, metric in zip(axes, metrics):
        sub = table[table["metric"] == metric]
        for i, target in enumerate(_order(sub["target"])):
            rows = sub[sub["target"] == target].sort_values("epochs")
            ax.errorbar(rows["epochs"], rows["mean"], yerr=rows["std"].fillna(0), marker="o", capsize=3,
                        color=f"C{i}", label=target_label(target))
        for j, (label, value) in enumerate((lines or {}).get(metric, {}).items()):
            ax.axhline(value, color="grey", lw=1, ls=["--", ":"][j % 2], label=label)
        ax.set_title(PROBE_LABELS[metric], fontsize=10)
        ax.set_ylabel("test accuracy", fontsize=9)
    ax = axes[-1]
    for i, metric in enumerate(m for m in metrics if m in set(diffs["metric"])):
        rows = diffs[diffs["metric"] == metric].sort_values("epochs")
        x = rows["epochs"] * (1.04 if i else 0.96)  # side by side on the log axis
        low = (rows["mean"] - rows["low"]).fillna(0)
        high = (rows["high"] - rows["mean"]).fillna(0)
        ax.errorbar(x, rows["mean"] * 100, yerr=[low * 100, high * 100], marker="o", capsize=3, ls="-",
                    color=f"C{i + 2}", label=PROBE_LABELS[metric])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_title("bottom 25% minus pixels,\nsame seed (95% t interval)", fontsize=10)
    ax.set_ylabel("difference (points)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log")
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("pretraining epochs (log)", fontsize=9)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=9, loc="best")
    seen = {}
    for ax in axes[:-1]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    legend_ax.axis("off")
    if seen:
        legend_ax.legend(list(seen.values()), list(seen), fontsize=9, loc="center", title="in the panels above",
                         title_fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


__all__ = ["STUDY_TARGETS", "MEAN_IMAGE_LEVEL", "study_records", "accuracy_by_length", "differences_by_length",
           "verdicts_by_length", "crossing", "band_crossings", "run_epochs", "longest_runs", "probe_gap", "plot_study"]
