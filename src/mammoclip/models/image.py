"""Image tower: a timm CNN trunk, a registered pooling and the paper's dropout.

The paper encoder is lukemelas' ``efficientnet_pytorch`` EfficientNet (docs/original.md §3). timm's
``tf_efficientnet_b5``/``b2`` are the same networks under other module names; two things are needed
to reproduce the official model exactly on top of timm:

* :func:`lukemelas_to_timm` renames a lukemelas state dict (``_conv_stem``, ``_blocks.N._depthwise_conv``,
  ``_se_reduce``, ...) onto timm's modules (``conv_stem``, ``blocks.S.I.conv_dw``, ``se.conv_reduce``, ...);
* :func:`freeze_same_padding` replaces timm's dynamic TF-"SAME" convolutions by convolutions with the
  padding lukemelas precomputes for the *nominal* resolution (456 px for B5, 260 px for B2). At
  1520x912 dynamic SAME pads one pixel differently at some stride-2 stages, which shifts features.

References: Tan & Le, "EfficientNet" (ICML 2019); timm ``timm/models/efficientnet.py``;
lukemelas/EfficientNet-PyTorch ``efficientnet_pytorch/utils.py`` (``Conv2dStaticSamePadding``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, Literal, Protocol, cast

import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.models._efficientnet_blocks import DepthwiseSeparableConv
from torch import nn

from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models.config import ImageTowerCfg
from mammoclip.models.pretrained import resolve_source

# --- pooling registry ------------------------------------------------------------------------------

_POOLS: dict[str, Callable[[], nn.Module]] = {}


def register_image_pool(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    """Register a factory of a pooling module ``(B, C, h, w) -> (B, C)`` under ``name``."""

    def deco(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        _POOLS[name] = factory
        return factory

    return deco


class AvgPool(nn.Module):
    """Global average pooling (the paper)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent (Radenovic et al., 2018)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))  # (B, C)
        return pooled.pow(1.0 / self.p)


register_image_pool("avg")(AvgPool)
register_image_pool("gem")(GeM)


def list_image_pools() -> list[str]:
    return sorted(_POOLS)


# --- static TF "SAME" padding ----------------------------------------------------------------------


class StaticSameConv2d(nn.Conv2d):
    """A convolution with fixed (left, right, top, bottom) zero padding, as lukemelas computes it.

    Same parameter names as ``nn.Conv2d`` (and timm's ``Conv2dSame``), so state dicts are unchanged.
    """

    def __init__(self, *args, static_pad: tuple[int, int, int, int] = (0, 0, 0, 0), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.static_pad = tuple(int(p) for p in static_pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.static_pad)  # (B, C, H + top + bottom, W + left + right)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", static_pad={self.static_pad}"


def _same_pad(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    """TF SAME padding (before, after) for one axis of length ``size``."""
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def freeze_same_padding(model: nn.Module, nominal_size: int) -> int:
    """Replace every dynamic-SAME conv of a timm ``tf_`` model by a static one for ``nominal_size``.

    Convolutions are visited in registration order, which for timm EfficientNets is execution order;
    the running spatial size is divided (ceil) by every conv stride, as lukemelas'
    ``calculate_output_image_size`` does. The nominal size is square, as in lukemelas.

    Args:
        model: A timm model whose stride-2 convolutions are ``Conv2dSame``.
        nominal_size: The resolution the padding is computed for (456 for B5, 260 for B2).

    Returns:
        The number of convolutions replaced.
    """
    size = nominal_size
    replaced = 0
    for name, child in list(model.named_modules()):
        if not isinstance(child, nn.Conv2d):
            continue
        k, s, d = child.kernel_size[0], child.stride[0], child.dilation[0]
        if isinstance(child, Conv2dSame):
            top, bottom = _same_pad(size, k, s, d)
            conv = StaticSameConv2d(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                dilation=child.dilation, groups=child.groups, bias=child.bias is not None,
                static_pad=(top, bottom, top, bottom),
            )
            conv.load_state_dict(child.state_dict())
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name), attr, conv)
            replaced += 1
        if s > 1:
            size = math.ceil(size / s)
    return replaced


