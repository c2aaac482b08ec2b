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


# ------------------------------------------------------- PMAE's setting: standardised PCA, its count


def test_the_standardised_pca_is_numpy_s_pca_of_the_correlation_matrix():
    """A hand-sized case (60 images of 2x3x3 pixels) against numpy: eigenvalues of the
    correlation matrix, components up to sign, and the per-pixel standard deviations."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (60, 2, 3, 3), dtype=np.uint8)
    basis = pca.fit_standardized(torch.from_numpy(images), dataset="toy")
    x = images.reshape(60, -1).astype(np.float64) / 255
    sd = x.std(0, ddof=1)
    z = (x - x.mean(0)) / sd
    evals, evecs = np.linalg.eigh(z.T @ z / 59)
    np.testing.assert_allclose(basis.eigenvalues.numpy(), evals[::-1], atol=1e-10)
    np.testing.assert_allclose(basis.scale.numpy(), sd, rtol=1e-10)
    np.testing.assert_allclose(basis.mean.numpy(), x.mean(0), atol=1e-12)
    overlap = np.abs(basis.components.numpy().T @ evecs[:, ::-1])
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-8)  # same directions, signs aside
    assert basis.eigenvalues.sum().item() == pytest.approx(18.0)  # a correlation matrix's trace: D
    with pytest.raises(ValueError, match="this basis is a PCA of standardised pixels"):
        pca.make_filter(basis, "bottom", 0.25)
    flat = np.zeros((5, 1, 2, 2), np.uint8)
    flat[:, 0, 0, 0] = [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="3 pixels never vary in these images"):
        pca.fit_standardized(torch.from_numpy(flat))


def test_a_standardised_basis_is_saved_and_read_back_with_its_scale(tmp_path):
    from lowvar_mae import basis_io

    rng = np.random.default_rng(5)
    basis = pca.fit_standardized(torch.from_numpy(rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)), dataset="toy")
    back = basis_io.load_basis(basis_io.save_basis(basis, tmp_path / "std.safetensors"))
    assert back.scale is not None and torch.equal(back.scale, basis.scale) and back.method == "standardized"
    plain = pca.fit_pca(torch.from_numpy(rng.integers(0, 256, (40, 3, 4, 4), dtype=np.uint8)))
    assert basis_io.load_basis(basis_io.save_basis(plain, tmp_path / "plain.safetensors")).scale is None


def test_masking_in_a_standardised_basis_removes_the_components_of_the_standardised_image(toy):
    x, _ = toy
    basis = pca.fit_standardized(x.double(), dataset="toy")
    pm = make_pc_masking("pc-mask:0.3", basis)
    idx, _ = pm.draw(torch.Generator().manual_seed(2))
    x_in, coords = pm.split(x[:6], idx)
    mean, sd, u = basis.mean.float(), basis.scale.float(), basis.components[:, idx].float()
    z = (x[:6].reshape(6, -1) - mean) / sd
    torch.testing.assert_close(coords, z @ u, atol=1e-4, rtol=1e-4)
    z_in = (x_in.reshape(6, -1) - mean) / sd
    assert (z_in @ u).abs().max() < 1e-3                        # nothing left on the masked components
    torch.testing.assert_close(z_in + coords @ u.T, z, atol=1e-3, rtol=1e-3)  # and nothing else touched
    assert pm.loss(x[:6], coords, idx).item() < 1e-8            # the image itself scores zero


def test_the_reference_count_takes_one_component_fewer_and_may_take_none():
    """PMAE's code takes index[:argmin |cumsum - s|]: one fewer than the nearest count, zero
    when the first component alone is nearest; a step that masks nothing has zero loss."""
    mean = torch.zeros(4, dtype=torch.float64)
    basis = pca.PCABasis(mean=mean, eigenvalues=torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64),
                         components=torch.eye(4, dtype=torch.float64), image_shape=(1, 2, 2), n_samples=10,
                         method="covariance")
    for seed in range(20):
        nearest, _ = make_pc_masking("pc-mask:0.45", basis).draw(torch.Generator().manual_seed(seed))
        reference, _ = make_pc_masking("pc-mask:0.45", basis, count="reference").draw(
            torch.Generator().manual_seed(seed))
        assert torch.equal(reference, nearest[:-1])
    tiny = make_pc_masking("pc-mask:0.05", basis, count="reference")  # every first component alone is nearest
    idx, share = tiny.draw(torch.Generator().manual_seed(0))
    assert len(idx) == 0 and share == 0.0
    images = torch.rand(3, 1, 2, 2, requires_grad=True)
    x_in, coords = tiny.split(images.detach(), idx)
    assert torch.equal(x_in, images.detach()) and coords.shape == (3, 0)
    loss = tiny.loss(images, coords, idx)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(images.grad, torch.zeros_like(images))
    with pytest.raises(ValueError, match="count must be one of"):
        make_pc_masking("pc-mask:0.2", basis, count="paper")


def test_a_fixed_share_runs_as_pmae_everywhere_and_old_run_names_stay():
    from lowvar_mae import grid

    cell = grid.Cell("cifar10", "pc-mask:0.2", 0, "linprobe", "cpu")
    config = grid.pretrain_config(cell)
    assert (config.pc_basis, config.pc_count, config.mask_ratio) == ("standardized", "reference", 0.0)
    # the pretrain command and the notebooks build their configs the same way
    assert make_config("quick", "synthetic", "pc-mask:0.3").pc_basis == "standardized"
    assert make_config("quick", "synthetic", "pc-mask:0.3", pc_basis="centred").pc_basis == "centred"
    assert grid.pretrain_config(grid.Cell("cifar10", "pc-mask", 0, "linprobe", "cpu")).pc_basis == "centred"
    # The settings added later leave the names of runs made before them as they were.
    random_share = make_config("cpu", "cifar10", "pc-mask", seed=0)
    assert random_share.run_name == make_config("cpu", "cifar10", "pc-mask", seed=0, pc_basis="centred",
                                                pc_count="nearest").run_name
    assert random_share.run_name != make_config("cpu", "cifar10", "pc-mask", seed=0, pc_count="reference").run_name
    with pytest.raises(ValueError, match="apply to target pc-mask only"):
        make_config("cpu", "cifar10", "pixels", pc_basis="standardized")
    with pytest.raises(ValueError, match="pc_basis must be one of"):
        make_config("cpu", "cifar10", "pc-mask:0.2", pc_basis="whitened")


def test_the_committed_pc_masking_records_name_the_runs_today_s_configs_name():
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "results" / "eval"
    records = [json.loads(p.read_text()) for p in sorted(root.glob("cifar10-pc-mask-cpu-*.json"))]
    if not records:
        pytest.skip("no committed pc-mask records")
    for rec in records:
        assert rec["pretrain_run"] == make_config("cpu", "cifar10", "pc-mask", seed=rec["seed"]).run_name


def test_the_shares_note_of_a_fixed_share_says_that_share():
    from lowvar_mae.targets import kept_variance

    assert kept_variance("pc-mask:0.2")["note"].startswith("input keeps about 80% of the variance; the other 20%")
    assert kept_variance("pc-mask")["note"].startswith("input keeps 10%-90% of the variance")
