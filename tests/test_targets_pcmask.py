"""PC masking (PMAE): the draw, the split of an image, the loss, configs and a tiny run."""

import numpy as np
import pytest
import torch

from lowvar_mae import pca
from lowvar_mae.models import build_mae
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import make_config
from lowvar_mae.reference import target_label
from lowvar_mae.targets import PC_MASK_RANGE, make_pc_masking, make_target, parse_target

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(400, 3, 2, 2, generator=g), size=(8, 8), mode="bilinear")
    x = (0.8 * smooth + 0.2 * torch.rand(400, 3, 8, 8, generator=g)).clamp(0, 1)
    return x, pca.fit_pca(x.double(), method="covariance", dataset="toy")


def test_names_parse_and_bad_shares_are_refused():
    assert str(parse_target("pc-mask")) == "pc-mask" and parse_target("pc-mask").share is None
    assert parse_target("pc-mask:0.5").share == 0.5 and parse_target("pc-mask").needs_basis
    assert parse_target("pc-mask").masks_components and not parse_target("pca-bottom:0.25").masks_components
    for bad, match in (("pc-mask:1.0", r"\(0, 1\), got 1.0"), ("pc-mask:0", r"\(0, 1\)"),
                       ("pc-mask:half", "'half' is not a number")):
        with pytest.raises(ValueError, match=match):
            parse_target(bad)
    assert "PC masking" in target_label("pc-mask")


def test_split_removes_exactly_the_drawn_components(toy):
    x, basis = toy
    pm = make_pc_masking("pc-mask:0.3", basis)
    idx, share = pm.draw(torch.Generator().manual_seed(1))
    x_in, coords = pm.split(x[:5], idx)
    # independent computation in numpy, float64
    flat = x[:5].double().numpy().reshape(5, -1)
    u = basis.components.numpy()[:, idx.numpy()]
    centred = flat - basis.mean.numpy()
    np.testing.assert_allclose(coords.numpy(), centred @ u, atol=1e-5)
    np.testing.assert_allclose(x_in.double().numpy().reshape(5, -1), flat - (centred @ u) @ u.T, atol=1e-5)
    # the input has nothing left on the masked components, and keeps every other one
    left = (x_in.double().reshape(5, -1) - basis.mean) @ basis.components
    assert left[:, idx].abs().max() < 1e-5
    others = torch.ones(basis.n_stored, dtype=torch.bool)
    others[idx] = False
    torch.testing.assert_close(left[:, others], torch.as_tensor(centred) @ basis.components[:, others],
                               atol=1e-5, rtol=0)
    # the share drawn is what the masked eigenvalues hold
    ratio = basis.eigenvalues / basis.eigenvalues.sum()
    assert share == pytest.approx(float(ratio[idx].sum()), abs=1e-9)


def test_draws_follow_the_share_and_the_generator(toy):
    _, basis = toy
    fixed = make_pc_masking("pc-mask:0.5", basis)
    ratio = (basis.eigenvalues / basis.eigenvalues.sum()).numpy()
    for seed in range(5):
        idx, share = fixed.draw(torch.Generator().manual_seed(seed))
        assert len(idx) >= 1 and len(set(idx.tolist())) == len(idx)
        # nearest reachable share along the drawn order: within one component's share
        assert abs(share - 0.5) <= ratio[idx.numpy()].max() + 1e-9
    sampled = make_pc_masking("pc-mask", basis)
    shares = [sampled.draw(torch.Generator().manual_seed(s))[1] for s in range(40)]
    lo, hi = PC_MASK_RANGE
    assert min(shares) > lo - 0.2 and max(shares) < hi + 0.2 and np.std(shares) > 0.1
    a = sampled.draw(torch.Generator().manual_seed(7))[0]
    b = sampled.draw(torch.Generator().manual_seed(7))[0]
    assert torch.equal(a, b)


def test_loss_is_zero_for_the_image_and_matches_a_hand_computation(toy):
    x, basis = toy
    pm = make_pc_masking("pc-mask:0.4", basis)
    idx, _ = pm.draw(torch.Generator().manual_seed(3))
    x_in, coords = pm.split(x[:6], idx)
    assert float(pm.loss(x[:6], coords, idx)) < 1e-10
    # predicting the input back (the masked part stays missing) costs the masked energy
    expected = (coords.double() ** 2).mean()
    assert float(pm.loss(x_in, coords, idx)) == pytest.approx(float(expected), rel=1e-4)


def test_basis_of_another_shape_and_a_missing_basis_are_refused(toy):
    _, basis = toy
    with pytest.raises(ValueError, match="shape"):
        make_pc_masking("pc-mask", basis, image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="needs a fitted PCA basis"):
        make_target("pc-mask", basis=None)
    with pytest.raises(ValueError, match="not a PC-masking target"):
        make_pc_masking("pixels", basis)


def test_configs_set_no_patch_masking_and_refuse_it_elsewhere():
    assert make_config("cpu", "cifar10", "pc-mask").mask_ratio == 0.0
    assert make_config("cpu", "cifar10", "pc-mask", mask_ratio=0.5).mask_ratio == 0.5
    with pytest.raises(ValueError, match="only allowed with target pc-mask"):
        make_config("quick", "synthetic", "pixels", mask_ratio=0.0)
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        build_mae("micro", mask_ratio=1.0)
    model = build_mae("micro", mask_ratio=0.0)
    x = torch.rand(2, 3, 16, 16)
    loss, pred, mask = model(x, x)
    assert mask.sum() == 0 and torch.isfinite(loss)
    torch.testing.assert_close(loss, ((pred - model.patchify(x)) ** 2).mean())


def test_a_tiny_pc_masking_run_trains_and_reconstructs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    cfg = make_config("quick", "synthetic", "pc-mask", epochs=2, batch_size=32, n_train=64)
    run = pretrain(cfg, progress=False)
    assert len(run.metrics) == 2 and all(np.isfinite(m["loss"]) for m in run.metrics)
    assert run.config.mask_ratio == 0.0 and run.model.config.mask_ratio == 0.0
    rec = run.reconstructions()[2]
    assert rec["mask"].sum() == 0  # every patch visible
    # the input shown is the image with components removed, so it differs from the target image
    assert (rec["input"] - rec["target"]).abs().max() > 1e-3
