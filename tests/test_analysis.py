"""Subspace classification and learning-order analyses: invariants and cross-checks."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lowvar_mae import basis_io, curve, learning_order, pca, probes
from lowvar_mae.data import load_dataset, make_synthetic
from lowvar_mae.models import build_mae
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import make_config
from lowvar_mae.targets import basis_path, images_digest, make_target
from lowvar_mae.train import read_metrics


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "results"))
    return tmp_path / "runs"


def smooth_images(n=400, shape=(3, 8, 8), seed=0):
    """Images in [0, 1] with a steep spectrum: smooth fields plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, shape[0], 2, 2, generator=g), size=shape[1:],
                                             mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(n, *shape, generator=g)).double()


def small_synthetic(n, seed, size=8):
    images, labels = make_synthetic(n, seed, size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


# ---------------------------------------------------------------- subspace classification


def test_projection_keeps_the_asked_share_within_one_component():
    x = smooth_images()
    basis = pca.fit_pca(x, method="covariance")
    largest = float(basis.explained_variance_ratio()[0])
    not_exact = 0
    for side, shares in (("top", curve.DEFAULT_SHARES_TOP), ("bottom", curve.DEFAULT_SHARES_BOTTOM)):
        for share in shares:
            kept = pca.kept_variance_share(pca.project_split(x, basis, side, share), x)
            if side == "top":
                assert share - 1e-9 <= kept <= share + largest + 1e-9, (side, share, kept)
            else:
                assert share - largest - 1e-9 <= kept <= share + 1e-9, (side, share, kept)
            # On the images the basis was fitted on, the measured share is the eigenvalue share.
            assert kept == pytest.approx(pca.eigen_share(basis, side, share), abs=1e-9)
            not_exact += abs(kept - share) > 1e-3
    assert not_exact > 0  # the cases do test the "within one component" slack
    # uint8 images are read as [0, 1]; the full side is the images themselves
    u8 = (x[:50] * 255).round().to(torch.uint8)
    assert pca.kept_variance_share(pca.project_split(u8, basis, "full", None), u8) == pytest.approx(1.0)


def test_subspace_columns_span_the_projection():
    x = smooth_images(n=300)
    basis = pca.fit_pca(x, method="covariance")
    coords = pca.pca_coordinates(x.float(), basis)
    comps = basis.components.float()
    for side, share in (("top", 0.9), ("bottom", 0.1), ("full", None)):
        cols = pca.subspace_columns(basis, side, share)
        rebuilt = coords[:, cols] @ comps[:, cols].T + basis.mean.float()
        expected = pca.project_split(x.float(), basis, side, share).flatten(1)
        torch.testing.assert_close(rebuilt, expected, atol=2e-5, rtol=0)
        assert cols.stop - cols.start == pca.subspace_dim(basis, side, share)


def test_linear_classifier_beats_chance_and_pixels_agree_with_coordinates():
    train_x, train_y = small_synthetic(1000, 1)
    test_x, test_y = small_synthetic(500, 2)
    basis = pca.fit_pca(train_x, method="covariance")
    cfg = probes.LinearConfig(weight_decay=1e-2, max_iter=300)  # strongly convex: converges fully
    pixels = probes.linear_accuracy(pca.as_unit_float(train_x), train_y, pca.as_unit_float(test_x), test_y, 10, cfg)
    assert pixels["test_accuracy"] > 0.3  # chance: 0.1 (binomial std on 500 images: 0.013)
    coords = probes.linear_accuracy(pca.pca_coordinates(train_x, basis), train_y,
                                      pca.pca_coordinates(test_x, basis), test_y, 10, cfg,
                                      pixel_dim=basis.dim)
    assert max(pixels["iterations"], coords["iterations"]) < cfg.max_iter
    # The same penalised problem in rotated variables: the same optimum.
    assert coords["train_loss"] == pytest.approx(pixels["train_loss"], rel=1e-3)
    assert abs(coords["test_accuracy"] - pixels["test_accuracy"]) <= 0.004


def test_grid_runs_both_classifiers_and_the_convnet_run_loads(runs):
    train_x, train_y = small_synthetic(256, 1)
    test_x, test_y = small_synthetic(128, 2)
    basis = pca.fit_pca(train_x, method="covariance")
    cfg = curve.ConvNetConfig(width=4, epochs=1, batch_size=64)
    kwargs = dict(num_classes=10, dataset="toy", shares_top=(0.9,), shares_bottom=(0.25,),
                  classifiers=("linear", "convnet"), convnet=cfg, linear=probes.LinearConfig(max_iter=20))
    rows = curve.classify_subspaces(train_x, train_y, test_x, test_y, basis, **kwargs)
    assert [(r["side"], r["classifier"]) for r in rows] == [
        (s, c) for s in ("full", "top", "bottom") for c in ("linear", "convnet")]
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1
        assert r["full_accuracy"] == rows[0 if r["classifier"] == "linear" else 1]["test_accuracy"]
        json.dumps(r)  # a record must be JSON
    conv = [r for r in rows if r["classifier"] == "convnet"]
    assert all(r["details"]["epochs_done"] == 1 for r in conv)
    assert len({r["details"]["run_dir"] for r in conv}) == 3
    assert len(read_metrics(conv[1]["details"]["run_dir"])) == 1
    again = curve.classify_subspaces(train_x, train_y, test_x, test_y, basis, **kwargs)
    for a, b in zip(rows, again):
        assert a["test_accuracy"] == b["test_accuracy"]
    assert len(read_metrics(conv[1]["details"]["run_dir"])) == 1  # loaded, not trained again


def test_pad_crop_flip_takes_a_shifted_window():
    x = torch.rand(64, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = curve.pad_crop_flip(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    flips = 0
    for i in range(len(x)):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54


# ---------------------------------------------------------------- learning order


def hand_basis(n_stored=5, seed=0):
    """A 6-dimensional basis with eigenvalues 4, 3, 1, 1, 0.5, 0.5 (shares .4 .7 .8 .9 .95 1)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((6, 6)))
    basis = pca.PCABasis(mean=torch.full((6,), 0.5, dtype=torch.float64),
                         eigenvalues=torch.tensor([4, 3, 1, 1, 0.5, 0.5], dtype=torch.float64),
                         components=torch.from_numpy(q[:, :n_stored].copy()), image_shape=(6, 1, 1),
                         n_samples=100, method="hand")
    return basis, q


def test_band_errors_match_a_direct_numpy_computation():
    basis, q = hand_basis(n_stored=5)
    bands = learning_order.make_bands(basis, (0, 0.5, 0.9, 1))
    assert bands.starts == (0, 2, 4, 6)  # top 50%: 2 components; top 90%: 4 (boundary met exactly)
    rng = np.random.default_rng(1)
    pred, target, images = rng.random((3, 7, 6))
    result = learning_order.band_errors(torch.from_numpy(pred), torch.from_numpy(target), basis, bands,
                                  images=torch.from_numpy(images))
    coef = (pred - target) @ q  # all six directions, numpy's own
    expected = [(coef[:, 0:2] ** 2).sum(1).mean(), (coef[:, 2:4] ** 2).sum(1).mean(),
                (coef[:, 4:6] ** 2).sum(1).mean()]
    np.testing.assert_allclose(result.sq_error.numpy(), expected, rtol=1e-10)
    residual_var = (((images - 0.5) @ q[:, 5]) ** 2).mean()  # the one direction not stored
    np.testing.assert_allclose(result.variance.numpy(), [7, 2, 0.5 + residual_var], rtol=1e-10)
    np.testing.assert_allclose(result.rel_error.numpy(), np.array(expected) / [7, 2, 0.5 + residual_var])


@pytest.mark.parametrize("truncated", [False, True])
def test_band_errors_add_up_to_the_total_squared_error(truncated):
    x = smooth_images(n=40, shape=(3, 4, 4))  # 40 images < 48 pixels: the Gram path stores 39
    basis = pca.fit_pca(x)
    edges = learning_order.DECILES
    if truncated:  # keep two components beyond the start of the last band
        edges = (0, 0.3, 0.6, 1)
        basis = pca.fit_pca(x, n_components=basis.n_components(0.6, "top") + 2)
    assert basis.n_stored < basis.dim
    g = torch.Generator().manual_seed(3)
    pred, target = torch.rand(2, 9, 3, 4, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(9, 1, 4, 4, generator=g) < 0.75).double()
    for m in (None, mask):
        result = learning_order.band_errors(pred, target, basis, edges, mask=m)
        err = ((pred - target) * (1 if m is None else m)).flatten(1)
        total = float((err ** 2).sum(1).mean())
        assert float(result.sq_error.sum()) == pytest.approx(total, rel=1e-10)
        assert result.total_sq_error == pytest.approx(total, rel=1e-10)
        assert (result.sq_error >= 0).all()
        # The last band holds the residual too, not just its stored components.
        stored_last = ((err @ basis.components) ** 2).mean(0)[result.bands.starts[-2]:].sum()
        assert float(result.sq_error[-1]) > float(stored_last) + 0.1 * total


def test_band_edges_are_checked():
    basis, _ = hand_basis(n_stored=2)
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        learning_order.make_bands(basis, (0.1, 0.5, 1))
    with pytest.raises(ValueError, match="stores 2 components"):
        learning_order.make_bands(basis, (0, 0.5, 0.9, 1))  # the last band would start at component 4


def test_hook_returns_bands_for_a_micro_model():
    torch.manual_seed(0)
    model = build_mae("micro")
    images = smooth_images(n=100, shape=(3, 16, 16)).float()
    basis = pca.fit_pca(images[:60])  # Gram path: 59 of 768 directions stored, the rest is residual
    hook = learning_order.learning_order_hook(images[60:76], basis, make_target("pixels"), every=2, seed=5)
    out = hook(model, 1)
    assert set(out) == {"band_rel_error", "band_edges"}
    assert out["band_edges"] == pytest.approx(list(learning_order.DECILES))
    values = [v for v in out["band_rel_error"] if v is not None]
    assert len(out["band_rel_error"]) == 10 and values and all(v > 0 for v in values)
    assert hook(model, 2) == out  # fixed batch, fixed mask, same weights: same values
    assert hook(model, 3) == {}
    json.dumps(out, allow_nan=False)


def test_hook_lands_in_metrics_and_a_run_without_bands_is_retrained(runs):
    config = make_config("quick", "synthetic", epochs=1, batch_size=32, n_train=64)
    small = pca.fit_pca(load_dataset("synthetic", "train", n=120).to_tensor(), dataset="synthetic")
    source = images_digest(load_dataset("synthetic", "train").to_tensor())
    # dataset_basis finds it (keyed and labelled with the whole split's digest) instead of fitting 5000 images
    basis_io.save_basis(dataclasses.replace(small, source=source), basis_path("synthetic", source))

    plain = pretrain(config, device="cpu", progress=False)  # another chapter's run: no hook
    assert "band_rel_error" not in plain.metrics[0]
    weights = {k: v.clone() for k, v in plain.model.state_dict().items()}

    run, note = learning_order.learning_order_run(config, n_eval=8, missing="skip", device="cpu")
    assert not run.trained_now and "without band metrics" in note
    assert learning_order.read_band_metrics(run.run_dir).empty

    run, note = learning_order.learning_order_run(config, n_eval=8, device="cpu")
    assert run.trained_now and note.startswith("retrained")
    line = read_metrics(run.run_dir)[0]
    assert len(line["band_rel_error"]) == 10 and line["band_edges"][-1] == 1.0
    frame = learning_order.read_band_metrics(run.run_dir)
    assert len(frame) == 10 and list(frame["band"]) == list(range(10)) and set(frame["epoch"]) == {1}
    for k, v in run.model.state_dict().items():  # the hook changes nothing in what is learned
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)

    run, note = learning_order.learning_order_run(config, n_eval=8, device="cpu")
    assert not run.trained_now and note == "loaded with band metrics"

    # the committed record of a run: its band errors round-trip through the results folder
    from lowvar_mae.results import load_records, write_record

    write_record(learning_order.LEARNING_ORDER_KIND, learning_order.learning_order_fields(run, note), device="cpu")
    frames = learning_order.learning_order_records(load_records(learning_order.LEARNING_ORDER_KIND, runs.parent / "results"))
    assert list(frames) == ["pixels"]
    pd_testing = __import__("pandas").testing
    pd_testing.assert_frame_equal(frames["pixels"], frame)


@pytest.mark.parametrize("anisotropic", [False, True])
def test_linear_classifier_agrees_with_scikit_learn(anisotropic):
    """Same penalised problem, solved independently: scikit-learn's lbfgs LogisticRegression.

    On standardised features our objective is mean cross-entropy + (wd / 2) ||W||^2 with an
    unpenalised bias; scikit-learn's is C * sum of cross-entropies + ||W||^2 / 2, the same
    problem for C = 1 / (wd * N). Feature scales spanning four orders of magnitude
    (anisotropic) are where an unconverged fit shows.
    """
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d, k = 600, 12, 3
    labels = rng.integers(0, k, n)
    centres = rng.normal(size=(k, d))
    x = centres[labels] + rng.normal(size=(n, d)) * 1.5
    if anisotropic:
        x = x * np.logspace(-2, 2, d)
    x = (x - x.mean(0)) / x.std(0, ddof=1)  # standardised as linear_accuracy does it: ours is then the identity
    wd = 1e-2
    ours = probes.linear_accuracy(torch.tensor(x[:400], dtype=torch.float32), torch.tensor(labels[:400]),
                                    torch.tensor(x[400:], dtype=torch.float32), torch.tensor(labels[400:]), k,
                                    probes.LinearConfig(weight_decay=wd, max_iter=500))
    ref = LogisticRegression(C=1 / (wd * 400), tol=1e-10, max_iter=10_000).fit(x[:400], labels[:400])
    proba = ref.predict_proba(x[:400])
    ref_loss = float(-np.log(proba[np.arange(400), labels[:400]]).mean())
    assert ours["train_loss"] == pytest.approx(ref_loss, abs=1e-4)
    assert ours["train_accuracy"] == pytest.approx(ref.score(x[:400], labels[:400]), abs=1 / 400)
    assert ours["test_accuracy"] == pytest.approx(ref.score(x[400:], labels[400:]), abs=1 / 200)
    assert ours["converged"]


def _blobs(n=600, d=12, k=3, seed=0, anisotropic=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    x = rng.normal(size=(k, d))[labels] + rng.normal(size=(n, d)) * 1.5
    if anisotropic:
        x = x * np.logspace(-2, 2, d)
    return torch.tensor(x), torch.tensor(labels)


def test_sklearn_agreement_finds_the_same_optimum_on_raw_anisotropic_features():
    """Features not standardised and with scales over four orders of magnitude: both solvers
    see z = (x - mean) / s and must land on one optimum of one objective."""
    x, y = _blobs()
    tight = dataclasses.replace(probes.SUBSPACE_LINEAR, tolerance_grad=1e-8)
    out = probes.sklearn_agreement(x[:400], y[:400], x[400:], y[400:], 3, 1e-2, cfg=tight, tol=1e-10)
    assert abs(out["objective_gap"]) < 1e-10
    assert out["weight_rel_diff"] < 1e-3
    assert out["test_prediction_agreement"] == 1.0
    for side in ("ours", "sklearn"):
        assert out[side]["grad_max"] < 1e-4 and out[side]["iterations"] > 0
    assert out["ours"]["test_accuracy"] == out["sklearn"]["test_accuracy"]
    # a stub that returned a worse point would show: the objective at zero weights is log(3)
    assert out["sklearn"]["objective"] < np.log(3) - 0.1
    loose = probes.sklearn_agreement(x[:400], y[:400], x[400:], y[400:], 3, 1e-2, tol=1e-10)
    assert 0 <= loose["objective_gap"] < 1e-5 and loose["ours"]["grad_max"] <= 1e-4  # stopped at the stated tolerance


def test_penalty_is_chosen_on_held_out_training_rows_and_refitted():
    x, y = _blobs(n=900, d=40, k=3, seed=1, anisotropic=False)
    cfg = probes.LinearConfig(weight_decays=(1e-4, 30.0), val_fraction=0.3, max_iter=300, dtype="float64")
    out = probes.fit_linear(x[:700], y[:700], x[700:], y[700:], 3, cfg, seed=0)
    val = out["val_accuracy"]
    assert set(val) == {"0.0001", "30.0"}
    assert out["weight_decay"] == 1e-4 and val["0.0001"] > val["30.0"]  # a huge penalty predicts near chance
    assert out["converged"] and out["val_converged"] and "weight" not in out
    single = probes.linear_accuracy(x[:700], y[:700], x[700:], y[700:], 3,
                                      dataclasses.replace(cfg, weight_decays=(), weight_decay=1e-4))
    assert out["test_accuracy"] == single["test_accuracy"]  # the chosen penalty refitted on all training rows
    tie = probes.choose_weight_decay(x[:10], y[:10], x[10:20], y[10:20], 3,
                                       probes.LinearConfig(weight_decays=(1e-3, 1e-3 + 1e-12, 1e-3 + 2e-12)))
    assert tie[0] == 1e-3 + 2e-12  # equal validation accuracy: the larger penalty
    with pytest.raises(ValueError, match="val_fraction must leave at least one of the 700 training rows"):
        probes.fit_linear(x[:700], y[:700], x[700:], y[700:], 3, dataclasses.replace(cfg, val_fraction=1.0))
    with pytest.raises(ValueError, match="weight_decays must be a non-empty list of penalties >= 0"):
        probes.choose_weight_decay(x, y, x, y, 3, probes.LinearConfig(weight_decays=(-1.0,)))
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'float16'"):
        probes.linear_accuracy(x, y, x, y, 3, probes.LinearConfig(dtype="float16"))
