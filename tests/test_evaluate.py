"""Fine-tuning, linear probing, kNN, the validation protocol, records and tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from lowvar_mae import data, probes, recipes, report
from lowvar_mae import evaluate as ev
from lowvar_mae.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint
from lowvar_mae.models import build_mae
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import PretrainConfig, make_config
from lowvar_mae.reference import TABLE1
from lowvar_mae.results import load_records

pytestmark = pytest.mark.usefixtures("one_thread")


def bright_half(n, seed):
    """16x16 images: label 0 = top half bright, 1 = bottom half bright (invariant to left-right flips)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    bright = torch.zeros(n, 1, 16, 16)
    bright[..., :8, :] = 1
    bright = torch.where(labels.view(n, 1, 1, 1) == 1, bright.flip(-2), bright)
    noise = torch.randint(0, 60, (n, 3, 16, 16), generator=g)
    return (noise + 150 * bright).clamp(0, 255).to(torch.uint8), labels


def micro_splits():
    return ev.Splits(*bright_half(256, 0), *bright_half(64, 1), *bright_half(128, 2), num_classes=2)


def micro_config(**kw):
    base = dict(model="micro", epochs=8, warmup_epochs=1, batch_size=32, precision="fp32", eval_batch_size=64)
    return recipes.FinetuneConfig(**{**base, **kw})


def probe_config(**kw):
    return micro_config(protocol="linprobe", recipe="quick", optimizer="sgd", base_lr=0.1, weight_decay=0.0,
                        epochs=3, warmup_epochs=0.5, label_smoothing=0.0, head_dropout=0.0, head_norm=True,
                        head_init_std=0.01, **kw)


# ---------------------------------------------------------------- training


def test_finetuning_the_micro_preset_beats_chance(tmp_path):
    cfg = micro_config(base_lr=0.04, augment="flip")
    result = ev.fit_classifier(cfg, ev.random_encoder("micro", 0), micro_splits(), tmp_path, progress=False)
    s = result.summary
    assert s["value"] >= 0.9 and s["test_at_best"] >= 0.9, s  # chance is 0.5
    assert s["best_val_value"] == max(m["val_accuracy"] for m in result.metrics)
    assert result.metrics[s["best_epoch"] - 1]["val_accuracy"] == s["best_val_value"]
    assert s["final_val_value"] == result.metrics[-1]["val_accuracy"]
    assert (s["n_train"], s["n_val"], s["n_test"]) == (256, 64, 128)
    assert s["attention"] == ("math" if s["precision"] == "bf16" else "sdpa")
    # the best epoch's weights are kept as a safetensors checkpoint
    best = latest_checkpoint(tmp_path / "best")
    assert best.name == f"checkpoint-e{s['best_epoch']:04d}"
    assert "head.weight" in load_file(str(best / "model.safetensors"))


def test_finetuning_resumes_to_the_same_result(tmp_path):
    cfg = micro_config(epochs=3, base_lr=0.04, augment="flip")
    straight = ev.fit_classifier(cfg, ev.random_encoder("micro", 0), micro_splits(), tmp_path / "a", progress=False)
    part = ev.fit_classifier(cfg, ev.random_encoder("micro", 0), micro_splits(), tmp_path / "b", progress=False,
                             stop_after=2)
    assert part.summary == {} and len(part.metrics) == 2
    resumed = ev.fit_classifier(cfg, ev.random_encoder("micro", 5), micro_splits(), tmp_path / "b", progress=False)
    assert resumed.summary == straight.summary | {"train_seconds": resumed.summary["train_seconds"]}
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_linear_probe_freezes_every_encoder_parameter(tmp_path):
    encoder = ev.random_encoder("micro", 0)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    cfg = probe_config(augment="flip")  # augmentation: the encoder runs on every batch
    assert not cfg.uses_feature_cache
    result = ev.fit_classifier(cfg, encoder, micro_splits(), tmp_path, progress=False)
    probe = result.model
    assert isinstance(probe, probes.LinearProbe) and probe.encoder is encoder
    assert all(not p.requires_grad and p.grad is None for p in encoder.parameters())
    probe.train()
    assert probe.training and probe.head.training and not encoder.training
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert isinstance(probe.head[0], torch.nn.BatchNorm1d) and not probe.head[0].affine
    trained = [n for n, p in probe.named_parameters() if p.requires_grad]
    assert trained == ["head.1.weight", "head.1.bias"]


