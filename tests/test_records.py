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
