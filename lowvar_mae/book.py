"""Execute the text notebooks with papermill, and check the rendered book.

The py:percent files in ``notebooks/`` are the source; executed ``.ipynb`` copies
go to ``book/executed/`` and the book is built from those, never re-executed.
"""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .provenance import atomic_write_bytes, repo_root


def notebooks_dir() -> Path:
    root = repo_root()
    if root is None:
        raise RuntimeError("the notebooks live in a checkout of lowvar-mae; none was found")
    return root / "notebooks"


def list_notebooks() -> list[Path]:
    """The chapters' sources, in book order (``NN_name.py``)."""
    return sorted(notebooks_dir().glob("[0-9][0-9]_*.py"))


def find_notebook(name: str) -> Path:
    """A notebook by file name, stem or number prefix ('01', '01_pca_variance_components')."""
    for path in list_notebooks():
        if name in (path.name, path.stem) or path.stem.split("_")[0] == name:
            return path
    known = ", ".join(p.stem for p in list_notebooks())
    raise ValueError(f"unknown notebook {name!r}; known: {known}")


def notebook_parameters(nb) -> list[str]:
    """Names assigned in the notebook's cell tagged "parameters" (in order)."""
    import ast

    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)]
    return []


def notebook_defaults(nb) -> dict[str, object]:
    """Each parameter's default value, where it is a literal (else the parameter is absent)."""
    import ast

    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            out = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return out
    return {}


