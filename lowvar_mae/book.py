"""Execute the text notebooks with papermill, and check the rendered book.

The py:percent files in ``notebooks/`` are the source; executed ``.ipynb`` copies
go to ``book/executed/`` and the book is built from those, never re-executed.
"""

from __future__ import annotations

import html.parser
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


def execute_notebook(source: str | Path, output: str | Path, parameters: dict | None = None,
                     timeout: int | None = None, progress: bool = False) -> Path:
    """Run a py:percent notebook headlessly with papermill and write the executed .ipynb.

    The output appears only if the whole notebook ran; a failing cell raises
    ``papermill.PapermillExecutionError`` naming the cell and leaves no output file. A
    parameter the notebook does not declare raises ValueError before anything runs.
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


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 3000, browser: str | None = None) -> Path:
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
    if pixels.std() < 5:
        raise RuntimeError(f"screenshot {png} of {page} looks blank (pixel std {pixels.std():.1f})")
    return png


def check_book(html_dir: str | Path, pages: dict[str, int], shots: str | Path | None = None) -> list[str]:
    """Check the built book: each page (relative path -> minimum images) exists and rendered.

    With ``shots``, every page is also rendered in headless Chromium to a PNG there.
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
            try:
                screenshot(page, Path(shots) / (Path(rel).with_suffix("").as_posix().replace("/", "_") + ".png"))
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                problems.append(f"{page}: screenshot failed: {e}")
    return problems
