"""The FActOR mapper: channel descriptors -> one projection per attribute, and its contrastive loss.

docs/original.md §7. The frozen image tower's last feature map ``(B, C, h, w)`` is read as C regions;
region c's descriptor is its flattened spatial map (``h * w`` values). Attribute a owns one MLP head
``Linear(h*w -> hidden) -> ReLU -> Linear(hidden -> D)``; the heads are stored **stacked on their own
axis** (``w1: (A, h*w, hidden)``, ``w2: (A, hidden, D)``) and applied with one ``einsum`` each, so the
output ``(B, C, A, D)`` holds head a's projection of channel c at ``[:, c, a]`` and attribute a's loss
only ever reaches head a. (The notebook concatenated the two heads' outputs on the channel axis and
reshaped ``[B, 2C, D] -> [B*C, 2, D]``, which pairs neighbouring channels of *one* head instead.)

Loss (temperature 0.07): ``s(b, a) = max_c cos(ê(b, c, a), t_a) / τ``; for every positive pair
``ℓ(b, a) = -log(e^{s(b,a)} / (e^{s(b,a)} + N(b, a)))`` averaged over the positive pairs of the
attributes present in the batch. Two forms of ``N`` are registered:

* ``original``: ``Σ_{b'} e^{s(b',a)(1 - y(b',a))}``, the notebook's: every positive image of the batch
  (itself included) adds ``e^0 = 1`` to the denominator, a constant that only dilutes the gradient;
* ``corrected`` (default): ``Σ_{b': y(b',a)=0} e^{s(b',a)}``, negatives only (InfoNCE with one positive).

The comparison that chose the default is in docs/attribution.md.

**Feature tap** (a deviation from the original, which always reads the last map): ``tap=None`` reads
the encoder's final feature map (after the conv head; 8x5 cells at 256x160), ``tap=-2`` / ``-3`` the
timm ``forward_intermediates`` level one / two strides finer (stride 16 / 8). The tap is part of the
mapper (saved in ``mapper.json``): heads only fit the ``(C, h, w)`` of the map they were trained on.

**Descriptor options** (deviations, off by default; docs/attribution.md §2 and §5 for what they
measured): ``descriptor_norm`` transforms the map before the heads (``image``, ``channel``, or
``sorted``: each channel's values sorted, which drops where they lie), and ``channel_ids`` adds the
channel's one-hot index to its descriptor. Heatmaps always sum the raw channel maps.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammoclip.attribution.attributes import AttributeSpec
from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models.checkpoint import save_safetensors

#: Temperature of the mapper loss (docs/original.md §7).
FACTOR_TEMPERATURE: float = 0.07
#: Loss form used unless told otherwise (see docs/attribution.md for the comparison).
DEFAULT_LOSS_FORM: str = "corrected"
#: Stand-in for log(0) in the denominator: finite, so a batch without negatives has finite gradients.
_LOG_ZERO: float = -1e4

#: Feature map read by new mappers: None = the last map (the original); a negative int = that
#: ``forward_intermediates`` level (-2: stride 16). Chosen by the measurements in docs/attribution.md.
DEFAULT_TAP: int | None = -2
#: Finest level a tap may name (-5: stride 2 on an EfficientNet; finer maps are not regions any more).
_MIN_TAP: int = -5

MAPPER_WEIGHTS = "mapper.safetensors"
MAPPER_CONFIG = "mapper.json"

#: Loss form name -> ``(s (B, A), y (B, A)) -> log N (B, A)``: the log of the non-self denominator term.
_LOSS_FORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def register_loss_form(name: str) -> Callable[[Callable], Callable]:
    """Register how the denominator of the mapper loss treats the other images of the batch."""

    def wrap(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        _LOSS_FORMS[name] = fn
        return fn

    return wrap


def list_loss_forms() -> list[str]:
    return sorted(_LOSS_FORMS)


@register_loss_form("original")
def _original(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log Σ_b' e^{s(b',a)(1-y(b',a))}``: negatives add e^s, every positive adds e^0 = 1."""
    return torch.logsumexp(s * (1 - y), dim=0, keepdim=True).expand_as(s)  # (B, A)


