"""The verdict rule: paired t test, Holm's correction across a page's claims, and the bar an
encoder must clear before its target is judged; checked against scipy and statsmodels."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from lowvar_mae import verdicts


def test_paired_t_matches_scipy():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5):
        d = rng.normal(0.01, 0.02, n)
        mean, low, high, p = verdicts.paired_t(d)
        ref = stats.ttest_1samp(d, 0.0)
        ci = ref.confidence_interval(0.95)
        assert (mean, low, high, p) == pytest.approx((d.mean(), ci.low, ci.high, ref.pvalue))
    assert all(math.isnan(v) for v in verdicts.paired_t([0.1])[1:])
    assert verdicts.paired_t([0.02, 0.02, 0.02])[3] == 0.0  # no spread, not zero: certain


def test_holm_matches_statsmodels_and_skips_missing_values():
    rng = np.random.default_rng(2)
    for m in (1, 3, 8):
        p = rng.uniform(0, 0.2, m)
        assert verdicts.holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist())
    out = verdicts.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)


def test_the_correction_can_change_the_outcome():
    # three claims at p = 0.01, 0.03, 0.04: each below 0.05 alone, after Holm only the first
    p = [0.01, 0.03, 0.04]
    assert [round(x, 6) for x in verdicts.holm(p)] == [0.03, 0.06, 0.06]
    assert multipletests(p, alpha=0.05, method="holm")[0].tolist() == [True, False, False]


def _records(values: dict[str, list[float]], metric="linprobe"):
    return pd.DataFrame([{"target": t, "metric": metric, "seed": s, "value": v}
                         for t, vs in values.items() for s, v in enumerate(vs)])


def test_decide_flags_untrained_encoders_and_applies_holm():
    records = _records({
        "none": [0.45, 0.45, 0.45],
        "pixels": [0.57, 0.56, 0.58],
        "a": [0.60, 0.61, 0.615],           # +4 points, clear bar, tight
        "b": [0.590, 0.585, 0.600],          # +1.9 points, wobbly
        "c": [0.50, 0.51, 0.52],             # only +6 over random: below the 8-point bar
    })
    table = verdicts.decide(records).set_index("target")
    assert table.loc["c", "outcome"] == "not trained enough at this length" and not table.loc["c", "in_family"]
    assert "short of the 8-point bar" in table.loc["c", "words"]
    fam = table[table["in_family"]]
    assert set(fam.index) == {"a", "b"} and (table["family_size"] == 2).all()
    raw = {t: stats.ttest_rel(records[records.target == t]["value"].to_numpy(),
                              records[records.target == "pixels"]["value"].to_numpy()).pvalue for t in ("a", "b")}
    expected = multipletests([raw["a"], raw["b"]], method="holm")[1]
    assert [table.loc["a", "p_holm"], table.loc["b", "p_holm"]] == pytest.approx(expected.tolist())
    for t in ("a", "b"):
        want = ("higher" if table.loc[t, "p_holm"] < 0.05 else "no difference shown")
        assert table.loc[t, "outcome"] == want
    assert "Holm-adjusted p" in table.loc["a", "words"] and "95% interval" in table.loc["a", "words"]


def test_decide_when_the_correction_removes_a_verdict():
    # three trained targets: one clearly higher; two whose unadjusted intervals exclude zero
    # (p about 0.029 and 0.039) but whose Holm-adjusted p-values are about 0.077
    records = _records({"none": [0.40, 0.40, 0.40], "pixels": [0.60, 0.61, 0.62],
                        "a": [0.70, 0.7105, 0.7205], "b": [0.614, 0.636, 0.64], "c": [0.613, 0.637, 0.64]})
    table = verdicts.decide(records).set_index("target")
    for t in ("b", "c"):
        row = table.loc[t]
        assert row["p"] < 0.05 and row["low"] > 0           # alone it would count
        assert row["p_holm"] >= 0.05 and row["outcome"] == "no difference shown"
        assert "excludes zero before the correction" in row["words"]
    assert table.loc["a", "outcome"] == "higher"


def test_an_untrained_baseline_stops_every_verdict_and_one_seed_is_not_judged():
    records = _records({"none": [0.5, 0.5], "pixels": [0.55, 0.56], "a": [0.7, 0.72]})
    assert set(verdicts.decide(records)["outcome"]) == {"not trained enough at this length"}
    one = _records({"none": [0.4], "pixels": [0.6], "a": [0.65]})
    assert verdicts.decide(one)["outcome"].tolist() == ["one seed only"]
    assert "3 comparisons" in verdicts.rule_text(3) and "Holm" in verdicts.rule_text(3)
