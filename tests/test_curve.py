"""The deep-network subspace curve: its plan, the records it skips, and a tiny real run."""

import dataclasses

import pytest

from lowvar_mae import curve
from lowvar_mae.curve import ConvNetConfig
from lowvar_mae.results import write_record

TINY = ConvNetConfig(width=4, epochs=1, batch_size=256)


@pytest.fixture
def folders(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "results"))
    return tmp_path


def test_plan_runs_the_whole_curve_first_then_three_seeds_of_the_named_points():
    points = curve.plan("cifar10")
    first = points[:12]
    assert {p.seed for p in first} == {0}
    assert [(p.side, p.share) for p in first] == [("full", None)] + [("top", s) for s in (0.5, 0.75, 0.9, 0.95, 0.99)] \
        + [("bottom", s) for s in (0.01, 0.05, 0.1, 0.2, 0.25, 0.5)]
    rest = points[12:]
    assert len(rest) == 10 and {p.seed for p in rest} == {1, 2}
    assert {(p.side, p.share) for p in rest} == set(curve.SEEDED)
    assert len(set(points)) == len(points) == 22
    assert str(points[0]) == "cifar10 full images seed 0" and str(points[9]) == "cifar10 bottom 20% seed 0"


def test_plan_rejects_bad_names():
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        curve.plan("cifar11")
    with pytest.raises(ValueError, match="seeds must be integers >= 0, got -1"):
        curve.plan("cifar10", seeds=[0, -1])
    with pytest.raises(ValueError, match=r"seeded point \('top', 0.8\) is not on the curve"):
        curve.plan("cifar10", seeded=[("top", 0.8)])


def _fake_record(point, cfg, accuracy=0.5, wall=120.0):
    share = 1.0 if point.share is None else point.share
    return write_record("subspace", {"dataset": point.dataset, "side": point.side, "share": share,
                                     "classifier": "convnet", "seed": point.seed, "test_accuracy": accuracy,
                                     "wall_seconds": wall, "settings": dataclasses.asdict(cfg)})


def test_a_point_with_a_record_of_the_same_settings_is_skipped(folders):
    points = curve.plan("cifar10", seeds=[0])
    assert curve.missing(points, TINY) == points
    assert "no records of these settings yet" in curve.describe_missing(points, TINY)
    _fake_record(points[3], TINY, wall=180.0)
    _fake_record(points[4], dataclasses.replace(TINY, epochs=2))  # other settings: not this point's run
    todo = curve.missing(points, TINY)
    assert points[3] not in todo and points[4] in todo and len(todo) == 11
    text = curve.describe_missing(points, TINY)
    assert text.splitlines()[0].startswith("11 of 12 points have no record")
    assert "  3.0 min  cifar10 top 95% seed 0  [this machine]" in text
    assert text.splitlines()[-1] == "total: 33 min"


def test_run_curve_refuses_a_dirty_checkout(folders, monkeypatch):
    monkeypatch.setattr("lowvar_mae.provenance.git_revision", lambda: "abc123-dirty")
    with pytest.raises(RuntimeError, match="uncommitted changes"):
        curve.run_curve(curve.plan("synthetic", seeds=[0]), TINY)


def test_run_curve_writes_one_record_per_point_and_skips_them_next_time(folders):
    points = [p for p in curve.plan("synthetic", seeds=[0]) if (p.side, p.share) in (("full", None), ("bottom", 0.25))]
    written = curve.run_curve(points, TINY, device="cpu", allow_dirty=True, log=lambda *_: None)
    assert len(written) == 2 and curve.missing(points, TINY) == []
    from lowvar_mae.results import load_records

    records = load_records("subspace", folders / "results")
    assert sorted(records["side"]) == ["bottom", "full"]
    assert all(0 <= a <= 1 for a in records["test_accuracy"])
    bottom = records[records["side"] == "bottom"].iloc[0]
    assert bottom["n_components"] > 0 and 0 < bottom["kept_share_test"] < 0.4
    assert curve.run_curve(points, TINY, device="cpu", allow_dirty=True, log=lambda *_: None) == []
    (folders / "runs" / curve.STOP_FILE).parent.mkdir(parents=True, exist_ok=True)
    (folders / "runs" / curve.STOP_FILE).touch()
    more = curve.plan("synthetic", seeds=[0])
    assert curve.run_curve(more, TINY, device="cpu", allow_dirty=True, log=lambda *_: None) == []


def test_the_augmentation_flips_only_when_asked():
    """pad 0: no crop, so the only change can be the flip. With it about half the images come
    back mirrored; without it every image comes back as it was."""
    import torch

    images = torch.rand(64, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = curve.pad_crop_flip(images, 0, gen)
    mirrored = [bool((o == i.flip(-1)).all()) and not bool((o == i).all()) for o, i in zip(out, images)]
    assert 16 < sum(mirrored) < 48
    assert torch.equal(curve.pad_crop_flip(images, 0, torch.Generator().manual_seed(0), flip=False), images)


def test_a_record_older_than_a_setting_counts_as_made_with_its_default():
    settings = dataclasses.asdict(ConvNetConfig())
    older = {k: v for k, v in settings.items() if k != "flip"}  # written before the flip setting existed
    assert curve.same_settings(older, ConvNetConfig())
    assert not curve.same_settings(older, ConvNetConfig(flip=False))
    assert not curve.same_settings({**settings, "epochs": 7}, ConvNetConfig())
    assert not curve.same_settings(None, ConvNetConfig())