def test_cached_and_on_the_fly_linear_probes_agree(tmp_path):
    splits = micro_splits()
    cached = ev.fit_classifier(probe_config(augment="none"), ev.random_encoder("micro", 0), splits,
                               tmp_path / "cached", progress=False)
    live = ev.fit_classifier(probe_config(augment="none", feature_cache=False), ev.random_encoder("micro", 0), splits,
                             tmp_path / "live", progress=False)
    assert cached.summary["feature_cache"] and not live.summary["feature_cache"]
    head_c, head_l = cached.model.head.state_dict(), live.model.head.state_dict()
    initial = probes.build_head(32, 2, norm=True, init_std=0.01, seed=0).state_dict()
    assert not torch.allclose(head_c["1.weight"], initial["1.weight"])  # the head did train
    for k in head_c:
        torch.testing.assert_close(head_c[k].float(), head_l[k].float(), atol=1e-4, rtol=1e-4, msg=k)
    for key in ("value", "test_at_best", "best_val_value", "best_epoch"):
        assert cached.summary[key] == live.summary[key], key
    for a, b in zip(cached.metrics, live.metrics):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_rand_augment_draws_per_group():
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).expand(16, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    shared = ev.rand_augment(x, 2, 9, group=16)
    torch.manual_seed(0)
    own = ev.rand_augment(x, 2, 9, group=1)
    assert shared.dtype == own.dtype == torch.uint8 and shared.shape == own.shape == x.shape
    assert all(torch.equal(shared[0], s) for s in shared)  # one draw for the whole group
    assert len({o.numpy().tobytes() for o in own}) > 4       # every image its own draw


# ---------------------------------------------------------------- kNN and the protocol


def test_knn_matches_a_brute_force_numpy_reference():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(50, 8, generator=g), torch.randn(13, 8, generator=g)
    train_labels, test_labels = torch.randint(0, 4, (50,), generator=g), torch.randint(0, 4, (13,), generator=g)
    k, T = 7, 0.07
    a = train.numpy().astype(np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    expected = np.zeros((13, 4))
    for i, row in enumerate(test.numpy().astype(np.float64)):
        sims = a @ (row / np.linalg.norm(row))
        for j in np.argsort(-sims)[:k]:
            expected[i, train_labels[j]] += np.exp(sims[j] / T)
    votes = probes.knn_votes(train, train_labels, test, k=k, T=T, num_classes=4, batch_size=5)
    np.testing.assert_allclose(votes.numpy(), expected, rtol=1e-4)
    accuracy = (expected.argmax(1) == test_labels.numpy()).mean()
    assert probes.knn_accuracy(train, train_labels, test, test_labels, k=k, T=T, num_classes=4) == pytest.approx(accuracy)
    # k=1 on the training set itself: every point is its own nearest neighbour
    assert probes.knn_accuracy(train, train_labels, train, train_labels, k=1, num_classes=4) == 1.0
    with pytest.raises(ValueError, match="k=51"):
        probes.knn_votes(train, train_labels, test, k=51, num_classes=4)


def test_validation_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(5), [40, 40, 20, 20, 80])
    train_idx, val_idx = data.validation_split(labels, 0.25, seed=0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert np.array_equal(np.union1d(train_idx, val_idx), np.arange(len(labels)))
    assert val_idx.max() < len(labels)  # indexes the training split only: the test split is never touched
    np.testing.assert_array_equal(np.bincount(labels[val_idx]), [10, 10, 5, 5, 20])
    again, val_again = data.validation_split(labels, 0.25, seed=0)
    assert np.array_equal(val_idx, val_again) and np.array_equal(train_idx, again)
    _, other = data.validation_split(labels, 0.25, seed=1)
    assert not np.array_equal(val_idx, other)
    np.testing.assert_array_equal(np.bincount(labels[other]), [10, 10, 5, 5, 20])
    with pytest.raises(ValueError, match="unlabelled"):
        data.validation_split(np.array([0, 1, -1, 1]), 0.5, 0)


# ---------------------------------------------------------------- tables


def test_results_table_against_numpy_and_missing_cells():
    rng = np.random.default_rng(0)
    rows = []
    for target, n in (("pixels", 3), ("pca-bottom:0.25", 2), ("none", 1)):
        for seed in range(n):
            rows.append(dict(dataset="cifar10", target=target, metric="finetune", seed=seed, run=f"{target}-{seed}",
                             value=rng.uniform(0.5, 0.9), test_at_best=rng.uniform(0.5, 0.9),
                             time_utc=f"2024-01-0{seed + 1}", recipe="paper"))
    rows.append(dict(rows[0], value=0.0, time_utc="2023-12-31"))  # an older record of the same run
    records = pd.DataFrame(rows)
    table = report.results_table(records).set_index(["dataset", "target", "metric"])
    for target in ("pixels", "pca-bottom:0.25", "none"):
        values = [r["value"] for r in rows[:-1] if r["target"] == target]
        cell = table.loc[("cifar10", target, "finetune")]
        assert cell["count"] == len(values)
        assert cell["mean"] == pytest.approx(np.mean(values))
        if len(values) > 1:
            assert cell["std"] == pytest.approx(np.std(values, ddof=1))
        else:
            assert np.isnan(cell["std"])
    extra = pd.DataFrame([dict(rows[0], dataset="synthetic", metric="knn", run="syn-0", value=0.3)])
    comparison = report.table1_comparison(pd.concat([records, extra]))
    cells = comparison.set_index(["dataset", "target", "metric"])
    reported = sum((ft is not None) + (lp is not None) for _, _, ft, lp in TABLE1)
    assert len(comparison) == reported + 1
    missing = cells.loc[("cifar100", "pca-top:0.75", "linprobe")]
    assert missing["count"] == 0 and np.isnan(missing["mean"]) and missing["ours"] == "no runs"
    assert missing["original"] == 0.270
    pixels = cells.loc[("cifar10", "pixels", "finetune")]
    assert pixels["difference"] == pytest.approx(pixels["mean"] - 0.885)
    assert cells.loc[("cifar10", "none", "finetune"), "ours"].endswith("(1 run)")
    synthetic = cells.loc[("synthetic", "pixels", "knn")]
    assert np.isnan(synthetic["original"]) and synthetic["count"] == 1
    assert ("cifar10", "none", "linprobe") not in cells.index  # not in Table 1, no runs
    assert len(report.table1_comparison(pd.DataFrame())) == reported
    import matplotlib

    matplotlib.use("Agg")
    fig = report.plot_accuracy_by_target(comparison, "cifar10", ["none", "pixels", "pca-bottom:0.25"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "Without pretraining", "Original image", "Bottom 25% variance"]


# ---------------------------------------------------------------- loading pretrained encoders


def fake_pretrain_run(runs, name, mae, *, finished=True, config=None):
    """A pretraining run folder as lowvar_mae.pretrain leaves it, holding ``mae``'s weights."""
    # a folder is named after its config (the loader checks it): one seed per name
    config = config or PretrainConfig(model="micro", epochs=1, seed=sum(map(ord, name)))
    run = runs / config.run_name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "run_name": config.run_name}))
    if mae is not None:
        save_checkpoint(run, 1, mae, None, {})
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0}) + "\n")
    if finished:
        (run / "summary.json").write_text("{}")
    return run


