"""mammoclip.models: the Mammo-CLIP dual encoder, its registry and checkpoints.

>>> from mammoclip.models import create_model, get_tokenizer
>>> model = create_model("mammoclip-tiny")
"""

from __future__ import annotations

from mammoclip.models.checkpoint import (
    convert_official,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from mammoclip.models.clip import MammoCLIP
from mammoclip.models.config import ImageTowerCfg, MammoClipCfg, PreprocessCfg, TextTowerCfg
from mammoclip.models.factory import create_model
from mammoclip.models.image import ImageTower, register_image_pool
from mammoclip.models.pretrained import register_package_source
from mammoclip.models.registry import get_model_config, list_models, register_model_config, resolve_config
from mammoclip.models.text import TextTower, Tokenizer, get_tokenizer, register_text_pooler

__all__ = [
    "ImageTower",
    "ImageTowerCfg",
    "MammoCLIP",
    "MammoClipCfg",
    "PreprocessCfg",
    "TextTower",
    "TextTowerCfg",
    "Tokenizer",
    "convert_official",
    "create_model",
    "get_model_config",
    "get_tokenizer",
    "list_models",
    "load_checkpoint",
    "read_checkpoint_config",
    "register_image_pool",
    "register_model_config",
    "register_package_source",
    "register_text_pooler",
    "resolve_config",
    "save_checkpoint",
]