@register_loss_form("corrected")
def _corrected(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log Σ_{b': y=0} e^{s(b',a)}``: negatives only."""
    masked = torch.where(y > 0, torch.full_like(s, _LOG_ZERO), s)  # (B, A)
    return torch.logsumexp(masked, dim=0, keepdim=True).expand_as(s)  # (B, A)


#: Descriptor normalisation name -> ``(B, C, h, w) -> (B, C, h, w)``, applied before the heads only
#: (heatmaps still sum the raw channel maps). ``none`` is the original.
_DESCRIPTOR_NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
DEFAULT_DESCRIPTOR_NORM: str = "none"


def register_descriptor_norm(name: str) -> Callable[[Callable], Callable]:
    """Register a per-image normalisation of the feature map that the heads read."""

    def wrap(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        _DESCRIPTOR_NORMS[name] = fn
        return fn

    return wrap


def list_descriptor_norms() -> list[str]:
    return sorted(_DESCRIPTOR_NORMS)


@register_descriptor_norm("none")
def _no_norm(fmap: torch.Tensor) -> torch.Tensor:
    return fmap


@register_descriptor_norm("image")
def _image_norm(fmap: torch.Tensor) -> torch.Tensor:
    """Divide each image's whole map by its root mean square: one scale per image, channels keep their ratios."""
    return fmap / fmap.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp(min=1e-6)


@register_descriptor_norm("channel")
def _channel_norm(fmap: torch.Tensor) -> torch.Tensor:
    """Standardise every channel map (zero mean, unit variance over its cells): its shape, not its scale."""
    mean = fmap.mean(dim=(2, 3), keepdim=True)
    return (fmap - mean) / fmap.std(dim=(2, 3), keepdim=True).clamp(min=1e-6)


@register_descriptor_norm("sorted")
def _sorted_cells(fmap: torch.Tensor) -> torch.Tensor:
    """Every channel's cell values sorted in descending order: where a value lies is dropped (a
    translation- and flip-invariant descriptor, no longer the original's spatial one)."""
    return fmap.flatten(2).sort(dim=-1, descending=True).values.reshape(fmap.shape)


def check_tap(tap: int | None) -> int | None:
    """``None`` (the last map) or a negative ``forward_intermediates`` index; anything else is an error."""
    if tap is not None and (isinstance(tap, bool) or not isinstance(tap, int) or not _MIN_TAP <= tap <= -1):
        raise ConfigError(f"feature tap must be None (the last feature map) or an int in [{_MIN_TAP}, -1] "
                          f"(a forward_intermediates level, -2 = stride 16), got {tap!r}")
    return tap


def tap_feature_map(model: Any, images: torch.Tensor, tap: int | None) -> torch.Tensor:
    """``(B, 1, H, W)`` normalised images -> the ``(B, C, h, w)`` map the mapper reads.

    ``None``: :meth:`MammoCLIP.image_feature_map` (the last map, after the conv head, as the original);
    an int: that level of the tower's ``forward_intermediates`` (the last block's output at -1, one
    stride finer at -2, ...).
    """
    if check_tap(tap) is None:
        return model.image_feature_map(images)
    return model.image_intermediates(images, indices=[tap])[0]


def factor_loss(
    sim: torch.Tensor, labels: torch.Tensor, *, temperature: float = FACTOR_TEMPERATURE,
    form: str = DEFAULT_LOSS_FORM,
) -> torch.Tensor:
    """The max-over-channels contrastive loss.

    Args:
        sim: ``(B, C, A)`` cosine similarities of every channel's projection to every attribute.
        labels: ``(B, A)`` 0/1 image labels.
        temperature: τ.
        form: A name from :func:`list_loss_forms`.

    Returns:
        Scalar: mean of ℓ(b, a) over positive pairs; 0 (with a graph) when the batch has none.
    """
    if form not in _LOSS_FORMS:
        raise ConfigError(f"unknown FActOR loss form {form!r}; choose from {list_loss_forms()}")
    s = sim.float().amax(dim=1) / temperature  # (B, C, A) -> (B, A)
    y = labels.to(s.dtype)
    log_n = _LOSS_FORMS[form](s, y)  # (B, A)
    per_pair = torch.logaddexp(s, log_n) - s  # (B, A): -log(e^s / (e^s + N))
    n_pos = y.sum()
    return (per_pair * y).sum() / n_pos.clamp(min=1.0)


