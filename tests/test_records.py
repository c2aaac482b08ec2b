"""The committed records: each names the commit of the code that made it."""

import json

import pytest

from lowvar_mae.provenance import repo_root

RECORDS = sorted(p for p in (repo_root() / "results").glob("*/*.json") if p.parent.name != "unverified")


def test_there_are_committed_records():
    assert len(RECORDS) > 10


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_record_names_a_clean_revision_and_a_machine(path):
    prov = json.loads(path.read_text())["provenance"]
    revision = prov["git_revision"].removesuffix(" (copy)")  # a GPU machine's copy of a clean commit
    assert len(revision) == 40 and all(c in "0123456789abcdef" for c in revision), \
        f"{path.name}: git_revision {revision!r} is not a clean commit (move it to results/unverified/)"
    assert prov.get("device_name") or prov.get("device"), f"{path.name}: no machine named"


def test_machines_with_amx_are_named_apart(monkeypatch):
    """An AMX machine's records must not read as an AVX512-BF16 one's (its bf16 step is about
    twice as fast); with torch's kernels held to AVX2 it is named by what runs."""
    from lowvar_mae import hardware
    from lowvar_mae.provenance import device_info

    monkeypatch.setattr(hardware, "cpu_has_amx", lambda: True)
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    info = device_info()
    assert info["cpu_amx"] is True and ", AMX, native bf16, " in info["device_name"]
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert "AMX" not in device_info()["device_name"]
    assert isinstance(info["cpu_model"], str)


def test_cpu_model_names_family_and_model_of_the_first_processor(tmp_path):
    """Two CPUs sold under one name ("AMD EPYC": Zen 4 is family 25, Zen 5 family 26) run
    the step at different speeds, so the name carries the numbers; a missing file gives ""."""
    from lowvar_mae.hardware import cpu_model

    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: {}\nmodel name\t: AMD EPYC\n"
    info = tmp_path / "cpuinfo"
    info.write_text(block.format(0, 26, 2) + "\n" + block.format(1, 25, 17))
    assert cpu_model(str(info)) == "AMD EPYC (family 26, model 2)"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_model(str(info)) == "Some CPU"
    assert cpu_model(str(tmp_path / "missing")) == ""


def test_device_name_carries_the_cpu_model(monkeypatch):
    from lowvar_mae import hardware
    from lowvar_mae.provenance import device_info

    monkeypatch.setattr(hardware, "cpu_model", lambda: "AMD EPYC (family 26, model 2)")
    assert device_info()["device_name"].startswith("CPU (AMD EPYC (family 26, model 2): ")
    monkeypatch.setattr(hardware, "cpu_model", lambda: "")
    import torch

    assert device_info()["device_name"].startswith(f"CPU ({torch.backends.cpu.get_cpu_capability()}")


def test_pretrain_provenance_lists_every_machine_a_run_started_on(tmp_path):
    """A run resumed on another machine names both, the first one first, each once."""
    from lowvar_mae.pretrain import pretrain_provenance

    start = {"git_revision": "a" * 40, "device_name": "CPU (one)", "threads": "2", "time_utc": "t0"}
    resumes = [{"git_revision": "b" * 40, "device_name": "CPU (two)"}, {"git_revision": "b" * 40, "device_name": "CPU (one)"}]
    (tmp_path / "provenance.json").write_text(json.dumps({**start, "resumes": resumes}))
    made = pretrain_provenance(tmp_path, {"train_seconds": 10.0})
    assert made["machines"] == ["CPU (one)", "CPU (two)"] and made["device_name"] == "CPU (one)"
    assert made["resumes"] == ["b" * 40, "b" * 40]
    (tmp_path / "provenance.json").write_text(json.dumps(start))
    assert pretrain_provenance(tmp_path, {})["machines"] == ["CPU (one)"]
