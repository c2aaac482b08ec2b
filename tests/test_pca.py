"""PCA: cross-checks against numpy and scikit-learn, and the share convention."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from lowvar_mae import pca
from lowvar_mae.basis_io import load_basis, save_basis
from lowvar_mae.pca import fit_pca, make_filter, n_components, project


def structured_images(n, shape=(3, 6, 6), seed=0):
    """Images with a decaying spectrum: a few strong smooth modes plus weak noise, in [0, 1]."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    modes = rng.normal(size=(8, d))
    coeffs = rng.normal(size=(n, 8)) * np.array([1.0, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02])
    x = 0.5 + 0.05 * coeffs @ modes + 0.005 * rng.normal(size=(n, d))
    return torch.from_numpy(np.clip(x, 0, 1).reshape(n, *shape))


def numpy_pca(x):
    """Reference: Algorithm 1 with numpy.linalg.eigh, decreasing order."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / (len(flat) - 1)
    evals, evecs = np.linalg.eigh(cov)
    return mu, evals[::-1], evecs[:, ::-1]


def assert_same_subspace(a, b, atol=1e-6):
    """Columns of a and b span the same space: the projectors agree."""
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=atol)


@pytest.mark.parametrize("data", ["random", "structured"])
def test_covariance_fit_matches_numpy_and_sklearn(data):
    x = torch.rand(300, 3, 4, 4, dtype=torch.float64) if data == "random" else structured_images(300, (3, 4, 4))
    basis = fit_pca(x, method="covariance", batch_size=64)
    mu, evals, evecs = numpy_pca(x.numpy())
    np.testing.assert_allclose(basis.mean.numpy(), mu, atol=1e-12)
    np.testing.assert_allclose(basis.eigenvalues.numpy(), np.clip(evals, 0, None), rtol=1e-8, atol=1e-14)
    sk = PCA().fit(x.reshape(300, -1).numpy())
    np.testing.assert_allclose(basis.eigenvalues.numpy(), sk.explained_variance_, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(basis.explained_variance_ratio().numpy(), sk.explained_variance_ratio_, rtol=1e-7, atol=1e-14)
    # Subspaces up to sign: compare the leading 10 components one by one.
    comps = basis.components.numpy()
    for i in range(10):
        assert abs(abs(comps[:, i] @ sk.components_[i]) - 1) < 1e-6
        assert abs(abs(comps[:, i] @ evecs[:, i]) - 1) < 1e-6


def test_streaming_equals_one_shot():
    x = structured_images(257, (3, 4, 4))
    one = fit_pca(x, method="covariance", batch_size=10_000)
    streamed = fit_pca(iter(torch.split(x, 37)), batch_size=1)
    np.testing.assert_allclose(streamed.mean.numpy(), one.mean.numpy(), atol=1e-13)
    np.testing.assert_allclose(streamed.eigenvalues.numpy(), one.eigenvalues.numpy(), rtol=1e-9, atol=1e-15)
    assert_same_subspace(streamed.components[:, :5].numpy(), one.components[:, :5].numpy(), atol=1e-8)


def test_uint8_images_are_scaled_to_unit_interval():
    x8 = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    a = fit_pca(x8, method="covariance")
    b = fit_pca(x8.double() / 255, method="covariance")
    np.testing.assert_allclose(a.eigenvalues.numpy(), b.eigenvalues.numpy(), rtol=1e-10, atol=1e-16)


def test_gram_path_equals_covariance_path():
    # Fewer images than pixels: the Gram path sees rank N - 1.
    x = structured_images(40, (3, 5, 5), seed=1)
    gram = fit_pca(x, method="gram")
    cov = fit_pca(x, method="covariance")
    assert fit_pca(x).method == "gram"
    rank = 39
    assert gram.n_stored == rank
    np.testing.assert_allclose(gram.eigenvalues[:rank].numpy(), cov.eigenvalues[:rank].numpy(), rtol=1e-8)
    assert torch.all(gram.eigenvalues[rank:] == 0)
    np.testing.assert_allclose(gram.components.T @ gram.components, np.eye(rank), atol=1e-10)
    assert_same_subspace(gram.components[:, :20].numpy(), cov.components[:, :20].numpy(), atol=1e-7)
    # Filtered training images agree between the two fits on either side.
    for side, share in [("top", 0.75), ("bottom", 0.25), ("bottom", 0.05)]:
        torch.testing.assert_close(project(x, gram, side, share), project(x, cov, side, share), atol=1e-9, rtol=0)


def test_share_boundary_convention():
    ev = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)  # shares .4 .3 .2 .1
    # top: smallest k whose share reaches p; an exactly met boundary counts as met.
    assert n_components(ev, 0.7, "top") == 2
    assert n_components(ev, 0.70001, "top") == 3
    assert n_components(ev, 0.39, "top") == 1
    assert n_components(ev, 0.99, "top") == 4
    # bottom: largest k whose share stays within q.
    assert n_components(ev, 0.3, "bottom") == 2
    assert n_components(ev, 0.29999, "bottom") == 1
    assert n_components(ev, 0.05, "bottom") == 0
    assert n_components(ev, 0.6, "bottom") == 3


@pytest.mark.parametrize("seed", range(5))
def test_top_and_bottom_counts_are_complementary(seed):
    g = torch.Generator().manual_seed(seed)
    ev = torch.sort(torch.rand(500, generator=g, dtype=torch.float64) ** 6, descending=True).values
    for q in torch.rand(50, generator=g).tolist():
        q = min(max(q, 1e-3), 1 - 1e-3)
        assert n_components(ev, 1 - q, "top") + n_components(ev, q, "bottom") == 500


def test_top_plus_bottom_is_image_plus_mean():
    x = structured_images(400, (3, 4, 4), seed=2)
    basis = fit_pca(x, method="covariance")
    test = structured_images(20, (3, 4, 4), seed=3)
    for q in (0.1, 0.25, 0.5):
        top = project(test, basis, "top", 1 - q)
        for method in ("complement", "strict"):
            bottom = project(test, basis, "bottom", q, method=method)
            torch.testing.assert_close(top + bottom, test + basis.mean.view(1, 3, 4, 4), atol=1e-10, rtol=0)


def test_projection_matches_numpy_algorithm_one():
    x = structured_images(300, (3, 4, 4), seed=4)
    basis = fit_pca(x, method="covariance")
    mu, evals, evecs = numpy_pca(x.numpy())
    flat = x.reshape(300, -1).numpy()
    cum = np.cumsum(evals) / evals.sum()
    k_top = int(np.argmax(cum >= 0.75)) + 1
    v = evecs[:, :k_top]
    expected_top = (flat - mu) @ v @ v.T + mu
    got_top = project(x, basis, "top", 0.75).reshape(300, -1).numpy()
    np.testing.assert_allclose(got_top, expected_top, atol=1e-9)
    cum_bottom = np.cumsum(evals[::-1]) / evals.sum()
    k_bot = int(np.sum(cum_bottom <= 0.25))
    v = evecs[:, len(evals) - k_bot:]
    expected_bottom = (flat - mu) @ v @ v.T + mu
    for method in ("complement", "strict"):
        got = project(x, basis, "bottom", 0.25, method=method).reshape(300, -1).numpy()
        np.testing.assert_allclose(got, expected_bottom, atol=1e-9)


def test_measured_variance_share_matches_asked_share():
    x = structured_images(500, (3, 4, 4), seed=5)
    basis = fit_pca(x, method="covariance")
    total = x.reshape(500, -1).var(0, unbiased=True).sum()
    for side, share in [("top", 0.75), ("top", 0.9), ("bottom", 0.25), ("bottom", 0.1)]:
        kept = project(x, basis, side, share).reshape(500, -1).var(0, unbiased=True).sum() / total
        # Within one component's worth of the asked share, on the documented side of it.
        largest = float(basis.explained_variance_ratio()[0])
        if side == "top":
            assert share - 1e-9 <= kept <= share + largest
        else:
            assert share - largest <= kept <= share + 1e-9


def test_strict_and_complement_differ_outside_the_training_span():
    # Gram path: 30 images of 75 pixels span 29 directions; a new image has a part outside.
    train = structured_images(30, (3, 5, 5), seed=6)
    basis = fit_pca(train, method="gram")
    inside = train[:4]
    torch.testing.assert_close(project(inside, basis, "bottom", 0.25, method="strict"),
                               project(inside, basis, "bottom", 0.25), atol=1e-9, rtol=0)
    new = torch.rand(4, 3, 5, 5, dtype=torch.float64)
    strict = project(new, basis, "bottom", 0.25, method="strict")
    complement = project(new, basis, "bottom", 0.25)
    flat = (new.reshape(4, -1) - basis.mean)
    v = basis.components
    outside = flat - flat @ v @ v.T
    torch.testing.assert_close((complement - strict).reshape(4, -1), outside, atol=1e-9, rtol=0)
    assert outside.norm() > 0.1


def test_save_and_load_roundtrip(tmp_path):
    x = structured_images(100, (3, 4, 4), seed=7)
    basis = fit_pca(x, method="covariance", dataset="toy", split="train")
    path = save_basis(basis, tmp_path / "sub" / "basis.safetensors")
    loaded = load_basis(path)
    assert loaded.image_shape == (3, 4, 4) and loaded.n_samples == 100
    assert (loaded.dataset, loaded.split, loaded.method) == ("toy", "train", "covariance")
    torch.testing.assert_close(loaded.eigenvalues, basis.eigenvalues)
    torch.testing.assert_close(project(x, loaded, "bottom", 0.25), project(x, basis, "bottom", 0.25), atol=1e-6, rtol=0)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["basis.safetensors"]


def test_failed_save_leaves_previous_file(tmp_path, monkeypatch):
    basis = fit_pca(structured_images(50, (3, 4, 4)), method="covariance")
    path = save_basis(basis, tmp_path / "basis.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError):
        save_basis(basis, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["basis.safetensors"]


def test_truncated_basis_supports_complement_but_not_strict():
    x = structured_images(200, (3, 4, 4), seed=8)
    full = fit_pca(x, method="covariance")
    k = full.n_components(0.9, "top")
    small = fit_pca(x, method="covariance", n_components=k)
    torch.testing.assert_close(project(x, small, "bottom", 0.1), project(x, full, "bottom", 0.1), atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="strict bottom"):
        make_filter(small, "bottom", 0.1, method="strict")
    with pytest.raises(ValueError, match="stores"):
        make_filter(small, "top", 0.999)


def test_filter_runs_in_float32_on_the_images_device():
    x = structured_images(100, (3, 4, 4), seed=9)
    basis = fit_pca(x, method="covariance")
    flt = make_filter(basis, "bottom", 0.25)
    out = flt(x.float())
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out.double(), project(x, basis, "bottom", 0.25), atol=1e-5, rtol=0)


@pytest.mark.parametrize("share", [0, 1, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_share_is_rejected(share):
    basis = fit_pca(structured_images(20, (3, 2, 2)), method="covariance")
    with pytest.raises(ValueError, match="share must be a number strictly between 0 and 1"):
        make_filter(basis, "top", share)


def test_bad_inputs_name_the_value():
    basis = fit_pca(structured_images(20, (3, 2, 2)), method="covariance", dataset="toy")
    with pytest.raises(ValueError, match=r"\(3, 2, 2\).*toy.*\(3, 4, 4\)"):
        project(torch.rand(2, 3, 4, 4), basis, "top", 0.5)
    with pytest.raises(ValueError, match="'middle'"):
        make_filter(basis, "middle", 0.5)
    with pytest.raises(ValueError, match="'exact'"):
        make_filter(basis, "bottom", 0.5, method="exact")
    with pytest.raises(ValueError, match="empty dataset"):
        fit_pca(torch.zeros(0, 3, 2, 2))
    with pytest.raises(ValueError, match="at least 2 images"):
        fit_pca(torch.zeros(1, 3, 2, 2), method="covariance")
    with pytest.raises(ValueError, match="'svd'"):
        fit_pca(torch.zeros(4, 3, 2, 2), method="svd")
    with pytest.raises(ValueError, match="not a PCA basis"):
        import os
        import tempfile

        import safetensors.torch
        path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
        safetensors.torch.save_file({"a": torch.zeros(1)}, path)
        load_basis(path)


def test_eigenimages_and_cumulative_share():
    x = structured_images(200, (3, 4, 4), seed=10)
    basis = fit_pca(x, method="covariance")
    imgs = basis.eigenimages(3)
    assert imgs.shape == (3, 3, 4, 4)
    torch.testing.assert_close(imgs[1].flatten(), basis.components[:, 1])
    top = basis.cumulative_share("top")
    bottom = basis.cumulative_share("bottom")
    assert torch.all(torch.diff(top) >= -1e-15) and abs(float(top[-1]) - 1) < 1e-12
    torch.testing.assert_close(bottom[:-1], 1 - top.flip(0)[1:], atol=1e-12, rtol=0)
    assert pca.SHARE_CONVENTION in str(basis.metadata())


# ---------------------------------------------------------------- the top-k solver


def decaying_images(n, shape, seed=0, modes=24):
    """Images whose spectrum decays geometrically (0.8 per mode) above weak noise, float64 in [0, 1]."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    basis = rng.normal(size=(modes, d))
    coeffs = rng.normal(size=(n, modes)) * (0.8 ** np.arange(modes))
    x = 0.5 + 0.03 * coeffs @ basis + 0.003 * rng.normal(size=(n, d))
    return torch.from_numpy(np.clip(x, 0, 1).reshape(n, *shape))


