"""The book checks and the result records."""

import json

import pytest

from lowvar_mae import book, provenance
from lowvar_mae.__main__ import main
from lowvar_mae.results import load_records, write_record


def test_check_page_finds_missing_images_and_errors(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG....")
    page = tmp_path / "page.html"
    page.write_text('<html><img src="img.png"><img src="gone.png"><pre>Traceback (most recent call last)</pre></html>')
    problems = book.check_page(page, min_images=3)
    assert any("2 images, expected at least 3" in p for p in problems)
    assert any("gone.png is missing" in p for p in problems)
    assert any("error output" in p for p in problems)
    page.write_text('<html><img src="img.png"></html>')
    assert book.check_page(page, min_images=1) == []


def test_find_notebook_by_number_and_unknown_name():
    assert book.find_notebook("01").stem == "01_pca_variance_components"
    with pytest.raises(ValueError, match="unknown notebook '77'"):
        book.find_notebook("77")


def test_records_carry_provenance_and_never_overwrite(tmp_path):
    a = write_record("pca", {"dataset": "toy", "fit_seconds": 1.5}, root=tmp_path)
    b = write_record("pca", {"dataset": "toy", "fit_seconds": 2.5}, root=tmp_path)
    assert a != b and a.parent == tmp_path / "pca"
    rec = json.loads(a.read_text())
    for key in ("git_revision", "versions", "device_name", "cpu_capability", "time_utc"):
        assert key in rec["provenance"]
    assert rec["provenance"]["versions"]["torch"].startswith("2.")
    table = load_records("pca", root=tmp_path)
    assert sorted(table["fit_seconds"]) == [1.5, 2.5]
    assert {"device_name", "git_revision", "torch"} <= set(table.columns)


def test_results_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "r"))
    assert provenance.results_dir() == tmp_path / "r"
    assert provenance.results_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("LOWVAR_MAE_RESULTS")
    assert provenance.results_dir() == provenance.repo_root() / "results"


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])
    assert "invalid choice" in capsys.readouterr().err


def test_records_are_read_from_the_build_and_the_committed_folder(tmp_path, monkeypatch):
    from lowvar_mae.results import record_dirs

    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "build"))
    dirs = record_dirs()
    assert dirs == [tmp_path / "build", provenance.repo_root() / "results"]
    write_record("probe-kind", {"dataset": "toy"})
    assert (tmp_path / "build" / "probe-kind").is_dir()
    assert not (provenance.repo_root() / "results" / "probe-kind").exists()
    assert len(load_records("probe-kind")) == 1
