"""Targets, the training loop, run folders, checkpoints and resume."""

import copy
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from lowvar_mae import checkpoint, pca
from lowvar_mae.models import build_mae, patchify
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import PretrainConfig, make_config
from lowvar_mae.targets import make_target, norm_pix, parse_target
from lowvar_mae.train import (DeviceData, LoopConfig, NonFiniteLossError, augment, build_optimizer, lr_at, param_groups,
                              resolve_attention, resolve_precision, train_loop)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def small_basis(shape=(3, 8, 8), n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 2, 2, generator=g), size=shape[1:], mode="bilinear")
    x = (0.8 * smooth + 0.2 * torch.rand(n, *shape, generator=g)).double()
    return x, pca.fit_pca(x, method="covariance", dataset="toy")


# ---------------------------------------------------------------- targets


def test_bottom_and_top_targets_add_up_to_the_input():
    x, basis = small_basis()
    for q in (0.1, 0.25):
        bottom = make_target(f"pca-bottom:{q}", basis=basis, image_shape=(3, 8, 8), device="cpu")
        top = make_target(f"pca-top:{1 - q}", basis=basis, image_shape=(3, 8, 8), device="cpu")
        x32 = x[:16].float()
        total = (bottom(x32) * 0.5 + 0.5) + (top(x32) * 0.5 + 0.5)  # back to [0, 1]
        torch.testing.assert_close(total, x32 + basis.mean.float().view(1, 3, 8, 8), atol=1e-5, rtol=0)
    pixels = make_target("pixels")
    torch.testing.assert_close(pixels(x[:4].float()), (x[:4].float() - 0.5) * 2)


def test_norm_pix_patches_have_zero_mean_and_unit_variance():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    t = patchify(norm_pix(x, 4), 4)
    torch.testing.assert_close(t.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(3, 4), atol=1e-4, rtol=0)
    # against a hand computation of one patch
    patch = x[1, :, 4:8, 0:4].permute(1, 2, 0).reshape(-1)
    expected = (patch - patch.mean()) / (patch.var() + 1e-6).sqrt()
    torch.testing.assert_close(t[1, 2], expected, atol=1e-5, rtol=0)


def test_target_errors_are_clear():
    _, basis = small_basis()
    with pytest.raises(ValueError, match="needs a fitted PCA basis"):
        make_target("pca-bottom:0.25")
    with pytest.raises(ValueError, match=r"\(3, 8, 8\).*\(3, 32, 32\)"):
        make_target("pca-bottom:0.25", basis=basis, image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="unknown target 'edges'"):
        parse_target("edges")
    with pytest.raises(ValueError, match="needs a share"):
        parse_target("pca-top")
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        parse_target("pca-top:1.5")
    with pytest.raises(ValueError, match="patch_size"):
        make_target("norm-pix")


# ---------------------------------------------------------------- loop parts


def test_lr_schedule_warmup_then_cosine():
    kw = dict(peak_lr=1.0, warmup_steps=10, total_steps=110)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(5, **kw) == pytest.approx(0.5)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.5)
    assert lr_at(110, **kw) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(35, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_weight_decay_only_on_weights():
    model = build_mae("micro")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert all(not n.endswith(("bias", "pos_embed", "cls_token", "mask_token")) for n in decayed)
    assert all(".norm" not in n for n in decayed)
    assert "encoder.blocks.0.attn.qkv.weight" in decayed
    assert {"encoder.cls_token", "mask_token", "encoder.pos_embed"} <= {names[id(p)] for p in no_decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_augment_is_batched_and_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    torch.testing.assert_close(augment(x, "none"), x.float() / 255)
    flipped = augment(x, "flip", g)
    same = (flipped == x.float() / 255).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1).float() / 255).flatten(1).all(1)
    assert torch.all(same | mirrored) and same.any() and mirrored.any()
    crops = augment(x, "crop-flip", g)
    assert crops.shape == (16, 3, 8, 8) and crops.min() >= 0 and crops.max() <= 1
    assert not torch.equal(crops[0], crops[1])
    with pytest.raises(ValueError, match="'rotate'"):
        augment(x, "rotate")


