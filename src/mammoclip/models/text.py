"""Text tower: any BERT-family transformers encoder, a registered token pooling, a tokenizer wrapper.

The paper's tower is ``emilyalsentzer/Bio_ClinicalBERT`` pooled at the final ``[SEP]`` ("eos",
docs/original.md §3). Weights come from a hub name, a local directory or a package-shipped directory
(:mod:`mammoclip.models.pretrained`); a tower can also be built randomly from a stored config, which
is how checkpoints rebuild offline.

Reference: open_clip ``src/open_clip/hf_model.py`` (pooler registry).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mammoclip.errors import ConfigError
from mammoclip.models.config import MammoClipCfg, TextTowerCfg
from mammoclip.models.pretrained import offline, resolve_source
from mammoclip.models.registry import resolve_config

# --- pooling registry ------------------------------------------------------------------------------

TextPooler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_POOLERS: dict[str, TextPooler] = {}


def register_text_pooler(name: str) -> Callable[[TextPooler], TextPooler]:
    """Register ``fn(hidden (B, L, D), attention_mask (B, L)) -> (B, D)`` under ``name``."""

    def deco(fn: TextPooler) -> TextPooler:
        _POOLERS[name] = fn
        return fn

    return deco


@register_text_pooler("eos")
def eos_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last non-pad token (the final [SEP] with right padding; the paper)."""
    last = mask.sum(dim=1).long() - 1  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, D)