def numpy_bottom(x, q):
    """Reference complement filter with numpy: x - (x - mu) V V^T, V the top components for 1 - q."""
    mu, evals, evecs = numpy_pca(x)
    k = n_components(torch.from_numpy(evals.copy()), 1 - q, "top")
    flat = x.reshape(len(x), -1)
    v = evecs[:, :k]
    return flat - (flat - mu) @ v @ v.T, k, evals


@pytest.mark.parametrize("operator", ["data", "covariance"])
@pytest.mark.parametrize("q", [0.25, 0.1])
def test_topk_fit_matches_numpy_on_the_dense_path(operator, q):
    x = decaying_images(500, (3, 8, 8))  # D = 192 <= 2 * block * depth: solved densely
    ref, k, evals = numpy_bottom(x.numpy(), q)
    basis, info = pca.fit_topk(x, top_share=1 - q, operator=operator)
    assert info["k"] == basis.n_stored == k
    np.testing.assert_allclose(basis.eigenvalues[:k].numpy(), evals[:k], rtol=1e-8)
    assert float(basis.eigenvalues.sum()) == pytest.approx(evals.sum(), rel=1e-10)
    out = project(x, basis, "bottom", q).reshape(len(x), -1).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-8


@pytest.mark.parametrize("q", [0.25, 0.1])
def test_topk_fit_iterates_to_the_exact_filter(q):
    x = decaying_images(400, (3, 16, 16), seed=1)  # D = 768: block Lanczos, float32 then float64 passes
    ref, k, evals = numpy_bottom(x.numpy(), q)
    basis = fit_pca(x, solver="topk", top_share=1 - q, batch_size=128)
    assert basis.method == "topk-data" and basis.n_stored == k
    np.testing.assert_allclose(basis.eigenvalues[:k].numpy(), evals[:k], rtol=1e-6)
    out = project(x, basis, "bottom", q).reshape(len(x), -1).numpy()
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-4
    # The stored spectrum keeps the share convention: top(1 - q) + bottom(q) == D.
    assert basis.n_components(1 - q, "top") + basis.n_components(q, "bottom") == basis.dim
    assert basis.n_components(1 - q, "top") == k


