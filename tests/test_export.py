"""A pretrained encoder exported as a state dict of timm's VisionTransformer computes the same features."""

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lowvar_mae.__main__ import main
from lowvar_mae.models import build_mae, timm_kwargs, timm_state_dict
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import make_config


@pytest.mark.parametrize("preset", ["micro", "cpu-cifar"])
def test_timm_forward_features_equal_the_encoder(preset):
    torch.manual_seed(0)
    encoder = build_mae(preset).encoder.eval()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **timm_kwargs(encoder)).eval()
    model.load_state_dict(timm_state_dict(encoder), strict=True)
    x = torch.randn(3, 3, encoder.img_size, encoder.img_size)
    with torch.no_grad():
        ours, theirs = encoder.forward_features(x), model.forward_features(x)
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # timm's pooled output is the CLS token, as the probes' "cls"
        torch.testing.assert_close(model(x), ours[:, 0], rtol=1e-5, atol=1e-5)


def test_a_sincos_encoder_writes_out_its_fixed_table():
    encoder = build_mae("micro", pos_embed="sincos").encoder
    state = timm_state_dict(encoder)
    assert "pos_embed" not in encoder.state_dict() and torch.equal(state["pos_embed"], encoder.pos_embed)


def test_export_command_writes_a_strictly_loadable_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(1)
    run = pretrain(make_config("quick", "synthetic", "pixels", n_train=64, epochs=1, batch_size=32),
                   progress=False)
    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(run.run_dir), "--to", "timm", str(out)]) == 0
    assert "timm.create_model" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    model = timm.create_model(meta["timm_arch"], pretrained=False, **json.loads(meta["timm_kwargs"])).eval()
    model.load_state_dict(load_file(str(out)), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), run.model.encoder.eval().forward_features(x),
                                   rtol=1e-5, atol=1e-5)
    assert main(["export", str(run.run_dir), "--to", "onnx", str(out)]) == 2
    assert "--to must be 'timm'" in capsys.readouterr().err