# --- lukemelas -> timm key mapping -------------------------------------------------------------------

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Depthwise-separable blocks (expand ratio 1) have no expansion conv.
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
       "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lukemelas_to_timm(state_dict: dict[str, torch.Tensor], trunk: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet state dict onto a timm EfficientNet's module names.

    The flat block index N of lukemelas is mapped to timm's (stage, index) by walking ``trunk.blocks``
    in order; whether a block is depthwise-separable or inverted-residual is read from timm's module.

    Args:
        state_dict: Keys like ``_blocks.13._depthwise_conv.weight`` (no ``image_encoder.`` prefix).
        trunk: The timm model the keys are for (read for its block structure only).

    Returns:
        A new dict with timm keys. Unknown keys raise.

    Raises:
        CheckpointError: For a key that has no timm counterpart (names the key).
    """
    flat: list[tuple[str, dict[str, str]]] = []
    for s, stage in enumerate(efficientnet_stages(trunk)):
        for i, block in enumerate(stage):
            flat.append((f"blocks.{s}.{i}", _DS if isinstance(block, DepthwiseSeparableConv) else _IR))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        m = _BLOCK_KEY.match(key)
        if m:
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat) or module not in flat[n][1]:
                raise CheckpointError(f"lukemelas key {key!r} has no counterpart in timm {type(trunk).__name__}")
            prefix, names = flat[n]
            out[f"{prefix}.{names[module]}.{param}"] = value
            continue
        module, _, param = key.partition(".")
        if module not in _TOP:
            raise CheckpointError(f"lukemelas key {key!r} has no counterpart in timm {type(trunk).__name__}")
        out[f"{_TOP[module]}.{param}"] = value
    return out


def efficientnet_stages(trunk: nn.Module) -> list[nn.Sequential]:
    """The stages of a timm EfficientNet trunk (``trunk.blocks``), in execution order.

    timm builds ``blocks`` as an ``nn.Sequential`` whose items are the stages, each an ``nn.Sequential``
    of blocks; the casts only tell the type checker so (``nn.Module``'s stubs type an unknown attribute
    as ``Tensor | Module``).
    """
    return [cast(nn.Sequential, stage) for stage in cast(nn.Sequential, trunk.blocks)]


def fold_first_conv(weight: torch.Tensor) -> torch.Tensor:
    """Sum an RGB first-conv kernel over its input channels: exact for replicated grayscale input."""
    return weight.sum(dim=1, keepdim=True)  # (O, 3, k, k) -> (O, 1, k, k)


# --- the tower -------------------------------------------------------------------------------------


class TimmEncoder(Protocol):
    """The part of timm's model interface the tower calls; every timm classification model has it.

    ``timm.create_model`` returns a plain ``nn.Module``, whose stubs type any other attribute as
    ``Tensor | Module``; the tower reaches these methods through ``ImageTower._timm``, typed
    with this protocol.
    """

    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, *,
                              intermediates_only: Literal[True], **kwargs: Any) -> list[torch.Tensor]: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None: ...


class ImageTower(nn.Module):
    """timm trunk + pooling + dropout; honours timm's encoder interface (docs/architecture.md, design rule 4).

    Attributes:
        trunk: The timm model, built with ``num_classes=0, global_pool=""``.
        num_features: Channels of the final feature map (2048 for B5, 1408 for B2).
    """

    def __init__(self, cfg: ImageTowerCfg, pretrained: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        kwargs = dict(cfg.timm_kwargs)
        if cfg.drop_path_rate:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        # "timm" = timm's default tag for model_name; "timm:NAME.TAG" = that tag (hub, needs network).
        spec = cfg.pretrained
        from_timm = spec is not None and (spec == "timm" or spec.startswith("timm:"))
        timm_name = spec.split(":", 1)[1] if spec is not None and spec.startswith("timm:") else cfg.model_name
        try:
            self.trunk = timm.create_model(
                timm_name, pretrained=pretrained and from_timm, num_classes=0, global_pool="",
                in_chans=cfg.in_chans, **kwargs,
            )
        except (RuntimeError, OSError) as err:
            raise ConfigError(
                f"timm cannot build image tower {timm_name!r} (pretrained={cfg.pretrained!r}): {err}. "
                "Without network, build with pretrained=False or point image.pretrained at a local file"
            ) from err
        if pretrained and cfg.pretrained is not None and not from_timm:
            self.load_pretrained_file(cfg.pretrained)
        if cfg.static_same_size is not None:
            freeze_same_padding(self.trunk, cfg.static_same_size)
        if cfg.bn_momentum is not None:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = cfg.bn_momentum
        if cfg.pool not in _POOLS:
            raise ConfigError(f"unknown image pool {cfg.pool!r}; known: {list_image_pools()}")
        self.pool = _POOLS[cfg.pool]()
        self.dropout = nn.Dropout(cfg.dropout)
        self.num_features: int = int(self._timm.num_features)
        # NHWC weights: oneDNN's depthwise and 1x1 convolutions (most of an EfficientNet) run ~2x
        # faster on CPU in channels_last (lite 256x160: inference 42 -> 86 img/s, training step
        # 15 -> 26 img/s on 2 cores), and it is the layout cuDNN prefers under AMP. Convolutions
        # propagate the layout, so NCHW inputs need no conversion; feature maps come out NHWC-strided
        # (use .reshape, not .view, on them). Copies into these parameters (load_state_dict) keep it.
        self.trunk.to(memory_format=torch.channels_last)

    @property
    def _timm(self) -> TimmEncoder:
        """The trunk seen through timm's encoder interface (the same object as :attr:`trunk`)."""
        return cast(TimmEncoder, self.trunk)

    def load_pretrained_file(self, spec: str) -> None:
        """Load a state-dict file (timm or lukemelas layout) into the trunk, strictly.

        The classifier (``classifier.*``) is dropped; the first conv is folded for ``in_chans=1``.
        """
        src = resolve_source(spec)
        if src.path is None or not src.path.is_file():
            raise ConfigError(f"image pretrained source {spec!r} is not a local state-dict file")
        try:
            sd = torch.load(src.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise CheckpointError(f"cannot load image weights {src.path} safely: {err}") from err
        if self.cfg.pretrained_format == "lukemelas":
            sd = lukemelas_to_timm(sd, self.trunk)
        self.load_trunk_state_dict(sd, source=str(src.path))

    def load_trunk_state_dict(self, sd: dict[str, torch.Tensor], source: str) -> None:
        """Strictly load timm-named weights, ignoring a classifier and folding RGB->gray if needed."""
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
        stem = sd.get("conv_stem.weight")
        if stem is not None and self.cfg.in_chans == 1 and stem.shape[1] == 3:
            sd["conv_stem.weight"] = fold_first_conv(stem)
        missing, unexpected = self.trunk.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match image tower {self.cfg.model_name}: "
                f"missing {list(missing)[:10]}{'...' if len(missing) > 10 else ''}, "
                f"unexpected {list(unexpected)[:10]}{'...' if len(unexpected) > 10 else ''}"
            )

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.cfg.in_chans:
            return x
        if x.shape[1] == 1 and self.cfg.in_chans == 3:
            return x.expand(-1, 3, -1, -1)  # (B, 1, H, W) -> (B, 3, H, W), grayscale as RGB (paper)
        if x.shape[1] == 3 and self.cfg.in_chans == 1:
            return x.mean(dim=1, keepdim=True)  # (B, 3, H, W) -> (B, 1, H, W)
        raise ConfigError(f"image tower expects 1 or 3 channels, got input of shape {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map after the conv head, ``(B, C, h, w)`` (48x29 for 1520x912)."""
        return self._timm.forward_features(self._to_input(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None,
                              **kwargs) -> list[torch.Tensor]:
        """Intermediate feature maps (for an FPN), via timm's ``forward_intermediates``."""
        return self._timm.forward_intermediates(
            self._to_input(x), indices=indices, intermediates_only=True, **kwargs)

    def forward_head(self, fmap: torch.Tensor) -> torch.Tensor:
        """Pool and drop out a feature map: ``(B, C, h, w) -> (B, C)``."""
        return self.dropout(self.pool(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self._timm.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int) -> None:
        """Kept for timm's interface; the tower itself never has a classifier."""
        self._timm.reset_classifier(num_classes, global_pool="")
