"""Tasks: what the one training loop optimises (docs/architecture.md, design rule 5: model + loss -> ``{"loss", ...}``).

The loop (:mod:`mammoclip.train.loop`) knows nothing about CLIP or classifiers. It talks to a
:class:`Task`:

* ``task.model``: the ``nn.Module`` to optimise (the loop may replace it by its DDP wrapper);
* ``task.prepare(batch, device)``: move a collated batch to the device and turn stored uint8/uint16
  pixels into model input there;
* ``task(batch) -> {"loss": scalar, <term>: scalar, ...}``;
* ``task.num_items(batch)``: how many images the batch holds (for images/s);
* ``task.export(model, folder)``: write loadable model files into a checkpoint folder.

Tasks whose loss couples the items of a batch (contrastive) also split the call into
``outputs(batch)`` (the memory-hungry part, per micro-batch) and ``loss_from_outputs(outputs)``
(on the full batch) and set ``supports_gradcache = True`` so the loop can use gradient caching.

New tasks register with :func:`register_task` (e.g. ``ClassifyTask`` in ``train/finetune.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammoclip.data.transforms import normalize_images

#: Task name -> class; filled by :func:`register_task`.
_TASKS: dict[str, type[Task]] = {}

#: Batch keys that hold images (stored pixels until :meth:`Task.prepare`).
IMAGE_KEYS: tuple[str, ...] = ("image", "image_view2")


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator making a task buildable by name through :func:`build_task`."""

    def wrap(cls: type[Task]) -> type[Task]:
        _TASKS[name] = cls
        cls.name = name
        return cls

    return wrap


def list_tasks() -> list[str]:
    """Names accepted by :func:`build_task`."""
    return sorted(_TASKS)


def build_task(name: str, **kwargs: Any) -> Task:
    """Build a registered task, e.g. ``build_task("pretrain", model=model, loss=loss)``."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {list_tasks()}")
    return _TASKS[name](**kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class Task:
    """Base task; subclasses implement :meth:`__call__` (and may override the rest)."""

    name: str = "task"
    #: True when the task splits into ``outputs`` + ``loss_from_outputs`` (gradient caching).
    supports_gradcache: bool = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def prepare(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
        """Move tensors to ``device`` and normalise the image keys there."""
        out: dict[str, Any] = {}
        cfg = getattr(unwrap(self.model), "preprocess_cfg", None)
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(device, non_blocking=True)
                if k in IMAGE_KEYS and not v.is_floating_point():
                    v = normalize_images(v, cfg) if cfg is not None else v.float()
            out[k] = v
        return out

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def num_items(self, batch: Mapping[str, Any]) -> int:
        """Images in the batch (the throughput unit)."""
        n = 0
        for k in IMAGE_KEYS:
            if isinstance(batch.get(k), torch.Tensor):
                n += int(batch[k].shape[0])
        return n

    def export(self, model: nn.Module, folder: Path) -> None:
        """Write the model's loadable files into ``folder`` (default: ``model.pt`` state dict)."""
        torch.save(model.state_dict(), folder / "model.pt")


@register_task("pretrain")
class PretrainTask(Task):
    """Contrastive pre-training: ``loss(**model(batch))`` restricted to ``loss.input_keys``.

    Args:
        model: A module whose ``forward(batch)`` returns the embedding dict (MammoCLIP contract).
        loss: A loss from :mod:`mammoclip.losses` (rank/world size already set).
    """

    supports_gradcache = True

    def __init__(self, model: nn.Module, loss: nn.Module) -> None:
        super().__init__(model)
        self.loss = loss

    def outputs(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """The model's forward dict on ``batch`` (embeddings + logit scale)."""
        return self.model(batch)

    def loss_from_outputs(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss dict from the forward dict; embeddings are cast to float32 for the softmax."""
        args = {k: outputs[k].float() for k in self.loss.input_keys}
        return self.loss(**args)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return self.loss_from_outputs(self.outputs(batch))

    def export(self, model: nn.Module, folder: Path) -> None:
        """A MammoCLIP model is saved with ``mammoclip.models.save_checkpoint`` (safetensors +
        config.json, loadable with ``load_checkpoint``); any other module as a state dict."""
        try:
            from mammoclip.models import save_checkpoint
        except ImportError:
            save_checkpoint = None
        if save_checkpoint is not None and hasattr(model, "preprocess_cfg"):
            save_checkpoint(model, folder)
        else:
            super().export(model, folder)
