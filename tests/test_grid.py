"""The Table 1 grid runner, the CPU recipe and the probes' feature choice."""

import json

import numpy as np
import pytest
import torch

from lowvar_mae import evaluate as ev
from lowvar_mae import grid, probes, recipes
from lowvar_mae.__main__ import main
from lowvar_mae.models import POOLINGS, build_mae, pool_tokens
from lowvar_mae.pretrain import (load_reconstructions, masked_relative_error, pretrain, pretraining_fields, probe_curve,
                                 recorded_reconstructions)
from lowvar_mae.train import read_metrics
from lowvar_mae.recipes import make_config
from lowvar_mae.results import load_records

pytestmark = pytest.mark.usefixtures("one_thread")


# A grid small enough for a test: 96 synthetic images, small-cifar, one pretraining epoch.
TINY_PRE = dict(model="small-cifar", n_train=96, epochs=1, warmup_epochs=0.5, batch_size=32)
TINY_EVAL = dict(n_test=40, batch_size=32, epochs=3)


def tiny_plan(targets=("pixels", "none"), seeds=(0,), probes=("linprobe", "knn")):
    return grid.plan(["synthetic"], targets, seeds, probes, "cpu", pretrain_overrides=TINY_PRE,
                     eval_overrides=TINY_EVAL)


# ---------------------------------------------------------------- pooling


def test_pool_tokens_matches_hand_computation():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    assert torch.equal(pool_tokens(tokens, "cls"), tokens[:, 0])
    expected_mean = torch.stack([tokens[n, 1:].sum(0) / 3 for n in range(2)])
    torch.testing.assert_close(pool_tokens(tokens, "mean"), expected_mean)
    both = pool_tokens(tokens, "cls+mean")
    assert both.shape == (2, 6)
    torch.testing.assert_close(both[:, 3:], expected_mean)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_tokens(tokens, "max")


def test_extract_pooled_is_one_pass_of_each_pooling():
    torch.manual_seed(0)
    encoder = build_mae("micro").encoder
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    joined = probes.extract_pooled(encoder, images, batch_size=4)
    assert list(joined) == list(POOLINGS)
    for pooling in POOLINGS:
        alone = probes.extract_features(encoder, images, batch_size=3, pooling=pooling)
        assert alone.shape == (10, encoder.feature_dim(pooling))
        torch.testing.assert_close(joined[pooling], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(joined["cls"], probes.extract_features(encoder, images), rtol=1e-5, atol=1e-5)


def test_choose_pooling_picks_the_informative_features():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (300,), generator=g)
    informative = torch.nn.functional.one_hot(labels, 3).float() * 3 + torch.randn(300, 3, generator=g)
    noise = torch.randn(300, 3, generator=g)
    feats = {"cls": noise, "mean": informative}
    train = {k: v[:200] for k, v in feats.items()}
    val = {k: v[200:] for k, v in feats.items()}
    for by in ("linear", "knn"):
        best, scores = probes.choose_pooling(train, labels[:200], val, labels[200:], 3, by=by)
        assert best == "mean"
        assert scores["mean"] > 0.9 and scores["cls"] < 0.6
    with pytest.raises(ValueError, match="by must be"):
        probes.choose_pooling(train, labels[:200], val, labels[200:], 3, by="svm")


def test_feature_choices_are_checked():
    with pytest.raises(ValueError, match="features must be one of"):
        recipes.make_eval_config("linprobe", "cpu", None, dataset="synthetic", features="max")
    with pytest.raises(ValueError, match="fine-tuning classifies the CLS token"):
        recipes.make_eval_config("finetune", "cpu", None, dataset="synthetic", features="mean")
    with pytest.raises(ValueError, match="unknown recipe 'slow'"):
        recipes.make_eval_config("knn", "slow", None, dataset="synthetic")
    knn = recipes.make_eval_config("knn", "cpu", None, dataset="synthetic")
    assert (knn.recipe, knn.features, knn.model) == ("cpu", "auto", "cpu-cifar")


# ---------------------------------------------------------------- the cpu recipe


def test_cpu_recipe_uses_every_training_image_and_the_cpu_model():
    config = make_config("cpu", "cifar10", "pixels")
    assert config.model == "cpu-cifar" and config.n_train is None and config.probe_every > 0
    probe = recipes.make_eval_config("linprobe", "cpu", config)
    assert probe.n_train is None and probe.n_test is None and probe.features == "auto"
    assert probe.val_fraction == 0.1  # 5,000 of CIFAR-10's 50,000 training images
    with pytest.raises(ValueError, match="no model preset for stl10"):
        make_config("cpu", "stl10")
    # probing during pretraining does not change what is learned: not part of the name
    assert make_config("cpu", "cifar10", probe_every=0).run_name == config.run_name


