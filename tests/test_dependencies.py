"""Dependencies = imports: pyproject.toml declares exactly what the code imports (an ast scan of every module,
also imports inside functions), the core in ``dependencies`` and each part in its extra."""

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("uplift_diffusion", "pipelines", "eval")
# extra -> the modules that make up its part (files or folders, relative to the repository); a module may serve
# several parts. Everything else is the core.
PARTS = {
    "eval": ("eval",),
    "train": ("uplift_diffusion/training", "uplift_diffusion/backbones/vit.py"),
    "features": ("uplift_diffusion/features", "uplift_diffusion/backbones/vit.py"),
    "app": ("uplift_diffusion/app",),
}
# Declared without an import of their own, each for a stated reason.
RUNTIME_ONLY = {
    "transformers": "core: Stable Diffusion's text encoder, tokenizer and safety checker (diffusers loads them)",
    "accelerate": "core: diffusers' low-memory loading and model CPU offload",
    "torch-fidelity": "eval: torchmetrics' FrechetInceptionDistance runs its Inception network",
}
NOT_CHECKED = {"dev", "all"}  # test tools; the union


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalise(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])


@functools.cache
def _providers() -> dict[str, list[str]]:
    return packages_distributions()


def _distribution(module: str) -> str:
    """The distribution that provides a top-level import name (installed metadata; else the name itself)."""
    return _normalise(_providers().get(module, [module])[0])


def _guarded(tree: ast.AST) -> set[int]:
    """ids of import nodes inside a ``try`` that handles ImportError / ModuleNotFoundError (optional imports)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            guarded |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return guarded


def _third_party_imports(path: Path) -> tuple[set[str], set[str]]:
    """(required, optional) distributions that one module imports."""
    tree = ast.parse(path.read_text(), str(path))
    guarded, required, optional = _guarded(tree), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("uplift_diffusion", "__future__"):
                continue
            (optional if id(node) in guarded else required).add(_distribution(top))
    return required, optional


@pytest.fixture(scope="module")
def scan():
    modules = {str(p.relative_to(ROOT)): _third_party_imports(p)
               for folder in SOURCES for p in sorted((ROOT / folder).rglob("*.py"))}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {"core": {_requirement_name(r) for r in project["dependencies"]}}
    declared |= {extra: {_requirement_name(r) for r in reqs}
                 for extra, reqs in project["optional-dependencies"].items() if extra not in NOT_CHECKED}
    return modules, declared


def _parts_of(module: str) -> list[str]:
    return [extra for extra, members in PARTS.items()
            if any(module == m or module.startswith(m.rstrip("/") + "/") for m in members)]


def test_every_extra_has_a_part(scan):
    _, declared = scan
    assert set(declared) - {"core"} <= set(PARTS), "add the new extra's modules to PARTS"


def test_every_import_is_declared(scan):
    modules, declared = scan
    everything = set().union(*declared.values())
    missing = {}
    for module, (required, optional) in modules.items():
        allowed = declared["core"].union(*(declared.get(part, set()) for part in _parts_of(module)))
        gaps = sorted((required - allowed) | (optional - everything))
        if gaps:
            missing[module] = gaps
    assert missing == {}, "imported but not declared (core dependencies or the part's extra)"


def test_every_declaration_is_imported(scan):
    modules, declared = scan
    optional_anywhere = set().union(*(optional for _, optional in modules.values()))
    unused = {}
    for group, names in declared.items():
        members = [m for m in modules if (_parts_of(m) == [] if group == "core" else group in _parts_of(m))]
        used = set().union(*(modules[m][0] | modules[m][1] for m in members)) | optional_anywhere
        extra = sorted(n for n in names - used if n not in RUNTIME_ONLY)
        if extra:
            unused[group] = extra
    assert unused == {}, "declared but never imported by that part"
