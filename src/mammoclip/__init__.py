"""mammoclip: Mammo-CLIP made real.

The public API is imported lazily so that ``import mammoclip`` stays cheap (no torch import) and
the command line starts fast. Everything listed in ``__all__`` resolves on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"
_LAZY: dict[str, str] = {
    "create_model": "mammoclip.models.factory:create_model",
    "create_model_and_transforms": "mammoclip.data.model_input:create_model_and_transforms",
    "from_pretrained": "mammoclip.data.model_input:from_pretrained",
    "ModelPreprocess": "mammoclip.data.model_input:ModelPreprocess",
    "list_models": "mammoclip.models.registry:list_models",
    "get_model_config": "mammoclip.models.registry:get_model_config",
    "get_tokenizer": "mammoclip.models.text:get_tokenizer",
    "load_checkpoint": "mammoclip.models.checkpoint:load_checkpoint",
    "save_checkpoint": "mammoclip.models.checkpoint:save_checkpoint",
    "read_manifest": "mammoclip.data.manifest:read_manifest",
    "write_manifest": "mammoclip.data.manifest:write_manifest",
    "load_bundle": "mammoclip.data.manifest:load_bundle",
    "generate_cohort": "mammoclip.synthetic:generate_cohort",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mammoclip' has no attribute {name!r}")
    module_name, attr = target.split(":")
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
