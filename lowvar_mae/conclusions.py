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


def _fill_in(dataset: str, recipe: str, epochs: int) -> dict:
    """What a linear map from the visible patches leaves of the bottom-25% target (mean and
    range over the recorded masks, on the protocol model's patches), beside what the
    bottom-25% MAE of seed 0 at ``epochs`` leaves on its recorded test batch."""
    from .linear_fill import FILL_IN_KIND
    from .models import get_config
    from .pretrain import PRETRAINING_KIND
    from .recipes import make_config
    from .results import load_records

    out: dict = {}
    fills = load_records(FILL_IN_KIND)
    patch = get_config(make_config(recipe, dataset).model).patch_size
    if len(fills):
        rows = fills[(fills["dataset"] == dataset) & (fills["target"] == BOTTOM) & (fills["patch_size"] == patch)]
        if len(rows):
            out.update(fill_bottom=float(rows["error"].mean()), fill_bottom_low=float(rows["error"].min()),
                       fill_bottom_high=float(rows["error"].max()), fill_bottom_n=len(rows))
    pre = load_records(PRETRAINING_KIND)
    if len(pre):
        rows = pre[(pre["dataset"] == dataset) & (pre["recipe"] == recipe) & (pre["target"] == BOTTOM)
                   & (pre["seed"] == 0) & (pre["pretrain_epochs"] == epochs)]
        if len(rows):
            errors = rows.iloc[-1]["reconstructions"]["relative_error"]
            out.update(mae_bottom_error=float(errors[max(errors, key=int)]), mae_bottom_epochs=int(epochs))
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
        rivals = verdicts.decide(records, targets=["fft-high:0.14", "fft-low:0.177", "pc-mask:0.2", "pc-mask", "norm-pix"])
        out["rivals"] = {f"{r['target']} {r['metric']}": CLAIM_OUTCOMES[r["outcome"]] for _, r in rivals.iterrows()}
        out["rivals_holding"] = sorted({r["target"] for _, r in rivals.iterrows() if r["outcome"] == "higher"})
    study = schedule.study_records(every, dataset, recipe) if every is not None and len(every) else None
    lengths = sorted(set(study["pretrain_epochs"])) if study is not None and len(study) else []
    out["study_lengths"] = lengths
    if len(lengths) > 1 and have:
        judged = schedule.verdicts_by_length(study, records[records["target"] == "none"])
        longest = judged[judged["epochs"] == max(judged["epochs"])]
        out["study_longest"] = int(max(judged["epochs"]))
        out["gap_lengths"] = sorted(int(e) for e in set(judged["epochs"]))  # lengths with both targets
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
    out.update(_fill_in(dataset, recipe, out.get("study_longest") or out["epochs"]))
    # The cost of settling it on this machine kind: the pretraining minutes per epoch recorded.
    if have and "pretrain_seconds" in records:
        pre = records.dropna(subset=["pretrain_seconds"])
        per_epoch = (pre["pretrain_seconds"] / pre["pretrain_epochs"]).median() if len(pre) else math.nan
        out["minutes_per_epoch"] = float(per_epoch) / 60
    return out


def _pts(x: float) -> str:
    return f"{x * 100:+.1f} points"


def _interval(f: dict, prefix: str) -> str:
    if f.get(f"{prefix}_n", 0) < 2:
        return "one seed, no interval"
    return f"95% interval {f[prefix + '_low'] * 100:+.1f} to {f[prefix + '_high'] * 100:+.1f}, {f[prefix + '_n']} seeds"


