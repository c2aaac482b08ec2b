"""What the book found, in one place: every number of the conclusions page, read from records.

:func:`findings` gathers, for one dataset and protocol, the premise (a classifier reads the
class from the bottom subspace), the verdict on the bottom-25% target at the protocol's
length and at every length of the schedule study (``lowvar_mae.verdicts``: paired seeds,
Holm's correction, no verdict for an encoder below the bar), the rivals' outcomes, the
learning-order caveat and the cost of what would settle the rest. The conclusions chapter
renders it and glues its numbers; a test recomputes them from the committed records.
"""

from __future__ import annotations

import math

from . import schedule, verdicts

BOTTOM = "pca-bottom:0.25"


def _premise(dataset: str) -> dict:
    from .report import current_subspace_records, subspace_curves
    from .results import load_records

    real = current_subspace_records(load_records("subspace"), dataset)
    if real is None or not len(real):
        return {}
    curves = subspace_curves(real)
    conv = curves[curves["classifier"] == "convnet"]

    def at(side, share):
        rows = conv[(conv["side"] == side) & ((conv["share"] - share).abs() < 1e-9)] if share is not None \
            else conv[conv["side"] == side]
        return (float(rows["mean"].iloc[0]), int(rows["n"].iloc[0])) if len(rows) else (math.nan, 0)

    out = {}
    for key, side, share in (("full", "full", None), ("top90", "top", 0.9), ("bottom25", "bottom", 0.25),
                             ("bottom20", "bottom", 0.2)):
        out[f"convnet_{key}"], out[f"convnet_{key}_n"] = at(side, share)
    return out


def _verdict_fields(prefix: str, table, metric: str) -> dict:
    rows = table[(table["target"] == BOTTOM) & (table["metric"] == metric)] if len(table) else table
    if not len(rows):
        return {f"{prefix}_outcome": "no record"}
    r = rows.iloc[-1]
    return {f"{prefix}_mean": float(r["mean"]), f"{prefix}_low": float(r["low"]), f"{prefix}_high": float(r["high"]),
            f"{prefix}_n": int(r["n"]), f"{prefix}_outcome": r["outcome"], f"{prefix}_margin": float(r["margin"]),
            f"{prefix}_p_holm": float(r["p_holm"]), f"{prefix}_family": int(r["family_size"])}


def findings(dataset: str = "cifar10", recipe: str = "cpu") -> dict:
    """Every number and outcome of the conclusions page (floats, ints and strings; NaN
    where a record is missing)."""
    from .learning_order import LEARNING_ORDER_KIND, band_metrics
    from .recipes import PRETRAIN_RECIPES as RECIPES
    from .report import CLAIM_OUTCOMES, protocol_records
    from .results import load_records

    out: dict = {"dataset": dataset, "recipe": recipe, "epochs": RECIPES[recipe]["epochs"]}
    out.update(_premise(dataset))
    every = load_records("eval")
    records = protocol_records(every, dataset, recipe)
    have = records is not None and len(records)
    if have:
        table = verdicts.decide(records, targets=[BOTTOM, "pca-top:0.75", "norm-pix", "pca-bottom:0.1",
                                                  "pca-top:0.6"])
        out.update(_verdict_fields("short_lin", table, "linprobe"))
        out.update(_verdict_fields("short_knn", table, "knn"))
        margins = verdicts.random_margins(records)
        out["pixels_margin"] = margins.get("pixels", math.nan)
        rivals = verdicts.decide(records, targets=["fft-high:0.14", "fft-low:0.177", "pc-mask", "norm-pix"])
        out["rivals"] = {f"{r['target']} {r['metric']}": CLAIM_OUTCOMES[r["outcome"]] for _, r in rivals.iterrows()}
        out["rivals_holding"] = sorted({r["target"] for _, r in rivals.iterrows() if r["outcome"] == "higher"})
    study = schedule.study_records(every, dataset, recipe) if every is not None and len(every) else None
    lengths = sorted(set(study["pretrain_epochs"])) if study is not None and len(study) else []
    out["study_lengths"] = lengths
    if len(lengths) > 1 and have:
        judged = schedule.verdicts_by_length(study, records[records["target"] == "none"])
        longest = judged[judged["epochs"] == max(judged["epochs"])]
        out["study_longest"] = int(max(judged["epochs"]))
        out.update(_verdict_fields("long_lin", longest, "linprobe"))
        out.update(_verdict_fields("long_knn", longest, "knn"))
        lin = judged[judged["metric"] == "linprobe"]
        at = schedule.crossing(lin["epochs"], lin["mean"])
        out["crossing_epochs"] = float(at) if at is not None else math.nan
    orders = load_records(LEARNING_ORDER_KIND)
    if len(orders):
        orders = orders[(orders["dataset"] == dataset) & (orders["recipe"] == recipe)]
    for key, epochs in (("short", out["epochs"]), ("long", out.get("study_longest"))):
        if epochs is None or not len(orders):
            continue
        sub = orders[[schedule.run_epochs(r) == epochs and r["target"] == BOTTOM and r["seed"] == 0
                      for _, r in orders.iterrows()]]
        if len(sub):
            crossed = schedule.band_crossings(band_metrics(sub.iloc[-1]["epochs"]))
            out[f"{key}_finest_band"] = crossed.iloc[-1]["band_label"]
            out[f"{key}_finest_error"] = float(crossed.iloc[-1]["last"])
    out["mean_image_level"] = schedule.MEAN_IMAGE_LEVEL
    # The cost of settling it on this machine kind: the pretraining minutes per epoch recorded.
    if have and "pretrain_seconds" in records:
        pre = records.dropna(subset=["pretrain_seconds"])
        per_epoch = (pre["pretrain_seconds"] / pre["pretrain_epochs"]).median() if len(pre) else math.nan
        out["minutes_per_epoch"] = float(per_epoch) / 60
    return out


__all__ = ["BOTTOM", "findings"]