@register_text_pooler("cls")
def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the first token ([CLS])."""
    return hidden[:, 0]  # (B, D)


@register_text_pooler("mean")
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean over tokens (what all-MiniLM-L6-v2 was trained with)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-6)  # (B, D)


def list_text_poolers() -> list[str]:
    return sorted(_POOLERS)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _hub_error(ref: str, what: str, err: Exception) -> ConfigError:
    hint = " (HF_HUB_OFFLINE is set)" if offline() else ""
    return ConfigError(
        f"cannot load {what} {ref!r}{hint}: {err.__class__.__name__}. Give a local directory holding the "
        f"model (e.g. a `save_pretrained` copy), or build with pretrained=False"
    )


class TextTower(nn.Module):
    """transformers encoder + pooling.

    Attributes:
        encoder: The ``transformers`` base model (``BertModel`` etc.).
        num_features: Hidden size (768 for Bio_ClinicalBERT, 384 for MiniLM).
    """

    def __init__(self, cfg: TextTowerCfg, pretrained: bool = False) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        _quiet_transformers()
        self.cfg = cfg
        if cfg.pooling not in _POOLERS:
            raise ConfigError(f"unknown text pooling {cfg.pooling!r}; known: {list_text_poolers()}")
        if pretrained and cfg.pretrained is not None:
            src = resolve_source(cfg.pretrained)
            try:
                self.encoder = AutoModel.from_pretrained(src.ref, add_pooling_layer=True)
            except (OSError, ValueError) as err:
                raise _hub_error(src.ref, "text encoder", err) from err
            # Record the architecture so that a checkpoint of this model rebuilds without the source.
            cfg.hf_config = _arch_dict(self.encoder.config)
        else:
            if not cfg.hf_config:
                raise ConfigError(
                    f"text tower {cfg.pretrained!r} has no hf_config to build random weights from; "
                    "use pretrained=True or give text.hf_config"
                )
            hf = dict(cfg.hf_config)
            model_type = hf.pop("model_type", "bert")
            config = AutoConfig.for_model(model_type, **hf)
            self.encoder = AutoModel.from_config(config, add_pooling_layer=True)
        self.pooler = _POOLERS[cfg.pooling]
        # BERT's own pooler is kept so official state dicts load strictly, but it is never used:
        # freeze it so DistributedDataParallel does not wait for its gradients.
        if getattr(self.encoder, "pooler", None) is not None:
            for p in self.encoder.pooler.parameters():
                p.requires_grad_(False)
        self.num_features: int = int(self.encoder.config.hidden_size)
        if cfg.freeze_layers:
            self.freeze_lower_layers(cfg.freeze_layers)

    def freeze_lower_layers(self, n: int) -> None:
        """Freeze the embeddings and the first ``n`` encoder layers."""
        layers = self.encoder.encoder.layer
        if n > len(layers):
            raise ConfigError(f"text.freeze_layers={n} but the encoder has {len(layers)} layers")
        for module in [self.encoder.embeddings, *layers[:n]]:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids and mask -> pooled ``(B, D)`` features."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.pooler(out.last_hidden_state, attention_mask)  # (B, L, D) -> (B, D)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; support both.
        kwargs = {"use_reentrant": False}
        if hasattr(self.encoder, "activation_checkpointing_enable"):
            if enable:
                self.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.encoder.activation_checkpointing_disable()
        elif enable:
            self.encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.encoder.gradient_checkpointing_disable()


_ARCH_DROP = {"_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype",
              "gradient_checkpointing", "use_cache", "_attn_implementation_autoset", "output_attentions",
              "output_hidden_states", "return_dict", "id2label", "label2id", "tie_word_embeddings"}


class TextFeatureCache:
    """Memo of a frozen text tower's pooled features, keyed by each caption's unmasked token ids.

    With the text tower locked (LiT-style pre-training) its features are a pure function of the
    tokens, and at small image sizes the text forward is most of a training step (MiniLM on ~60
    tokens costs ~10x lite0 at 128x80): captions repeat every epoch, so each is encoded once.
    Least-recently-used entries are evicted beyond ``max_items``. Entries are detached and kept on the
    device they were computed on. Each new caption is encoded on its own, without padding: its
    features then do not depend on which batch it first appeared in (batched matmuls may round
    differently with the batch's size and padding), so a resumed run is bitwise equal to an
    uninterrupted one, and the memo never changes what a caption means.
    """

    def __init__(self, max_items: int = 200_000) -> None:
        from collections import OrderedDict

        self.max_items = max_items
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    def __call__(self, tower: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Features ``(B, T)`` of ``input_ids`` ``(B, L)``: cached rows looked up, the rest encoded once."""
        rows = input_ids.detach().cpu()
        keep = attention_mask.detach().cpu().bool()
        keys = [rows[i][keep[i]].numpy().tobytes() for i in range(rows.shape[0])]
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._store and key not in missing:
                missing[key] = i
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        with torch.no_grad():
            for key, i in missing.items():
                ids = input_ids[i : i + 1, attention_mask[i].bool()]  # (1, L_i): this caption, unpadded
                self._store[key] = tower(ids, torch.ones_like(ids))[0].detach()  # (T,)
        out = []
        for key in keys:
            self._store.move_to_end(key)
            out.append(self._store[key])
        while len(self._store) > self.max_items:
            self._store.popitem(last=False)
        return torch.stack(out).to(input_ids.device)  # (B, T)


def _arch_dict(config: Any) -> dict[str, Any]:
    """The architecture-defining part of a transformers config, JSON-serialisable."""
    d = config.to_diff_dict() if hasattr(config, "to_diff_dict") else config.to_dict()
    out = {k: v for k, v in d.items() if k not in _ARCH_DROP and not k.startswith("_")}
    out["model_type"] = config.model_type
    return out


class Tokenizer:
    """Callable wrapper: ``tok(list[str]) -> {"input_ids", "attention_mask"}`` with dynamic padding.

    Pads to the longest sequence in the batch (the original pads every caption to 256 tokens,
    docs/original.md §10 "Speed"), truncates at ``max_length``, right padding (``eos`` pooling relies on it).
    """

    def __init__(self, hf_tokenizer: Any, max_length: int, source: str) -> None:
        self.hf = hf_tokenizer
        self.hf.padding_side = "right"
        self.max_length = max_length
        #: Where the vocabulary came from (stored in checkpoints).
        self.source = source

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    @property
    def pad_token_id(self) -> int:
        return int(self.hf.pad_token_id)

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        enc = self.hf(list(texts), padding="longest", truncation=True,
                      max_length=max_length or self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def save(self, out_dir: str | Path) -> None:
        """Write the vocabulary files (``save_pretrained``) so a checkpoint is self-contained."""
        self.hf.save_pretrained(str(out_dir))


def load_tokenizer(spec: str, max_length: int, base_dir: Path | None = None) -> Tokenizer:
    """Load a tokenizer from a hub name, local directory or ``package:NAME`` source."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    src = resolve_source(spec, base_dir=base_dir)
    try:
        hf = AutoTokenizer.from_pretrained(src.ref)
    except (OSError, ValueError) as err:
        raise _hub_error(src.ref, "tokenizer", err) from err
    return Tokenizer(hf, max_length=max_length, source=spec)


def get_tokenizer(model_or_name: Any) -> Tokenizer:
    """The tokenizer that belongs to a model, a model config or a registered model name.

    ``tok(list[str]) -> {"input_ids", "attention_mask"}``, padded to the longest text, truncated at the
    config's ``max_length`` (256). A model loaded from a checkpoint uses the vocabulary saved in it.

    Args:
        model_or_name: A :class:`~mammoclip.models.MammoCLIP`, a :class:`~mammoclip.models.MammoClipCfg`
            or a registry name.
    """
    base_dir = None
    cfg: MammoClipCfg
    if isinstance(model_or_name, nn.Module):
        # nn.Module types unknown attributes as Tensor | Module; a MammoCLIP's cfg is a plain attribute.
        cfg = cast(MammoClipCfg, model_or_name.cfg)
        base_dir = getattr(model_or_name, "source_dir", None)
    elif isinstance(model_or_name, str):
        cfg = resolve_config(model_or_name)
    else:
        cfg = model_or_name
    if cfg.text.tokenizer is None:
        raise ConfigError(f"model {cfg.name!r} names no tokenizer (text.tokenizer)")
    return load_tokenizer(cfg.text.tokenizer, max_length=cfg.text.max_length, base_dir=base_dir)
