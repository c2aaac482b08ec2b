"""The linear fill-in reference: a ridge map from visible to masked pixels, against
scikit-learn and on hand-made cases whose answer is known."""

import numpy as np
import pytest
from sklearn.linear_model import Ridge

from lowvar_mae.linear_fill import RIDGES, _ridge, linear_fill, patch_mask, relative_error


def test_patch_mask_hides_whole_patches_in_the_mae_share():
    m = patch_mask(32, 4, 0.75, seed=3)
    assert m.shape == (32, 32) and m.dtype == bool
    patches = m.reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(64, 16)
    assert set(patches.sum(1)) == {0, 16} and patches.all(1).sum() == 48
    assert (patch_mask(32, 4, 0.75, seed=3) == m).all() and (patch_mask(32, 4, 0.75, seed=4) != m).any()
    with pytest.raises(ValueError, match="patch_size dividing image_size"):
        patch_mask(30, 4, 0.75)


def test_ridge_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) * np.linspace(0.1, 3, 12) + 5
    y = x @ rng.normal(size=(12, 4)) + rng.normal(size=(200, 4)) + 2
    z = rng.normal(size=(30, 12)) + 5
    for ridge in (1e-3, 0.3):
        xc = x - x.mean(0)
        alpha = ridge * np.trace(xc.T @ xc) / 12  # the mean eigenvalue of the centred X^T X
        want = Ridge(alpha=alpha, fit_intercept=True).fit(x, y).predict(z)
        np.testing.assert_allclose(_ridge(x, y)(ridge)(z), want, rtol=1e-8, atol=1e-8)


def test_relative_error_is_one_for_the_mean_and_zero_for_the_truth():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(5000, 6)) * 3 + 1
    assert relative_error(t, t) == 0.0
    assert relative_error(np.ones_like(t), t) == pytest.approx(1.0, abs=0.05)  # the population mean
    with pytest.raises(ValueError, match="at least 2 images"):
        relative_error(t[:1], t[:1])


def test_a_target_the_visible_patches_determine_is_filled_in_and_noise_is_not():
    rng = np.random.default_rng(2)
    masked = patch_mask(8, 2, 0.75, seed=0)
    n = 600
    images = rng.normal(size=(n, 1, 8, 8))
    # a target that is a fixed linear function of the visible pixels, on the masked ones
    mix = rng.normal(size=(int((~masked).sum()), int(masked.sum())))
    target = np.zeros_like(images)
    target[:, 0][:, masked] = images[:, 0][:, ~masked] @ mix
    fill = linear_fill(images[:500], target[:500], images[500:], target[500:], masked)
    assert fill.error < 1e-3 and fill.n_visible == 16 and fill.n_masked == 48 and fill.n_test == 100
    # a target independent of the image: nothing to fill in, the mean image's score
    noise = rng.normal(size=images.shape)
    fill = linear_fill(images[:500], noise[:500], images[500:], noise[500:], masked)
    assert 0.95 < fill.error < 1.2 and fill.ridge == max(RIDGES)  # the held-out part asks for the most shrinkage
    with pytest.raises(ValueError, match=r"the mask is \(4, 4\)"):
        linear_fill(images, target, images, target, patch_mask(4, 2, 0.75))


def test_a_fill_in_record_is_written_once_per_mask_and_names_its_setting(tmp_path, monkeypatch):
    from lowvar_mae import linear_fill as lf
    from lowvar_mae.results import load_records

    calls = []

    def fake(dataset, target, *, patch_size, mask_ratio, seeds, root=None):
        calls.append((dataset, target, patch_size, list(seeds)))
        return {s: lf.LinearFill(error=0.25 + s, ridge=0.01, val_error=0.3, n_train=9, n_val=1, n_test=5,
                                 n_visible=4, n_masked=12) for s in seeds}

    monkeypatch.setattr(lf, "fill_in_reference", fake)
    [(path, rec)] = lf.record_fill_in("synthetic", "pca-bottom:0.250", patch_size=4, seeds=[1], allow_dirty=True,
                                      results_root=tmp_path)
    assert path is not None and path.parent.name == lf.FILL_IN_KIND
    assert rec["target"] == "pca-bottom:0.25" and rec["error"] == 1.25 and rec["patch_size"] == 4
    out = lf.record_fill_in("synthetic", "pca-bottom:0.25", patch_size=4, seeds=[0, 1], allow_dirty=True,
                            results_root=tmp_path)
    assert [p is None for p, _ in out] == [False, True] and [r["error"] for _, r in out] == [0.25, 1.25]
    assert calls[-1][3] == [0]  # only the seed without a record is computed
    lf.record_fill_in("synthetic", "pca-bottom:0.25", patch_size=2, seeds=[1], allow_dirty=True, results_root=tmp_path)
    records = load_records(lf.FILL_IN_KIND, tmp_path)
    assert sorted(records["patch_size"]) == [2, 4, 4] and len(calls) == 3
    assert {"git_revision", "device_name"} <= set(records.columns)


def test_pc_masking_has_no_patch_fill_in():
    from lowvar_mae.linear_fill import fill_in_reference

    with pytest.raises(ValueError, match="'pc-mask:0.2' masks components, not patches"):
        fill_in_reference("synthetic", "pc-mask:0.2", patch_size=4)
