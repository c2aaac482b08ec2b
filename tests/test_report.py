"""Presenting records: Table 1 with spread, paired differences with t intervals, calibration curves."""

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from lowvar_mae import report
from lowvar_mae.evaluate import pixel_linear_probe

matplotlib.use("Agg")


def records(values: dict[tuple[str, str], list[float]], **extra):
    rows = []
    for (target, metric), vals in values.items():
        for seed, v in enumerate(vals):
            rows.append({"dataset": "cifar10", "recipe": "cpu", "target": target, "metric": metric, "seed": seed,
                         "value": v, "run": f"{metric}-{target}-s{seed}", "model": "cpu-cifar",
                         "pretrain_epochs": None if target == "none" else 6, "n_train": 45000, "n_test": 10000,
                         "device_name": "CPU (AVX512, native bf16, 2 cores)", "time_utc": f"2026-12-03T00:00:{seed:02d}",
                         **extra})
    return pd.DataFrame(rows)


def test_t_interval_matches_scipy():
    x = [0.012, -0.004, 0.020]
    mean, low, high = report.t_interval(x)
    expect_low, expect_high = stats.t.interval(0.95, 2, loc=np.mean(x), scale=stats.sem(x))
    assert mean == pytest.approx(np.mean(x))
    assert (low, high) == pytest.approx((expect_low, expect_high))
    m, lo, hi = report.t_interval([0.5])
    assert m == 0.5 and math.isnan(lo) and math.isnan(hi)


def test_paired_differences_pair_by_seed():
    # Seeds differ a lot from each other but the target is 0.02 above pixels on every seed:
    # paired, the difference is clear; unpaired, the spread would hide it.
    df = records({("pixels", "linprobe"): [0.50, 0.60, 0.55], ("pca-bottom:0.25", "linprobe"): [0.52, 0.62, 0.57],
                  ("none", "linprobe"): [0.41, 0.70, 0.40]})
    diffs = report.paired_differences(df).set_index("target")
    bottom = diffs.loc["pca-bottom:0.25"]
    assert bottom["n"] == 3 and bottom["differences"] == pytest.approx([0.02, 0.02, 0.02])
    assert bottom["low"] == pytest.approx(0.02) and bottom["verdict"].startswith("higher")
    none = diffs.loc["none"]
    assert none["mean"] == pytest.approx(np.mean([-0.09, 0.10, -0.15]))
    assert none["low"] < 0 < none["high"] and none["verdict"].startswith("no difference shown")


def test_paired_differences_use_only_shared_seeds():
    df = records({("pixels", "knn"): [0.5, 0.6], ("pca-top:0.75", "knn"): [0.4, 0.5, 0.9]})
    row = report.paired_differences(df).iloc[0]
    assert row["n"] == 2 and row["differences"] == pytest.approx([-0.1, -0.1])
    assert row["verdict"].startswith("lower")
    one = report.paired_differences(df[df["seed"] == 0]).iloc[0]
    assert one["verdict"].startswith("one seed only")


def test_claim_table_outcomes_from_paired_seeds():
    recs = records({("pixels", "linprobe"): [0.50, 0.52, 0.51],
                    ("pca-bottom:0.25", "linprobe"): [0.45, 0.46, 0.455],   # clearly below
                    ("fft-low:0.177", "linprobe"): [0.60, 0.63, 0.61],      # clearly above
                    ("norm-pix", "linprobe"): [0.51, 0.50, 0.53],           # within the spread
                    ("pc-mask", "linprobe"): [0.70]})                       # one seed
    table = report.claim_table(report.paired_differences(recs)).set_index("target")
    assert table.loc["pca-bottom:0.25", "outcome"] == "contradicted"
    assert table.loc["fft-low:0.177", "outcome"] == "holds"
    assert table.loc["norm-pix", "outcome"] == "not shown"
    assert table.loc["pc-mask", "outcome"] == "open" and table.loc["pc-mask", "n"] == 1
    assert table.loc["fft-high:0.14", "outcome"] == "no record"
    assert table.loc["fft-low:0.177", "mean"] == pytest.approx(np.mean([0.10, 0.11, 0.10]))


def test_summary_table_spread_reference_and_setup():
    df = records({("pixels", "linprobe"): [0.50, 0.54], ("none", "linprobe"): [0.41],
                  ("pca-bottom:0.25", "knn"): [0.3, 0.32, 0.34]})
    table = report.summary_table(df)
    assert list(table["target"]) == ["pixels", "none", "pca-bottom:0.25"]  # presentation's order
    pix = table.iloc[0]
    assert pix["mean"] == pytest.approx(0.52) and pix["std"] == pytest.approx(np.std([0.5, 0.54], ddof=1))
    assert pix["n"] == 2 and pix["seeds"] == "0,1" and pix["original"] == pytest.approx(0.615)
    assert pix["pretrain_epochs"] == "6" and pix["machines"].startswith("CPU")
    assert math.isnan(table.iloc[1]["std"]) and table.iloc[1]["pretrain_epochs"] == "none"
    assert math.isnan(table.iloc[2]["original"])  # the presentation has no kNN column