class FactorMapper(nn.Module):
    """Stacked per-attribute MLP heads over channel descriptors.

    Args:
        attributes: The attribute specs, in head order.
        text_embeddings: ``(A, D)`` unit attribute embeddings (kept as a buffer, saved with the heads).
        feature_shape: ``(C, h, w)`` of the encoder's last feature map at ``image_size``.
        image_size: ``(H, W)`` of the images the encoder reads (the mapper only fits this size).
        hidden: Hidden width of every head (None: ``h * w``, as the original).
        tap: Which feature map the heads read (:func:`tap_feature_map`; None: the last one).
        descriptor_norm: A name from :func:`list_descriptor_norms`, applied to the map before the heads
            (``none``: the original's raw descriptors).
        channel_ids: Append channel c's one-hot index to its descriptor (a deviation, off by default):
            head a's first layer gains a learned row per channel (``e: (A, C, hidden)``), so a head can
            tell which channel a map comes from instead of judging its spatial pattern alone.
    """

    text: torch.Tensor  # (A, D) buffer

    def __init__(self, attributes: Sequence[AttributeSpec], text_embeddings: torch.Tensor,
                 feature_shape: tuple[int, int, int], image_size: tuple[int, int], hidden: int | None = None,
                 tap: int | None = None, descriptor_norm: str = DEFAULT_DESCRIPTOR_NORM,
                 channel_ids: bool = False) -> None:
        super().__init__()
        self.tap = check_tap(tap)
        if descriptor_norm not in _DESCRIPTOR_NORMS:
            raise ConfigError(f"unknown descriptor_norm {descriptor_norm!r}; choose from {list_descriptor_norms()}")
        self.descriptor_norm = descriptor_norm
        a, d = text_embeddings.shape
        if a != len(attributes):
            raise ConfigError(f"{len(attributes)} attributes but {a} text embeddings")
        self.attributes = list(attributes)
        self.feature_shape = tuple(int(v) for v in feature_shape)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        s = self.feature_shape[1] * self.feature_shape[2]
        self.hidden = int(hidden or s)
        self.w1 = nn.Parameter(torch.empty(a, s, self.hidden))  # (A, S, H)
        self.b1 = nn.Parameter(torch.empty(a, self.hidden))  # (A, H)
        self.w2 = nn.Parameter(torch.empty(a, self.hidden, d))  # (A, H, D)
        self.b2 = nn.Parameter(torch.empty(a, d))  # (A, D)
        self.channel_ids = bool(channel_ids)
        # the one-hot channel index's weights: a hidden bias per (attribute, channel); absent without channel_ids
        self.e: nn.Parameter | None = (nn.Parameter(torch.zeros(a, self.feature_shape[0], self.hidden))
                                       if self.channel_ids else None)
        self.register_buffer("text", F.normalize(text_embeddings.float(), dim=-1))  # (A, D)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each head initialised as ``nn.Linear`` would be: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for w, b in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = 1.0 / math.sqrt(w.shape[1])
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def check_features(self, fmap: torch.Tensor) -> None:
        """Fail on a feature map of another shape than the one the heads were built for."""
        if tuple(fmap.shape[1:]) != self.feature_shape:
            raise ConfigError(
                f"feature map {tuple(fmap.shape[1:])} (C, h, w) does not match the mapper's {self.feature_shape}: "
                f"the mapper was trained on {self.image_size[0]}x{self.image_size[1]} images (feature tap "
                f"{self.tap}) of another encoder or size")

    def descriptors(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, h*w)``: every channel's (normalised) map, flattened."""
        self.check_features(fmap)
        return _DESCRIPTOR_NORMS[self.descriptor_norm](fmap.to(self.w1.dtype)).flatten(2)

    def hidden_units(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, A, H)``: every head's first layer (ReLU) on every channel's descriptor."""
        pre = torch.einsum("bcs,ash->bcah", self.descriptors(fmap), self.w1) + self.b1  # (B, C, A, H)
        if self.e is not None:
            pre = pre + self.e.permute(1, 0, 2)  # (C, A, H): channel c's one-hot row
        return torch.relu(pre)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` feature map -> ``(B, C, A, D)`` L2-normalised projections (head a at ``[:, :, a]``)."""
        hid = self.hidden_units(fmap)  # (B, C, A, H)
        out = torch.einsum("bcah,ahd->bcad", hid, self.w2) + self.b2  # (B, C, A, D)
        return F.normalize(out, dim=-1)

    def similarities(self, fmap: torch.Tensor) -> torch.Tensor:
        """``(B, C, A)``: cosine of head a's projection of channel c with attribute a's embedding.

        When the hidden width H is below the embedding width D (small feature maps: 40 cells at
        256x160 against D = 256) the ``(B, C, A, D)`` projections are never built: with ``o = W2ᵀh + b2``,
        ``<o, t> = h·(W2 t) + b2·t`` and ``|o|² = hᵀ(W2 W2ᵀ)h + 2 h·(W2 b2) + |b2|²``, which costs
        ``H²`` instead of ``H·D`` per channel and gives the same cosine as :meth:`forward`.
        """
        text = self.text.to(self.w1.dtype)  # (A, D)
        if self.hidden >= self.w2.shape[2]:
            return torch.einsum("bcad,ad->bca", self(fmap), text)
        hid = self.hidden_units(fmap)  # (B, C, A, H)
        dot = torch.einsum("bcah,ah->bca", hid, torch.einsum("ahd,ad->ah", self.w2, text)) + (self.b2 * text).sum(-1)
        gram = torch.einsum("ahd,agd->ahg", self.w2, self.w2)  # (A, H, H)
        quad = (torch.einsum("bcah,ahg->bcag", hid, gram) * hid).sum(-1)  # (B, C, A)
        cross = torch.einsum("bcah,ah->bca", hid, torch.einsum("ahd,ad->ah", self.w2, self.b2))  # (B, C, A)
        sq = quad + 2 * cross + (self.b2 * self.b2).sum(-1)  # (B, C, A): |o|²
        return dot / sq.clamp(min=1e-24).sqrt()  # F.normalize's eps = 1e-12 on the norm

    def config(self) -> dict[str, Any]:
        return {"attributes": [a.to_dict() for a in self.attributes], "feature_shape": list(self.feature_shape),
                "image_size": list(self.image_size), "hidden": self.hidden, "embed_dim": int(self.text.shape[1]), "tap": self.tap,
                "descriptor_norm": self.descriptor_norm, "channel_ids": self.channel_ids}


