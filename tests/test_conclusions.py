"""The conclusions page shows what the committed records give, and nothing else."""

import json
import math

import numpy as np
import pytest

from lowvar_mae import book
from lowvar_mae.conclusions import BOTTOM, findings, takeaways
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

    # the fill-in reference: every committed mask of the bottom target on the cpu model's 4x4 patches,
    # against the reconstruction error of the longest seed-0 bottom run, read straight from the JSON
    fills = [json.loads(p.read_text()) for p in sorted((book.repo_root() / "results" / "fill_in").glob("*.json"))]
    errors = [r["error"] for r in fills if r["dataset"] == "cifar10" and r["target"] == BOTTOM and r["patch_size"] == 4]
    assert f["fill_bottom_n"] == len(errors) >= 1 and f["fill_bottom"] == pytest.approx(np.mean(errors))
    assert (f["fill_bottom_low"], f["fill_bottom_high"]) == (min(errors), max(errors))
    runs = [json.loads(p.read_text()) for p in (book.repo_root() / "results" / "pretraining").glob("*.json")]
    runs = [r for r in runs if r["dataset"] == "cifar10" and r["recipe"] == "cpu" and r["target"] == BOTTOM
            and r["seed"] == 0 and r["pretrain_epochs"] == f["mae_bottom_epochs"]]
    last = runs[-1]["reconstructions"]["relative_error"]
    assert f["mae_bottom_error"] == pytest.approx(last[max(last, key=int)])
    assert f["mae_bottom_epochs"] == (f.get("study_longest") or f["epochs"])


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


def _hand_made(**changes):
    f = {"dataset": "cifar10", "epochs": 6, "study_longest": 24, "mean_image_level": 0.75,
         "short_lin_mean": -0.056, "short_lin_low": -0.082, "short_lin_high": -0.029, "short_lin_n": 3,
         "short_lin_outcome": "not trained enough at this length",
         "long_lin_mean": 0.031, "long_lin_low": 0.012, "long_lin_high": 0.050, "long_lin_n": 3,
         "long_lin_outcome": "higher", "long_lin_p_holm": 0.021, "long_lin_family": 2, "crossing_epochs": 69.0,
         "convnet_full": 0.867, "convnet_full_n": 3, "convnet_top90": 0.695, "convnet_bottom25": 0.861,
         "short_finest_band": "90-100%", "short_finest_error": 0.876,
         "long_finest_band": "90-100%", "long_finest_error": 0.683,
         "rivals": {}, "rivals_holding": []}
    f.update(changes)
    return f


def test_the_end_boxes_say_what_the_rule_and_the_numbers_say():
    """Hand-made findings: each outcome of the rule gets its own words, numbers as given."""
    said = takeaways(_hand_made(), "evaluation")
    assert said[0].startswith("At 6 pretraining epochs, bottom 25% minus pixels is -5.6 points by linear probe "
                              "(95% interval -8.2 to -2.9, 3 seeds)") and "so no verdict" in said[0]
    assert "+3.1 points" in said[1] and said[1].endswith(
        "the bottom target is ahead (its p-value after Holm's correction over 2 comparisons is 0.021, below 0.05).")
    assert "near 69 epochs" in said[2] and "extrapolation" in said[2]
    lower = takeaways(_hand_made(long_lin_outcome="lower"), "evaluation")[1]
    assert "the pixel target is ahead" in lower and "contradict the idea" in lower
    unshown = takeaways(_hand_made(long_lin_outcome="no difference shown", long_lin_p_holm=0.31), "evaluation")[1]
    assert unshown.endswith("no difference is shown (its p-value after Holm's correction over 2 comparisons is "
                            "0.310, not below 0.05).")
    # A crossing already behind the longest length measured is not an extrapolation to announce.
    assert not any("cross zero" in p for p in takeaways(_hand_made(crossing_epochs=12.0), "evaluation"))
    # The line is fitted to the lengths where both targets have records, and says so.
    partial = _hand_made(study_lengths=[6, 12, 24, 48], gap_lengths=[6, 12, 24])
    assert any("at the lengths measured (6, 12, 24) rises" in p for p in takeaways(partial, "evaluation"))

    premise = takeaways(_hand_made(), "subspace")
    assert premise == [("The premise holds on cifar10: a conv net reads the class from the bottom-25% subspace at "
                        "86.1% test accuracy, from the top-90% subspace at 69.5% and from the full image at 86.7%.")]
    assert takeaways(_hand_made(convnet_bottom25=0.5), "subspace")[0].startswith("The premise does not hold")

    order = takeaways(_hand_made(), "learning-order")
    assert "0.876, still above the mean-image level 0.75" in order[0] and "0.683, below" in order[1]
    rivals = takeaways(_hand_made(rivals_holding=["fft-high:0.14"]), "other-targets")
    assert rivals == ["Rival targets ahead of pixels by the same rule: fft-high:0.14 (at 6 epochs)."]