def test_protocol_records_keep_one_record_per_run():
    df = records({("pixels", "linprobe"): [0.5, 0.6]})
    later = df.iloc[[0]].assign(value=0.7, time_utc="2026-12-04T00:00:00")
    other = df.assign(recipe="quick", run=lambda d: d["run"] + "-q")
    kept = report.protocol_records(pd.concat([df, later, other]), "cifar10", "cpu")
    assert len(kept) == 2 and sorted(kept["value"]) == [0.6, 0.7]


def test_calibration_curves_and_figures():
    curve = [{"epoch": 0, "probe_val": {"cls": 0.40, "mean": 0.39}}, {"epoch": 2, "probe_val": {"cls": 0.47, "mean": 0.5}}]
    df = records({("pixels", "linprobe"): [0.5, 0.6], ("pixels", "knn"): [0.4, 0.45]})
    df["pretrain_probe_curve"] = [curve, curve, None, None]
    curves = report.calibration_curves(df)
    assert len(curves) == 2 * 2 * 2 and set(curves["epoch"]) == {0, 2}
    fig = report.plot_calibration(curves, bars={"random encoder": 0.4})
    assert fig.axes[0].get_xlabel() == "pretraining epoch"
    table = report.summary_table(df)
    assert len(report.plot_summary(table, chance=0.1).axes) == 1
    df2 = records({("pixels", "linprobe"): [0.5, 0.6], ("none", "linprobe"): [0.4, 0.45]})
    assert len(report.plot_differences(report.paired_differences(df2)).axes) == 1


def test_pixel_linear_probe_learns_a_linear_rule_and_is_recorded_once(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path))
    rec = pixel_linear_probe("synthetic", n_train=400, n_test=200, max_iter=50, weight_decays=(1e-3, 1e-1),
                             device="cpu")
    assert rec["n_train"] + rec["n_val"] == 400 and rec["n_test"] == 200
    assert rec["value"] > 0.2  # chance is 0.1: the grating is a linear feature of the pixels
    assert set(rec["val_by_weight_decay"]) == {"0.001", "0.1"}
    assert rec["val_value"] == max(rec["val_by_weight_decay"].values())
    again = pixel_linear_probe("synthetic", n_train=400, n_test=200, max_iter=50, weight_decays=(1e-3, 1e-1),
                               device="cpu")
    assert again["record"] == rec["record"] and len(list((tmp_path / "baseline").glob("*.json"))) == 1


def test_throughput_summary_takes_the_latest_full_record_per_machine_and_the_largest_common_batch():
    def rec(time, quick, rows, machine="CPU (AVX2, 2 cores)", paper=None):
        return {"kind": "pretrain_throughput", "quick": quick, "file": f"{time}.json", "paper_estimate": paper,
                "provenance": {"device_name": machine, "time_utc": time},
                "rows": [dict(zip(("preset", "batch", "path", "img_per_s", "precision"), r)) for r in rows]}

    old = rec("2026-01-01", False, [("m", 64, "fast", 10.0, "fp32"), ("m", 64, "baseline", 5.0, "fp32")])
    new = rec("2026-02-01", False, [("m", 64, "fast", 30.0, "bf16"), ("m", 64, "baseline", 10.0, "fp32"),
                                    ("m", 128, "fast", 40.0, "bf16"), ("m", 128, "baseline", 8.0, "fp32"),
                                    ("m", 256, "fast", 50.0, "bf16")],
              paper={"preset": "m", "hours": 12.5})
    quick = rec("2026-03-01", True, [("m", 64, "fast", 99.0, "bf16"), ("m", 64, "baseline", 1.0, "fp32")])
    other = rec("2026-01-15", False, [("m", 32, "fast", 3.0, "fp32"), ("m", 32, "baseline", 2.0, "fp32")],
                machine="GPU")
    table = report.throughput_summary([old, other, new, quick]).set_index("machine")
    row = table.loc["CPU (AVX2, 2 cores)"]
    assert row["batch"] == 128 and row["fast / baseline"] == pytest.approx(5.0)
    assert row["400-epoch recipe, h"] == 12.5 and row["file"] == "2026-02-01.json"
    assert table.loc["GPU", "fast / baseline"] == pytest.approx(1.5)


