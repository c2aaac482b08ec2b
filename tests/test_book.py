"""The book checks and the result records."""

import html
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


# ---------------------------------------------------------------- rendered-page checks

GOOD = """<html><body><main>
<h1>Chapter</h1><p>Text with math <span class="math notranslate nohighlight"><mjx-container jax="CHTML">
<mjx-math>x</mjx-math></mjx-container></span>.</p>
<div class="cell tag_parameters tag_hide-cell docutils container"><div class="cell_input docutils container">
<div class="highlight"><pre>dataset = "synthetic"</pre></div></div></div>
<div class="cell tag_remove-input docutils container"><div class="cell_output docutils container">
<div class="output text_html"><table><tr><td>0.563</td></tr></table></div></div></div>
<p>Code such as <code>\\(x\\)</code> may hold anything.</p>
</main></body></html>"""

DEFECTS = {
    "raw role text '{glue": GOOD.replace("Text with math", "For the {glue:text}`first_target` target"),
    "untypeset math '\\\\('": GOOD.replace("Text with math", "The mean \\(X\\) of"),
    "were not typeset": GOOD.replace('<mjx-container jax="CHTML">\n<mjx-math>x</mjx-math></mjx-container>', "\\(x\\)"),
    "a Python repr": GOOD.replace("<td>0.563</td>", "<td>Text(0.5, 1.02, 'epoch 1')</td>"),
    "a warning or error": GOOD.replace("<td>0.563</td>", "<td>UserWarning: something went wrong</td>"),
    "before the page title": GOOD.replace("<h1>Chapter</h1>", "").replace(
        "</main>", '<div class="cell docutils container"><div class="cell_input docutils container"><pre>x = 1</pre>'
        '</div></div><h1>Chapter</h1></main>', 1).replace("tag_parameters tag_hide-cell ", ""),
}


def test_a_clean_page_passes_the_dom_checks():
    assert book.dom_problems(GOOD) == []


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_class_fails_the_dom_checks(defect):
    problems = book.dom_problems(DEFECTS[defect], "page.html")
    assert any(defect in p for p in problems), problems


@pytest.mark.parametrize("raw", ["nan", "None", "True", "<NA>"])
def test_a_raw_missing_value_or_flag_in_a_table_cell_is_caught(raw):
    page = GOOD.replace("<td>0.563</td>", f"<td>0.563</td><td>{html.escape(raw)}</td>")
    assert any(repr(raw) in p for p in book.dom_problems(page)), raw
    # the same word inside a sentence is prose, not a raw value
    assert book.dom_problems(GOOD.replace("<td>0.563</td>", f"<td>{html.escape(raw)} of the runs</td>")) == []


def test_a_figure_repr_and_a_title_below_code_are_caught():
    page = GOOD.replace("<td>0.563</td>", "<td>&lt;Figure size 640x480 with 1 Axes&gt;</td>")
    assert any("<Figure" in p for p in book.dom_problems(page))


def test_height_check():
    assert book.height_problem(9_000, 10_000) is None
    assert "12,000 px tall" in book.height_problem(12_000, 10_000, "page.html")


@pytest.mark.skipif(book.chromium() is None, reason="headless Chromium is not installed")
def test_page_height_is_measured_in_the_browser(tmp_path):
    short = tmp_path / "short.html"
    short.write_text("<html><body><h1>T</h1><p>one line</p></body></html>")
    tall = tmp_path / "tall.html"
    tall.write_text('<html><body><h1>T</h1><div style="height: 20000px">wall</div></body></html>')
    assert book.page_height(short) < 2_000 and book.page_height(tall) > 20_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.html", "tall.html"]  # no probe left behind


def _layout_problems(folder, name: str, body: str, css: str = "", width: int = 800) -> list[str]:
    """Write a page of ``body`` in a ``width`` px column (with ``css``) and check its layout
    in the browser."""
    page = folder / name
    page.write_text(f'<html><head><style>{css}</style></head><body><main style="width: {width}px"><article>'
                    f"{body}</article></main></body></html>")
    return book.layout_problems(book.page_layout(page), name)