def test_precision_is_fp32_on_a_cpu_without_bf16(monkeypatch):
    monkeypatch.setattr("lowvar_mae.train.cpu_has_fast_bf16", lambda: False)
    assert resolve_precision(torch.device("cpu"), "auto") == "fp32"
    assert resolve_precision(torch.device("cuda"), "auto") == "bf16"
    assert resolve_precision(torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(ValueError, match="'fp8'"):
        resolve_precision(torch.device("cpu"), "fp8")


def test_attention_kernel_by_device_and_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_attention(cpu, "fp32") == "sdpa" and resolve_attention(cpu, "bf16") == "math"
    assert resolve_attention(cuda, "fp32") == resolve_attention(cuda, "bf16") == "sdpa"
    assert resolve_attention(cpu, "bf16", "sdpa") == "sdpa" and resolve_attention(cuda, "fp32", "math") == "math"
    with pytest.raises(ValueError, match="'flash'"):
        resolve_attention(cpu, "fp32", "flash")
    with pytest.raises(ValueError, match="resolved.*'auto'"):
        resolve_attention(cpu, "auto")


def micro_setup(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    data = DeviceData(images, torch.zeros(n, dtype=torch.long), batch_size=8)
    torch.manual_seed(seed)
    model = build_mae("micro")
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    return model, opt, data


def mae_loss(model, x, labels, gen):
    x01 = augment(x, "none")
    return model((x01 - 0.5) / 0.5, generator=gen)[0]


def test_two_steps_lower_the_loss_on_a_fixed_batch():
    model, opt, _ = micro_setup()
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # the same mask every time
    with torch.no_grad():
        before = float(model(x, generator=gen())[0])
    for _ in range(2):
        loss = model(x, generator=gen())[0]
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        assert float(model(x, generator=gen())[0]) < before


def test_non_finite_loss_names_the_step_and_checkpoint(tmp_path):
    model, opt, data = micro_setup()
    calls = {"n": 0}

    def loss_fn(m, x, y, gen):
        calls["n"] += 1
        loss = mae_loss(m, x, y, gen)
        return loss * float("nan") if calls["n"] > 6 else loss

    cfg = LoopConfig(epochs=3, peak_lr=1e-3, warmup_epochs=0, seed=0, check_every=1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, by step 7.*checkpoint-e0001"):
        train_loop(tmp_path, model, opt, data, loss_fn, cfg, torch.device("cpu"), progress=False)


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    cfg = LoopConfig(epochs=2, peak_lr=1e-3, warmup_epochs=0.5, seed=3, accum_steps=2)
    model_a, opt_a, data = micro_setup()
    train_loop(tmp_path / "a", model_a, opt_a, data, mae_loss, cfg, torch.device("cpu"), progress=False)

    model_b, opt_b, data = micro_setup()
    train_loop(tmp_path / "b", model_b, opt_b, data, mae_loss, cfg, torch.device("cpu"), progress=False, stop_after=1)
    assert json.loads((tmp_path / "b" / "latest.json").read_text())["epoch"] == 1
    model_c, opt_c, _ = micro_setup(seed=99)  # fresh objects, different init: all must come from disk
    history = train_loop(tmp_path / "b", model_c, opt_c, data, mae_loss, cfg, torch.device("cpu"), progress=False)
    assert [m["epoch"] for m in history] == [1, 2]
    for (name, a), (_, c) in zip(model_a.state_dict().items(), model_c.state_dict().items()):
        assert torch.equal(a, c), name


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    model, opt, data = micro_setup()
    cfg = LoopConfig(epochs=2, peak_lr=1e-3, warmup_epochs=0, seed=0)
    train_loop(tmp_path, model, opt, data, mae_loss, cfg, torch.device("cpu"), progress=False, stop_after=1)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}
    real = checkpoint.save_file

    def dies_midway(tensors, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # after model.safetensors, before optimizer.safetensors
            raise KeyboardInterrupt
        return real(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        train_loop(tmp_path, model, opt, data, mae_loss, cfg, torch.device("cpu"), progress=False)
    monkeypatch.setattr(checkpoint, "save_file", real)
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "checkpoint-e0001"
    fresh = build_mae("micro")
    checkpoint.load_weights(fresh, latest)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, saved[k])


def test_loading_weights_that_do_not_fit_fails_clearly(tmp_path):
    model, opt, data = micro_setup()
    checkpoint.save_checkpoint(tmp_path, 1, model, opt, {})
    other = build_mae("micro", embed_dim=48)
    with pytest.raises(checkpoint.CheckpointError, match=r"does not fit MAE: shape mismatches: decoder_blocks.0.attn.proj.bias: checkpoint \(32,\) vs model \(48,\)"):
        checkpoint.load_weights(other, tmp_path / "checkpoint-e0001")
    deeper = build_mae("micro", depth=3)
    with pytest.raises(checkpoint.CheckpointError, match="missing keys: encoder.blocks.2"):
        checkpoint.load_weights(deeper, tmp_path / "checkpoint-e0001")
    shallower = build_mae("micro", depth=1)
    with pytest.raises(checkpoint.CheckpointError, match="unexpected keys: encoder.blocks.1"):
        checkpoint.load_weights(shallower, tmp_path / "checkpoint-e0001")
    with pytest.raises(checkpoint.CheckpointError, match="no weights at"):
        checkpoint.load_weights(model, tmp_path / "nowhere")


# ---------------------------------------------------------------- pretraining runs


def tiny_config(**kw):
    return make_config("quick", "synthetic", kw.pop("target", "pixels"), epochs=2, batch_size=32, n_train=64, **kw)


def test_pretrain_run_folder_resume_and_reload(runs):
    cfg = tiny_config(target="pca-bottom:0.25")
    partial = pretrain(cfg, progress=False, stop_after=1)
    assert len(partial.metrics) == 1 and not (partial.run_dir / "summary.json").exists()
    resumed = pretrain(cfg, progress=False)
    resumed_weights = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    straight = pretrain(cfg, progress=False, force=True)
    assert resumed.trained_now and straight.trained_now
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed_weights[k]), k
    run = straight.run_dir
    assert run.name == cfg.run_name and run.parent == runs
    for name in ("config.json", "provenance.json", "metrics.jsonl", "summary.json", "latest.json"):
        assert (run / name).is_file(), name
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 0 and "torch" in prov["versions"] and prov["git_revision"]
    assert prov["attention"] == resolve_attention(torch.device("cpu"), prov["precision"])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1, 2]
    assert {"loss", "lr", "images_per_s", "seconds"} <= set(json.loads(lines[0]))
    recon = load_file(str(run / "recon" / "epoch-0002.safetensors"))
    assert recon["prediction"].shape == recon["target"].shape == (8, 3, 32, 32)
    assert len(list((runs / "pca").glob("synthetic-train-*.safetensors"))) == 1
    assert json.loads((run / "provenance.json").read_text())["pca_basis"]["source"]
    # a finished config loads instead of training
    again = pretrain(cfg, progress=False)
    assert not again.trained_now and len(again.metrics) == 2
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, straight.model.state_dict()[k])


