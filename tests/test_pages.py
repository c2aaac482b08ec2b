"""Pages against records: what chapters 03, 04 and 06 show is what a fresh computation from
the committed records gives (the conclusions page has its own test). Each executes a
chapter, so they run in the slow suite, which CI runs."""

import ast
import json

import pytest

from lowvar_mae import book, grid, report, verdicts
from lowvar_mae.reference import target_label
from lowvar_mae.results import load_records


def _execute(name, tmp_path, monkeypatch, parameters=None):
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "results"))  # the committed records alone
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    nb = json.loads(book.execute_notebook(book.find_notebook(name), tmp_path / f"{name}.ipynb", parameters or {},
                                                timeout=600)
                    .read_text())
    glued, shown = {}, []
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            name_ = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name_:
                glued[name_] = o["data"]["application/papermill.record/text/plain"]
            for kind in ("text/html", "text/markdown", "text/plain"):
                if kind in o.get("data", {}):
                    shown.append("".join(o["data"][kind]))
    return glued, "\n".join(shown)


def _fresh(targets):
    records = report.protocol_records(load_records("eval"), "cifar10", "cpu")
    return verdicts.decide(records[records["target"].isin(targets)])


@pytest.mark.slow
@pytest.mark.parametrize("chapter, key, targets", [
    ("03", "table1_verdicts", grid.DEFAULT_TARGETS),
    ("06", "claim_verdicts", ["pixels", "none", "norm-pix", "pca-bottom:0.25", "pca-top:0.75", *grid.OTHER_TARGETS]),
])
def test_the_verdicts_a_page_shows_are_those_of_its_records(chapter, key, targets, tmp_path, monkeypatch):
    glued, shown = _execute(chapter, tmp_path, monkeypatch)
    assert key in glued, f"chapter {chapter} glues no {key}"
    page = json.loads(ast.literal_eval(glued[key]))  # the glued value is the repr of a JSON string
    fresh = _fresh(targets)
    assert page == json.loads(verdicts.as_json(fresh))
    assert len(page) >= 2
    for _, row in fresh.iterrows():
        if chapter == "03":
            assert row["words"].replace("&", "&amp;") in shown or row["words"] in shown, row["words"]
        else:
            assert report.CLAIM_OUTCOMES[row["outcome"]] in shown
        assert target_label(row["target"]) in shown


@pytest.mark.slow
def test_the_subspace_points_chapter_04_shows_are_those_of_its_records(tmp_path, monkeypatch):
    from test_notebooks import SMALLEST  # the teaching run at its smallest; the records section is whole

    glued, shown = _execute("04", tmp_path, monkeypatch, SMALLEST["04_subspace_classification"])
    page = json.loads(ast.literal_eval(glued["subspace_points"]))
    fresh = report.subspace_curves(report.current_subspace_records(load_records("subspace"), "cifar10"))
    assert page == json.loads(report.curves_json(fresh)) and len(page) >= 20
    conv_b25 = fresh[(fresh["classifier"] == "convnet") & (fresh["side"] == "bottom") & (fresh["share"] == 0.25)].iloc[0]
    assert f"{100 * conv_b25['mean']:.1f}% ± {100 * conv_b25['std']:.1f}" in shown
