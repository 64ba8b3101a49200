"""The import rules of docs/architecture.md ("Layers" and "Packages"), checked on the source text.

* each top-level package imports only the packages its row of :data:`ALLOWED` names, so the library
  never imports the trainer, the CLI or the server, and the package graph has no cycle;
* the layer-0 packages (run inside preprocessing and generator worker processes) never import torch
  (``text`` only lazily, inside the function that loads a tokenizer or a translation model);
* the module-level import graph of the whole package is acyclic, and ``mammoclip.models`` does not dodge
  a cycle with imports inside functions (lazy imports of third-party modules stay allowed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mammoclip"

# top-level package (or module) -> the mammoclip packages it may import. Keep in step with the table in
# docs/architecture.md. Read bottom-up it is the data-flow order: one image / report text -> models ->
# manifests -> the generator -> evaluation -> training -> applications.
_BASE = {"constants", "errors", "progress"}
ALLOWED: dict[str, set[str]] = {
    "constants": set(),
    "errors": set(),
    "progress": set(),
    "_moved": set(),
    "imaging": _BASE,
    "text": _BASE,
    "models": _BASE,
    "losses": _BASE,
    "data": _BASE | {"_moved", "imaging", "text", "models"},
    "synthetic": _BASE | {"imaging", "data"},
    "evaluate": _BASE | {"imaging", "text", "models", "data"},
    "embed": _BASE | {"imaging", "text", "models", "data", "evaluate"},
    "detect": _BASE | {"imaging", "text", "models", "data", "evaluate"},
    "attribution": _BASE | {"imaging", "text", "models", "data", "evaluate"},
    "train": _BASE | {"imaging", "text", "models", "losses", "data", "evaluate", "detect", "attribution"},
    "serve": _BASE | {"imaging", "text", "models", "data", "evaluate", "embed", "detect", "attribution"},
    "demo_report": _BASE | {"evaluate"},
    "demo": _BASE | {"imaging", "text", "models", "losses", "data", "synthetic", "evaluate", "embed", "detect",
                     "attribution", "train", "demo_report"},
    "cli": _BASE | {"imaging", "text", "models", "losses", "data", "synthetic", "evaluate", "embed", "detect",
                    "attribution", "train", "serve", "demo", "demo_report"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Layer 0: no torch (they run in preprocessing workers and the synthetic generator). ``text`` may load a
# tokenizer or a translation model lazily, inside the function that needs it, never at import.
NO_TORCH = ("mammoclip.imaging", "mammoclip.synthetic", "mammoclip.constants", "mammoclip.errors",
            "mammoclip.progress")
NO_TORCH_AT_IMPORT = ("mammoclip.text",)
TORCH_FAMILY = ("torch", "torchvision", "timm", "transformers")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute names imported by a file (``from a import b`` gives ``a`` and ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = _module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
    return names


MODULES = sorted(SRC.rglob("*.py"))
MODULE_NAMES = {_module_name(p) for p in MODULES}


def test_every_package_has_a_row() -> None:
    assert {_top(_module_name(p)) for p in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_module_respects_layers(path: Path) -> None:
    name = _module_name(path)
    own = _top(name)
    imported = {i for i in _imports(path) if i.split(".")[0] == "mammoclip" and "." in i}
    bad = sorted(i for i in imported if _top(i) != own and _top(i) not in ALLOWED[own])
    assert not bad, f"{name} imports {bad}; package {own!r} may import only {sorted(ALLOWED[own])}"
    for prefixes, module_level_only in ((NO_TORCH, False), (NO_TORCH_AT_IMPORT, True)):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            torchy = sorted(i for i in _imports(path, module_level_only) if i.split(".")[0] in TORCH_FAMILY)
            assert not torchy, f"{name} is layer 0 and must not import {torchy}"


def test_allowed_packages_form_no_cycle() -> None:
    """The package table itself is a DAG, so no two packages can ever import each other."""
    state: dict[str, int] = {}

    def visit(pkg: str, trail: tuple[str, ...]) -> None:
        if state.get(pkg) == 2:
            return
        assert state.get(pkg) != 1, f"package cycle: {' -> '.join((*trail, pkg))}"
        state[pkg] = 1
        for dep in ALLOWED.get(pkg, set()):
            visit(dep, (*trail, pkg))
        state[pkg] = 2

    for pkg in ALLOWED:
        visit(pkg, ())


def _module_graph() -> dict[str, set[str]]:
    """Module -> the mammoclip modules it imports at module level (``from pkg import mod`` -> ``pkg.mod``)."""
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        deps = set()
        for name in _imports(path, module_level_only=True):
            while name and name not in MODULE_NAMES:  # ``a.b.func`` -> ``a.b``
                name = name.rpartition(".")[0]
            if name and name != "mammoclip":
                deps.add(name)
        graph[_module_name(path)] = deps - {_module_name(path)}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            # A package's __init__ re-exporting its own modules is not a cycle with them.
            if node.startswith(dep + ".") and dep in graph:
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_module_import_graph_is_acyclic() -> None:
    cycle = _find_cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


MODELS = sorted((SRC / "models").rglob("*.py"))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: _module_name(p))
def test_models_import_mammoclip_only_at_module_level(path: Path) -> None:
    """An import of a mammoclip module inside a function is how a cycle gets hidden; models has none."""
    inner = {i for i in _imports(path) - _imports(path, module_level_only=True) if i.split(".")[0] == "mammoclip"}
    assert not inner, f"{_module_name(path)} imports {sorted(inner)} inside a function"