def test_pretrain_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        make_config("quick", "imagenet")
    with pytest.raises(ValueError, match="unknown recipe 'slow'"):
        make_config("slow")
    with pytest.raises(ValueError, match="unknown target"):
        tiny_config(target="edges")
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_config(mask_ratio=1.0)
    with pytest.raises(ValueError, match="not divisible by accum_steps"):
        tiny_config(accum_steps=3)
    with pytest.raises(ValueError, match="18"):
        build_mae("micro", img_size=18)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PretrainConfig(model="huge")
    with pytest.raises(ValueError, match="attention must be one of .*'flash'"):
        tiny_config(attention="flash")
    assert tiny_config(attention="math").run_name == tiny_config().run_name  # a kernel, not a result
    assert make_config("paper", "cifar10").model == "vit-tiny-cifar"
    assert make_config("paper", "stl10").model == "vit-tiny-stl"
    assert make_config("paper", "cifar10").epochs == 400


@pytest.mark.slow
def test_torchrun_two_processes_train_one_run(tmp_path):
    """The DistributedDataParallel path (gloo on CPU) trains and writes one run folder."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lowvar_mae", "pretrain", "--epochs", "1", "--n-train", "64", "--batch-size", "32",
           "--device", "cpu", "--runs", str(tmp_path), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = [p for p in tmp_path.iterdir() if p.name.startswith("pretrain-")]
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and math.isfinite(metrics[0]["loss"])
    assert json.loads((run / "provenance.json").read_text())["world_size"] == 2
    # both ranks took half of each batch: 64 images in 2 steps of 32
    assert metrics[0]["steps"] == 2


def test_device_data_order_is_seeded_and_covers_each_item_once():
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).contiguous()
    data = DeviceData(images, torch.arange(20), batch_size=5, device="cpu")
    first = torch.cat([y for _, y in data.epoch(0, seed=1)])
    assert sorted(first.tolist()) == list(range(20))
    assert torch.equal(first, torch.cat([y for _, y in data.epoch(0, seed=1)]))
    assert not torch.equal(first, torch.cat([y for _, y in data.epoch(1, seed=1)]))
    for x, y in data.epoch(0, seed=1):
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # images and labels stay paired
    with pytest.raises(ValueError, match="no full batch"):
        DeviceData(images[:3], torch.arange(3), batch_size=5)


def test_fused_adamw_on_cpu_takes_the_steps_of_the_reference_implementation():
    torch.manual_seed(0)
    # No qkv bias: the key bias gets a gradient of pure rounding noise (softmax ignores
    # it), which Adam's normalisation turns into full steps of either sign.
    model = build_mae("micro", qkv_bias=False)
    reference, start = copy.deepcopy(model), copy.deepcopy(model)
    fused = build_optimizer(model, lr=1e-2, weight_decay=0.05, betas=(0.9, 0.95), device="cpu")
    assert all(g["fused"] for g in fused.param_groups)
    groups = param_groups(reference, 0.05)
    plain = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), foreach=False)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    for step in range(3):
        for m, opt in ((model, fused), (reference, plain)):
            m(x, generator=torch.Generator().manual_seed(step))[0].backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    moved = [float((a - b).abs().max().detach()) for a, b in zip(model.parameters(), start.parameters())]
    assert min(moved) > 1e-4  # every parameter took steps (lr 1e-2)


def test_masked_relative_error_scores_exact_zero_and_the_mean_image_one():
    """Checked on hand-built batches: exact prediction 0; the population mean (zero here)
    about 1 even for a batch of 8 (the plain batch variance would give 8/7); the visible
    patches are ignored."""
    from lowvar_mae.pretrain import masked_relative_error

    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(8, 1, 32, 32, generator=gen) < 0.75).float()
    scores = []
    for _ in range(200):
        target = torch.randn(8, 3, 32, 32, generator=gen)
        rec = {"target": target, "mask": mask,
               "prediction": torch.where(mask.bool(), torch.zeros(()), torch.full((), 99.0))}
        scores.append(masked_relative_error(rec))
    assert abs(sum(scores) / len(scores) - 1.0) < 0.01
    assert masked_relative_error({"target": target, "mask": mask, "prediction": target + 99 * (1 - mask)}) == 0
    with pytest.raises(ValueError, match="at least 2 images"):
        masked_relative_error({"target": target[:1], "mask": mask[:1], "prediction": target[:1]})
