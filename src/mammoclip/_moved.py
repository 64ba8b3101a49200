"""Old import paths of modules that moved, kept working for one release with a warning.

During 0.1 the project split the former ``mammoclip.data`` package by concern (see ``docs/architecture.md``):
``imaging`` (one mammogram), ``text`` (report text), ``synthetic`` (the generator) and ``data``
(manifests, adapters, batch preprocessing, datasets). ``import mammoclip.data.dicom`` still works and
returns the *same* module object as ``import mammoclip.imaging.dicom`` -- not a copy, so registries,
caches and ``monkeypatch`` targets are shared -- and emits a :class:`FutureWarning` naming the new path.

Why a meta-path finder and not stub files: a stub that re-exports names would hand out a second module
object for the synthetic sub-package (``mammoclip.data.synthetic.cohort`` would be loaded twice), and
private names (``_decode``) would not follow. The finder answers only for the names in :data:`MOVED`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

#: Old module prefix -> new module prefix. Sub-modules follow their package.
MOVED: dict[str, str] = {
    "mammoclip.data.dicom": "mammoclip.imaging.dicom",
    "mammoclip.data.breast": "mammoclip.imaging.breast",
    "mammoclip.data.imageio": "mammoclip.imaging.imageio",
    "mammoclip.data.reports": "mammoclip.text.reports",
    "mammoclip.data.prompts": "mammoclip.text.prompts",
    "mammoclip.data.text_augment": "mammoclip.text.augment",
    "mammoclip.data.text_stats": "mammoclip.text.stats",
    "mammoclip.data.synthetic": "mammoclip.synthetic",
}

#: The release that drops the old paths.
REMOVED_IN = "0.2"


def new_name(old: str) -> str | None:
    """The current name of a moved module (or one of its sub-modules); None if ``old`` did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _AliasLoader(importlib.abc.Loader):
    """Hands the import system the already-imported module under its new name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        # The import system overwrites __spec__ with the alias spec; exec_module puts the real one back.
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the old names in :data:`MOVED` to the new modules, with a :class:`FutureWarning`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(f"{fullname} moved to {new}; the old path stops working in mammoclip {REMOVED_IN}",
                      FutureWarning, stacklevel=_caller_level())
        is_package = hasattr(importlib.import_module(new), "__path__")
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=is_package)


def _caller_level() -> int:
    """``stacklevel`` that makes the warning name the line that imported the old path.

    ``warnings.warn`` already skips the frozen ``importlib._bootstrap`` frames when it walks up the stack,
    so only the other frames between :meth:`MovedModuleFinder.find_spec` and the importer are counted:
    this module's own and ``importlib.import_module``'s.
    """
    def internal(code_file: str) -> bool:
        return "importlib" in code_file and "_bootstrap" in code_file

    frame = sys._getframe(2)  # the caller of find_spec
    level = 1  # find_spec itself
    while frame is not None:
        name = frame.f_code.co_filename
        if not internal(name):
            level += 1
            if name != __file__ and name != importlib.__file__:
                break
        frame = frame.f_back  # type: ignore[assignment]
    return level


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
