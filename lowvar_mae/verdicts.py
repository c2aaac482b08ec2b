"""The one rule that decides every verdict the book states about a target.

A verdict compares a target with a baseline target (the pixel target) on the same seeds:

1. **Trained enough?** A target's encoder must clear the random encoder (target "none",
   same protocol) by :data:`BAR` in linear-probe test accuracy, the protocol's own bar;
   the baseline must too. A comparison where either does not is reported as "not trained
   enough at this length" and left out of the verdicts: an encoder that learned little
   says nothing about its target.
2. **Paired t test.** The per-seed differences (target minus baseline) give a mean, a 95%
   t interval (n - 1 degrees of freedom) and a two-sided p-value; one seed gives none.
3. **Holm's correction.** The p-values of all the comparisons a page draws conclusions
   from (the family) are adjusted with Holm's step-down method, which keeps the chance of
   any false verdict on the page at or below ``alpha``. A difference is called "higher" or
   "lower" only when its adjusted p-value is below ``alpha``; otherwise "no difference
   shown". With three seeds and several comparisons, that is a high bar, and the page says so.
"""

from __future__ import annotations

import math

import numpy as np

BAR = 0.08          # linear-probe margin over the random encoder that a trained encoder must clear
ALPHA = 0.05        # family-wise error rate of a page's verdicts
NO_TARGET = "none"
OUTCOMES = ("higher", "lower", "no difference shown", "one seed only", "not trained enough at this length",
            "no paired seeds")