def edit_weights(run, fn):
    """Rewrite a checkpoint's weights as if it had been saved with them (digest updated)."""
    from lowvar_mae.checkpoint import file_digest

    path = latest_checkpoint(run) / "model.safetensors"
    weights = load_file(str(path))
    fn(weights)
    save_file(weights, str(path))
    state = json.loads((path.parent / "state.json").read_text())
    state["digests"]["model.safetensors"] = file_digest(path)
    (path.parent / "state.json").write_text(json.dumps(state))


def test_bad_pretraining_runs_fail_clearly(dirs):
    runs, _ = dirs
    torch.manual_seed(0)
    mae = build_mae("micro")
    good = fake_pretrain_run(runs, "good", mae)
    encoder, raw = ev.load_pretrained_encoder(good, model="micro")
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, mae.encoder.state_dict()[k]), k

    missing = fake_pretrain_run(runs, "missing", mae)
    edit_weights(missing, lambda w: w.pop("encoder.norm.weight"))
    with pytest.raises(CheckpointError, match="missing keys: norm.weight"):
        ev.load_pretrained_encoder(missing, model="micro")
    extra = fake_pretrain_run(runs, "extra", mae)
    edit_weights(extra, lambda w: w.update({"encoder.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="unexpected keys: extra"):
        ev.load_pretrained_encoder(extra, model="micro")
    wide = fake_pretrain_run(runs, "wider", build_mae("micro", embed_dim=48))
    wider = r"does not fit ViTEncoder: shape mismatches: blocks.0.attn.proj.bias: checkpoint \(48,\) vs model \(32,\)"
    with pytest.raises(CheckpointError, match=wider):
        ev.load_pretrained_encoder(wide, model="micro")
    with pytest.raises(CheckpointError, match="used model 'micro', the evaluation expects 'small-cifar'"):
        ev.load_pretrained_encoder(good, model="small-cifar")
    empty = fake_pretrain_run(runs, "empty", None, finished=False)
    with pytest.raises(CheckpointError, match="has no checkpoint"):
        ev.load_pretrained_encoder(empty)
    half = fake_pretrain_run(runs, "half", mae, finished=False)
    with pytest.raises(CheckpointError, match="unfinished"):
        ev.load_pretrained_encoder(half)
    with pytest.raises(CheckpointError, match="no pretraining run"):
        ev.load_pretrained_encoder(runs / "nowhere")
    # evaluate() goes through the same strict loading: it never falls back to a random encoder
    cfg = micro_config(target="pixels", pretrain_run=missing.name)
    with pytest.raises(CheckpointError, match="missing keys"):
        ev.evaluate(cfg, progress=False)
    assert not (runs / cfg.run_name / "summary.json").exists()


def test_config_names_validation_and_round_trip():
    a = micro_config(target="pixels", pretrain_run="pretrain-a")
    b = micro_config(target="pixels", pretrain_run="pretrain-b")
    assert a.run_name != b.run_name and a.run_name.startswith("finetune-synthetic-pixels-quick-e8-s0-")
    assert micro_config(compile=True).run_name == micro_config().run_name
    assert micro_config(attention="math").run_name == micro_config().run_name
    with pytest.raises(ValueError, match="attention must be one of .*got 'flash'"):
        micro_config(attention="flash")
    assert recipes.FinetuneConfig.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert micro_config(target="pca-bottom:0.250", pretrain_run="p").target == "pca-bottom:0.25"
    knn = recipes.KNNConfig(target="pixels", pretrain_run="pretrain-a", model="micro")
    assert knn.run_name.startswith("knn-synthetic-pixels-k20-s0-")
    with pytest.raises(ValueError, match="target 'none' .* pretrain_run=None"):
        micro_config(target="pixels")
    with pytest.raises(ValueError, match="protocol"):
        micro_config(protocol="distill")
    with pytest.raises(ValueError, match="val_fraction"):
        micro_config(val_fraction=0.0)
    with pytest.raises(ValueError, match="unknown recipe 'slow'"):
        recipes.make_eval_config("finetune", "slow")
    paper = recipes.make_eval_config("finetune", "paper", dataset="cifar10")
    assert (paper.model, paper.batch_size, paper.epochs, paper.rand_augment_ops, paper.label_smoothing,
            paper.head_dropout, paper.betas) == ("vit-tiny-cifar", 1024, 100, 2, 0.1, 0.1, (0.9, 0.999))
    probe = recipes.make_eval_config("linprobe", "paper", dataset="cifar10")
    assert (probe.optimizer, probe.base_lr, probe.batch_size, probe.epochs, probe.warmup_epochs, probe.augment,
            probe.head_norm) == ("sgd", 0.1, 256, 90, 10, "flip", True)


# ---------------------------------------------------------------- end to end


def test_pretraining_then_evaluation_end_to_end(dirs):
    runs, results = dirs
    run = pretrain(make_config("quick", "synthetic", epochs=1, batch_size=32, n_train=64), progress=False)
    small = dict(n_test=40, eval_batch_size=64, precision="fp32")
    configs = [recipes.make_eval_config("finetune", "quick", run, epochs=1, batch_size=16, **small),
               recipes.make_eval_config("linprobe", "quick", run.run_dir, epochs=2, batch_size=16, **small),
               recipes.make_eval_config("knn", "quick", run.config.run_name, k=5, **small),
               recipes.make_eval_config("knn", "quick", None, dataset="synthetic", n_train=64, k=5, **small)]
    assert configs[0].pretrain_run == run.config.run_name and configs[0].n_train == 64
    assert configs[3].target == "none" and configs[3].model == run.config.model
    outcomes = [ev.evaluate(c, progress=False) for c in configs]
    records = load_records("eval", root=results)
    assert len(records) == 4 and (results / "eval").is_dir()
    assert sorted(records["metric"]) == ["finetune", "knn", "knn", "linprobe"]
    needed = {"dataset", "target", "share", "recipe", "seed", "metric", "value", "best_val_value", "test_at_best",
              "run_dir", "wall_seconds", "git_revision", "device"}
    assert needed <= set(records.columns)
    for c, r in zip(configs, outcomes):
        row = records[records["run"] == c.run_name].iloc[0]
        assert row["value"] == r.value and 0.0 <= row["value"] <= 1.0
        assert row["dataset"] == "synthetic" and row["seed"] == 0 and row["wall_seconds"] > 0
        assert row["n_test"] == 40 and row["n_train"] + row["n_val"] == 64
        assert (runs / c.run_name / "summary.json").is_file()
    assert set(records["target"]) == {"pixels", "none"}
    assert latest_checkpoint(runs / configs[0].run_name / "best") is not None
    for k, v in outcomes[2].model.state_dict().items():  # the kNN probe used the pretrained encoder
        assert torch.equal(v, run.model.encoder.state_dict()[k]), k
    # a finished evaluation loads instead of training, and is not recorded twice
    again = ev.evaluate(configs[0], progress=False)
    assert not again.trained_now and again.summary == outcomes[0].summary and again.record is None
    assert len(load_records("eval", root=results)) == 4
    table = report.results_table(load_records("eval", root=results))
    assert set(table["count"]) == {1}
    curves = report.training_curves(outcomes, "linprobe")
    assert list(curves) == ["Original image, seed 0"] and list(curves["Original image, seed 0"]["epoch"]) == [1, 2]
    assert {"loss", "val_accuracy", "val_loss"} <= set(curves["Original image, seed 0"].columns)
