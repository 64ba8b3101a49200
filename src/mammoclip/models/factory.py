"""The model factory: a registered name (or a config) plus weights -> a :class:`MammoCLIP`.

Reference: open_clip ``src/open_clip/factory.py`` (``create_model``) and timm ``timm/models/_factory.py``.
It sits on top of the package (config -> registry -> towers -> clip -> checkpoint -> factory) because it
needs both the model classes and the checkpoint reader.
"""

from __future__ import annotations

from typing import Any

from mammoclip.models.checkpoint import load_weights_into
from mammoclip.models.clip import MammoCLIP
from mammoclip.models.config import MammoClipCfg
from mammoclip.models.pretrained import check_downloadable
from mammoclip.models.registry import resolve_config

__all__ = ["create_model"]


def create_model(name_or_cfg: str | dict[str, Any] | MammoClipCfg, pretrained: bool | str = True,
                 **overrides: Any) -> MammoCLIP:
    """Build a :class:`MammoCLIP` from the registry.

    Args:
        name_or_cfg: A registered name (see :func:`list_models`), a config dict or a config.
        pretrained: True = load the pretrained sources named in the config (package-shipped files
            load offline; hub names need network); False = random weights, nothing is read;
            a string = a mammoclip checkpoint directory (or an official ``.tar``) whose weights are
            loaded strictly into the model built from ``name_or_cfg``.
            A hub source that is not in the local cache while the hub is unreachable (or
            HF_HUB_OFFLINE is set) fails at once with a :class:`ConfigError` saying how to get the
            weights, instead of retrying the hub for most of a minute.
        **overrides: Merged into the config (see :func:`resolve_config`).

    Returns:
        The model, in train mode.

    Example:
        >>> model = create_model("mammoclip-tiny")
        >>> tok = get_tokenizer(model)
        >>> model.encode_text(**tok(["no mass"])).shape
        torch.Size([1, 64])
    """
    cfg = resolve_config(name_or_cfg, **overrides)
    if isinstance(pretrained, str):
        model = MammoCLIP(cfg, pretrained=False)
        load_weights_into(model, pretrained)
        return model
    if pretrained:
        check_downloadable(cfg.name, {"image tower": (cfg.image.pretrained, cfg.image.model_name),
                                      "text tower": (cfg.text.pretrained, None)})
    return MammoCLIP(cfg, pretrained=bool(pretrained))
