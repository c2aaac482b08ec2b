"""kill -9 during a checkpoint write and during training: what is on disk still loads, and a
resumed run ends with the same weights as one never interrupted (slow: subprocesses)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from lowvar_mae import checkpoint
from lowvar_mae.models import build_mae
from lowvar_mae.pretrain import pretrain
from lowvar_mae.recipes import make_config
from lowvar_mae.train import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).resolve().parents[1]


def _spawn(code: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})


def test_kill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    writer = """
        import torch
        from lowvar_mae import checkpoint
        from lowvar_mae.models import build_mae
        model = build_mae("small-cifar")
        opt = torch.optim.AdamW(model.parameters())
        for epoch in range(1, 10_000):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float(epoch))
            checkpoint.save_checkpoint(RUN, epoch, model, opt, {})
    """
    run = tmp_path / "run"
    for cycle in range(6):
        proc = _spawn(f"RUN = {str(run)!r}\n" + textwrap.dedent(writer))
        deadline = time.time() + 60
        while not (run / checkpoint.LATEST).exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3 + 0.37 * cycle)  # land the kill at different points of a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = checkpoint.latest_checkpoint(run)
        model = build_mae("small-cifar")
        checkpoint.load_weights(model, ckpt)  # digest checked
        epoch = int(ckpt.name.split("-e")[1])
        assert all(torch.all(p == float(epoch)) for p in model.parameters())


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    cfg = dict(epochs=4, batch_size=32, n_train=256)
    trainer = f"""
        from lowvar_mae.recipes import make_config
        from lowvar_mae.pretrain import pretrain
        pretrain(make_config("quick", "synthetic", "pca-bottom:0.25", **{cfg!r}), progress=False)
    """
    killed = tmp_path / "killed"
    proc = _spawn(trainer, {"LOWVAR_MAE_RUNS": str(killed)})
    config = make_config("quick", "synthetic", "pca-bottom:0.25", **cfg)
    run_dir = killed / config.run_name
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "checkpoint-e0002").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint-e0002").exists(), "the trainer did not reach epoch 2"
    assert not (run_dir / "summary.json").exists()
    # a kill leaves its lock behind; the resume sees that its process is gone and takes it over
    resumed = pretrain(config, root=killed, progress=False)
    straight = pretrain(config, root=tmp_path / "straight", progress=False)
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2, 3, 4]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


@pytest.mark.slow
def test_two_forced_commands_on_one_run_do_not_mix(tmp_path):
    """Two identical `pretrain --force` started together: one trains, the other refuses at once
    with a message naming the holder, and the run that lands is whole (one line per epoch)."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOWVAR_MAE_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lowvar_mae", "pretrain", "--recipe", "quick", "--n-train", "256", "--epochs", "3",
           "--batch-size", "64", "--force", "--no-progress"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for *_, code in results)
    assert codes == [0, 2], results
    refused = next(err for _, err, code in results if code == 2)
    assert "is in use by process" in refused and len(refused.strip().splitlines()) == 1
    runs = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("pretrain-")]
    assert len(runs) == 1
    lines = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert not [p.name for p in (tmp_path / "runs").iterdir() if p.name.endswith((".lock", ".new", ".tmp"))]


def test_a_replacement_killed_between_its_renames_is_recovered(tmp_path):
    """The state a kill leaves between the two renames of a --force replacement: the old run
    aside as .<name>.old, no <name>. The next start puts the old run back and loads it."""
    from lowvar_mae.pretrain import pretrain
    from lowvar_mae.recipes import make_config

    config = make_config("quick", "synthetic", "pixels", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, root=tmp_path, progress=False)
    aside = tmp_path / f".{run.run_dir.name}.old"
    run.run_dir.rename(aside)
    again = pretrain(config, root=tmp_path, progress=False)
    assert not again.trained_now and again.run_dir.is_dir() and not aside.exists()
    # the next --force also starts from a recovered folder, and leaves no copy behind
    run.run_dir.rename(aside)
    forced = pretrain(config, root=tmp_path, force=True, progress=False)
    assert forced.trained_now and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_force_on_a_linked_run_folder_is_refused(tmp_path):
    from lowvar_mae.pretrain import pretrain
    from lowvar_mae.recipes import make_config

    config = make_config("quick", "synthetic", "pixels", n_train=32, epochs=1, batch_size=32)
    run = pretrain(config, root=tmp_path / "real", progress=False)
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / run.run_dir.name
    link.symlink_to(run.run_dir)
    with pytest.raises(RuntimeError, match="is a link to .*--force replaces folders, not links"):
        pretrain(config, root=tmp_path / "links", force=True, progress=False)
    assert link.is_symlink() and link.resolve() == run.run_dir.resolve()


def _write_checkpoint_into(folder):
    from lowvar_mae.checkpoint import save_checkpoint
    from lowvar_mae.models import build_mae

    model = build_mae("small-cifar")
    save_checkpoint(folder, 1, model, torch.optim.AdamW(model.parameters()), {})


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_write_is_one_error_and_leaves_nothing(tmp_path):
    """A real full disk where the machine lets a test mount a small tmpfs; else skipped."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    try:
        with pytest.raises(checkpoint.CheckpointError, match="could not write checkpoint .*free space and resume"):
            _write_checkpoint_into(mount / "run")
        assert [p.name for p in (mount / "run").iterdir()] == []  # the temporary folder is gone
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_write_error_of_the_weights_file_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    """The same on any machine: safetensors' own error (not an OSError) from the writer."""
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device (os error 28))")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(checkpoint.CheckpointError, match="could not write checkpoint .*No space left"):
        _write_checkpoint_into(tmp_path / "run")
    assert [p.name for p in (tmp_path / "run").iterdir()] == []