@pytest.mark.skipif(book.chromium() is None, reason="headless Chromium is not installed")
def test_a_table_wider_than_its_column_and_a_shrunk_figure_are_caught(tmp_path):
    """Fed the two defects in a real browser: a table cut at the right of an 800 px column and
    a 2,000 px figure drawn at 400 px; the clean page passes."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((200, 2000, 3), 128, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((100, 500, 3), 128, np.uint8)).save(tmp_path / "fits.png")
    row = "".join(f"<td>column_{i}_with_a_long_header</td>" for i in range(14))
    problems = _layout_problems(tmp_path, "bad.html", f'<div class="output"><table><tr>{row}</tr></table></div>'
                                '<img src="wide.png" style="width: 400px">', css="td { padding: 0 0.5em; }")
    assert any("a table is wider than its column ('column_0_with" in p for p in problems), problems
    assert any("figure wide.png at 20% of its width" in p for p in problems), problems
    assert _layout_problems(tmp_path, "good.html", '<table><tr><td>a</td><td>b</td></tr></table>'
                            '<img src="fits.png" style="width: 450px">', css="td { padding: 0 0.5em; }") == []


@pytest.mark.skipif(book.chromium() is None, reason="headless Chromium is not installed")
def test_a_cut_code_block_and_a_table_without_cell_padding_are_caught(tmp_path):
    """In the real browser: a code line longer than its 600 px box, and a table whose cells
    have no padding (its columns read as one word); spaced cells and wrapped code pass."""
    long_line = "make lab          # " + "installs the environment, then opens notebooks/ " * 3
    table = "<table><tr><td>CIFAR-100</td><td>Original image</td></tr></table>"
    problems = _layout_problems(tmp_path, "bad.html", f"<pre>{long_line}</pre>{table}", width=600,
                                css="pre { overflow-x: auto; white-space: pre; } td { padding: 0; }")
    assert any("a code block is cut at the right ('make lab # installs" in p for p in problems), problems
    assert any("cells have no room between them ('CIFAR-100 Original image" in p for p in problems), problems
    assert _layout_problems(tmp_path, "good.html", f"<pre>make lab\n# installs the environment</pre>{table}", width=600,
                            css="pre { overflow-x: auto; } td { padding: 0.25em 0.75em; }") == []


@pytest.mark.skipif(book.chromium() is None, reason="headless Chromium is not installed")
def test_chromium_typesets_math_only_when_mathjax_loads(tmp_path):
    """In the real browser: a page whose MathJax script is missing leaves its math raw."""
    page = tmp_path / "page.html"
    page.write_text('<html><body><h1>T</h1><p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>'
                    '<script src="missing/tex-chtml.js"></script></body></html>')
    problems = book.dom_problems(book.dump_dom(page))
    assert any("were not typeset" in p for p in problems) and any("untypeset math" in p for p in problems)


def test_a_warning_on_stderr_of_an_executed_chapter_is_caught(tmp_path):
    """The page drops stderr, so warnings there are read from the executed notebooks; a
    progress bar on stderr is not a warning."""
    import nbformat

    def chapter(name, stderr):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("run()")
        cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=stderr)]
        nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
        nbformat.write(nb, tmp_path / name)

    chapter("01_ok.ipynb", "epochs: 100%|##########| 4/4 [00:03<00:00,  1.2it/s]\n")
    assert book.executed_problems(tmp_path) == []
    chapter("02_warns.ipynb", "epochs: 0%|\n/x/tqdm/auto.py:21: TqdmWarning: IProgress not found.\n")
    problems = book.executed_problems(tmp_path)
    assert problems == ["02_warns.ipynb cell 1: stderr: /x/tqdm/auto.py:21: TqdmWarning: IProgress not found."]


def test_progress_bar_is_text_without_ipywidgets(monkeypatch):
    """Without ipywidgets the notebook widget would warn "IProgress not found": fall back."""
    import sys

    import tqdm.std

    from lowvar_mae.train import progress_bar

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import raises ImportError
    bar = progress_bar(total=2, disable=True)
    assert type(bar) is tqdm.std.tqdm
    bar.close()