def _verdict_point(f: dict, prefix: str, epochs) -> str | None:
    if f"{prefix}_mean" not in f:
        return None
    outcome = f[f"{prefix}_outcome"]
    text = (f"At {epochs} pretraining epochs, bottom 25% minus pixels is {_pts(f[prefix + '_mean'])} by linear "
            f"probe ({_interval(f, prefix)}): ")
    if outcome == "not trained enough at this length":
        return text + "the bottom-25% encoder does not clear the random encoder by the bar, so no verdict."
    if outcome == "one seed only":
        return text + "one seed, so no verdict yet."
    holm = (f"its p-value after Holm's correction over {f[prefix + '_family']} comparisons is "
            f"{f[prefix + '_p_holm']:.3f}")
    if outcome == "higher":
        return text + f"the bottom target is ahead ({holm}, below {verdicts.ALPHA:g})."
    if outcome == "lower":
        return text + f"the pixel target is ahead ({holm}, below {verdicts.ALPHA:g}). At this length the records " \
                      "contradict the idea under test."
    return text + f"no difference is shown ({holm}, not below {verdicts.ALPHA:g})."


def takeaways(f: dict, chapter: str) -> list[str]:
    """The points of a chapter's end box, in words, from :func:`findings` (``chapter``: one
    of "evaluation", "subspace", "learning-order", "other-targets", "conclusions")."""
    points: list[str] = []
    if chapter in ("evaluation", "conclusions"):
        for prefix, epochs in (("short_lin", f.get("epochs")), ("long_lin", f.get("study_longest"))):
            said = _verdict_point(f, prefix, epochs)
            if said:
                points.append(said)
        if f.get("crossing_epochs", math.nan) > (f.get("study_longest") or math.inf):
            lengths = ", ".join(str(e) for e in f.get("gap_lengths", f.get("study_lengths", [])))
            points.append(f"A straight line in log(epochs) fitted to the linear-probe gaps at the lengths measured "
                          f"({lengths}) rises and would cross zero near {f['crossing_epochs']:.0f} epochs. That is an "
                          "extrapolation, not a measurement.")
        points.append("Every verdict is one rule: seeds paired, a 95% t interval, Holm's correction over the "
                      "page's comparisons, and no verdict for an encoder under the random-encoder bar.")
    if chapter in ("subspace", "conclusions") and f.get("convnet_full_n"):
        bottom, top, full = f["convnet_bottom25"], f["convnet_top90"], f["convnet_full"]
        said = (f"a conv net reads the class from the bottom-25% subspace at {bottom * 100:.1f}% test accuracy, "
                f"from the top-90% subspace at {top * 100:.1f}% and from the full image at {full * 100:.1f}%")
        points.append(f"The premise holds on {f['dataset']}: {said}." if bottom > top else
                      f"The premise does not hold on {f['dataset']}: {said}.")
    if chapter in ("learning-order", "conclusions"):
        level = f["mean_image_level"]
        for key, epochs in (("short", f.get("epochs")), ("long", f.get("study_longest"))):
            if f"{key}_finest_error" in f:
                err = f[f"{key}_finest_error"]
                where = "below" if err < level else "still above"
                points.append(f"After {epochs} epochs the bottom-25% MAE's finest band ({f[key + '_finest_band']} of "
                              f"the variance) has relative error {err:.3f}, {where} the mean-image level {level:.2f}.")
        if "fill_bottom" in f and "mae_bottom_error" in f:
            ahead = f["mae_bottom_error"] < f["fill_bottom"]
            points.append(f"After {f['mae_bottom_epochs']} epochs the bottom-25% MAE leaves {f['mae_bottom_error']:.2f} "
                          f"of its target's variance in the masked patches (8 test images), "
                          + ("less than" if ahead else "more than")
                          + f" a linear map from the visible patches leaves ({f['fill_bottom']:.2f}, "
                          f"{f['fill_bottom_n']} masks).")
        if chapter == "learning-order":
            points.append("The fine detail is learned last: a short schedule can judge a low-variance target before "
                          "the model has learned it.")
    if chapter in ("other-targets", "conclusions") and "rivals" in f:
        holding = f.get("rivals_holding") or []
        points.append("Rival targets ahead of pixels by the same rule: " + (", ".join(holding) if holding else "none")
                      + f" (at {f['epochs']} epochs).")
    return points


__all__ = ["BOTTOM", "findings", "takeaways"]
