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
        "lowvar_mae.results, lowvar_mae.book, lowvar_mae.recipes, lowvar_mae.probes, lowvar_mae.curve, "
        "lowvar_mae.learning_order, lowvar_mae.evaluate, lowvar_mae.pretrain, lowvar_mae.grid; "
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


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at the top or inside a function alike."""
    import ast

    graph = {}
    for path in sorted((ROOT / "lowvar_mae").glob("*.py")):
        name = path.stem
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
                elif node.level == 1:
                    deps.update(a.name for a in node.names)
                elif node.module and node.module.startswith("lowvar_mae."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lowvar_mae."))
        graph[name] = deps - {name}
    return graph


def test_the_package_has_no_import_circle():
    graph = _package_imports()
    assert {"probes", "recipes", "learning_order", "curve"} <= set(graph) and "analysis" not in graph
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # the layers the package is read by, bottom to top
    assert not graph["probes"] & {"pretrain", "evaluate", "recipes", "grid"}
    assert not graph["pretrain"] & {"evaluate", "grid", "learning_order", "curve"}
    assert "validation_split" in (ROOT / "lowvar_mae" / "data.py").read_text()


def test_no_module_is_much_over_700_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "lowvar_mae").glob("*.py")}
    assert max(sizes.values()) <= 730, sizes


def test_the_readme_lists_the_modules_bottom_to_top():
    """Every module in the README's table, after every module it imports."""
    rows = [r for r in (ROOT / "README.md").read_text().splitlines() if r.startswith("| `lowvar_mae/")]
    position = {}
    for i, row in enumerate(rows):
        for cell in row.split("|")[1].split(","):
            position[cell.strip("` ").split("/")[-1].removesuffix(".py")] = i
    graph = _package_imports()
    assert set(graph) - {"__init__"} <= set(position)
    for module, deps in graph.items():
        for dep in deps:
            assert position.get(dep, -1) <= position.get(module, 99), f"{module} imports {dep}, listed after it"
