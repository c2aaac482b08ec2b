"""The table in docs/bad_inputs.md, row by row: each input must fail with the text the table shows."""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lowvar_mae import basis_io, book, checkpoint, curve, grid, pca, probes
from lowvar_mae.__main__ import main
from lowvar_mae.data import ImageDataset, load_dataset, make_synthetic, save_shards
from lowvar_mae.learning_order import learning_order_run
from lowvar_mae.models import build_mae
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import make_config, make_eval_config
from lowvar_mae.targets import basis_path, dataset_basis, images_digest, parse_target
from lowvar_mae.train import resolve_device

pytestmark = pytest.mark.usefixtures("one_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"


def rows() -> list[tuple[str, str]]:
    """(id, expected text) of every row of the doc's table."""
    out = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("id", "---"):
            expected = re.search(r"`([^`]*)`", cells[2])
            out.append((cells[0], expected.group(1)))
    return out


def raised(fn, kind=Exception) -> str:
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def tiny(**kw):
    values = {"epochs": 1, "batch_size": 32, "n_train": 64, **kw}
    return make_config("quick", "synthetic", values.pop("target", "pixels"), **values)


def _missing_part(tmp):
    images, labels = make_synthetic(30, seed=0)
    data = ImageDataset("cifar10", "train", images, labels, tuple(f"c{i}" for i in range(10)))
    parts = save_shards(data, tmp / "data", size=10)
    parts[-1].unlink()
    return load_dataset("cifar10", "train", root=tmp / "data", download=False)


def _short_split(tmp):
    """The shared CIFAR-10 layout (parts with index_start, no declared size), one part left out."""
    images, labels = make_synthetic(30, seed=0)
    folder = tmp / "data" / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "cifar10_train_a.npz", x=images, y=labels,
             classes=np.array([f"c{i}" for i in range(10)]), index_start=0)
    return load_dataset("cifar10", "train", root=tmp / "data", download=False)


def _blown_up(tmp):
    """Finite weights far beyond any trained model's: a diverged run must not be saved."""
    model = build_mae("micro")
    with torch.no_grad():
        model.encoder.patch_embed.weight[0, 0, 0, 0] = 1e29
    checkpoint.check_finite(model, "at epoch 3")


def _metrics_deleted(tmp, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp / "runs"))
    config = make_config("quick", "synthetic", "pixels", model="small-cifar", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, progress=False)
    (run.run_dir / "metrics.jsonl").unlink()
    try:
        pretrain(config, progress=False)
    finally:
        import shutil

        shutil.rmtree(tmp / "runs")  # the table's check: no run folder is left by the failing call


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _crafted_archive(tmp):
    folder = tmp / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": _Evil()}))
    return load_dataset("cifar10", "train", root=tmp / "data", download=False)


def _saved_checkpoint(tmp):
    model = build_mae("micro")
    return model, checkpoint.save_checkpoint(tmp / "run", 1, model, None, {})


def _corrupt(tmp):
    model, ckpt = _saved_checkpoint(tmp)
    file = ckpt / "model.safetensors"
    raw = bytearray(file.read_bytes())
    raw[-100:] = bytes(100)  # the end of the tensor data
    file.write_bytes(bytes(raw))
    checkpoint.load_weights(model, ckpt)


def _pointer(tmp):
    _saved_checkpoint(tmp)
    (tmp / "run" / "latest.json").write_text("{not json")
    checkpoint.latest_checkpoint(tmp / "run")


def _diverged(tmp):
    model = build_mae("micro")
    with torch.no_grad():
        model.encoder.cls_token.fill_(float("nan"))
    try:
        checkpoint.save_checkpoint(tmp / "run", 1, model, None, {})
    finally:
        assert not (tmp / "run" / "latest.json").exists()  # nothing saved


def _locked(tmp):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp / "run").mkdir()
        (tmp / "run" / checkpoint.LOCK).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename}))
        with checkpoint.run_lock(tmp / "run"):
            pass
    finally:
        other.kill()
        other.wait()


