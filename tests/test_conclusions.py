"""The conclusions page shows what the committed records give, and nothing else."""

import json
import math

import numpy as np
import pytest

from lowvar_mae import book
from lowvar_mae.conclusions import BOTTOM, findings
from lowvar_mae.results import load_records


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """findings() on the committed records alone (no build's records beside them)."""
    import os

    empty = tmp_path_factory.mktemp("results")
    before = os.environ.get("LOWVAR_MAE_RESULTS")
    os.environ["LOWVAR_MAE_RESULTS"] = str(empty)
    yield findings("cifar10", "cpu"), empty
    if before is None:
        del os.environ["LOWVAR_MAE_RESULTS"]
    else:
        os.environ["LOWVAR_MAE_RESULTS"] = before


def _mean_acc(records, target, metric):
    sub = records[(records["target"] == target) & (records["metric"] == metric)]
    return sub.drop_duplicates(["run", "metric"], keep="last").set_index("seed")["value"].astype(float)


def test_findings_agree_with_a_direct_reading_of_the_records(committed):
    f, results = committed
    evals = load_records("eval", None)
    evals = evals[(evals["dataset"] == "cifar10") & (evals["recipe"] == "cpu")
                  & (evals["pretrain_epochs"].isna() | (evals["pretrain_epochs"] == 6))]
    bottom, pixels, none = (_mean_acc(evals, t, "linprobe") for t in (BOTTOM, "pixels", "none"))
    seeds = sorted(set(bottom.index) & set(pixels.index))
    assert f["short_lin_n"] == len(seeds)
    assert f["short_lin_mean"] == pytest.approx(np.mean([bottom[s] - pixels[s] for s in seeds]))
    assert f["short_lin_margin"] == pytest.approx(bottom.mean() - none.mean())
    assert f["pixels_margin"] == pytest.approx(pixels.mean() - none.mean())
    assert (f["short_lin_outcome"] == "not trained enough at this length") == (f["short_lin_margin"] < 0.08)

    subspace = load_records("subspace", None)
    conv = subspace[(subspace["classifier"] == "convnet") & (subspace["side"] == "bottom")
                    & ((subspace["share"] - 0.25).abs() < 1e-9)]
    from lowvar_mae.report import current_subspace_records

    conv = current_subspace_records(conv, "cifar10")
    assert f["convnet_bottom25"] == pytest.approx(conv["test_accuracy"].astype(float).mean())
    assert f["convnet_bottom25_n"] == len(conv)


@pytest.mark.slow
def test_the_executed_page_glues_the_numbers_of_the_records(committed, tmp_path, monkeypatch):
    f, results = committed
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(results))
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    out = book.execute_notebook(book.find_notebook("08"), tmp_path / "08.ipynb", {}, timeout=600)
    nb = json.loads(out.read_text())
    glued = {}
    for cell in nb["cells"]:
        for o in cell.get("outputs", []):
            name = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                glued[name] = o["data"]["application/papermill.record/text/plain"]
    assert {"convnet_bottom25", "short_lin_mean", "short_lin_outcome", "pixels_margin"} <= set(glued)
    for name, shown in glued.items():
        value = f[name]
        if isinstance(value, str):
            assert shown.strip("'\"") == value, name
        elif not math.isnan(value):
            assert float(shown) == pytest.approx(value, rel=1e-9), name
    text = "".join("".join(o["data"].get("text/markdown", "")) for c in nb["cells"] for o in c.get("outputs", [])
                   if "data" in o)
    assert f"{abs(f['short_lin_mean']) * 100:.1f} points" in text
    assert f"{f['convnet_bottom25'] * 100:.1f}%" in text
