"""Presenting evaluation records: Table 1 with spread over seeds, paired differences, calibration.

Everything here reads records (``lowvar_mae.results.load_records``) and never trains.
The book's evaluation chapter is made of these tables and figures.

* :func:`protocol_records`: the eval records of one dataset and recipe, each run once;
* :func:`summary_table`: mean, sample std and count per (target, probe), beside the
  presentation's single values;
* :func:`paired_differences`: each target minus the baseline target on the same seeds,
  with a t interval; :func:`verdict` says in words whether it lies outside the spread;
* :func:`calibration_curves`: the pretraining runs' validation probe by epoch;
* figures for each.
"""

from __future__ import annotations

import math

import numpy as np

from .reference import TABLE1, target_label

PROBE_LABELS = {"finetune": "fine-tuning", "linprobe": "linear probe", "knn": "kNN (k=20)"}
# Rows of the CPU protocol's table, in the order of the presentation's Table 1.
TARGET_ORDER = ["pixels", "none", "pca-bottom:0.25", "pca-bottom:0.1", "pca-top:0.75", "pca-top:0.6", "norm-pix",
                "fft-high:0.14", "fft-low:0.177", "pc-mask"]
# Published claims of a better reconstruction target than pixels, each as (target, idea, who
# claims it, what they report). All claim the target's features beat the pixel target's.
CLAIMS = [
    ("pca-bottom:0.25", "reconstruct the low-variance PCA components",
     "Balestriero & LeCun 2024", "bottom 25% beats pixels (linear probe, ViT-Tiny, CIFAR-10)"),
    ("fft-high:0.14", "reconstruct the fine detail (high frequencies), the Fourier analogue of the bottom components",
     "the same argument, in frequency", "(no published number at this radius)"),
    ("fft-low:0.177", "reconstruct a low-pass image", "PixMIM (Liu et al. 2023)", "low-pass targets help ViT-B on ImageNet"),
    ("norm-pix", "reconstruct per-patch normalised pixels", "MAE (He et al. 2022)", "better fine-tuning on ImageNet"),
    ("pc-mask", "mask principal components instead of patches", "PMAE (Bizeul et al.)",
     "about +14 points linear probe over MAE, ViT-Tiny on CIFAR-10"),
]


def claim_table(diffs, claims=CLAIMS):
    """One row per (claim, probe) with paired seeds: the target's mean difference to pixels,
    its interval and the outcome in words: "holds" (interval above 0), "contradicted" (below
    0), "not shown" (includes 0), "open" (one seed) or "no record"."""
    import pandas as pd

    rows = []
    for target, idea, source, reported in claims:
        sub = diffs[diffs["target"] == target] if len(diffs) else diffs
        if not len(sub):
            rows.append({"target": target, "label": target_label(target), "idea": idea, "source": source,
                         "reported": reported, "probe": "", "n": 0, "mean": float("nan"), "low": float("nan"),
                         "high": float("nan"), "outcome": "no record"})
            continue
        for _, r in sub.iterrows():
            if r["n"] < 2 or math.isnan(r["low"]):
                outcome = "open" if r["n"] else "no record"
            elif r["low"] > 0:
                outcome = "holds"
            elif r["high"] < 0:
                outcome = "contradicted"
            else:
                outcome = "not shown"
            rows.append({"target": target, "label": target_label(target), "idea": idea, "source": source,
                         "reported": reported, "probe": PROBE_LABELS.get(r["metric"], r["metric"]), "n": int(r["n"]),
                         "mean": r["mean"], "low": r["low"], "high": r["high"], "outcome": outcome})
    return pd.DataFrame(rows)


def protocol_records(records, dataset: str, recipe: str):
    """Eval records of ``dataset`` and evaluation ``recipe``; a run recorded twice counts once
    (its latest record)."""
    if records is None or not len(records):
        return records
    df = records[(records["dataset"] == dataset) & (records["recipe"] == recipe)].copy()
    if "time_utc" in df:
        df = df.sort_values("time_utc", kind="stable")
    return df.drop_duplicates(["run", "metric"], keep="last")


def _order(targets) -> list[str]:
    targets = list(dict.fromkeys(targets))
    return sorted(targets, key=lambda t: (TARGET_ORDER.index(t) if t in TARGET_ORDER else len(TARGET_ORDER), t))


