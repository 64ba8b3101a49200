"""Model registry: the named configs, JSON files in ``model_configs/`` discovered at import.

The registry holds *configs* only; :mod:`mammoclip.models.factory` turns one into a model. Keeping
the two apart lets the towers resolve a registry name without importing the model classes (the
package imports in one direction: config -> registry -> towers -> clip -> checkpoint -> factory).

Reference: open_clip ``src/open_clip/factory.py`` (``_rescan_model_configs``, ``list_models``,
``add_model_config``, ``create_model``) and timm ``timm/models/_factory.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mammoclip.errors import ConfigError
from mammoclip.models.config import MammoClipCfg

__all__ = ["get_model_config", "list_models", "register_model_config", "resolve_config"]

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_MODEL_CONFIGS: dict[str, dict[str, Any]] = {}


def _rescan_model_configs(folder: Path = _CONFIG_DIR) -> None:
    for path in sorted(folder.glob("*.json")):
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
        MammoClipCfg.from_dict(copy.deepcopy(d))  # validate at import: a broken JSON fails loudly
        _MODEL_CONFIGS[d.get("name", path.stem)] = d


def register_model_config(name: str, config: dict[str, Any] | MammoClipCfg | str | Path) -> None:
    """Add (or replace) a named model config.

    Args:
        name: Registry name.
        config: A config dict, a :class:`MammoClipCfg`, or the path of a JSON file.
    """
    raw: dict[str, Any]
    if isinstance(config, (str, Path)):
        raw = json.loads(Path(config).read_text(encoding="utf-8"))
    elif isinstance(config, MammoClipCfg):
        raw = config.to_dict()
    else:
        raw = config
    d = copy.deepcopy(raw)
    d["name"] = name
    MammoClipCfg.from_dict(copy.deepcopy(d))
    _MODEL_CONFIGS[name] = d


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODEL_CONFIGS)


def get_model_config(name: str) -> dict[str, Any]:
    """A deep copy of the named config dict.

    Raises:
        ConfigError: For an unknown name (the message lists the known ones).
    """
    if name not in _MODEL_CONFIGS:
        raise ConfigError(f"unknown model {name!r}; known: {list_models()}")
    return copy.deepcopy(_MODEL_CONFIGS[name])


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: nested dicts are merged, other values replaced."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(name_or_cfg: str | dict[str, Any] | MammoClipCfg, **overrides: Any) -> MammoClipCfg:
    """Registry name / dict / config plus overrides -> a validated :class:`MammoClipCfg`.

    ``image_size=(H, W)`` is a shortcut for ``preprocess={"image_size": ...}``; other overrides are
    merged recursively into the config dict (``text={"hf_config": {"num_hidden_layers": 2}}``).
    """
    if isinstance(name_or_cfg, MammoClipCfg):
        d = name_or_cfg.to_dict()
    elif isinstance(name_or_cfg, dict):
        d = copy.deepcopy(name_or_cfg)
    else:
        d = get_model_config(name_or_cfg)
    if "image_size" in overrides:
        overrides = dict(overrides)
        size = overrides.pop("image_size")
        overrides = _merge(overrides, {"preprocess": {"image_size": list(size)}})
    return MammoClipCfg.from_dict(_merge(d, overrides))


_rescan_model_configs()
