"""Frequency-filtered targets: exact complements, known cases, numpy's FFT, variance shares."""

import numpy as np
import pytest
import torch

from lowvar_mae.reference import target_label
from lowvar_mae.targets import fft_variance_share, frequency_filter, frequency_radius, make_target, parse_target


def images(n=4, c=3, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_low_and_high_add_up_to_the_image_and_to_the_pixel_target():
    x = images()
    for r in (0.1, 0.35, 0.7, 1.0):
        torch.testing.assert_close(frequency_filter(x, r, "low") + frequency_filter(x, r, "high"), x,
                                   atol=1e-6, rtol=0)
        low, high, pixels = (make_target(t)(x) for t in (f"fft-low:{r}", f"fft-high:{r}", "pixels"))
        torch.testing.assert_close(low + high, pixels, atol=1e-6, rtol=0)


def test_a_constant_image_is_all_low_pass_and_a_checkerboard_all_high_pass():
    flat = torch.full((1, 3, 8, 8), 0.3)
    torch.testing.assert_close(frequency_filter(flat, 0.05, "low"), flat, atol=1e-6, rtol=0)
    assert frequency_filter(flat, 0.05, "high").abs().max() < 1e-6
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    board = ((i + j) % 2).float().expand(1, 3, 8, 8) - 0.5  # zero mean, both axes at Nyquist
    torch.testing.assert_close(frequency_filter(board, 1.0, "high"), board, atol=1e-6, rtol=0)
    assert frequency_filter(board, 1.0, "low").abs().max() < 1e-6


def test_filter_matches_numpy_fft_with_a_hand_built_mask():
    x = images(n=2, h=6, w=10, seed=1)
    r = 0.45
    fy = np.fft.fftfreq(6)[:, None]
    fx = np.fft.fftfreq(10)[None, :]
    mask = np.sqrt(fy ** 2 + fx ** 2) / 0.5 <= r
    expected = np.fft.ifft2(np.fft.fft2(x.numpy()) * mask).real
    np.testing.assert_allclose(frequency_filter(x, r, "low").numpy(), expected, atol=1e-6)
    assert frequency_radius(6, 10).shape == (6, 6)
    assert float(frequency_radius(6, 10)[0, 0]) == 0.0


def test_variance_shares_of_the_two_sides_add_to_one_and_grow_with_the_radius():
    x = (images(n=64, h=16, w=16, seed=2) * 255).to(torch.uint8)
    shares = [fft_variance_share(x, r, "low") for r in (0.2, 0.5, 0.9)]
    assert shares == sorted(shares) and 0 < shares[0] < shares[-1] < 1
    assert fft_variance_share(x, 0.5, "low") + fft_variance_share(x, 0.5, "high") == pytest.approx(1.0, abs=1e-6)
    # white noise spreads its variance evenly: the share is the share of coefficients inside the radius
    noise = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    inside = (frequency_radius(16, 16) <= 0.5)
    weights = torch.ones(16, 9)
    weights[:, 1:8] = 2  # rfft2 stores each conjugate pair once
    expected = float((weights * inside).sum() / weights.sum())
    assert fft_variance_share(noise, 0.5) == pytest.approx(expected, abs=0.02)


def test_names_and_labels():
    assert str(parse_target("fft-low:0.30")) == "fft-low:0.3"
    assert not parse_target("fft-high:0.5").needs_basis
    assert target_label("fft-high:0.5") == "High-pass, radius 0.5 Nyquist"
    for bad, message in [("fft-low", "needs a radius"), ("fft-low:0", r"must lie in \(0, 1\]"),
                         ("fft-high:1.5", r"must lie in \(0, 1\]"), ("fft-mid:0.3", "unknown target"),
                         ("fft-low:x", "radius 'x' is not a number")]:
        with pytest.raises(ValueError, match=message):
            parse_target(bad)


def test_radius_for_a_share_keeps_that_share():
    from lowvar_mae.targets import fft_radius_for_share

    x = (images(n=128, h=16, w=16, seed=4).cumsum(-1) / 8 * 255).clamp(0, 255).to(torch.uint8)  # smooth: low-pass heavy
    for share in (0.25, 0.75):
        r = fft_radius_for_share(x, share, "low")
        assert fft_variance_share(x, r, "low") >= share - 1e-9
        smaller = frequency_radius(16, 16)[frequency_radius(16, 16) < r]
        if len(smaller):
            assert fft_variance_share(x, float(smaller.max()), "low") < share
        r_high = fft_radius_for_share(x, share, "high")
        assert fft_variance_share(x, r_high, "high") >= share - 1e-9
        larger = frequency_radius(16, 16)[frequency_radius(16, 16) > r_high]
        if len(larger):
            assert fft_variance_share(x, float(larger.min()), "high") < share


def test_kept_variance_of_each_kind_against_an_independent_computation():
    from lowvar_mae import pca
    from lowvar_mae.targets import kept_variance

    x = images(n=300, h=6, w=6, seed=3)
    basis = pca.fit_pca(x.double(), method="covariance")
    eig = np.sort(np.linalg.eigvalsh(np.cov(x.double().reshape(300, -1).numpy(), rowvar=False)))[::-1]
    top = kept_variance("pca-top:0.6", x, basis)
    assert top["kept"] == pytest.approx(eig[:top["components"]].sum() / eig.sum(), rel=1e-9)
    assert top["kept"] >= 0.6 and eig[:top["components"] - 1].sum() / eig.sum() < 0.6
    bottom = kept_variance("pca-bottom:0.4", x, basis)
    assert bottom["components"] + top["components"] == eig.size
    assert bottom["kept"] + top["kept"] == pytest.approx(1.0, abs=1e-9)
    assert kept_variance("fft-low:0.3", x)["kept"] == pytest.approx(fft_variance_share(x, 0.3, "low"))
    assert kept_variance("pixels")["kept"] == 1.0
    assert kept_variance("pc-mask")["kept"] is None and "10%-90%" in kept_variance("pc-mask")["note"]
    with pytest.raises(ValueError, match="needs the PCA basis"):
        kept_variance("pca-top:0.6", x)


def test_the_patch_normalised_bottom_target_and_its_way_back():
    """pca-bottom-norm:q is norm-pix applied to the pca-bottom:q target; to_image undoes it."""
    from lowvar_mae import pca
    from lowvar_mae.reference import target_label
    from lowvar_mae.targets import PatchNormalized, make_target, norm_pix, parse_target

    spec = parse_target("pca-bottom-norm:0.250")
    assert (str(spec), spec.side, spec.needs_basis) == ("pca-bottom-norm:0.25", "bottom", True)
    assert target_label("pca-bottom-norm:0.25") == "Bottom 25% variance, normalised per patch"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    basis = pca.fit_pca(images)
    x01 = images[:5].float() / 255
    plain = make_target("pca-bottom:0.25", basis=basis, patch_size=4, image_shape=(3, 8, 8))
    normed = make_target("pca-bottom-norm:0.25", basis=basis, patch_size=4, image_shape=(3, 8, 8))
    assert isinstance(normed, PatchNormalized)
    torch.testing.assert_close(normed(x01), norm_pix(plain(x01), 4))
    torch.testing.assert_close(normed.image(x01), plain(x01))
    torch.testing.assert_close(normed.to_image(normed(x01), x01), plain(x01), rtol=1e-4, atol=1e-4)
    # per patch: zero mean, unit variance (unbiased, as norm-pix)
    from lowvar_mae.models import patchify

    patches = patchify(normed(x01), 4)
    torch.testing.assert_close(patches.mean(-1), torch.zeros(patches.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(patches.var(-1), torch.ones(patches.shape[:2]), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="needs the model's patch_size"):
        make_target("pca-bottom-norm:0.25", basis=basis, image_shape=(3, 8, 8))