def test_validation_probe_leaves_training_unchanged(tmp_path):
    base = dict(model="small-cifar", dataset="synthetic", n_train=64, epochs=2, warmup_epochs=0.5, batch_size=16,
                precision="fp32")
    runs = {}
    for every in (0, 1):
        config = make_config("cpu", **{**base, "probe_every": every})
        runs[every] = pretrain(config, root=tmp_path / f"every{every}", progress=False)
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values()):
        assert torch.equal(a, b)
    curve = probe_curve(runs[1].run_dir)
    assert [c["epoch"] for c in curve] == [0, 1, 2]
    assert set(curve[0]["probe_val"]) == set(POOLINGS)
    assert all(0.0 <= v <= 1.0 for c in curve for v in c["probe_val"].values())
    assert probe_curve(runs[0].run_dir) == []
    summary = json.loads((runs[1].run_dir / "summary.json").read_text())
    assert summary["probe_curve"] == curve


# ---------------------------------------------------------------- the grid


def test_plan_checks_every_name_before_anything_runs():
    cells = tiny_plan(targets=("pixels", "pca-bottom:0.250", "none"), seeds=(0, 1))
    assert len(cells) == 3 * 2 * 2
    assert [c.seed for c in cells[:6]] == [0] * 6  # seed-major
    assert cells[2].target == "pca-bottom:0.25"  # canonical spelling
    for kwargs, message in [
        (dict(targets=("pixel",)), "unknown target 'pixel'.*'none'"),
        (dict(probes=("linear",)), r"unknown probe 'linear'; known: \['finetune', 'linprobe', 'knn'\]"),
        (dict(seeds=(-1,)), "seeds must be integers >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            tiny_plan(**kwargs)
    with pytest.raises(ValueError, match="unknown recipe 'fast'; known"):
        grid.plan(["cifar10"], ["pixels"], [0], ["knn"], "fast")
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'; known"):
        grid.plan(["cifar11"], ["pixels"], [0], ["knn"], "cpu")


def test_grid_runs_missing_cells_once_and_lists_the_rest(dirs):
    runs, results = dirs
    cells = tiny_plan()
    assert grid.missing(cells) == cells
    assert "4 of 4 cells have no record" in grid.describe_missing(cells)
    written = grid.run_grid(cells, allow_dirty=True, log=lambda *_: None)
    evals = [p for p in written if p.parent == results / "eval"]
    assert len(evals) == 4
    assert [p.parent.name for p in written if p not in evals] == ["pretraining", "learning_order"]
    assert grid.missing(cells) == []
    assert grid.describe_missing(cells) == "all 4 cells have records"

    records = load_records("eval", results)
    assert sorted(records["metric"]) == ["knn", "knn", "linprobe", "linprobe"]
    assert set(records["recipe"]) == {"cpu"}
    assert set(records["features"]) <= set(POOLINGS)
    pretrained = records[records["target"] == "pixels"].iloc[0]
    assert pretrained["pretrain_seconds"] > 0
    assert [c["epoch"] for c in pretrained["pretrain_probe_curve"]] == [0, 1]
    assert set(records[records["metric"] == "linprobe"].iloc[0]["features_val"]) == set(POOLINGS)

    # The pretraining record: the run's loss curve and its reconstructions, as the run folder has them.
    pre = load_records("pretraining", results).iloc[0]
    run_dir = runs / pre["run_name"]
    assert [c["epoch"] for c in pre["curve"]] == [1] and pre["pretrain_epochs"] == 1
    assert pre["curve"][0]["loss"] == read_metrics(run_dir)[0]["loss"]
    saved, kept = load_reconstructions(run_dir), recorded_reconstructions(pre.to_dict())
    assert sorted(kept) == sorted(saved) == [1]
    for key in ("input", "mask", "target", "prediction"):
        want = saved[1][key][:4]
        assert kept[1][key].shape == want.shape
        tol = 0.5 / 255 if key == "input" else 0.0 if key == "mask" else 2e-3  # uint8 / exact / float16
        assert (kept[1][key] - want).abs().max() <= tol + 1e-6, key
    assert pre["reconstructions"]["relative_error"]["1"] == pytest.approx(masked_relative_error(saved[1]))
    assert pre["pretrain_provenance"]["git_revision"] and pre["pretrain_provenance"]["device_name"]
    assert grid.record_pretraining(run_dir, results) is None  # one record per run

    # A second run finds nothing to do; more seeds give estimates from the records.
    assert grid.run_grid(cells, allow_dirty=True, log=lambda *_: None) == []
    more = tiny_plan(seeds=(0, 1))
    text = grid.describe_missing(more)
    assert "4 of 8 cells have no record" in text and "this machine" in text and "? min" not in text


def test_grid_stops_between_cells_and_refuses_a_dirty_tree(dirs, monkeypatch):
    runs, _ = dirs
    runs.mkdir(parents=True)
    (runs / grid.STOP_FILE).touch()
    assert grid.run_grid(tiny_plan(), allow_dirty=True, log=lambda *_: None) == []
    monkeypatch.setattr("lowvar_mae.provenance.git_revision", lambda: "abc123-dirty")
    with pytest.raises(RuntimeError, match="uncommitted changes"):
        grid.run_grid(tiny_plan(), log=lambda *_: None)


def test_grid_cli_lists_missing_cells_and_rejects_bad_names(dirs, capsys, monkeypatch):
    import lowvar_mae.results

    monkeypatch.setattr(lowvar_mae.results, "repo_root", lambda: None)  # only this test's records count
    assert main(["grid", "--missing", "--targets", "pixels", "none", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 cells have no record" in out and "cifar10 pixels seed 0 linprobe (cpu)" in out
    assert main(["grid", "--missing", "--probes", "lin"]) == 2
    assert "unknown probe 'lin'" in capsys.readouterr().err


def test_estimates_prefer_this_machine():
    import pandas as pd

    from lowvar_mae.provenance import device_info

    here = device_info()["device_name"]
    cell = grid.Cell("cifar10", "pixels", 3, "knn", "cpu")
    base = dict(dataset="cifar10", recipe="cpu", metric="knn", model="cpu-cifar", target="pixels")
    records = pd.DataFrame([
        {**base, "device_name": here, "wall_seconds": 60.0, "pretrain_seconds": 540.0},
        {**base, "device_name": here, "wall_seconds": 80.0, "pretrain_seconds": 560.0},
        {**base, "device_name": "another CPU", "wall_seconds": 999.0, "pretrain_seconds": 9999.0},
    ])
    seconds, source = grid.estimate_seconds([cell], records)[cell]
    assert seconds == pytest.approx(70.0 + 550.0) and source == "this machine"
    seconds, source = grid.estimate_seconds([cell], records[records["device_name"] != here])[cell]
    assert seconds == pytest.approx(999.0 + 9999.0) and source == "another CPU"
    assert grid.estimate_seconds([cell], records.iloc[:0])[cell] == (None, "no records yet")
    assert np.isfinite(seconds)


def test_gpu_recipe_runs_end_to_end_at_a_tiny_size_from_shards(tmp_path, dirs, cifar_shards):
    """The GPU command's path on a CPU: CIFAR-10 carried as shards, the gpu recipe's grid, records."""
    cifar_shards(tmp_path / "shards", size=50)
    config = make_config("gpu", "cifar10", "pixels")
    assert (config.model, config.epochs, config.batch_size) == ("vit-tiny-cifar", 100, 512)
    cells = grid.plan(["cifar10"], ["pixels"], [0], ["knn"], "gpu", pretrain_overrides=TINY_PRE,
                      eval_overrides=TINY_EVAL)
    written = grid.run_grid(cells, allow_dirty=True, log=lambda *_: None)
    rec = json.loads(next(p for p in written if p.parent.name == "eval").read_text())
    assert (rec["recipe"], rec["pretrain_recipe"], rec["features"] in POOLINGS) == ("gpu", "gpu", True)
    assert (rec["n_train"] + rec["n_val"], rec["n_test"]) == (96, 40)
    assert [c["epoch"] for c in rec["pretrain_probe_curve"]] == [0, 1]  # the last epoch is always probed


def test_probes_of_one_encoder_extract_features_once(dirs, monkeypatch):
    calls = []
    real = ev.extract_pooled

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "extract_pooled", counting)
    ev._FEATURES.clear()
    kw = dict(dataset="synthetic", model="small-cifar", n_train=96, n_test=40)
    linear = ev.evaluate(recipes.make_eval_config("linprobe", "cpu", None, epochs=2, batch_size=32, **kw), progress=False)
    knn = ev.evaluate(recipes.make_eval_config("knn", "cpu", None, **kw), progress=False)
    assert len(calls) == 3  # train, val, test: once for both probes
    # the same numbers as a kNN that extracts its own features
    ev._FEATURES.clear()
    again = ev.knn_probe(recipes.make_eval_config("knn", "cpu", None, **kw), ev.random_encoder("small-cifar", 0),
                         ev.load_splits("synthetic", n_train=96, n_test=40, val_fraction=0.1, seed=0))
    assert again["value"] == knn.value and again["features_val"] == knn.summary["features_val"]
    # another encoder (seed 1) is extracted anew
    ev.evaluate(recipes.make_eval_config("knn", "cpu", None, seed=1, **kw), progress=False)
    assert len(calls) == 3 + 3 + 3
    assert linear.summary["features"] in POOLINGS


def test_a_pretraining_record_needs_a_finished_run_folder(dirs, capsys):
    runs, _ = dirs
    config = make_config("quick", "synthetic", "pixels", **{**TINY_PRE, "epochs": 2})
    part = pretrain(config, progress=False, stop_after=1)
    with pytest.raises(ValueError, match=r"is not finished \(1 of 2 epochs\)"):
        pretraining_fields(part.run_dir)
    assert main(["record", str(runs / "nowhere"), "--allow-dirty"]) == 2
    assert "not a run folder (no config.json)" in capsys.readouterr().err