def test_current_subspace_records_match_settings_read_back_from_record_files(tmp_path):
    """Settings hold tuples (the penalty candidates); a record file gives them back as lists."""
    from dataclasses import asdict, replace

    from lowvar_mae.curve import ConvNetConfig
    from lowvar_mae.probes import SUBSPACE_LINEAR
    from lowvar_mae.results import load_records, write_record

    def fields(classifier, settings, seed, acc, share=0.25):
        return {"dataset": "cifar10", "classifier": classifier, "settings": settings, "side": "bottom",
                "share": share, "n_components": 3051, "kept_share_test": share, "test_accuracy": acc,
                "wall_seconds": 60.0, "seed": seed, "name": f"{classifier}-{seed}-{acc}"}

    write_record("subspace", fields("linear", asdict(SUBSPACE_LINEAR), 0, 0.24), root=tmp_path)
    write_record("subspace", fields("linear", asdict(replace(SUBSPACE_LINEAR, max_iter=100)), 0, 0.20), root=tmp_path)
    for seed, acc in ((0, 0.86), (1, 0.84)):
        write_record("subspace", fields("convnet", asdict(ConvNetConfig()), seed, acc), root=tmp_path)
    write_record("subspace", fields("convnet", asdict(ConvNetConfig(epochs=1)), 2, 0.5), root=tmp_path)

    current = report.current_subspace_records(load_records("subspace", root=tmp_path))
    assert sorted(current["test_accuracy"]) == [0.24, 0.84, 0.86]
    curves = report.subspace_curves(current).set_index("classifier")
    assert curves.loc["linear", "n"] == 1 and curves.loc["convnet", "n"] == 2
    assert curves.loc["convnet", "mean"] == pytest.approx(0.85)
    assert curves.loc["convnet", "std"] == pytest.approx(np.std([0.86, 0.84], ddof=1))


def test_subspace_difference_pairs_seeds_and_matches_a_t_interval():
    rows = [("bottom", 0.2, 0, 0.86), ("bottom", 0.2, 1, 0.85), ("bottom", 0.2, 2, 0.87),
            ("top", 0.9, 0, 0.70), ("top", 0.9, 1, 0.68), ("top", 0.9, 3, 0.10),
            ("full", 1.0, 0, 0.90)]
    frame = pd.DataFrame([{"classifier": "convnet", "side": s, "share": sh, "seed": seed, "test_accuracy": a}
                          for s, sh, seed, a in rows]
                         + [{"classifier": "linear", "side": "top", "share": 0.9, "seed": 2, "test_accuracy": 0.4}])
    out = report.subspace_difference(frame, "convnet")
    diffs = [0.86 - 0.70, 0.85 - 0.68]  # seeds 0 and 1 only: seed 2 has no top-90% run, seed 3 no bottom-20%
    assert out["n"] == 2 and out["differences"] == pytest.approx(diffs)
    low, high = stats.t.interval(0.95, 1, loc=np.mean(diffs), scale=stats.sem(diffs))
    assert out["mean"] == pytest.approx(np.mean(diffs))
    assert (out["low"], out["high"]) == (pytest.approx(low), pytest.approx(high))
    full = report.subspace_difference(frame, "convnet", a=("full", None), b=("top", 0.9))
    assert full["n"] == 1 and full["differences"] == pytest.approx([0.90 - 0.70])
    assert report.subspace_difference(frame, "linear") is None  # no bottom-20% record to pair with


def test_a_torn_record_is_skipped_with_a_warning_naming_it(tmp_path):
    import warnings

    from lowvar_mae.results import load_records, write_record

    write_record("eval", {"dataset": "cifar10", "value": 0.5}, device="cpu", root=tmp_path)
    (tmp_path / "eval" / "torn.json").write_text('{"dataset": "cifar10", "val')
    (tmp_path / "eval" / "list.json").write_text("[1, 2]")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load_records("eval", tmp_path)
    assert len(records) == 1 and records.iloc[0]["value"] == 0.5
    said = " ".join(str(w.message) for w in caught)
    assert "torn.json" in said and "list.json" in said and "repair or delete it" in said


def test_a_bench_table_names_its_machine_once_and_says_shortened_runs_in_words():
    import pandas as pd

    from lowvar_mae.report import bench_table

    one = pd.DataFrame({"machine": ["CPU A", "CPU A"], "preset": ["x", "y"], "h": ["88", None],
                        "quick": [False, False], "file": ["a.json", "b.json"]})
    table, line = bench_table(one)
    assert list(table.columns) == ["preset", "h"] and line == "Machine: CPU A."
    assert list(table["h"]) == ["88", "–"]
    two = one.assign(machine=["CPU A", "CPU B"], quick=[False, True])
    table, line = bench_table(two)
    assert list(table["machine"]) == ["CPU A", "CPU B"] and list(table["run"]) == ["full", "shortened"]
    assert line == "Machines: CPU A; CPU B."
