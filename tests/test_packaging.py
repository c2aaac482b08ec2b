"""Packaging: environment.yml lists what pyproject.toml needs; importing has no side effects."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]}
    for extra in ("book", "test", "lab"):
        needed |= {_name(r) for r in project["optional-dependencies"][extra]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert needed <= listed, f"missing from environment.yml: {sorted(needed - listed)}"
    assert "-e ." in pip


def test_torch_pins_agree():
    env = (ROOT / "environment.yml").read_text()
    make = (ROOT / "Makefile").read_text()
    for pin in ("torch==2.14.1", "torchvision==0.29.1"):
        assert pin in env and pin in make


def test_import_has_no_side_effects():
    code = (
        "import sys, torch; before = torch.get_num_threads(); "
        "import lowvar_mae, lowvar_mae.pca, lowvar_mae.data, lowvar_mae.models, lowvar_mae.plots, "
        "lowvar_mae.results, lowvar_mae.book, lowvar_mae.analysis, lowvar_mae.evaluate, lowvar_mae.pretrain; "
        "assert torch.get_num_threads() == before; "
        "assert 'matplotlib.pyplot' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make book", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci and "\nmake book\n" in ci
