"""Command line: ``python -m lowvar_mae <command> ...`` (also installed as ``lowvar-mae``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

# Pages of the built book and the least number of figures each must show.
BOOK_PAGES = {
    "book/executed/00_introduction.html": 0,
    "book/executed/01_pca_variance_components.html": 3,
}


def _parameters(pairs: list[list[str]] | None) -> dict:
    return {k: yaml.safe_load(v) for k, v in (pairs or [])}


def cmd_notebooks(args) -> int:
    from . import book

    root = book.notebooks_dir().parent
    sources = [book.find_notebook(n) for n in args.names] if args.names else book.list_notebooks()
    out = Path(args.out) if args.out else root / "book" / "executed"
    params = _parameters(args.parameter)
    for src in sources:
        start = time.perf_counter()
        target = out / f"{src.stem}{args.suffix}.ipynb"
        print(f"executing {src.name} -> {target}", flush=True)
        book.execute_notebook(src, target, params, timeout=args.timeout, progress=args.progress)
        print(f"  done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def cmd_check_book(args) -> int:
    from . import book

    problems = book.check_book(args.html, BOOK_PAGES, shots=None if args.no_screenshots else args.shots)
    for p in problems:
        print("PROBLEM:", p)
    if not problems:
        print(f"book OK: {len(BOOK_PAGES)} pages checked" + ("" if args.no_screenshots else f", screenshots in {args.shots}"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lowvar-mae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("notebooks", help="execute notebooks with papermill into book/executed/")
    p.add_argument("names", nargs="*", help="notebooks by number or name (default: all)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="papermill parameter (value parsed as YAML); repeatable")
    p.add_argument("--out", help="output folder (default: book/executed)")
    p.add_argument("--suffix", default="", help="appended to output names, e.g. _cifar10")
    p.add_argument("--timeout", type=int, default=None, help="seconds per cell")
    p.add_argument("--progress", action="store_true", help="show papermill's progress bar")
    p.set_defaults(func=cmd_notebooks)

    p = sub.add_parser("check-book", help="check the built book's pages and take screenshots")
    p.add_argument("--html", default="_build/html")
    p.add_argument("--shots", default="_build/screenshots")
    p.add_argument("--no-screenshots", action="store_true")
    p.set_defaults(func=cmd_check_book)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