def paired_t(differences, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, low, high, p) of the paired differences: the t interval and the two-sided
    p-value of a one-sample t test of mean zero; low, high and p are NaN for fewer than two
    differences, and p is 0 or 1 when every difference is the same (no spread)."""
    from scipy import stats

    x = np.asarray(differences, dtype=float)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(x.std(ddof=1))
    if sd == 0:
        return mean, mean, mean, (1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(len(x))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, len(x) - 1))
    return mean, mean - half, mean + half, p


def holm(pvalues) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN and is not
    counted in the family): sort the m p-values, multiply the i-th smallest by m - i
    (i from 0), take the running maximum, cap at 1."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(len(p), math.nan)
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def random_margins(records, metric: str = "linprobe") -> dict[str, float]:
    """Each target's mean test accuracy under ``metric`` minus the random encoder's (target
    "none"), from eval records of one protocol and length; empty without a random encoder."""
    sub = records[records["metric"] == metric]
    floor = sub[sub["target"] == NO_TARGET]["value"]
    if not len(floor):
        return {}
    base = float(floor.astype(float).mean())
    return {t: float(g["value"].astype(float).mean()) - base for t, g in sub.groupby("target") if t != NO_TARGET}


def decide(records, baseline: str = "pixels", *, bar: float = BAR, alpha: float = ALPHA,
           margins: dict[str, float] | None = None, targets=None):
    """The verdict of every (target, probe) against ``baseline`` on the same seeds.

    records: eval records of one protocol and length (``report.protocol_records``), with
    the random encoder's when the bar is to be checked; margins: target -> linear-probe
    margin over the random encoder (default: from ``records``; a target with no margin
    is taken as trained, and the table says the bar was not checked). targets: the
    targets to judge (default: every one but the baseline and "none").

    One row per (target, metric): n, per-seed differences, mean, 95% interval (low, high),
    p, p_holm (Holm over the rows in the family), margin, trained, in_family, outcome
    (one of :data:`OUTCOMES`) and words (the outcome with its numbers, in plain words).
    """
    import pandas as pd

    margins = random_margins(records) if margins is None else margins
    base = records[records["target"] == baseline].set_index(["metric", "seed"])["value"]
    base_ok = margins.get(baseline, math.inf) >= bar
    rows = []
    judged = records[~records["target"].isin([baseline, NO_TARGET])]
    if targets is not None:
        judged = judged[judged["target"].isin(list(targets))]
    for (target, metric), group in judged.groupby(["target", "metric"], sort=False):
        seeds = [s for s in sorted(group["seed"]) if (metric, s) in base.index]
        values = group.set_index("seed")["value"]
        diffs = [float(values[s]) - float(base[(metric, s)]) for s in seeds]
        mean, low, high, p = paired_t(diffs)
        margin = margins.get(target, math.nan)
        trained = base_ok and (math.isnan(margin) or margin >= bar)
        rows.append({"target": target, "metric": metric, "n": len(diffs), "differences": diffs, "mean": mean,
                     "low": low, "high": high, "p": p, "margin": margin, "trained": trained,
                     "in_family": trained and len(diffs) >= 2})
    table = pd.DataFrame(rows, columns=["target", "metric", "n", "differences", "mean", "low", "high", "p",
                                        "margin", "trained", "in_family"])
    return as_family(table, bar=bar, alpha=alpha)


def as_family(table, *, bar: float = BAR, alpha: float = ALPHA):
    """Holm's correction over the rows of ``table`` (rows of :func:`decide`, possibly several
    calls' joined: one page's family) that are in the family, and the outcomes and words
    that follow from it."""
    table = table.reset_index(drop=True).copy()
    table["p_holm"] = holm([r["p"] if r["in_family"] else math.nan for _, r in table.iterrows()])
    table["family_size"] = int(table["in_family"].sum()) if len(table) else 0
    table["outcome"] = [_outcome(r, alpha) for _, r in table.iterrows()]
    table["words"] = [_words(r, bar, alpha) for _, r in table.iterrows()]
    return table


def _outcome(row, alpha: float) -> str:
    if row["n"] == 0:
        return "no paired seeds"
    if not row["trained"]:
        return "not trained enough at this length"
    if row["n"] < 2:
        return "one seed only"
    if row["p_holm"] < alpha:
        return "higher" if row["mean"] > 0 else "lower"
    return "no difference shown"


def _words(row, bar: float, alpha: float) -> str:
    outcome = row["outcome"] if "outcome" in row else _outcome(row, alpha)
    mean = f"{row['mean'] * 100:+.1f} points"
    if outcome == "no paired seeds":
        return "no seed in common with the baseline"
    if outcome == "not trained enough at this length":
        margin = row["margin"]
        return (f"not trained enough at this length: {mean}, but the encoder's linear probe clears the random "
                f"encoder's by {margin * 100:+.1f} points, short of the {bar * 100:.0f}-point bar (no verdict)"
                if not math.isnan(margin) else f"not trained enough at this length ({mean}; the baseline is short of "
                f"the {bar * 100:.0f}-point bar; no verdict)")
    if outcome == "one seed only":
        return f"one paired seed ({mean}): no interval, no verdict"
    interval = f"95% interval {row['low'] * 100:+.1f} to {row['high'] * 100:+.1f}"
    holm_p = f"Holm-adjusted p = {row['p_holm']:.3f} over {int(row['family_size'])} comparisons"
    if outcome in ("higher", "lower"):
        return f"{outcome}: {mean} ({interval}; {holm_p} < {alpha:g})"
    excludes = row["low"] > 0 or row["high"] < 0
    return (f"no difference shown: {mean} ({interval}"
            + (", which excludes zero before the correction" if excludes else ", which includes zero")
            + f"; {holm_p})")


def as_json(table) -> str:
    """The verdicts of :func:`decide` as compact JSON, one entry per "target metric": n,
    mean, low, high, p_holm (null where undefined) and outcome. A page glues it, so a test
    can hold what the page shows against a fresh computation from the records."""
    import json

    def num(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 10)

    return json.dumps({f"{r['target']} {r['metric']}": {"n": int(r["n"]), "mean": num(r["mean"]), "low": num(r["low"]),
                                                       "high": num(r["high"]), "p_holm": num(r["p_holm"]),
                                                       "outcome": r["outcome"]}
                       for _, r in table.iterrows()}, sort_keys=True)


def rule_text(family_size: int, bar: float = BAR, alpha: float = ALPHA) -> str:
    """The rule, as a page states it."""
    return (f"A verdict needs an encoder that learned something: a target whose linear probe does not clear the "
            f"random encoder by {bar * 100:.0f} points is marked *not trained enough at this length* and judged "
            f"no further. The others are compared with the pixel target seed by seed (paired t test, 95% t "
            f"interval); the {family_size} comparisons on this page are one family, and a difference is called "
            f"higher or lower only when its p-value after Holm's correction is below {alpha:g}.")


__all__ = ["BAR", "ALPHA", "OUTCOMES", "paired_t", "holm", "random_margins", "decide", "as_family", "as_json", "rule_text"]