def summary_table(records):
    """One row per (target, metric): mean, std (ddof 1; NaN for one seed), n, seeds, the
    presentation's value (``original``, NaN where it has none) and the setup of the runs
    (model, pretraining epochs, training / test images, machines, features probed and how
    many runs chose each)."""
    import pandas as pd

    reference = {(d, t, m): v for d, t, ft, lp in TABLE1 for m, v in (("finetune", ft), ("linprobe", lp))}
    rows = []
    for (target, metric), group in records.groupby(["target", "metric"], sort=False):
        values = group["value"].astype(float)
        dataset = group["dataset"].iloc[0]
        epochs = sorted({int(e) for e in group.get("pretrain_epochs", pd.Series(dtype=float)).dropna()})
        rows.append({
            "target": target, "label": target_label(target), "metric": metric, "mean": values.mean(),
            "std": values.std(ddof=1) if len(values) > 1 else float("nan"), "n": len(values),
            "seeds": ",".join(str(int(s)) for s in sorted(group["seed"])),
            "original": reference.get((dataset, target, metric), float("nan")),
            "model": ", ".join(sorted(set(group["model"]))),
            "pretrain_epochs": ", ".join(map(str, epochs)) if epochs else "none",
            "n_train": int(group["n_train"].iloc[0]), "n_test": int(group["n_test"].iloc[0]),
            "machines": "; ".join(sorted(set(group["device_name"].dropna()))),
            "features": ", ".join(f"{k} x{v}" for k, v in group["features"].value_counts().items())
            if "features" in group and group["features"].notna().any() else "cls",
        })
    table = pd.DataFrame(rows)
    if not len(table):
        return table
    table["_order"] = [_order(table["target"]).index(t) for t in table["target"]]
    return table.sort_values(["_order", "metric"], kind="stable").drop(columns="_order").reset_index(drop=True)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of a t interval for the mean of ``values``; low and high are NaN for
    fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean()) if len(x) else float("nan")
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_differences(records, baseline: str = "pixels", confidence: float = 0.95):
    """Each target's value minus ``baseline``'s on the same seed and probe.

    Returns one row per (target, metric) with n (seeds both have), the differences, their
    mean, the ``confidence`` t interval (low, high; NaN for one seed), and ``verdict``
    (:func:`verdict`). Pairing by seed removes what two runs of one seed share (the
    validation split, the initial weights).
    """
    import pandas as pd

    rows = []
    base = records[records["target"] == baseline].set_index(["metric", "seed"])["value"]
    for (target, metric), group in records[records["target"] != baseline].groupby(["target", "metric"], sort=False):
        pairs = [(float(v), float(base[(metric, s)])) for s, v in zip(group["seed"], group["value"])
                 if (metric, s) in base.index]
        diffs = [a - b for a, b in pairs]
        mean, low, high = t_interval(diffs, confidence)
        rows.append({"target": target, "label": target_label(target), "metric": metric, "n": len(diffs),
                     "differences": diffs, "mean": mean, "low": low, "high": high,
                     "verdict": verdict(mean, low, high, len(diffs))})
    table = pd.DataFrame(rows, columns=["target", "label", "metric", "n", "differences", "mean", "low", "high",
                                        "verdict"])
    if len(table):
        table["_order"] = [_order(table["target"]).index(t) for t in table["target"]]
        table = table.sort_values(["_order", "metric"], kind="stable").drop(columns="_order").reset_index(drop=True)
    return table


def verdict(mean: float, low: float, high: float, n: int) -> str:
    """Plain words for a paired difference and its interval."""
    if n == 0:
        return "no paired seeds"
    if n < 2 or math.isnan(low):
        return f"one seed only ({mean:+.3f}): no spread to compare with"
    if low > 0:
        return f"higher: {mean:+.3f}, interval {low:+.3f} to {high:+.3f} excludes 0"
    if high < 0:
        return f"lower: {mean:+.3f}, interval {low:+.3f} to {high:+.3f} excludes 0"
    return f"no difference shown: {mean:+.3f}, interval {low:+.3f} to {high:+.3f} includes 0"


