# The two entry points of the README: `make book` (main job) and `make test`.
# Both create .venv with Python 3.11 and install what they need from PyPI.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.14.1 torchvision==0.29.1
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-m slow"
PYTEST_ARGS ?=

.PHONY: install book notebooks html check-book test lab clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $@

install: $(STAMP)

## Main job: execute every notebook on the embedded data, then build the book.
book: notebooks html

# The book's own runs (embedded data) and their records stay in _build/, never in the
# shared runs folder or in results/: every build trains them with the code it documents.
notebooks: $(STAMP)
	LOWVAR_MAE_RUNS=$(CURDIR)/_build/runs LOWVAR_MAE_RESULTS=$(CURDIR)/_build/results $(PY) -m lowvar_mae notebooks

html: $(STAMP)
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going --quiet
	@echo "book: $(CURDIR)/_build/html/index.html"

check-book: $(STAMP)
	$(PY) -m lowvar_mae check-book

## Interactive: JupyterLab on the notebooks (py:percent files open as notebooks).
lab: $(STAMP)
	$(PY) -m pip install --quiet -e ".[lab]"
	@# JupyterLab refuses to start as root (common in containers) unless told it may.
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf _build book/executed
