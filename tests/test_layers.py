"""The import layers of design.md §2: the library never imports the trainer, the CLI or the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mammoclip"

# module prefix -> prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "mammoclip.constants": ("mammoclip.",),
    "mammoclip.errors": ("mammoclip.",),
    "mammoclip.data": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve", "mammoclip.evaluate",
                       "mammoclip.detect", "mammoclip.attribution", "mammoclip.losses"),
    "mammoclip.models": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve", "mammoclip.losses",
                         "mammoclip.evaluate", "mammoclip.detect", "mammoclip.attribution"),
    "mammoclip.losses": ("mammoclip.models", "mammoclip.train", "mammoclip.cli", "mammoclip.serve"),
    "mammoclip.evaluate": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve"),
    "mammoclip.detect": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve"),
    "mammoclip.attribution": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve"),
    "mammoclip.embed": ("mammoclip.train", "mammoclip.cli", "mammoclip.serve"),
    "mammoclip.train": ("mammoclip.cli", "mammoclip.serve"),
}
# Layer-0 modules: no torch (they run in preprocessing workers and the synthetic generator).
NO_TORCH = ("mammoclip.data.dicom", "mammoclip.data.breast", "mammoclip.data.reports",
            "mammoclip.data.prompts", "mammoclip.data.synthetic", "mammoclip.data.imageio")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    pkg = _module_name(path).split(".")
    if path.name != "__init__.py":
        pkg = pkg[:-1]
    for node in ast.walk(tree):
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


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_module_respects_layers(path: Path) -> None:
    name = _module_name(path)
    imported = _imports(path)
    for prefix, banned in FORBIDDEN.items():
        if name == prefix or name.startswith(prefix + "."):
            bad = sorted(i for i in imported for b in banned if (i + ".").startswith(b) and not i.startswith(prefix))
            assert not bad, f"{name} imports {bad}, which its layer forbids"
    if any(name == p or name.startswith(p + ".") for p in NO_TORCH):
        torchy = sorted(i for i in imported if i.split(".")[0] in ("torch", "torchvision", "timm", "transformers"))
        assert not torchy, f"{name} is layer 0 and must not import {torchy}"