def save_mapper(mapper: FactorMapper, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``mapper.safetensors`` (heads + attribute embeddings) and ``mapper.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # through the checkpoint writer: the umask's permissions (safetensors alone writes 0600)
    save_safetensors({k: v.detach().cpu().contiguous() for k, v in mapper.state_dict().items()},
                     folder / MAPPER_WEIGHTS)
    (folder / MAPPER_CONFIG).write_text(json.dumps({**mapper.config(), **(extra or {})}, indent=1), encoding="utf-8")
    return folder


def load_mapper(folder: str | Path) -> tuple[FactorMapper, dict[str, Any]]:
    """Load a mapper written by :func:`save_mapper` (a run folder: its ``best/``).

    Returns:
        ``(mapper in eval mode, the config dict, e.g. loss form and encoder fingerprint)``.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "best" / MAPPER_CONFIG).is_file() and not (folder / MAPPER_CONFIG).is_file():
        folder = folder / "best"
    if not (folder / MAPPER_CONFIG).is_file() or not (folder / MAPPER_WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: not a FActOR mapper (no {MAPPER_CONFIG} / {MAPPER_WEIGHTS})")
    try:
        cfg = json.loads((folder / MAPPER_CONFIG).read_text(encoding="utf-8"))
        state = load_file(str(folder / MAPPER_WEIGHTS))
        specs = [AttributeSpec.from_dict(a) for a in cfg["attributes"]]
        mapper = FactorMapper(specs, state["text"], tuple(cfg["feature_shape"]), tuple(cfg["image_size"]),
                              cfg["hidden"], cfg.get("tap"),  # mappers saved before taps read the last map
                              cfg.get("descriptor_norm", DEFAULT_DESCRIPTOR_NORM), cfg.get("channel_ids", False))
        mapper.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, OSError, ConfigError) as err:
        raise CheckpointError(f"{folder}: cannot load the FActOR mapper ({err})") from err
    return mapper.eval(), cfg
