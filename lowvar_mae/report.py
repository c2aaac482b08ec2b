"""Presenting evaluation records: Table 1 with spread over seeds, paired differences, calibration.

Everything here reads records (``lowvar_mae.results.load_records``) and never trains.
The book's evaluation chapter is made of these tables and figures.

* :func:`protocol_records`: the eval records of one dataset and recipe, each run once;
* :func:`summary_table`: mean, sample std and count per (target, probe), beside the
  presentation's single values;
* :func:`paired_differences`: each target minus the baseline target on the same seeds,
  with a t interval; :func:`verdict` says in words whether it lies outside the spread;
* :func:`calibration_curves`: the pretraining runs' validation probe by epoch;
* :func:`results_table`, :func:`table1_comparison`: any records, every recipe, beside Table 1;
* :func:`bench_summary`: the benchmark records, one row per machine and setup;
* figures for each.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .reference import TABLE1, target_label

PROBE_LABELS = {"finetune": "fine-tuning", "linprobe": "linear probe", "knn": "kNN (k=20)"}
# Rows of the CPU protocol's table, in the order of the presentation's Table 1.
TARGET_ORDER = ["pixels", "none", "pca-bottom:0.25", "pca-bottom:0.1", "pca-top:0.75", "pca-top:0.6", "norm-pix",
                "fft-high:0.14", "fft-low:0.177", "pc-mask:0.2", "pc-mask"]
# Published claims of a better reconstruction target than pixels, each as (target, idea, who
# claims it, what they report). All claim the target's features beat the pixel target's.
CLAIMS = [
    ("pca-bottom:0.25", "reconstruct the low-variance PCA components",
     "Balestriero & LeCun 2024", "bottom 25% beats pixels (linear probe, ViT-Tiny, CIFAR-10)"),
    ("fft-high:0.14", "reconstruct the fine detail (high frequencies), the Fourier analogue of the bottom components",
     "the same argument, in frequency", "(no published number at this radius)"),
    ("fft-low:0.177", "reconstruct a low-pass image", "PixMIM (Liu et al. 2023)", "low-pass targets help ViT-B on ImageNet"),
    ("norm-pix", "reconstruct per-patch normalised pixels", "MAE (He et al. 2022)", "better fine-tuning on ImageNet"),
    ("pc-mask:0.2", "mask a fixed 20% of the variance in principal components, not patches",
     "PMAE (Bizeul et al.)", "ViT-Tiny on CIFAR-10, 800 epochs: linear probe 59.0, fine-tuning 84.8"),
    ("pc-mask", "mask a random 10-90% of the variance in principal components", "PMAE (Bizeul et al.)",
     "ViT-Tiny on CIFAR-10, 800 epochs: linear probe 44.0 (its weaker variant)"),
]
# A verdict of lowvar_mae.verdicts, as the outcome of a published claim.
CLAIM_OUTCOMES = {"higher": "holds", "lower": "contradicted", "no difference shown": "not shown",
                  "one seed only": "open", "not trained enough at this length": "not trained enough at this length",
                  "no paired seeds": "no record"}


def claim_table(diffs, claims=CLAIMS):
    """One row per (claim, probe) with paired seeds: the target's mean difference to pixels,
    its interval and the outcome in words. ``diffs``: the verdicts of
    ``lowvar_mae.verdicts.decide`` (outcome from the page's rule: "holds", "contradicted",
    "not shown", "not trained enough at this length", "open" (one seed) or "no record"), or
    plain ``paired_differences`` (outcome from the unadjusted interval)."""
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
            if "outcome" in r:
                outcome = CLAIM_OUTCOMES[r["outcome"]]
            elif r["n"] < 2 or math.isnan(r["low"]):
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


def protocol_records(records, dataset: str, recipe: str, epochs: int | str | None = "recipe"):
    """Eval records of ``dataset`` and evaluation ``recipe``; a run recorded twice counts once
    (its latest record). epochs: keep encoders pretrained for that many epochs (and the
    random encoder): "recipe" (the recipe's own length; the schedule study's longer runs
    are left to ``lowvar_mae.schedule``), a number, or None for every length."""
    if records is None or not len(records):
        return records
    df = records[(records["dataset"] == dataset) & (records["recipe"] == recipe)].copy()
    if epochs == "recipe":
        from .recipes import PRETRAIN_RECIPES as RECIPES

        epochs = RECIPES[recipe]["epochs"] if recipe in RECIPES else None
    if epochs is not None and "pretrain_epochs" in df:
        df = df[df["pretrain_epochs"].isna() | (df["pretrain_epochs"] == epochs)]
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
    fewer than two values (``verdicts.paired_t``, which also gives the p-value)."""
    from .verdicts import paired_t

    return paired_t(values, confidence)[:3]


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
    fig, ax = plt.subplots(figsize=(min(8.0, max(6.4, 0.9 * len(targets) + 2)), 4.4))
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
    ax.legend(fontsize=9, loc="upper right", ncols=2)
    ax.set_title(title, fontsize=10, wrap=True)
    fig.tight_layout()
    return fig