def calibration_curves(records):
    """Validation probe accuracy by pretraining epoch, one row per (target, seed, epoch, pooling).

    Read from the linear-probe records' ``pretrain_probe_curve`` (the pretraining run's
    softmax regression on the validation split every few epochs; epoch 0: initial weights)."""
    import pandas as pd

    rows = []
    probes = records[records["metric"] == "linprobe"] if len(records) else records
    for _, rec in probes.iterrows():
        curve = rec.get("pretrain_probe_curve")
        for point in curve if isinstance(curve, list) else []:  # NaN where a record has none (no pretraining)
            for pooling, value in point["probe_val"].items():
                rows.append({"target": rec["target"], "seed": int(rec["seed"]), "epoch": int(point["epoch"]),
                             "pooling": pooling, "val_accuracy": float(value)})
    return pd.DataFrame(rows, columns=["target", "seed", "epoch", "pooling", "val_accuracy"])


# ---------------------------------------------------------------- figures


def plot_summary(table, chance: float | None = None, title: str = ""):
    """Bars of mean test accuracy per target for each probe, error bars one std over seeds,
    the presentation's values as black marks."""
    import matplotlib.pyplot as plt

    targets = _order(table["target"])
    metrics = [m for m in PROBE_LABELS if m in set(table["metric"])]
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(targets) + 2), 4.0))
    width = 0.8 / max(1, len(metrics))
    marked = False
    for j, metric in enumerate(metrics):
        sub = table[table["metric"] == metric].set_index("target").reindex(targets)
        x = np.arange(len(targets)) + (j - (len(metrics) - 1) / 2) * width
        ax.bar(x, sub["mean"], width, yerr=sub["std"].fillna(0), capsize=3, color=f"C{j}", alpha=0.8,
               label=PROBE_LABELS[metric])
        if sub["original"].notna().any():
            ax.scatter(x, sub["original"], marker="_", s=250, color="black", zorder=3,
                       label=None if marked else "presentation (ViT-Tiny, 400 epochs)")
            marked = True
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(np.arange(len(targets)), [target_label(t) for t in targets], rotation=20, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncols=2)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_differences(diffs, title: str = ""):
    """Paired difference to the baseline per target (points: seeds; bar: mean and t interval)."""
    import matplotlib.pyplot as plt

    metrics = [m for m in PROBE_LABELS if m in set(diffs["metric"])]
    targets = _order(diffs["target"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.4, 4.2 * len(metrics)), 0.5 * len(targets) + 2.0),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics):
        sub = diffs[diffs["metric"] == metric].set_index("target").reindex(targets)
        y = np.arange(len(targets))[::-1]
        for yi, (_, row) in zip(y, sub.iterrows()):
            if not isinstance(row["differences"], list):
                continue
            ax.scatter(row["differences"], [yi] * len(row["differences"]), color="C0", s=14, zorder=3)
            if not math.isnan(row["low"]):
                ax.plot([row["low"], row["high"]], [yi, yi], color="black", lw=2)
            ax.scatter([row["mean"]], [yi], marker="|", s=200, color="black", zorder=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, [target_label(t) for t in targets])
        ax.set_xlabel(f"{PROBE_LABELS[metric]}: difference in test accuracy")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(curves, bars: dict[str, float] | None = None, title: str = ""):
    """Validation probe accuracy against pretraining epochs: per target the mean over seeds
    (band: min to max) of the best pooling at each epoch; ``bars``: horizontal reference
    lines (label -> accuracy), e.g. the random encoder and a linear classifier on pixels."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if len(curves):
        best = curves.groupby(["target", "seed", "epoch"])["val_accuracy"].max().reset_index()
        for i, target in enumerate(_order(best["target"])):
            sub = best[best["target"] == target].groupby("epoch")["val_accuracy"]
            stats = sub.agg(["mean", "min", "max", "count"])
            ax.plot(stats.index, stats["mean"], marker="o", color=f"C{i}",
                    label=f"{target_label(target)} ({int(stats['count'].max())} seed{'s' if stats['count'].max() > 1 else ''})")
            ax.fill_between(stats.index, stats["min"], stats["max"], color=f"C{i}", alpha=0.15)
    for j, (label, value) in enumerate((bars or {}).items()):
        ax.axhline(value, color="grey", ls=["--", ":", "-."][j % 3], lw=1.2, label=label)
    ax.set_xlabel("pretraining epoch")
    ax.set_ylabel("validation accuracy (linear probe)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["protocol_records", "summary_table", "t_interval", "paired_differences", "verdict",
           "calibration_curves", "claim_table", "CLAIMS", "plot_summary", "plot_differences", "plot_calibration", "PROBE_LABELS"]
