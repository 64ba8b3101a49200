"""MammoCLIP: image tower + text tower + linear projections + learnable temperature.

Faithful to the official ``BreastClip`` (docs/original.md §3): linear projections with bias to the joint
space, L2-normalised embeddings, ``logit_scale`` initialised to ln(1/0.07). Two deliberate changes:
``exp(logit_scale)`` is clamped to ``MAX_LOGIT_SCALE`` (as in CLIP; the original is unclamped) and
:meth:`MammoCLIP.no_weight_decay` names the parameters an optimizer should not decay (the original
decays all, docs/original.md §10). The model is pure: losses and optimizers live elsewhere (docs/architecture.md, design rule 5).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammoclip.constants import MAX_LOGIT_SCALE
from mammoclip.models.config import MammoClipCfg, PreprocessCfg
from mammoclip.models.image import ImageTower, efficientnet_stages
from mammoclip.models.text import TextFeatureCache, TextTower


class MammoCLIP(nn.Module):
    """The Mammo-CLIP dual encoder.

    Attributes:
        cfg: The full model config (written into checkpoints).
        image_tower: :class:`ImageTower`; ``image_tower.num_features`` is the pooled feature size.
        text_tower: :class:`TextTower`.
        image_projection / text_projection: ``nn.Linear`` to ``cfg.embed_dim``.
        logit_scale: Learnable log inverse temperature (0-dim).
    """

    def __init__(self, cfg: MammoClipCfg, pretrained: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_tower = ImageTower(cfg.image, pretrained=pretrained)
        self.text_tower = TextTower(cfg.text, pretrained=pretrained)
        self.image_projection = nn.Linear(self.image_tower.num_features, cfg.embed_dim)
        self.text_projection = nn.Linear(self.text_tower.num_features, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        #: Folder that relative tokenizer sources are resolved against (set by ``load_checkpoint``).
        self.source_dir: Path | None = None
        #: Set by :meth:`lock_text_tower` when the whole text tower is frozen.
        self.text_cache: TextFeatureCache | None = None
        self._text_frozen = False

    # --- properties --------------------------------------------------------------------------------
    @property
    def preprocess_cfg(self) -> PreprocessCfg:
        """How pixels must be prepared for this model (size, mean/std, scaling)."""
        return self.cfg.preprocess

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    # --- image -------------------------------------------------------------------------------------
    def image_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Final conv feature map ``(B, C, h, w)`` for attribution and detection."""
        return self.image_tower.forward_features(images)

    def image_intermediates(self, images: torch.Tensor, indices: int | list[int] | None = None) -> list[torch.Tensor]:
        """Intermediate feature maps (timm ``forward_intermediates`` indices) for an FPN."""
        return self.image_tower.forward_intermediates(images, indices=indices)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features before projection ``(B, F)``; dropout is active only in train mode."""
        return self.image_tower(images)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``(B, 1|3, H, W)`` normalised float -> ``(B, D)`` embeddings."""
        emb = self.image_projection(self.image_features(images))  # (B, D)
        return F.normalize(emb, dim=-1) if normalize else emb

    # --- text --------------------------------------------------------------------------------------
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled text features before projection ``(B, T)`` (memoised while the tower is locked)."""
        if self.text_cache is not None:
            return self.text_cache(self.text_tower, input_ids, attention_mask)
        return self.text_tower(input_ids, attention_mask)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    normalize: bool = True) -> torch.Tensor:
        """``(B, L)`` token ids (+ mask) -> ``(B, D)`` embeddings."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emb = self.text_projection(self.text_features(input_ids, attention_mask))  # (B, D)
        return F.normalize(emb, dim=-1) if normalize else emb

    # --- both --------------------------------------------------------------------------------------
    def scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to ``MAX_LOGIT_SCALE``."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Embed both views and both captions of a batch.

        Args:
            batch: ``image`` and optionally ``image_view2`` ``(B, 1, H, W)``; ``input_ids``,
                ``attention_mask`` and optionally ``input_ids2``, ``attention_mask2`` ``(B, L)``.

        Returns:
            ``image_embeddings``, ``image_view_embeddings`` (if ``image_view2``), ``text_embeddings``,
            ``text_embeddings2`` (if ``input_ids2``): L2-normalised ``(B, D)``; ``logit_scale``
            (``exp``, clamped); ``image_features`` / ``text_features``: pooled, before projection.
            Either modality may be absent from the batch; its keys are then omitted.
        """
        out: dict[str, torch.Tensor] = {"logit_scale": self.scale()}
        if "image" in batch:
            feats = self.image_features(batch["image"])  # (B, F)
            out["image_features"] = feats
            out["image_embeddings"] = F.normalize(self.image_projection(feats), dim=-1)  # (B, D)
            if "image_view2" in batch:
                # A separate pass, as the original: BatchNorm statistics stay per view.
                feats2 = self.image_features(batch["image_view2"])  # (B, F)
                out["image_view_embeddings"] = F.normalize(self.image_projection(feats2), dim=-1)
        if "input_ids" in batch:
            ids, mask = batch["input_ids"], batch.get("attention_mask")
            if mask is None:
                mask = torch.ones_like(ids)
            feats = self.text_features(ids, mask)  # (B, T)
            out["text_features"] = feats
            out["text_embeddings"] = F.normalize(self.text_projection(feats), dim=-1)
            if "input_ids2" in batch:
                ids2 = batch["input_ids2"]
                mask2 = batch.get("attention_mask2")
                feats2 = self.text_features(ids2, torch.ones_like(ids2) if mask2 is None else mask2)
                out["text_embeddings2"] = F.normalize(self.text_projection(feats2), dim=-1)
        return out

    # --- hooks for the trainer -----------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Names of parameters that should not be weight-decayed.

        ``logit_scale``, every bias and every normalisation / GeM parameter (all parameters with fewer
        than 2 dimensions), as in CLIP and timm.
        """
        return {name for name, p in self.named_parameters() if p.ndim < 2}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing in both towers (trades compute for memory at 1520x912)."""
        self.image_tower.set_grad_checkpointing(enable)
        self.text_tower.set_grad_checkpointing(enable)

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = True) -> None:
        """Freeze the image tower (linear probing / LiT-style training).

        Args:
            unlocked_groups: Keep this many of the last trunk stages trainable (0 = freeze all).
            freeze_bn_stats: Also put the frozen BatchNorms in eval mode (and keep them there).
        """
        trunk = self.image_tower.trunk
        frozen: list[nn.Module] = [self.image_tower]
        if unlocked_groups:
            stages = efficientnet_stages(trunk)
            frozen = [m for n, m in trunk.named_children() if n not in ("blocks", "conv_head", "bn2")]
            frozen += stages[: len(stages) - unlocked_groups]
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        if freeze_bn_stats:
            self._frozen_bn = [m for f in frozen for m in f.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            for m in self._frozen_bn:
                m.eval()

    def lock_text_tower(self, unlocked_layers: int = 0, cache_features: bool = True) -> None:
        """Freeze the text tower except its last ``unlocked_layers`` encoder layers.

        A wholly frozen tower (``unlocked_layers=0``) also stays in eval mode (no dropout: the locked
        tower of LiT is a fixed function) and, with ``cache_features``, memoises its features per
        caption (:class:`~mammoclip.models.text.TextFeatureCache`), which makes locked-text training
        on CPU several times cheaper at small image sizes.
        """
        n = len(self.text_tower.encoder.encoder.layer)
        for p in self.text_tower.parameters():
            p.requires_grad_(False)
        for layer in self.text_tower.encoder.encoder.layer[n - unlocked_layers:] if unlocked_layers else []:
            for p in layer.parameters():
                p.requires_grad_(True)
        self._text_frozen = unlocked_layers == 0
        self.text_cache = TextFeatureCache() if self._text_frozen and cache_features else None
        self.train(self.training)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if self.text_cache is not None:  # new text weights: the memo is stale
            self.text_cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> MammoCLIP:
        super().train(mode)
        for m in getattr(self, "_frozen_bn", []):
            m.eval()
        if self._text_frozen:
            self.text_tower.eval()
        return self

    def extra_repr(self) -> str:
        return f"name={self.cfg.name!r}, embed_dim={self.cfg.embed_dim}"

    def config_dict(self) -> dict[str, Any]:
        return self.cfg.to_dict()