def plot_differences(diffs, title: str = ""):
    """Paired difference to the baseline per target (points: seeds; bar: mean and t interval)."""
    import matplotlib.pyplot as plt

    metrics = [m for m in PROBE_LABELS if m in set(diffs["metric"])]
    targets = _order(diffs["target"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(8.0 if len(metrics) > 1 else 6.4, 0.5 * len(targets) + 2.2),
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
        ax.set_title(PROBE_LABELS[metric], fontsize=10)
        ax.tick_params(axis="x", labelsize=9)
        ax.xaxis.set_major_locator(plt.MaxNLocator(4))  # few ticks: their labels never touch
        ax.grid(axis="x", alpha=0.3)
    fig.supxlabel("difference to the pixel target, same seed (test accuracy)", fontsize=10)
    fig.suptitle(title, fontsize=10, wrap=True)
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
    ax.legend(fontsize=9)
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- across recipes (any record set)


def training_curves(results: list, metric: str) -> dict:
    """Each ``metric`` run's metrics.jsonl as a DataFrame, named "<target label>, seed <s>"
    (the input of :func:`lowvar_mae.plots.plot_curves`)."""
    import pandas as pd

    from .train import read_metrics

    return {f"{target_label(r.config.target)}, seed {r.config.seed}": pd.DataFrame(read_metrics(r.run_dir))
            for r in results if r.config.metric == metric}


# ---------------------------------------------------------------- tables


KEYS = ["dataset", "target", "metric"]


def results_table(records, value: str = "value"):
    """Mean, std (ddof=1; NaN for one run) and count of ``value`` per (dataset, target, metric).

    records: a DataFrame of eval records (``load_records("eval")``). A run recorded more
    than once (same ``run`` and metric) counts once, with its latest record. Also gives
    ``best_mean``/``best_std`` of ``test_at_best`` when present.
    """
    import pandas as pd

    columns = KEYS + ["mean", "std", "count", "best_mean", "best_std"]
    if records is None or len(records) == 0:
        return pd.DataFrame(columns=columns)
    df = records.copy()
    if "run" in df.columns and df["run"].notna().all():
        if "time_utc" in df.columns:
            df = df.sort_values("time_utc", kind="stable")
        df = df.drop_duplicates(["run", "metric"], keep="last")
    best = "test_at_best" if "test_at_best" in df.columns else value
    grouped = df.groupby(KEYS, sort=True)
    table = grouped.agg(mean=(value, "mean"), std=(value, lambda s: s.std(ddof=1)), count=(value, "count"),
                        best_mean=(best, "mean"), best_std=(best, lambda s: s.std(ddof=1)))
    return table.reset_index()[columns]


def _format_cell(mean: float, std: float, count: int) -> str:
    if count == 0:
        return "no runs"
    if count == 1:
        return f"{mean:.3f} (1 run)"
    return f"{mean:.3f} ± {std:.3f}"


def table1_comparison(records, recipe: str | None = None):
    """Every cell of Table 1 (reference.TABLE1) and every cell with runs, side by side.

    Columns: dataset, target, label, metric, original (NaN where the presentation has no
    number), mean, std, count (0: no runs, mean NaN), ours (text), difference (mean -
    original). recipe: only records of this evaluation recipe (None: all).
    """
    import pandas as pd

    if recipe is not None and records is not None and len(records):
        records = records[records["recipe"] == recipe]
    ours = results_table(records)
    ref = pd.DataFrame([{"dataset": d, "target": t, "metric": m, "original": v, "order": i}
                        for i, (d, t, ft, lp) in enumerate(TABLE1)
                        for m, v in (("finetune", ft), ("linprobe", lp)) if v is not None])
    table = ref.merge(ours, on=KEYS, how="outer")
    table["order"] = table["order"].fillna(len(TABLE1))
    table = table.sort_values(["order", "dataset", "target", "metric"], kind="stable").drop(columns="order")
    table["count"] = table["count"].fillna(0).astype(int)
    table["mean"] = table["mean"].astype(float)
    table["original"] = table["original"].astype(float)
    table["label"] = [target_label(t) for t in table["target"]]
    table["ours"] = [_format_cell(m, s, c) for m, s, c in zip(table["mean"], table["std"], table["count"])]
    table["difference"] = table["mean"] - table["original"]
    cols = ["dataset", "target", "label", "metric", "original", "mean", "std", "count", "ours", "difference",
            "best_mean", "best_std"]
    return table[cols].reset_index(drop=True)


# ---------------------------------------------------------------- figures


def plot_accuracy_by_target(table, dataset: str, targets: list[str] | None = None):
    """Test accuracy per target (bars, mean with std over seeds) for each metric of ``dataset``;
    the presentation's values as black marks where ``table`` has them (``original``), and
    chance level. targets: their order on the axis (default: the table's)."""
    import matplotlib.pyplot as plt

    from .data import DATASETS

    rows = table[(table["dataset"] == dataset)]
    present = list(dict.fromkeys(rows["target"]))
    targets = [t for t in targets if t in present] if targets is not None else present
    metrics = [m for m in PROBE_LABELS if m in set(rows["metric"])]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(targets) * max(1, len(metrics)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(metrics))
    labelled = False
    for j, metric in enumerate(metrics):
        sub = rows[rows["metric"] == metric].set_index("target").reindex(targets)
        x = np.arange(len(targets)) + (j - (len(metrics) - 1) / 2) * width
        ax.bar(x, sub["mean"].to_numpy(float), width, yerr=sub["std"].fillna(0).to_numpy(float), capsize=3,
               label=metric, color=f"C{j}")
        if "original" in sub.columns and sub["original"].notna().any():
            ax.scatter(x, sub["original"].to_numpy(float), marker="_", s=300, color="black", zorder=3,
                       label=None if labelled else "presentation")
            labelled = True
    ax.axhline(1 / DATASETS[dataset].num_classes, color="grey", ls="--", lw=1, label="chance")
    ax.set_xticks(np.arange(len(targets)), [target_label(t) for t in targets], rotation=20, ha="right")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: accuracy by pretraining target")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- benchmark records


BENCH_KINDS = ("pretrain_throughput", "pca_bench", "convnet_throughput")


def bench_records(folders=None) -> list[dict]:
    """Every benchmark record (dicts, with their file name) in ``folders`` (default: the
    ``bench/`` folder of each of ``results.record_dirs()``); a file name is read once."""
    import json
    from pathlib import Path

    from .results import record_dirs

    folders = [Path(f) for f in folders] if folders is not None else [d / "bench" for d in record_dirs()]
    paths = {p.name: p for f in reversed(folders) if f.is_dir() for p in sorted(f.glob("*.json"))}
    out = []
    for path in paths.values():
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # one torn record does not hide the others
            warnings.warn(f"skipping benchmark record {path}: {err}; repair or delete it", stacklevel=2)
            continue
        if isinstance(rec, dict) and rec.get("kind") in BENCH_KINDS:
            out.append({**rec, "file": path.name})
    return sorted(out, key=lambda r: (r.get("provenance", {}).get("time_utc", ""), r["file"]))


def throughput_summary(records):
    """One row per (machine, preset): the latest record's fast path against its baseline at
    the largest batch both measured (a full run is preferred to a later --quick one):
    images/s, ratio, precision, whether the run was quick, and the record's estimate of the
    presentation's 400-epoch recipe where it made one."""
    import pandas as pd

    latest = {}
    for rec in records:
        if rec["kind"] != "pretrain_throughput":
            continue
        prov = rec.get("provenance", {})
        for preset in dict.fromkeys(r["preset"] for r in rec["rows"]):
            rows = [r for r in rec["rows"] if r["preset"] == preset]
            batches = {r["batch"] for r in rows if r["path"] == "fast"} & {r["batch"] for r in rows if r["path"] == "baseline"}
            if not batches:
                continue
            b = max(batches)
            fast = next(r for r in rows if r["path"] == "fast" and r["batch"] == b)
            base = next(r for r in rows if r["path"] == "baseline" and r["batch"] == b)
            paper = rec.get("paper_estimate") or {}
            key = (prov.get("device_name"), preset)
            if rec.get("quick") and key in latest and not latest[key]["quick"]:
                continue  # a shortened run does not replace a full one
            latest[key] = {
                "machine": prov.get("device_name"), "date": str(prov.get("time_utc", ""))[:10], "preset": preset,
                "batch": b, "fast path": fast["precision"] + (", compiled" if fast.get("compiled") else ""),
                "baseline img/s": base["img_per_s"], "fast img/s": fast["img_per_s"],
                "fast / baseline": fast["img_per_s"] / base["img_per_s"],
                "400-epoch recipe, h": paper.get("hours") if paper.get("preset") == preset else None,
                "quick": bool(rec.get("quick")), "file": rec["file"]}
    return pd.DataFrame(list(latest.values()))


def pca_summary(records):
    """One row per (machine, case) of the latest full PCA benchmark on each machine: the
    exact fit's time over the top-k solver's at full size (best top-k setting)."""
    import pandas as pd

    latest = {}
    for rec in records:
        if rec["kind"] != "pca_bench":
            continue
        latest[rec.get("provenance", {}).get("device_name")] = rec
    rows = []
    for machine, rec in latest.items():
        for case in rec["cases"]:
            best = max(case["speedup_full_size"].items(), key=lambda kv: kv[1])
            rows.append({"machine": machine, "date": str(rec["provenance"].get("time_utc", ""))[:10],
                         "case": case["case"], "images": case["n_images"], "D": case["dim"],
                         "exact / top-k": best[1], "top-k setting": best[0], "quick": bool(rec.get("quick")),
                         "file": rec["file"]})
    return pd.DataFrame(rows)


def bench_table(summary):
    """A benchmark summary as a page shows it: (table, machine line). One machine is named
    once under the table instead of in every row; a shortened run is said in words
    ("shortened" / "full"), and the column goes when every run was full; an estimate that
    does not apply is a dash."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    table = summary.drop(columns=[c for c in ("file",) if c in summary]).copy()
    machines = list(dict.fromkeys(table["machine"]))
    if len(machines) == 1:
        table = table.drop(columns="machine")
    if "quick" in table:
        quick = table.pop("quick").astype(bool)
        if quick.any():
            table["run"] = ["shortened" if q else "full" for q in quick]
    for column in table.columns:
        if not (is_numeric_dtype(table[column]) or is_bool_dtype(table[column])):
            table[column] = ["–" if v is None or v == "" or v != v else v for v in table[column].astype(object)]
    line = ("Machine: " if len(machines) == 1 else "Machines: ") + "; ".join(machines) + "."
    return table, line


def plot_throughput(summary, title: str = ""):
    """Fast path and baseline images/s per preset, one group per machine (log scale)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    labels = [f"{r['preset']}\n{r['machine'].replace('CPU ', '')}" for _, r in summary.iterrows()]
    x = np.arange(len(summary))
    ax.bar(x - 0.2, summary["baseline img/s"], 0.4, label="baseline", color="C7")
    ax.bar(x + 0.2, summary["fast img/s"], 0.4, label="fast path", color="C0")
    for xi, ratio in zip(x, summary["fast / baseline"]):
        ax.text(xi + 0.2, summary["fast img/s"].iloc[int(xi)] * 1.1, f"{ratio:.1f}x", ha="center", fontsize=9)
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_yscale("log")
    top = float(np.nanmax(summary[["baseline img/s", "fast img/s"]].to_numpy()))
    ax.set_ylim(top=top * 2.0)  # room for the ratio labels above the bars
    ax.set_ylabel("images / s (log scale)")
    ax.legend(fontsize=9, loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


__all__ = ["protocol_records", "summary_table", "t_interval", "paired_differences", "verdict",
           "calibration_curves", "claim_table", "CLAIMS", "plot_summary", "training_curves", "results_table",
           "table1_comparison", "plot_accuracy_by_target", "bench_records", "throughput_summary", "pca_summary",
           "bench_table", "plot_throughput", "plot_differences", "plot_calibration", "PROBE_LABELS"]


# ---------------------------------------------------------------- the subspace curves


def current_subspace_records(records, dataset: str = "cifar10"):
    """The subspace records of ``dataset`` made with today's settings of each classifier:
    the linear fits of ``probes.SUBSPACE_LINEAR`` (penalty chosen on validation, fitted to
    convergence) and the conv nets of ``curve.ConvNetConfig()``. Older records (other
    settings) stay in the results folder and out of the curves."""
    from .curve import ConvNetConfig, same_settings
    from .probes import SUBSPACE_LINEAR

    if records is None or not len(records) or "classifier" not in records:
        return records.iloc[:0] if records is not None else None
    wanted = {"linear": SUBSPACE_LINEAR, "convnet": ConvNetConfig()}
    keep = [r["dataset"] == dataset and r["classifier"] in wanted and same_settings(r["settings"], wanted[r["classifier"]])
            for _, r in records.iterrows()]
    return records[keep].reset_index(drop=True)


def subspace_curves(records):
    """One row per (classifier, side, share) of :func:`current_subspace_records`: mean,
    sample std and count of the test accuracy over seeds, the seeds, the share of
    variance kept on the test images, the components, the median minutes a run took and
    the machines."""
    import pandas as pd

    rows = []
    for (classifier, side, share), g in records.groupby(["classifier", "side", "share"], sort=False):
        acc = g["test_accuracy"].astype(float)
        rows.append({"classifier": classifier, "side": side, "share": float(share),
                     "n_components": int(g["n_components"].iloc[0]),
                     "kept_share": float(g["kept_share_test"].astype(float).mean()),
                     "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else float("nan"),
                     "n": len(acc), "seeds": sorted(int(s) for s in g["seed"]),
                     "minutes": float(g["wall_seconds"].median()) / 60,
                     "machines": ", ".join(sorted(set(g["device_name"].dropna()))) if "device_name" in g else ""})
    out = pd.DataFrame(rows)
    if len(out):
        side_order = {"full": 0, "top": 1, "bottom": 2}
        out = out.sort_values(["classifier", "side", "share"], key=lambda c: c.map(side_order) if c.name == "side"
                              else c, ascending=[False, True, True]).reset_index(drop=True)
    return out


def curves_json(curves) -> str:
    """The points of :func:`subspace_curves` as compact JSON ("classifier side share": mean,
    std, n), for a page to glue and a test to hold against the records."""
    import json

    def num(x):
        return None if x != x else round(float(x), 10)

    return json.dumps({f"{r['classifier']} {r['side']} {r['share']:g}": {"mean": num(r["mean"]), "std": num(r["std"]),
                                                                         "n": int(r["n"])}
                       for _, r in curves.iterrows()}, sort_keys=True)


def subspace_difference(records, classifier: str, a=("bottom", 0.2), b=("top", 0.9), confidence: float = 0.95):
    """Accuracy on subspace ``a`` minus accuracy on ``b`` for one classifier, paired by seed:
    dict with n, the differences, mean, t interval and :func:`verdict` (None when either
    point has no record)."""
    sub = records[records["classifier"] == classifier]

    def by_seed(side, share):
        part = sub[(sub["side"] == side) & ((sub["share"] - (1.0 if share is None else share)).abs() < 1e-9)]
        return {int(s): float(v) for s, v in zip(part["seed"], part["test_accuracy"])}

    first, second = by_seed(*a), by_seed(*b)
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return None
    diffs = [first[s] - second[s] for s in seeds]
    mean, low, high = t_interval(diffs, confidence)
    return {"n": len(seeds), "differences": diffs, "mean": mean, "low": low, "high": high,
            "verdict": verdict(mean, low, high, len(seeds))}


SUBSPACE_LABELS = {"linear": "linear (softmax regression)", "convnet": "conv net"}


def plot_subspace_curves(curves, title: str = ""):
    """Test accuracy against the share of variance the subspace keeps (log axis), one colour
    per classifier, circles for top subspaces, squares for bottom ones, bars: +- one std
    over seeds; dotted lines: the full images."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for i, classifier in enumerate([c for c in SUBSPACE_LABELS if c in set(curves["classifier"])]):
        part = curves[curves["classifier"] == classifier]
        colour = f"C{i}"
        for side, marker in (("top", "o"), ("bottom", "s")):
            pts = part[part["side"] == side].sort_values("kept_share")
            if len(pts):
                ax.errorbar(pts["kept_share"], pts["mean"], yerr=pts["std"].fillna(0), marker=marker, ms=5,
                            color=colour, ls="-" if side == "top" else "--", capsize=3,
                            label=f"{SUBSPACE_LABELS[classifier]}, {side} subspaces")
        full = part[part["side"] == "full"]
        if len(full):
            ax.axhline(float(full["mean"].iloc[0]), color=colour, ls=":", lw=1.2,
                       label=f"{SUBSPACE_LABELS[classifier]}, full images")
    ax.set_xscale("log")
    ax.set_xlabel("share of pixel variance the subspace keeps (test images, log scale)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right")
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


__all__ += ["current_subspace_records", "subspace_curves", "subspace_difference", "plot_subspace_curves",
            "SUBSPACE_LABELS"]
