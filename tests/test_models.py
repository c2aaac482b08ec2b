"""Invariants and cross-checks of lowvar_mae.models on tiny CPU inputs."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from lowvar_mae.models import (MAE, PRESETS, MAEConfig, ViTClassifier, ViTEncoder, attention_kernel, build_mae,
                               get_config, random_masking, set_attention, sincos_pos_embed_2d)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def imgs_for(config: MAEConfig, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.in_chans, config.img_size, config.img_size, generator=g)


@pytest.fixture(scope="module")
def micro() -> MAE:
    torch.manual_seed(0)
    return build_mae("micro")


# ---------------------------------------------------------------- patchify


@pytest.mark.parametrize("img_size,patch_size", [(16, 4), (32, 2)])
def test_unpatchify_inverts_patchify(img_size, patch_size):
    model = build_mae("micro", img_size=img_size, patch_size=patch_size)
    x = imgs_for(model.config, n=3)
    patches = model.patchify(x)
    assert patches.shape == (3, (img_size // patch_size) ** 2, patch_size ** 2 * 3)
    assert torch.equal(model.unpatchify(patches), x)
    y = torch.randn_like(patches)
    assert torch.equal(model.patchify(model.unpatchify(y)), y)


@pytest.mark.parametrize("img_size,patch_size", [(16, 4), (32, 2)])
def test_patchify_matches_hand_slicing(img_size, patch_size):
    """Patch l = i * grid + j is the (i, j) block, values in (row, column, channel) order."""
    model = build_mae("micro", img_size=img_size, patch_size=patch_size)
    x = imgs_for(model.config, n=2)
    patches = model.patchify(x)
    p, grid = patch_size, img_size // patch_size
    for i in range(grid):
        for j in range(grid):
            block = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (N, C, p, p)
            expected = block.permute(0, 2, 3, 1).reshape(2, -1)
            assert torch.equal(patches[:, i * grid + j], expected)
    # one element spelled out: channel is fastest, then column, then row
    n, i, j, r, c, ch = 1, grid - 1, 1, p - 1, 0, 2
    assert patches[n, i * grid + j, (r * p + c) * 3 + ch] == x[n, ch, i * p + r, j * p + c]


def test_patch_order_matches_patch_embedding(micro):
    """The conv patch embedding orders tokens like patchify (row-major patches)."""
    x = imgs_for(micro.config, n=2)
    tokens = micro.encoder.patch_embed(x).flatten(2).transpose(1, 2)
    conv = micro.encoder.patch_embed
    # conv weight (D, C, p, p) -> (D, p, p, C) matches patchify's value order
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.weight.shape[0], -1)
    by_hand = micro.patchify(x) @ weight.T + conv.bias
    torch.testing.assert_close(tokens, by_hand, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("mask_ratio", [0.1, 0.5, 0.6, 0.75, 0.9])
def test_random_masking_keeps_round_count(mask_ratio):
    n, num_patches, dim = 8, 64, 5
    x = torch.randn(n, num_patches, dim)
    keep = round(num_patches * (1 - mask_ratio))
    x_masked, mask, ids_restore = random_masking(x, mask_ratio, torch.Generator().manual_seed(1))
    assert x_masked.shape == (n, keep, dim)
    assert mask.shape == ids_restore.shape == (n, num_patches)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(mask.sum(dim=1), torch.full((n,), float(num_patches - keep)))
    assert len({tuple(row.tolist()) for row in mask}) > 1, "every sample got the same mask"


def test_random_masking_same_seed_same_mask():
    x = torch.randn(4, 16, 3)
    _, mask_a, ids_a = random_masking(x, 0.75, torch.Generator().manual_seed(7))
    _, mask_b, ids_b = random_masking(x, 0.75, torch.Generator().manual_seed(7))
    _, mask_c, _ = random_masking(x, 0.75, torch.Generator().manual_seed(8))
    assert torch.equal(mask_a, mask_b) and torch.equal(ids_a, ids_b)
    assert not torch.equal(mask_a, mask_c)


def test_ids_restore_inverts_shuffle():
    n, num_patches = 5, 16
    positions = torch.arange(num_patches, dtype=torch.float32)
    x = positions.view(1, -1, 1).expand(n, -1, 2).clone()  # token l carries value l
    x_masked, mask, ids_restore = random_masking(x, 0.75, torch.Generator().manual_seed(3))
    kept_positions = x_masked[..., 0].long()
    for row in range(n):
        assert mask[row, kept_positions[row]].eq(0).all()
        assert len(set(kept_positions[row].tolist())) == kept_positions.shape[1]
    # decoder-style restore: kept tokens then fillers, gathered with ids_restore
    filler = torch.full((n, num_patches - x_masked.shape[1], 2), -1.0)
    restored = torch.gather(torch.cat([x_masked, filler], 1), 1,
                            ids_restore.unsqueeze(-1).expand(-1, -1, 2))
    expected = torch.where(mask.bool().unsqueeze(-1), torch.tensor(-1.0), x)
    assert torch.equal(restored, expected)


@pytest.mark.parametrize("mask_ratio", [0.99, 0.01, 0.0, 1.0, -0.5, 1.5])
def test_random_masking_rejects_degenerate_ratios(mask_ratio):
    with pytest.raises(ValueError, match=str(mask_ratio)):
        random_masking(torch.randn(2, 16, 3), mask_ratio)


def test_encoder_without_masking_keeps_everything(micro):
    x = imgs_for(micro.config, n=3)
    latent, mask, ids_restore = micro.encoder(x, mask_ratio=0.0)
    num_patches = micro.config.num_patches
    assert latent.shape == (3, 1 + num_patches, micro.config.embed_dim)
    assert torch.equal(mask, torch.zeros(3, num_patches))
    assert torch.equal(ids_restore, torch.arange(num_patches).repeat(3, 1))
    assert torch.equal(micro.encoder.forward_features(x), latent)
    assert torch.equal(micro.encoder.cls_features(x), latent[:, 0])


def test_tokens_travel_with_their_positions():
    """With the blocks removed, the wiring is checkable token by token.

    Encoder: each kept token is norm(embed(patch l) + pos[l]) for a visible l, and
    ids_restore[l] is its slot. Decoder: pred[l] = head(latent slot + dec_pos[1 + l])
    for visible l, head(mask_token + dec_pos[1 + l]) for masked l.
    """
    torch.manual_seed(0)
    model = build_mae("micro")
    model.encoder.blocks = torch.nn.Sequential()
    model.decoder_blocks = torch.nn.Sequential()
    x = imgs_for(model.config)
    with torch.no_grad():
        latent, mask, ids_restore = model.forward_encoder(x, 0.75, torch.Generator().manual_seed(5))
        enc = model.encoder
        all_tokens = enc.norm(enc.patch_embed(x).flatten(2).transpose(1, 2) + enc.pos_embed)
        pred = model.forward_decoder(latent, ids_restore)
        dec_pos = model.decoder_pos_embed[0]
        for n in range(x.shape[0]):
            visible = set(mask[n].eq(0).nonzero().flatten().tolist())
            found = set()
            for slot in range(latent.shape[1] - 1):
                distance = (all_tokens[n] - latent[n, 1 + slot]).abs().amax(dim=1)
                position = int(distance.argmin())
                assert distance[position] < 1e-5
                assert ids_restore[n, position] == slot
                found.add(position)
            assert found == visible
            for position in range(model.config.num_patches):
                if position in visible:
                    token = latent[n, 1 + ids_restore[n, position]]
                else:
                    token = model.mask_token[0, 0]
                expected = model.decoder_pred(token + dec_pos[1 + position])
                torch.testing.assert_close(pred[n, position], expected, rtol=1e-5, atol=1e-5)


def test_forward_shapes(micro):
    config = micro.config
    x = imgs_for(config)
    latent, mask, ids_restore = micro.forward_encoder(x, 0.75)
    assert latent.shape == (4, 1 + 4, config.embed_dim)
    pred = micro.forward_decoder(latent, ids_restore)
    assert pred.shape == (4, config.num_patches, config.patch_dim)
    loss, pred, mask = micro(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert mask.sum(1).eq(12).all()


# ---------------------------------------------------------------- loss


def test_loss_ignores_visible_patches(micro):
    config = micro.config
    x = imgs_for(config)
    with torch.no_grad():
        loss, pred, mask = micro(x, generator=torch.Generator().manual_seed(0))
    target = imgs_for(config, seed=1)
    base = micro.forward_loss(target, pred, mask)

    noise = 10 * torch.randn(4, config.num_patches, config.patch_dim)
    visible = (1 - mask).unsqueeze(-1)
    target_visible = target + micro.unpatchify(noise * visible)
    assert not torch.equal(target_visible, target)
    assert torch.equal(micro.forward_loss(target_visible, pred, mask), base)

    masked_position = mask[0].nonzero()[0, 0]
    one_masked = torch.zeros_like(noise)
    one_masked[0, masked_position] = 1.0
    target_masked = target + micro.unpatchify(one_masked)
    assert not torch.equal(micro.forward_loss(target_masked, pred, mask), base)

    # the target is what is compared: same pred, target = imgs gives the forward loss
    assert torch.equal(micro.forward_loss(x, pred, mask), loss)


def test_loss_matches_numpy(micro):
    config = micro.config
    x = imgs_for(config)
    with torch.no_grad():
        _, pred, mask = micro(x, generator=torch.Generator().manual_seed(0))
    target = imgs_for(config, seed=2)
    loss = micro.forward_loss(target, pred, mask)

    p, grid = config.patch_size, config.grid_size
    t = target.numpy().astype(np.float64)
    pred_np = pred.numpy().astype(np.float64)
    mask_np = mask.numpy().astype(np.float64)
    total, count = 0.0, 0.0
    for n in range(t.shape[0]):
        for i in range(grid):
            for j in range(grid):
                if mask_np[n, i * grid + j] == 0:
                    continue
                block = t[n, :, i * p:(i + 1) * p, j * p:(j + 1) * p].transpose(1, 2, 0).ravel()
                total += np.mean((pred_np[n, i * grid + j] - block) ** 2)
                count += 1
    assert count == mask_np.sum()
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("overrides", [{}, {"pos_embed": "sincos", "decoder_embed_dim": 16}],
                         ids=["learned", "sincos-projected"])
def test_every_parameter_gets_a_gradient(overrides):
    torch.manual_seed(0)
    model = build_mae("micro", **overrides)
    loss, _, _ = model(imgs_for(model.config, n=4))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
    if overrides:
        param_names = dict(model.named_parameters())
        assert "encoder.pos_embed" not in param_names
        assert "decoder_pos_embed" not in param_names
        assert not model.encoder.pos_embed.requires_grad
        assert {"decoder_embed.weight", "decoder_norm.weight"} <= set(param_names)


def test_sincos_matches_numpy_formula():
    dim, grid = 16, 4
    table = sincos_pos_embed_2d(dim, grid).numpy()
    assert table.shape == (grid * grid, dim)
    quarter = dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter) / quarter)
    for row in range(grid):
        for col in range(grid):
            expected = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                                       np.sin(row * omega), np.cos(row * omega)])
            np.testing.assert_allclose(table[row * grid + col], expected, rtol=1e-6, atol=1e-6)
    model = build_mae("micro", pos_embed="sincos")
    assert model.decoder_pos_embed.shape == (1, 1 + 16, 32)
    assert torch.equal(model.decoder_pos_embed[0, 0], torch.zeros(32))
    assert torch.equal(model.decoder_pos_embed[0, 1:], model.encoder.pos_embed[0])


# ---------------------------------------------------------------- parameter counts


def block_params(dim: int, qkv_bias: bool = True, mlp_ratio: int = 4) -> int:
    hidden = mlp_ratio * dim
    attn = 3 * dim * dim + (3 * dim if qkv_bias else 0) + dim * dim + dim  # qkv, proj
    mlp = dim * hidden + hidden + hidden * dim + dim  # fc1, fc2
    norms = 2 * 2 * dim  # norm1, norm2: weight and bias
    return attn + mlp + norms


def expected_counts(img: int, patch: int, dim: int, depth: int, dec_depth: int,
                    qkv_bias: bool = True) -> tuple[int, int]:
    num_patches = (img // patch) ** 2
    patch_dim = patch * patch * 3
    encoder = (3 * patch * patch * dim + dim  # conv patch embedding
               + num_patches * dim  # learned pos embed, patches only
               + dim  # cls token
               + depth * block_params(dim, qkv_bias)
               + 2 * dim)  # final norm
    decoder = (dim  # mask token
               + (num_patches + 1) * dim  # learned pos embed incl. CLS slot
               + dec_depth * block_params(dim, qkv_bias)
               + dim * patch_dim + patch_dim)  # prediction head, no final norm
    return encoder, decoder


def test_param_count_vit_tiny_cifar():
    """The original architecture: timm Blocks without qkv bias, about 7.21 M parameters."""
    model = build_mae("vit-tiny-cifar")
    encoder, decoder = expected_counts(32, 2, 192, 12, 4, qkv_bias=False)
    assert (encoder, decoder) == (5_390_592 - 12 * 3 * 192, 1_831_308 - 4 * 3 * 192)
    assert count_params(model.encoder) == encoder
    assert count_params(model) == encoder + decoder == 7_212_684
    assert model.encoder.blocks[0].attn.qkv.bias is None


def test_param_count_vit_tiny_stl():
    model = build_mae("vit-tiny-stl")
    encoder, decoder = expected_counts(96, 6, 192, 12, 4, qkv_bias=False)
    assert count_params(model) == encoder + decoder
    # only the patch embedding and the head depend on the patch size (L = 256 in both)
    cifar_patch, stl_patch = 3 * 4 * 192 + 192, 3 * 36 * 192 + 192
    cifar_head, stl_head = 192 * 12 + 12, 192 * 108 + 108
    assert count_params(model) == 7_212_684 - cifar_patch - cifar_head + stl_patch + stl_head


def test_param_count_with_qkv_bias():
    """With qkv biases (timm's ViT models, the official MAE) 16 blocks gain 3 * 192 each."""
    model = build_mae("vit-tiny-cifar", qkv_bias=True)
    encoder, decoder = expected_counts(32, 2, 192, 12, 4, qkv_bias=True)
    assert count_params(model) == encoder + decoder == 7_212_684 + 16 * 3 * 192 == 7_221_900


# ---------------------------------------------------------------- config and bad input


def test_presets_and_dict_roundtrip():
    assert {"vit-tiny-cifar", "vit-tiny-stl", "small-cifar", "micro",
            "vit-tiny-cifar-official"} <= set(PRESETS)
    for config in PRESETS.values():
        assert MAEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert PRESETS["vit-tiny-cifar"].num_patches == PRESETS["vit-tiny-stl"].num_patches == 256
    assert PRESETS["vit-tiny-stl"].patch_dim == 108
    official = PRESETS["vit-tiny-cifar-official"]
    assert official.pos_embed == "sincos" and official.decoder_embed_dim == 128
    with pytest.raises(ValueError, match="bogus"):
        MAEConfig.from_dict({**PRESETS["micro"].to_dict(), "bogus": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["micro"].mask_ratio = 0.5


def test_indivisible_image_size_names_both_values():
    with pytest.raises(ValueError, match=r"img_size=30.*patch_size=4"):
        get_config("micro", img_size=30)


@pytest.mark.parametrize("mask_ratio", [-0.1, 1.0, 1.5])
def test_bad_mask_ratio_rejected(mask_ratio):
    with pytest.raises(ValueError, match=rf"mask_ratio={mask_ratio}.*\[0, 1\)"):
        get_config("micro", mask_ratio=mask_ratio)


def test_mask_ratio_zero_shows_every_patch(micro):
    """0 is PC masking's setting: no patch hidden, the loss over every patch."""
    imgs = imgs_for(micro.config)
    loss, pred, mask = micro(imgs, mask_ratio=0.0)
    assert mask.sum() == 0 and pred.shape[1] == micro.config.num_patches
    torch.testing.assert_close(loss, ((pred - micro.patchify(imgs)) ** 2).mean())


@pytest.mark.parametrize("mask_ratio", [-0.1, 1.0, 1.5])
def test_bad_mask_ratio_rejected_at_forward(micro, mask_ratio):
    with pytest.raises(ValueError, match=rf"mask_ratio={mask_ratio}"):
        micro(imgs_for(micro.config), mask_ratio=mask_ratio)


@pytest.mark.parametrize("overrides,pattern", [
    ({"num_heads": 3}, "num_heads=3"),
    ({"decoder_embed_dim": 30, "decoder_num_heads": 4}, "decoder_num_heads=4"),
    ({"pos_embed": "rope"}, "rope"),
    ({"pos_embed": "sincos", "embed_dim": 34}, "divisible by 4"),
])
def test_other_bad_configs_rejected(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_config("micro", **overrides)


def test_unknown_preset_named():
    with pytest.raises(ValueError, match=r"'vit-huge-mnist'.*micro"):
        get_config("vit-huge-mnist")
    with pytest.raises(ValueError, match="vit-huge-mnist"):
        build_mae("vit-huge-mnist")


def test_wrong_image_size_at_forward(micro):
    with pytest.raises(ValueError, match=r"\(N, 3, 16, 16\).*\(2, 3, 32, 32\)"):
        micro(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(2, 1, 16, 16\)"):
        micro.encoder.forward_features(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        micro(imgs_for(micro.config, n=2), target=torch.randn(2, 3, 8, 8))


# ---------------------------------------------------------------- classifier


def test_classifier_shares_encoder_and_sees_all_tokens(micro):
    classifier = ViTClassifier(micro.encoder, num_classes=7, head_dropout=0.1)
    encoder_params = {id(p) for p in micro.encoder.parameters()}
    classifier_params = {id(p) for p in classifier.encoder.parameters()}
    assert encoder_params == classifier_params
    assert classifier.encoder.patch_embed.weight is micro.encoder.patch_embed.weight
    assert count_params(classifier) == count_params(micro.encoder) + 32 * 7 + 7

    seen = []
    hook = micro.encoder.blocks[0].register_forward_hook(
        lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        classifier.eval()
        logits = classifier(imgs_for(micro.config, n=3))
    finally:
        hook.remove()
    assert logits.shape == (3, 7)
    assert seen == [(3, 1 + micro.config.num_patches, 32)]
    assert isinstance(classifier.encoder, ViTEncoder)


# ---------------------------------------------------------------- precision, attention kernel, compile


def test_attention_kernels_give_the_same_loss_and_gradients(monkeypatch):
    """'math' (written out) and 'sdpa' (fused) are one computation; only 'sdpa' calls the fused op."""
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(0)
    model = build_mae("micro")
    x = imgs_for(model.config)
    results = {}
    for kernel in ("sdpa", "math"):
        set_attention(model, kernel)
        assert attention_kernel(model) == kernel
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss, _, _ = model(x, generator=torch.Generator().manual_seed(3))
        loss.backward()
        results[kernel] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
        assert len(calls) == (3 if kernel == "sdpa" else 0)  # 2 encoder + 1 decoder blocks
    torch.testing.assert_close(results["math"][0], results["sdpa"][0], atol=1e-6, rtol=1e-5)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["math"][1][name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_set_attention_rejects_unknown_kernels_and_modules_without_attention(micro):
    with pytest.raises(ValueError, match="one of \\('sdpa', 'math'\\), got 'flash'"):
        set_attention(micro, "flash")
    with pytest.raises(ValueError, match="Linear has no timm Attention"):
        set_attention(torch.nn.Linear(2, 2), "math")
    model = build_mae("micro")
    set_attention(model.encoder, "math")
    assert attention_kernel(model.encoder) == "math" and attention_kernel(model) == "mixed"


def test_bf16_autocast_forward(micro):
    x = imgs_for(micro.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = micro(x)
    assert pred.dtype == torch.bfloat16
    assert torch.isfinite(loss)
    assert mask.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(micro.encoder.cls_token.grad).all()
    micro.zero_grad(set_to_none=True)


def test_torch_compile_fullgraph():
    torch.manual_seed(0)
    model = build_mae("micro", pos_embed="sincos", decoder_embed_dim=16)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = imgs_for(model.config)
    torch.manual_seed(1)
    loss, pred, mask = compiled(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert mask.sum(1).eq(12).all()
    assert torch.isfinite(model.decoder_pred.weight.grad).all()