def test_topk_fit_on_uint8_with_a_fixed_count_and_its_info():
    x = (decaying_images(300, (3, 16, 16), seed=2) * 255).round().to(torch.uint8)
    basis, info = pca.fit_topk(x, n_components=5, block=8, depth=3)
    _, evals, evecs = numpy_pca(x.numpy().astype(np.float64) / 255)
    assert basis.n_stored == 5 and info["k"] == 5 and info["cycles"] >= 1
    assert info["relative_residual"] <= 5e-5
    np.testing.assert_allclose(basis.eigenvalues[:5].numpy(), evals[:5], rtol=1e-6)
    assert_same_subspace(basis.components.numpy(), evecs[:, :5], atol=1e-6)


@pytest.mark.parametrize("kind", ["uint8", "float64"])
@pytest.mark.parametrize("max_cache_bytes", [0, 2 ** 31])
def test_data_covariance_operator_matches_numpy(kind, max_cache_bytes):
    """Mean, total variance and C q against numpy, cached or streamed, in both pass precisions."""
    from lowvar_mae.eigsolver import DataCovariance

    x = (decaying_images(130, (3, 4, 4), seed=3) * 255).round().to(torch.uint8)
    if kind == "float64":
        x = x.double() / 255
    flat = x.reshape(len(x), -1).numpy().astype(np.float64) / (255 if kind == "uint8" else 1)
    mu = flat.mean(0)
    cov = (flat - mu).T @ (flat - mu) / (len(flat) - 1)
    op = DataCovariance(x, batch_size=48, max_cache_bytes=max_cache_bytes)  # batches of 48, 48, 34
    np.testing.assert_allclose(op.mean.numpy(), mu, rtol=1e-14, atol=1e-15)
    assert op.total_variance == pytest.approx(np.trace(cov), rel=1e-12)
    q = torch.linalg.qr(torch.randn(48, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    np.testing.assert_allclose(op(q, True).numpy(), cov @ q.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(op(q, False).numpy(), cov @ q.numpy(), rtol=1e-4, atol=1e-7)
    assert bool(op._cache) == (max_cache_bytes > 0)


def test_data_covariance_uint8_moments_are_exact():
    """Against exact int64 sums: bright images in batches of 3,000, where float32 sums of x^2 over a
    whole batch would round (partial sums past 2^24); sums over chunks of EXACT_ROWS rows do not."""
    from lowvar_mae.eigsolver import DataCovariance

    x = (decaying_images(4000, (3, 4, 4), seed=3) * 255 + 100).clamp(0, 255).round().to(torch.uint8)
    flat = x.reshape(len(x), -1).numpy().astype(np.int64)
    n, s1, s2 = len(flat), flat.sum(0), (flat * flat).sum(0)
    op = DataCovariance(x, batch_size=3000, max_cache_bytes=0)
    np.testing.assert_array_equal(op.mean.numpy(), s1 / (n * 255.0))
    exact_total = float((n * s2 - s1 * s1).sum()) / (n * (n - 1)) / 255.0 ** 2
    assert op.total_variance == pytest.approx(exact_total, rel=1e-15)


def test_topk_basis_round_trips_and_refuses_what_it_cannot_do(tmp_path):
    x = decaying_images(300, (3, 8, 8))
    basis = fit_pca(x, solver="topk", top_share=0.75)
    back = load_basis(save_basis(basis, tmp_path / "b.safetensors"))
    assert back.method == "topk-data" and back.n_stored == basis.n_stored
    torch.testing.assert_close(project(x, back, "bottom", 0.25), project(x, basis, "bottom", 0.25), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="strict bottom"):
        make_filter(basis, "bottom", 0.25, method="strict")
    with pytest.raises(ValueError, match="needs the first .* but the basis stores"):
        make_filter(basis, "bottom", 0.05)  # more top components than were fitted


@pytest.mark.parametrize("kwargs, match", [
    (dict(solver="topk"), "exactly one of top_share and n_components"),
    (dict(solver="topk", top_share=0.9, n_components=3), "exactly one of top_share and n_components"),
    (dict(solver="topk", top_share=1.5), "strictly between 0 and 1"),
    (dict(solver="topk", top_share=0.9, method="gram"), "applies to the exact solver"),
    (dict(top_share=0.9), "applies to solver='topk'"),
    (dict(solver="lanczos"), "solver must be one of"),
])
def test_topk_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_pca(decaying_images(50, (3, 4, 4)), **kwargs)


def test_topk_refuses_streamed_batches_and_unknown_operators():
    x = decaying_images(50, (3, 4, 4))
    with pytest.raises(ValueError, match="pass a tensor"):
        fit_pca(iter(torch.split(x, 10)), solver="topk", top_share=0.9)
    with pytest.raises(ValueError, match="operator must be one of"):
        pca.fit_topk(x, top_share=0.9, operator="gram")


def test_basis_summary_round_trip_is_small_and_filters_like_the_full_basis():
    import json

    from lowvar_mae.basis_io import basis_from_summary, basis_summary

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(600, 3, 2, 2, generator=g), size=(8, 8), mode="bilinear")
    x = (0.85 * smooth + 0.15 * torch.rand(600, 3, 8, 8, generator=g)).clamp(0, 1)
    basis = pca.fit_pca(x.double(), method="covariance", dataset="toy")
    summary = basis_summary(basis, k=12)
    text = json.dumps(summary)
    assert len(text) < 60_000
    back = basis_from_summary(json.loads(text))
    assert back.n_stored == 12 and back.image_shape == basis.image_shape
    np.testing.assert_allclose(back.eigenvalues.numpy(), basis.eigenvalues.numpy(), rtol=1e-6)
    np.testing.assert_allclose(back.components.numpy(), basis.components[:, :12].numpy(), atol=1 / 127)
    k = basis.n_components(0.9, "top")
    assert k <= 12
    full = pca.project(x[:5], basis, "bottom", 0.1)
    approx = pca.project(x[:5], back, "bottom", 0.1)
    assert float((full - approx).abs().max()) < 0.02  # int8 components: close, not equal
