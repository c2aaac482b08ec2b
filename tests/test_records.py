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