def _basis(tmp, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp / "runs"))
    images = load_dataset("synthetic", "train", n=50).to_tensor()
    other = pca.fit_pca(load_dataset("synthetic", "test", n=50).to_tensor(), dataset="synthetic")
    other = pca.PCABasis(**{**other.__dict__, "source": "0" * 64})
    basis_io.save_basis(other, basis_path("synthetic", images_digest(images)))
    dataset_basis("synthetic", images=images)


def _cli(capsys):
    code = main(["pretrain", "--target", "edges"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    raise ValueError(err)


def _cli_line(capsys, argv):
    """Run the command line; it must exit 2 with one line and no traceback: that line is the error."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    raise ValueError(err)


def _notebook_range(tmp, monkeypatch, capsys):
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp / "nb-runs"))
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp / "nb-results"))
    _cli_line(capsys, ["notebooks", "02", "-p", "epochs", "0", "--out", str(tmp / "nb")])


def _tampered_basis(tmp):
    """A cached basis whose top eigenvector was doubled, still a valid safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    basis = pca.fit_pca(load_dataset("synthetic", "train", n=40).to_tensor(), dataset="synthetic")
    path = basis_io.save_basis(basis, tmp / "basis" / "b.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["components"][:, 0] *= 2
    save_file(tensors, str(path), metadata=meta)
    basis_io.load_basis(path)


def _truncated_basis(tmp):
    basis = pca.fit_pca(load_dataset("synthetic", "train", n=40).to_tensor(), dataset="synthetic")
    path = basis_io.save_basis(basis, tmp / "basis" / "b.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    basis_io.load_basis(path)


def _edited_config(tmp):
    """A finished run whose config.json had its target edited afterwards."""
    from lowvar_mae.pretrain import load_run

    config = make_config("quick", "synthetic", "pixels", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, root=tmp / "elsewhere", progress=False)
    raw = json.loads((run.run_dir / "config.json").read_text())
    (run.run_dir / "config.json").write_text(json.dumps({**raw, "target": "pca-bottom:0.25"}))
    load_run(run.run_dir)


def _force_link(tmp):
    config = make_config("quick", "synthetic", "pixels", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, root=tmp / "real", progress=False)
    (tmp / "links").mkdir()
    (tmp / "links" / run.run_dir.name).symlink_to(run.run_dir)
    pretrain(config, root=tmp / "links", force=True, progress=False)


def _torn_summary(tmp):
    """A finished pretraining run whose summary.json was cut, evaluated."""
    from lowvar_mae.evaluate import evaluate

    config = make_config("quick", "synthetic", "pixels", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, root=tmp / "elsewhere", progress=False)
    (run.run_dir / "summary.json").write_text('{"final_loss": 0.1, "epo')
    evaluate(make_eval_config("knn", "quick", run, n_test=20), root=tmp / "elsewhere", results_root=tmp / "res",
             progress=False)


def _cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    resolve_device("cuda")


def cases(tmp, monkeypatch, capsys):
    return {
        "dataset": lambda: make_config("quick", "imagenet"),
        "recipe": lambda: make_config("slow"),
        "target": lambda: tiny(target="edges"),
        "pca-share": lambda: parse_target("pca-bottom:1.5"),
        "fft-radius": lambda: parse_target("fft-low:0"),
        "pc-mask-share": lambda: parse_target("pc-mask:1"),
        "pc-basis": lambda: tiny(target="pc-mask", pc_basis="whitened"),
        "pc-count-elsewhere": lambda: tiny(pc_count="reference"),
        "constant-pixel": lambda: pca.fit_standardized(torch.zeros(4, 1, 2, 2, dtype=torch.uint8)),
        "mask-ratio": lambda: tiny(mask_ratio=1.0),
        "mask-zero": lambda: tiny(mask_ratio=0.0),
        "bool-as-int": lambda: tiny(batch_size=True),
        "str-as-int": lambda: make_config("quick", "synthetic", n_train="100"),
        "betas": lambda: tiny(betas=(2, -1)),
        "weight-decay-type": lambda: tiny(weight_decay="a"),
        "weight-decay-sign": lambda: tiny(weight_decay=-1),
        "compile": lambda: tiny(compile="yes"),
        "pca-method": lambda: tiny(pca_method="fast"),
        "accum": lambda: tiny(accum_steps=3),
        "lr": lambda: tiny(base_lr=0),
        "features": lambda: make_eval_config("linprobe", "quick", None, features="max"),
        "device": lambda: resolve_device("tpu"),
        "cuda": _cuda,
        "grid-probe": lambda: grid.plan(["cifar10"], ["pixels"], [0], ["svm"], "cpu"),
        "grid-target": lambda: grid.plan(["cifar10"], ["edges"], [0], ["knn"], "cpu"),
        "grid-seed": lambda: grid.plan(["cifar10"], ["pixels"], [-1], ["knn"], "cpu"),
        "curve-point": lambda: curve.plan("cifar10", seeded=[("bottom", 0.3)]),
        "linear-penalties": lambda: probes.choose_weight_decay(*[torch.zeros(4, 2), torch.zeros(4).long()] * 2, 2,
                                                                 probes.LinearConfig(weight_decays=())),
        "notebook": lambda: book.find_notebook("99"),
        "notebook-parameter": lambda: book.execute_notebook(book.find_notebook("06"), tmp / "out.ipynb",
                                                            {"datset": "cifar10"}),
        "missing-data": lambda: load_dataset("cifar100", "train", root=tmp / "empty", download=False),
        "missing-part": lambda: _missing_part(tmp),
        "blown-up": lambda: _blown_up(tmp),
        "metrics-deleted": lambda: _metrics_deleted(tmp, monkeypatch),
        "learning-order-count": lambda: learning_order_run(make_config("quick", "synthetic", "pixels"), n_eval=-5),
        "short-split": lambda: _short_split(tmp),
        "crafted-archive": lambda: _crafted_archive(tmp),
        "checkpoint-corrupt": lambda: _corrupt(tmp),
        "checkpoint-pointer": lambda: _pointer(tmp),
        "diverged": lambda: _diverged(tmp),
        "locked": lambda: _locked(tmp),
        "basis-provenance": lambda: _basis(tmp, monkeypatch),
        "cli": lambda: _cli(capsys),
        "basis-tampered": lambda: _tampered_basis(tmp),
        "fewer-than-a-batch": lambda: pretrain(make_config("quick", "synthetic", "pixels", n_train=16, batch_size=32),
                                               root=tmp / "runs", progress=False),
        "model-image-size": lambda: pretrain(make_config("quick", "synthetic", "pixels", model="micro"),
                                             root=tmp / "runs", progress=False),
        "force-link": lambda: _force_link(tmp),
        "summary-torn": lambda: _torn_summary(tmp),
        "runs-empty": lambda: _cli_line(capsys, ["pretrain", "--runs", "", "--epochs", "1"]),
        "config-edited": lambda: _edited_config(tmp),
        "basis-truncated": lambda: _truncated_basis(tmp),
        "pca-nan": lambda: pca.fit_pca(torch.full((4, 3, 4, 4), float("nan"))),
        "pca-scale": lambda: pca.fit_pca(torch.rand(4, 3, 4, 4) * 255),
        "pca-layout": lambda: pca.fit_pca(torch.rand(4, 8, 8, 3)),
        "notebook-type": lambda: _cli_line(capsys, ["notebooks", "02", "-p", "seed", "abc", "--out", str(tmp / "nb")]),
        "notebook-yaml": lambda: _cli_line(capsys, ["notebooks", "03", "-p", "seeds", "[0, 1", "--out", str(tmp / "nb")]),
        "notebook-range": lambda: _notebook_range(tmp, monkeypatch, capsys),
    }


def test_the_table_has_a_case_for_every_row_and_at_least_25_rows():
    ids = [i for i, _ in rows()]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert sorted(ids) == sorted(cases(Path("."), None, None))


@pytest.mark.parametrize("case,expected", rows())
def test_bad_input(case, expected, tmp_path, monkeypatch, capsys):
    message = raised(cases(tmp_path, monkeypatch, capsys)[case])
    assert expected in message, f"{case}: {message!r}"
    assert not (tmp_path / "runs").exists() or case == "basis-provenance"  # no run folder left behind


def test_a_crafted_archive_runs_no_code(tmp_path, monkeypatch):
    marker = tmp_path / "ran"

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "data" / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps({"data": Marker()}))
    with pytest.raises(ValueError, match="refused global"):
        load_dataset("cifar10", "train", root=tmp_path / "data", download=False)
    assert not marker.exists()
    assert not list((tmp_path / "data" / "cifar10").glob("*.npz"))  # nothing cached from it


def test_force_with_missing_data_keeps_the_finished_run(tmp_path, monkeypatch):
    """--force validates and trains beside the old run; a failure leaves the old run whole."""
    from lowvar_mae.pretrain import pretrain

    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    cfg = tiny()
    run = pretrain(cfg, progress=False)
    before = sorted(p.relative_to(run.run_dir) for p in run.run_dir.rglob("*"))

    def no_data(*a, **k):
        raise FileNotFoundError("dataset 'synthetic' split 'train' not found")

    monkeypatch.setattr("lowvar_mae.pretrain.load_dataset", no_data)
    with pytest.raises(FileNotFoundError):
        pretrain(cfg, progress=False, force=True)
    assert sorted(p.relative_to(run.run_dir) for p in run.run_dir.rglob("*")) == before
    monkeypatch.undo()
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    again = pretrain(cfg, progress=False, force=True)
    assert again.trained_now and again.run_dir == run.run_dir
    assert [p.name for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")] == []


def test_json_files_never_hold_nan(tmp_path):
    from lowvar_mae.provenance import atomic_write_json

    path = atomic_write_json(tmp_path / "x.json", {"loss": float("nan"), "curve": [1.0, float("inf")]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"curve": [1.0, None], "loss": None}


def test_torn_metrics_line_and_epochs_without_a_checkpoint_are_dropped(tmp_path):
    from lowvar_mae.train import read_metrics

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "loss": 1.0}\n{"epoch": 2, "lo')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [m["epoch"] for m in read_metrics(run)] == [1]
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(run)


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / checkpoint.LOCK
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with checkpoint.run_lock(tmp_path / "run"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_checkpoint_records_digests_and_keeps_one_folder(tmp_path):
    model = build_mae("micro")
    first = checkpoint.save_checkpoint(tmp_path, 1, model, None, {})
    second = checkpoint.save_checkpoint(tmp_path, 2, model, None, {})
    state = json.loads((second / "state.json").read_text())
    assert state["digests"]["model.safetensors"] == checkpoint.file_digest(second / "model.safetensors")
    assert not first.exists() and checkpoint.latest_checkpoint(tmp_path) == second
    assert not list(tmp_path.glob(".*.tmp"))
    np.testing.assert_array_equal(sorted(p.name for p in tmp_path.iterdir()), ["checkpoint-e0002", "latest.json"])


def test_an_epoch_line_without_its_checkpoint_is_dropped_on_resume(tmp_path, monkeypatch):
    """A kill after the metrics line but before the first checkpoint: the line goes, the epoch reruns."""
    from lowvar_mae.pretrain import pretrain

    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    cfg = tiny(epochs=2)
    run_dir = tmp_path / "runs" / cfg.run_name
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "loss": 123.0, "seconds": 1.0, "images_per_s": 1.0}\n')
    run = pretrain(cfg, progress=False)
    assert [m["epoch"] for m in run.metrics] == [1, 2] and run.metrics[0]["loss"] != 123.0
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