def check_parameter_types(name: str, given: dict, defaults: dict) -> None:
    """Raise ValueError naming the first parameter whose value is not of its default's kind
    (an integer where the default is one, a number for a float, a string, a list, True or
    False); a parameter whose default is None takes anything."""
    kinds = [(bool, "True or False", lambda v: isinstance(v, bool)),
             (int, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
             (float, "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
             (str, "a string", lambda v: isinstance(v, str)),
             ((list, tuple), "a list", lambda v: isinstance(v, (list, tuple)))]
    for key, value in given.items():
        default = defaults.get(key)
        if default is None:
            continue
        for kind, want, ok in kinds:
            if isinstance(default, kind):
                if not ok(value):
                    raise ValueError(f"{name}: parameter {key!r} must be {want} (its default is {default!r}), "
                                     f"got {value!r}")
                break


def execute_notebook(source: str | Path, output: str | Path, parameters: dict | None = None,
                     timeout: int | None = None, progress: bool = False) -> Path:
    """Run a py:percent notebook headlessly with papermill and write the executed .ipynb.

    The output appears only if the whole notebook ran; a failing cell raises
    ``papermill.PapermillExecutionError`` naming the cell and leaves no output file. A
    parameter the notebook does not declare, or a value not of its default's kind, raises
    ValueError before anything runs.
    """
    import jupytext
    import nbformat
    import papermill

    source, output = Path(source), Path(output)
    nb = jupytext.read(source)
    known = notebook_parameters(nb)
    unknown = sorted(set(parameters or {}) - set(known))
    if unknown:
        raise ValueError(f"{source.name} has no parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters are: {', '.join(known) or 'none'}")
    check_parameter_types(source.name, parameters or {}, notebook_defaults(nb))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory() as tmp:
        done = Path(tmp) / output.name
        papermill.execute_notebook(
            nb, str(done), parameters=parameters or {}, kernel_name="python3",
            cwd=str(source.parent), execution_timeout=timeout, progress_bar=progress,
            log_output=False,
        )
        nbformat.validate(nbformat.read(done, as_version=4))
        atomic_write_bytes(output, done.read_bytes())
    return output


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.extend(v for k, v in attrs if k == "src" and v)


def check_page(page: Path, min_images: int = 1) -> list[str]:
    """Problems with one built HTML page: too few images, missing image files, error output."""
    text = page.read_text(encoding="utf-8")
    parser = _Images()
    parser.feed(text)
    local = [s for s in parser.srcs if not s.startswith(("http:", "https:", "data:"))]
    problems = []
    if len(local) < min_images:
        problems.append(f"{page}: {len(local)} images, expected at least {min_images}")
    for src in local:
        target = (page.parent / src.split("#")[0].split("?")[0]).resolve()
        if not target.is_file() or target.stat().st_size == 0:
            problems.append(f"{page}: image {src} is missing")
    for marker in ("Traceback (most recent call last)", "PapermillExecutionError"):
        if marker in text:
            problems.append(f"{page}: contains an error output ({marker})")
    return problems


# Pages taller than this (CSS pixels at 1280 px width) read as a wall: split or shorten them.
MAX_PAGE_HEIGHT = 10_000
_HIDDEN_CELL = ("tag_hide-cell", "tag_hide-input", "tag_remove-input", "tag_remove-cell")
_CODE_TAGS = {"code", "pre", "script", "style", "mjx-container", "textarea"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_REPRS = (re.compile(r"\bText\(-?[0-9.]+, -?[0-9.]+, '"), re.compile(r"<(Figure|Axes|matplotlib)[^>]*>"),
          re.compile(r"<pandas\.io\.formats\.style\.Styler object|<pandas\.io\.formats\.style\.Styler at 0x"),
          # a value printed raw as the whole of a table cell or line: a missing number, a flag
          re.compile(r"(?m)^[ \t]*(nan|NaN|None|<NA>|NaT|True|False)[ \t]*$"))
_WARNINGS = re.compile(r"(Traceback \(most recent call last\)|\b\w*(Warning|Error): )")


class _Dom(html.parser.HTMLParser):
    """Walks a rendered page: visible text (outside code and typeset math), text inside cell
    outputs, math elements and whether MathJax typeset them, and where the title and the
    first visible code cell are."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.output_text: list[str] = []
        self.math_open: list[int] = []  # stack depth of open math elements
        self.math_total = self.math_typeset = 0
        self._typeset_here: list[bool] = []
        self.events: list[str] = []  # "h1" and "code" in document order

    def _inside(self, pred) -> bool:
        return any(pred(tag, cls) for tag, cls in self.stack)

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in _VOID:
            return
        if "math" in cls.split() and tag in ("span", "div"):
            self.math_total += 1
            self.math_open.append(len(self.stack))
            self._typeset_here.append(False)
        if tag == "mjx-container" and self._typeset_here:
            self._typeset_here[-1] = True
        if tag == "h1":
            self.events.append("h1")
        if "cell_input" in cls.split() and not self._inside(lambda t, c: any(h in c for h in _HIDDEN_CELL)):
            self.events.append("code")
        self.stack.append((tag, cls))

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        while self.stack:
            t, _ = self.stack.pop()
            if self.math_open and len(self.stack) == self.math_open[-1]:
                self.math_open.pop()
                self.math_typeset += self._typeset_here.pop()
            if t == tag:
                break

    def handle_data(self, data):
        if not data.strip() or self._inside(lambda t, c: t in _CODE_TAGS or "highlight" in c.split()):
            return
        if self._inside(lambda t, c: t == "div" and "cell_output" in c):
            self.output_text.append(data)
        self.text.append(data)


def dom_problems(dom: str, name: str = "page") -> list[str]:
    """Defects of a rendered page's DOM (after its scripts ran): raw glue or role text, math
    that MathJax did not typeset, reprs of Python objects or warnings in cell outputs, and a
    visible code cell above the title."""
    parser = _Dom()
    parser.feed(dom)
    text = "\n".join(parser.text)
    problems = []
    for raw in ("{glue", "{cite}", "{ref}", "{doc}", "{math}"):
        if raw in text:
            problems.append(f"{name}: raw role text {raw!r} on the page")
    for mark in ("\\(", "\\[", "$$"):
        if mark in text:
            problems.append(f"{name}: untypeset math {mark!r} outside code")
    if parser.math_total > parser.math_typeset:
        problems.append(f"{name}: {parser.math_total - parser.math_typeset} of {parser.math_total} math elements "
                        "were not typeset (is MathJax served locally?)")
    out = "\n".join(parser.output_text)
    for pattern in _REPRS:
        hit = pattern.search(out)
        if hit:
            problems.append(f"{name}: a Python repr in a cell output: {hit.group(0).strip()!r}")
    hit = _WARNINGS.search(out)
    if hit:
        problems.append(f"{name}: a warning or error in a cell output: {hit.group(0).strip()!r}")
    if "code" in parser.events and ("h1" not in parser.events or parser.events.index("code") < parser.events.index("h1")):
        problems.append(f"{name}: a visible code cell comes before the page title")
    return problems


def executed_problems(executed_dir: str | Path) -> list[str]:
    """Warnings and errors the executed chapters wrote to stderr. The rendered book drops
    stderr (progress bars belong to interactive sessions), so this is where a warning a
    reader would never see, but a student running the notebook would, is caught."""
    import nbformat

    problems = []
    for path in sorted(Path(executed_dir).glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "stream" and out.get("name") == "stderr":
                    hit = _WARNINGS.search(out.get("text", ""))
                    if hit:
                        line = next(ln for ln in out["text"].splitlines() if hit.group(0) in ln)
                        problems.append(f"{path.name} cell {i}: stderr: {line.strip()[:200]}")
    return problems


def dump_dom(page: Path, browser: str | None = None, width: int = 1280, height: int = 900) -> str:
    """The page's DOM after headless Chromium ran its scripts (MathJax included)."""
    browser = browser or chromium()
    if browser is None:
        raise FileNotFoundError("headless Chromium not found (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--virtual-time-budget=8000",
             "--dump-dom", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120, text=True)
    return done.stdout


_MEASURE = (
    "<script>window.addEventListener('load', () => setTimeout(() => {"
    "const b = document.body;"
    "b.setAttribute('data-page-height', Math.max(b.scrollHeight, document.documentElement.scrollHeight));"
    # tables wider than the column they stand in (cut at the right, or scrolled sideways)
    "const wide = [...document.querySelectorAll('article table, main table')].filter("
    "  t => t.scrollWidth > (t.closest('div.output, div.cell_output, article, main') || b).clientWidth + 2)"
    "  .map(t => (t.innerText || '').trim().slice(0, 40).replace(/\\s+/g, ' '));"
    "b.setAttribute('data-wide-tables', JSON.stringify(wide));"
    # figures drawn much smaller than they were made: their text shrinks with them
    "const shrunk = [...document.querySelectorAll('article img, main img')].filter("
    "  i => i.naturalWidth > 0 && i.clientWidth > 0 && i.clientWidth / i.naturalWidth < " + "0.55" + ")"
    "  .map(i => (i.getAttribute('src') || '').split('/').pop() + ' at ' +"
    "  Math.round(100 * i.clientWidth / i.naturalWidth) + '%');"
    "b.setAttribute('data-shrunk-images', JSON.stringify(shrunk));"
    # code blocks whose lines run past their box (cut, or scrolled sideways)
    "const cut = [...document.querySelectorAll('article pre, main pre')].filter("
    "  p => p.scrollWidth > p.clientWidth + 2)"
    "  .map(p => (p.innerText || '').trim().slice(0, 40).replace(/\\s+/g, ' '));"
    "b.setAttribute('data-cut-code', JSON.stringify(cut));"
    # tables whose cells have no room between them: the columns read as one ("CIFAR-100Original")
    "const tight = [...document.querySelectorAll('article table, main table')].filter(t => {"
    "  const c = t.querySelector('td'); if (!c) return false;"
    "  const s = getComputedStyle(c);"
    "  return parseFloat(s.paddingLeft) + parseFloat(s.paddingRight) < 6; })"
    "  .map(t => (t.innerText || '').trim().slice(0, 40).replace(/\\s+/g, ' '));"
    "b.setAttribute('data-tight-tables', JSON.stringify(tight));"
    "}, 2000));</script>")
# Smallest share of its own width a figure may be drawn at: below it, 9-pt text of a
# matplotlib figure reads smaller than about 5 pt on the page.
MIN_IMAGE_SCALE = 0.55


def page_layout(page: Path, width: int = 1280, browser: str | None = None) -> dict:
    """How ``page`` lays out at ``width`` in headless Chromium (after its scripts ran): its
    height in CSS pixels, the tables wider than their column (their first words), the
    figures drawn at less than :data:`MIN_IMAGE_SCALE` of their own width, the code blocks
    cut at the right and the tables whose cells have no padding. A copy beside it
    with a measuring script is loaded, then removed."""
    import json

    text = page.read_text(encoding="utf-8")
    probe = page.with_name(f".measure-{page.name}")
    probe.write_text(text.replace("</body>", _MEASURE + "</body>") if "</body>" in text else text + _MEASURE,
                     encoding="utf-8")
    try:
        dom = dump_dom(probe, browser, width=width, height=900)
    finally:
        probe.unlink(missing_ok=True)
    hit = re.search(r'data-page-height="(\d+)"', dom)
    if not hit:
        raise RuntimeError(f"could not measure the height of {page}")

    def attr(name):
        found = re.search(rf"{name}=\"([^\"]*)\"", dom)
        return json.loads(html.unescape(found.group(1))) if found else []

    return {"height": int(hit.group(1)), "wide_tables": attr("data-wide-tables"),
            "shrunk_images": attr("data-shrunk-images"), "cut_code": attr("data-cut-code"),
            "tight_tables": attr("data-tight-tables")}


def layout_problems(layout: dict, name: str = "page") -> list[str]:
    """Tables cut at the right or run together, figures whose text is drawn too small and
    code blocks cut at the right, in words."""
    out = [f"{name}: a table is wider than its column ({t!r}...): wrap, shorten or split it"
           for t in layout.get("wide_tables", [])]
    out += [f"{name}: figure {i} of its width: its text is too small to read; draw it smaller (figsize)"
            for i in layout.get("shrunk_images", [])]
    out += [f"{name}: a code block is cut at the right ({c!r}...): break its lines"
            for c in layout.get("cut_code", [])]
    out += [f"{name}: a table's cells have no room between them ({t!r}...): its columns run together"
            for t in layout.get("tight_tables", [])]
    return out


def page_height(page: Path, width: int = 1280, browser: str | None = None) -> int:
    """The rendered height in CSS pixels of ``page`` at ``width`` (:func:`page_layout`)."""
    return page_layout(page, width, browser)["height"]


def height_problem(height: int, limit: int = MAX_PAGE_HEIGHT, name: str = "page") -> str | None:
    """A page taller than ``limit`` CSS pixels reads as a wall."""
    return f"{name}: {height:,} px tall at 1280 px width, over the limit of {limit:,}; shorten it" if height > limit else None


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3000, browser: str | None = None,
               blank_ok: bool = False) -> Path:
    """Render ``page`` in headless Chromium and save a screenshot; raise if it is blank."""
    import numpy as np
    from PIL import Image

    browser = browser or chromium()
    if browser is None:
        raise FileNotFoundError("headless Chromium not found (Debian: apt-get install chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "--virtual-time-budget=5000", f"--screenshot={png}", page.resolve().as_uri()],
            check=True, capture_output=True, timeout=120,
        )
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    if pixels.std() < 5 and not blank_ok:
        raise RuntimeError(f"screenshot {png} of {page} looks blank (pixel std {pixels.std():.1f})")
    return png


def check_book(html_dir: str | Path, pages: dict[str, int], shots: str | Path | None = None) -> list[str]:
    """Check the built book: each page (relative path -> minimum images) exists and rendered.

    With ``shots``, every page is also rendered in headless Chromium to a PNG there, its
    DOM after MathJax checked (:func:`dom_problems`) and its height checked against
    :data:`MAX_PAGE_HEIGHT`.
    Returns the list of problems (empty when the book is fine).
    """
    html_dir = Path(html_dir)
    problems = []
    for rel, min_images in pages.items():
        page = html_dir / rel
        if not page.is_file():
            problems.append(f"missing page {page}")
            continue
        problems += check_page(page, min_images)
        if shots is not None:
            stem = Path(rel).with_suffix("").as_posix().replace("/", "_")
            try:
                screenshot(page, Path(shots) / f"{stem}.png")
                problems += dom_problems(dump_dom(page), rel)
                layout = page_layout(page)
                problems += [p for p in [height_problem(layout["height"], MAX_PAGE_HEIGHT, rel)] if p]
                problems += layout_problems(layout, rel)
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                problems.append(f"{page}: rendering failed: {e}")
    return problems
