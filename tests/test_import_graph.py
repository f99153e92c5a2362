"""The package's import graph (every import statement, also inside functions): no cycles, and the CLI layer
(``uplift_diffusion.cli``, ``uplift_diffusion.commands``, ``python -m uplift_diffusion``) sits on top: nothing below it
imports it, and the commands never import ``cli`` (it imports them, by name)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the module name it installs as (pyproject.toml's package-dir)
SOURCES = {"uplift_diffusion": "uplift_diffusion", "pipelines": "uplift_diffusion.pipelines",
           "eval": "uplift_diffusion.eval"}
CLI_LAYER = ("uplift_diffusion.cli", "uplift_diffusion.commands", "uplift_diffusion.__main__")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every .py file of the installed package."""
    modules = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules that ``name`` imports (the deepest existing module of each import)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + is_package]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
                break
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_graph_covers_the_package(graph):
    assert {"uplift_diffusion.model", "uplift_diffusion.pipelines.uplift_pipeline", "uplift_diffusion.eval.sr",
            "uplift_diffusion.commands.eval"} <= set(graph)
    assert "uplift_diffusion.reference" in graph["uplift_diffusion.model"]  # the parser sees the imports


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_import_cycles(graph):
    assert _cycles(graph) == []


def test_cycle_detection_works():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_cli_imports_it(graph):
    def in_cli(module):
        return any(module == top or module.startswith(top + ".") for top in CLI_LAYER)

    upward = {name: sorted(t for t in targets if in_cli(t)) for name, targets in graph.items() if not in_cli(name)}
    assert {name: targets for name, targets in upward.items() if targets} == {}
    commands = {name: targets for name, targets in graph.items() if name.startswith("uplift_diffusion.commands")}
    assert {name: "cli" for name, targets in commands.items() if "uplift_diffusion.cli" in targets} == {}
