"""The schedule study: lengths of the grid, records read back by length, paired differences,
the extrapolated crossing and the bands' crossing of the mean-image level."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lowvar_mae import grid, report, schedule
from lowvar_mae.learning_order import band_metrics


def test_length_overrides_change_only_the_length():
    assert grid.length_overrides("cpu", 6) == {} and grid.length_overrides("cpu", None) == {}
    assert grid.length_overrides("cpu", 12) == {"epochs": 12, "warmup_epochs": 2, "probe_every": 2}
    assert grid.length_overrides("cpu", 24) == {"epochs": 24, "warmup_epochs": 4, "probe_every": 2}
    assert grid.length_overrides("cpu", 48) == {"epochs": 48, "warmup_epochs": 8, "probe_every": 4}
    assert grid.length_overrides("cpu", 9) == {"epochs": 9, "warmup_epochs": 1.5, "probe_every": 2}
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        grid.length_overrides("cpu", 0)
    with pytest.raises(ValueError, match="unknown recipe 'slow'"):
        grid.length_overrides("slow", 12)


def test_a_length_is_its_own_run_and_the_recipe_length_keeps_its_name():
    plain = grid.plan(["cifar10"], ["pixels"], [0], ["linprobe"], "cpu")[0]
    same = grid.plan(["cifar10"], ["pixels"], [0], ["linprobe"], "cpu",
                     pretrain_overrides=grid.length_overrides("cpu", 6))[0]
    longer = grid.plan(["cifar10"], ["pixels"], [0], ["linprobe"], "cpu",
                       pretrain_overrides=grid.length_overrides("cpu", 24))[0]
    assert grid.eval_config(plain).run_name == grid.eval_config(same).run_name
    long_cfg = grid.pretrain_config(longer)
    base_cfg = grid.pretrain_config(plain)
    assert (long_cfg.epochs, long_cfg.warmup_epochs) == (24, 4)
    assert "-e24-" in long_cfg.run_name and long_cfg.run_name != base_cfg.run_name
    # nothing else of the recipe changes
    differ = {k for k, v in long_cfg.to_dict().items() if base_cfg.to_dict()[k] != v}
    assert differ == {"epochs", "warmup_epochs"}
    assert grid.eval_config(longer).run_name != grid.eval_config(plain).run_name



def test_the_study_plan_is_the_cells_its_commands_run():
    """Seed 0 at 12, 24 and 48 epochs, seeds 1 and 2 at 24: the same cells (and run names)
    as the grid commands the README and chapter 03 give."""
    cells = grid.study_plan("cifar10", "cpu")
    by_command = []
    for seeds, lengths in (([0], [12, 24, 48]), ([1, 2], [24])):
        for epochs in lengths:
            by_command += grid.plan(["cifar10"], ["pixels", "pca-bottom:0.25"], seeds, ["linprobe", "knn"], "cpu",
                                    pretrain_overrides=grid.length_overrides("cpu", epochs))
    assert sorted(map(str, cells)) == sorted(map(str, by_command)) and len(cells) == 20
    assert {grid.eval_config(c).run_name for c in cells} == {grid.eval_config(c).run_name for c in by_command}
    lengths = {(c.seed, dict(c.pretrain_overrides)["epochs"]) for c in cells}
    assert lengths == {(0, 12), (0, 24), (0, 48), (1, 24), (2, 24)}

def test_estimates_grow_with_the_pretraining_length():
    from lowvar_mae.provenance import device_info

    here = device_info()["device_name"]
    base = dict(dataset="cifar10", recipe="cpu", metric="knn", model="cpu-cifar", target="pixels", device_name=here)
    records = pd.DataFrame([{**base, "wall_seconds": 60.0, "pretrain_seconds": 600.0, "pretrain_epochs": 6},
                            {**base, "wall_seconds": 60.0, "pretrain_seconds": 1300.0, "pretrain_epochs": 12}])
    cell = grid.plan(["cifar10"], ["pixels"], [5], ["knn"], "cpu",
                     pretrain_overrides=grid.length_overrides("cpu", 24))[0]
    seconds, _ = grid.estimate_seconds([cell], records)[cell]
    assert seconds == pytest.approx(60.0 + np.median([100.0, 1300.0 / 12]) * 24)


def _record(target, metric, seed, epochs, value, **extra):
    return {"dataset": "cifar10", "recipe": "cpu", "target": target, "metric": metric, "seed": seed,
            "pretrain_epochs": epochs, "value": value, "run": f"{metric}-{target}-e{epochs}-s{seed}",
            "time_utc": "2026-12-01T00:00:00+00:00", **extra}


def _study_frame():
    rng = np.random.default_rng(0)
    rows = []
    for epochs, seeds in ((6, (0, 1, 2)), (12, (0,)), (24, (0, 1, 2))):
        for seed in seeds:
            for metric in ("linprobe", "knn"):
                pix = 0.5 + 0.01 * math.log(epochs) + rng.normal(0, 0.01)
                rows.append(_record("pixels", metric, seed, epochs, pix))
                rows.append(_record("pca-bottom:0.25", metric, seed, epochs, pix - 0.06 + 0.015 * math.log2(epochs / 6)
                                    + rng.normal(0, 0.01)))
    rows.append(_record("none", "linprobe", 0, None, 0.45))
    rows.append(_record("pca-top:0.75", "linprobe", 0, 6, 0.4))
    return pd.DataFrame(rows)


def test_protocol_records_keep_the_recipe_length_only():
    frame = _study_frame()
    kept = report.protocol_records(frame, "cifar10", "cpu")
    assert set(kept["pretrain_epochs"].dropna()) == {6} and (kept["target"] == "none").any()
    assert len(report.protocol_records(frame, "cifar10", "cpu", epochs=None)) == len(frame)
    assert set(report.protocol_records(frame, "cifar10", "cpu", epochs=24)["pretrain_epochs"].dropna()) == {24}


def test_accuracy_and_differences_by_length_match_numpy_and_scipy():
    records = schedule.study_records(_study_frame(), "cifar10", "cpu")
    assert set(records["target"]) == set(schedule.STUDY_TARGETS)
    table = schedule.accuracy_by_length(records)
    for _, row in table.iterrows():
        sub = records[(records["target"] == row["target"]) & (records["metric"] == row["metric"])
                      & (records["pretrain_epochs"] == row["epochs"])]
        assert row["mean"] == pytest.approx(sub["value"].mean())
        assert row["n"] == len(sub)
        if len(sub) > 1:
            assert row["std"] == pytest.approx(np.std(sub["value"], ddof=1))
        else:
            assert math.isnan(row["std"])
    diffs = schedule.differences_by_length(records)
    assert sorted(set(diffs["epochs"])) == [6, 12, 24]
    for _, row in diffs.iterrows():
        sub = records[(records["metric"] == row["metric"]) & (records["pretrain_epochs"] == row["epochs"])]
        a = sub[sub["target"] == "pca-bottom:0.25"].sort_values("seed")["value"].to_numpy()
        b = sub[sub["target"] == "pixels"].sort_values("seed")["value"].to_numpy()
        assert row["mean"] == pytest.approx((a - b).mean())
        if len(a) > 1:
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            assert (row["low"], row["high"]) == pytest.approx((ci.low, ci.high))
        else:
            assert math.isnan(row["low"]) and row["verdict"].startswith("one seed")


def test_crossing_is_where_the_log_trend_reaches_zero():
    # -4 points at 6 epochs, -2 at 24: +1 point per doubling, zero at 96 epochs
    assert schedule.crossing([6, 24], [-0.04, -0.02]) == pytest.approx(96.0)
    assert schedule.crossing([6, 12, 24], [-0.04, -0.03, -0.02]) == pytest.approx(96.0)
    assert schedule.crossing([6, 24], [-0.02, -0.04]) is None   # the gap widens
    assert schedule.crossing([6, 24], [-0.02, 0.01]) is None    # already crossed
    assert schedule.crossing([24], [-0.02]) is None             # one length: no trend
    assert schedule.crossing([6, 24], [-0.02, float("nan")]) is None


def test_band_crossings_name_the_first_epoch_below_the_level():
    lines = [{"epoch": e, "band_edges": [0, 0.5, 0.9, 1.0], "band_rel_error": errs}
             for e, errs in ((1, [0.5, 0.95, 1.2]), (2, [0.3, 0.8, 1.0]), (4, [0.2, 0.7, 0.9]))]
    lines.append({"epoch": 6, "band_edges": [0, 0.5, 0.9, 1.0], "band_rel_error": [0.1, None, 0.8]})
    out = schedule.band_crossings(band_metrics(lines), level=0.75)
    assert list(out["band_label"]) == ["0-50%", "50-90%", "90-100%"]
    assert list(out["below_from"]) == [1, 4, None]
    assert list(out["last_epoch"]) == [6, 4, 6]  # the null of epoch 6 is skipped
    assert out["first"].tolist() == [0.5, 0.95, 1.2] and out["last"].tolist() == [0.1, 0.7, 0.8]


def test_plot_study_draws_every_probe_and_the_difference():
    import matplotlib

    matplotlib.use("Agg")
    records = schedule.study_records(_study_frame(), "cifar10", "cpu")
    fig = schedule.plot_study(schedule.accuracy_by_length(records), schedule.differences_by_length(records),
                              lines={"linprobe": {"random encoder": 0.45}}, title="test")
    drawn = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in drawn] == ["linear probe", "kNN (k=20)",
                                               "bottom 25% minus pixels,\nsame seed (95% t interval)"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["6", "12", "24"]
    assert fig.axes[0].get_xscale() == "log"
    # The probe panels' legend stands in an empty panel of its own, off the data.
    legends = [ax.get_legend() for ax in fig.axes if not ax.axison and ax.get_legend() is not None]
    assert len(legends) == 1 and "random encoder" in [t.get_text() for t in legends[0].get_texts()]
    assert all(ax.get_legend() is None for ax in drawn[:-1])


@pytest.mark.usefixtures("one_thread")
def test_grid_records_the_learning_order_of_every_encoder_it_pretrains(dirs):
    from lowvar_mae.results import load_records

    _, results = dirs
    tiny = dict(model="small-cifar", n_train=96, warmup_epochs=0.5, batch_size=32, epochs=2, probe_every=2)
    cells = grid.plan(["synthetic"], ["pixels"], [0], ["knn"], "cpu", pretrain_overrides=tiny,
                      eval_overrides=dict(n_test=40))
    written = grid.run_grid(cells, allow_dirty=True, log=lambda *_: None)
    assert sorted(p.parent.name for p in written) == ["eval", "learning_order", "pretraining"]
    order = load_records("learning_order", results).iloc[0]
    assert order["run_name"] == grid.pretrain_config(cells[0]).run_name and order["pretrain_epochs"] == 2
    assert [line["epoch"] for line in order["epochs"]] == [1, 2]
    assert all(len(line["band_rel_error"]) == 10 for line in order["epochs"])
    assert [p["epoch"] for p in order["probe_curve"]] == [0, 2]
    assert "probe_val" in order["epochs"][-1]
    assert grid.run_grid(cells, allow_dirty=True, log=lambda *_: None) == []  # nothing twice
    # the eval record names the code and machine that made the encoder, and who else was busy
    import json

    from lowvar_mae.provenance import git_revision, runs_dir

    rec = json.loads(next(p for p in written if p.parent.name == "eval").read_text())
    made = rec["pretrain_provenance"]
    assert made["git_revision"] == git_revision() and made["device_name"] and made["threads"]
    assert made["precision"] in ("fp32", "bf16") and made["train_seconds"] > 0 and made["resumes"] == []
    assert rec["pretrain_other_cores_max"] is not None and rec["pretrain_other_cores_max"] >= 0
    assert rec["other_cores"] is not None
    run_dir = runs_dir() / grid.pretrain_config(cells[0]).run_name
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("other_cores" in line for line in lines)


def test_other_load_sees_a_busy_process():
    import subprocess
    import sys
    import time

    from lowvar_mae.provenance import OtherLoad

    sample = OtherLoad()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    time.sleep(1.0)
    measured = sample()
    busy.wait()
    assert measured is not None and 0.5 < measured <= 2.5  # about one core (the study beside it may add up to 2)


def test_a_resumed_run_lists_every_start_in_its_provenance(tmp_path):
    import json

    from lowvar_mae.checkpoint import open_run_folder
    from lowvar_mae.recipes import make_config

    cfg = make_config("quick", "synthetic", "pixels")
    open_run_folder(tmp_path / "run", cfg, "cpu", seed=0)
    first = json.loads((tmp_path / "run" / "provenance.json").read_text())
    open_run_folder(tmp_path / "run", cfg, "cpu", seed=0)
    again = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert again["time_utc"] == first["time_utc"] and again["seed"] == 0
    assert [r["git_revision"] for r in again["resumes"]] == [first["git_revision"]]


def _order_record(target, epochs, seed=0, probes=(), time="2026-12-01T00:00:00+00:00", config_only=False):
    rec = {"dataset": "cifar10", "recipe": "cpu", "target": target, "seed": seed, "time_utc": time,
           "config": {"epochs": epochs}, "probe_curve": [{"epoch": e, "probe_val": v} for e, v in probes]}
    if not config_only:
        rec["pretrain_epochs"] = epochs
    return rec


def test_longest_runs_pick_the_longest_length_both_targets_have():
    records = pd.DataFrame([_order_record("pixels", 6, config_only=True), _order_record("pca-bottom:0.25", 6),
                            _order_record("pixels", 24), _order_record("pca-bottom:0.25", 24),
                            _order_record("pixels", 48), _order_record("pixels", 24, seed=1)])
    epochs, runs = schedule.longest_runs(records, "cifar10", "cpu")
    assert epochs == 24 and set(runs) == set(schedule.STUDY_TARGETS)
    assert all(r["seed"] == 0 for r in runs.values())
    assert schedule.longest_runs(records[records["target"] == "pixels"], "cifar10", "cpu") == (None, {})
    assert schedule.run_epochs(records.iloc[0]) == 6  # from the config of an older record


def test_probe_gap_uses_the_best_pooling_on_shared_epochs():
    runs = {"pixels": _order_record("pixels", 4, probes=[(0, {"cls": 0.3, "mean": 0.35}), (2, {"cls": 0.5, "mean": 0.4}),
                                                         (4, {"cls": 0.55})]),
            "pca-bottom:0.25": _order_record("pca-bottom:0.25", 4, probes=[(0, {"cls": 0.36}), (4, {"cls": 0.6, "mean": 0.5})])}
    gap = schedule.probe_gap(runs)
    assert gap["epoch"].tolist() == [0, 4]
    assert gap["gap"].tolist() == pytest.approx([0.36 - 0.35, 0.6 - 0.55])


def _gpu_study():
    import importlib.util

    from lowvar_mae.provenance import repo_root

    spec = importlib.util.spec_from_file_location("gpu_study", repo_root() / "bench" / "gpu_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_study_chooses_the_longest_length_that_fits():
    gs = _gpu_study()
    # 6 s an epoch, 600 s for two targets: 300 s each = 50 epochs' time, less 4 for the probes, / 1.15
    assert gs.choose_epochs(6.0, 600.0) == int((50 - gs.EVAL_EPOCHS) / (1 + gs.HOOK_SHARE))
    assert gs.choose_epochs(6.0, 10.0) == 0
    assert gs.choose_epochs(0.01, 1e9) == 400
    with pytest.raises(ValueError, match="seconds_per_epoch must be positive"):
        gs.choose_epochs(0.0, 100.0)


@pytest.mark.usefixtures("one_thread")
def test_gpu_study_script_runs_end_to_end_at_a_tiny_size(tmp_path, dirs, monkeypatch, cifar_shards):
    """pack (here) -> receive (each call) -> run: records of both targets and a throughput record, in one tar."""
    import json
    import tarfile

    cifar_shards(tmp_path / "source", size=120)
    monkeypatch.setenv("LOWVAR_MAE_GIT_REVISION", "")  # the script sets it; undone after the test
    gs = _gpu_study()
    assert gs.main(["pack", "--out", str(tmp_path / "shards"), "--size", "50"]) == 0
    calls = sorted((tmp_path / "shards").glob("call*"))
    assert [len(list(c.rglob("*.npz"))) for c in calls] == [2, 2]  # 3 train parts + 1 test part, two a call
    for call in calls:
        assert gs.main(["receive", str(call), "--data", str(tmp_path / "data")]) == 0
    out = tmp_path / "out"
    assert gs.main(["run", "--data", str(tmp_path / "data"), "--out", str(out), "--runs", str(tmp_path / "gpu-runs"),
                    "--tiny", "--epochs", "2", "--device", "cpu", "--revision", "0" * 40]) == 0
    with tarfile.open(out / "records.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu_study.log" in names
    evals = sorted((out / "results" / "eval").glob("*.json"))
    assert len(evals) == 4 and len(list((out / "results" / "learning_order").glob("*.json"))) == 2
    rec = json.loads(evals[0].read_text())
    assert rec["pretrain_epochs"] == 2 and rec["recipe"] == "gpu"
    bench = json.loads(next((out / "results" / "bench").glob("*.json")).read_text())
    assert bench["images_per_s"] > 0 and bench["epochs_chosen"] == 2 and bench["provenance"]["device_name"]


def test_a_copy_without_git_names_the_commit_it_was_given(tmp_path, monkeypatch):
    from lowvar_mae import provenance

    monkeypatch.setattr(provenance, "repo_root", lambda: tmp_path)  # a checkout with no .git folder
    monkeypatch.delenv(provenance.REVISION_ENV, raising=False)
    assert provenance.git_revision() == "unknown"
    monkeypatch.setenv(provenance.REVISION_ENV, "a" * 40)
    assert provenance.git_revision() == "a" * 40 + " (copy)"
    (tmp_path / ".git").mkdir()  # a real checkout ignores the variable
    assert provenance.git_revision() == "unknown"


def test_verdicts_by_length_hold_each_length_to_the_bar_and_correct_across_lengths():
    from lowvar_mae import verdicts

    frame = _study_frame()
    records = schedule.study_records(frame, "cifar10", "cpu")
    random = pd.DataFrame([_record("none", m, s, None, 0.47) for m in ("linprobe", "knn") for s in (0, 1, 2)])
    table = schedule.verdicts_by_length(records, random)
    assert sorted(set(table["epochs"])) == [6, 12, 24] and set(table["metric"]) == {"linprobe", "knn"}
    # the family: every length and probe with 2+ seeds and trained encoders, corrected together
    fam = table[table["in_family"]]
    assert (table["family_size"] == len(fam)).all()
    assert fam["p_holm"].tolist() == pytest.approx(verdicts.holm(fam["p"].tolist()))
    one = table[table["epochs"] == 12]
    assert set(one["outcome"]) <= {"one seed only", "not trained enough at this length"}
    # margins are per length: the bottom target's 6-epoch linear probe is about 0.46, below 0.47 + 0.08
    six = table[(table["epochs"] == 6) & (table["metric"] == "linprobe")].iloc[0]
    assert six["outcome"] == "not trained enough at this length"


@pytest.mark.usefixtures("one_thread")
def test_a_patch_normalised_run_reconstructs_on_the_image_scale():
    """The rescaled arm: its reconstructions (and so its band errors) are in pixel space."""
    import torch

    from lowvar_mae import pca
    from lowvar_mae.data import load_dataset
    from lowvar_mae.models import build_mae
    from lowvar_mae.pretrain import reconstruct
    from lowvar_mae.train import denormalize
    from lowvar_mae.targets import make_target

    basis = pca.fit_pca(load_dataset("synthetic", "train", n=200).to_tensor())
    x01 = load_dataset("synthetic", "test", n=6).to_tensor().float() / 255
    model = build_mae("small-cifar")
    kw = dict(basis=basis, patch_size=model.config.patch_size, image_shape=(3, 32, 32))
    normed, plain = make_target("pca-bottom-norm:0.25", **kw), make_target("pca-bottom:0.25", **kw)
    rec = reconstruct(model, x01, normed, seed=0)
    torch.testing.assert_close(rec["target"], denormalize(plain(x01)))
    assert rec["prediction"].shape == rec["target"].shape and torch.isfinite(rec["loss"]).all()
