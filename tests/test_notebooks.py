"""Every notebook executes under papermill with its smallest parameters."""

import json

import pytest

from lowvar_mae import book

# The smallest parameters that still exercise every cell of each notebook.
SMALLEST = {
    "00_introduction": {},
    "01_pca_variance_components": {"n_images": 300, "n_eigenimages": 4, "n_examples": 3},
    "02_mae_pretraining": {"epochs": 1, "n_train": 64, "batch_size": 32, "target": "pixels"},
    "03_evaluation": {"run_targets": ["pixels", "none"], "seeds": [0], "n_train": 64, "n_test": 50,
                      "pretrain_epochs": 1, "eval_epochs": 1, "batch_size": 16},
    "04_subspace_classification": {"shares_top": [0.9], "shares_bottom": [0.25], "epochs": 1, "n_train": 128,
                                   "n_fit": 300},
    "05_learning_order": {"targets": ["pixels"], "epochs": 1, "n_train": 32, "batch_size": 32, "n_eval": 8,
                          "n_fit": 300},
    "06_other_targets": {},
    "07_performance": {},
    "08_conclusions": {},
}


def test_every_notebook_has_smallest_parameters():
    assert sorted(SMALLEST) == [p.stem for p in book.list_notebooks()]


@pytest.mark.parametrize("name", sorted(SMALLEST))
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWVAR_MAE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("LOWVAR_MAE_RUNS", str(tmp_path / "runs"))
    out = book.execute_notebook(book.find_notebook(name), tmp_path / f"{name}.ipynb", SMALLEST[name], timeout=600)
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    if SMALLEST[name]:
        assert "parameters" in first["metadata"].get("tags", [])
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in nb["cells"])


def test_failing_notebook_leaves_no_output(tmp_path):
    import papermill

    src = tmp_path / "99_broken.py"
    src.write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nraise RuntimeError("boom")\n')
    with pytest.raises(papermill.PapermillExecutionError, match="boom"):
        book.execute_notebook(src, tmp_path / "out.ipynb")
    assert not (tmp_path / "out.ipynb").exists()
