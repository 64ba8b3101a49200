"""The models the server holds, loaded once, and what it asks of them (run on the one model thread).

Every method here is the library's own code path: :func:`mammoclip.data.model_input.create_model_and_transforms`
for the model and its preprocessing, :func:`mammoclip.evaluate.zeroshot.load_prompts` /
:func:`~mammoclip.evaluate.zeroshot.class_embeddings` and the softmax of
:func:`~mammoclip.evaluate.zeroshot.zero_shot_probs` for zero-shot, :func:`~mammoclip.evaluate.zeroshot.encode_texts`
for texts, :class:`mammoclip.attribution.Explainer` (FActOR) for heatmaps and :class:`mammoclip.detect.MammoDetector`
for boxes. Results are plain Python (lists, floats), ready for JSON.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mammoclip.data.datasets import to_tensor
from mammoclip.data.model_input import ModelPreprocess, create_model_and_transforms
from mammoclip.data.transforms import normalize_images
from mammoclip.errors import ConfigError
from mammoclip.imaging.breast import TransformRecord
from mammoclip.serve.config import ServeConfig

#: Task name of a request's own labels (one prompt per label), beside the registered tasks.
CUSTOM_TASK = "custom"
#: Region boxes returned per heatmap (highest peak first).
MAX_REGIONS: int = 5


def png_base64(image: np.ndarray) -> str:
    """A uint8/uint16 ``(H, W)`` (or ``(H, W, 3)``) array as a base64 PNG."""
    import cv2

    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Stored pixels as 8 bits for display (16-bit PNGs keep their range, scaled)."""
    if pixels.dtype == np.uint8:
        return pixels
    top = float(pixels.max()) or 1.0
    return np.clip(np.rint(pixels.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8)


def boxes_both(boxes: np.ndarray, record: TransformRecord | None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, 4)`` processed-pixel boxes and the same boxes in original pixels (the same, without a record)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes, (record.map_boxes(boxes, inverse=True) if record is not None and len(boxes) else boxes.copy())


def box_dict(processed: np.ndarray, original: np.ndarray) -> dict[str, list[float]]:
    return {"processed": [round(float(v), 2) for v in processed], "original": [round(float(v), 2) for v in original]}


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    """The loaded models. Construct once; call the ``*_sync`` methods on the model thread only."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.device = _device(cfg.device)
        model, prep = create_model_and_transforms(cfg.checkpoint)
        self.model = model.to(self.device).eval()
        self.prep: ModelPreprocess = prep
        self.name = str(getattr(model.cfg, "name", "custom"))
        self._weights: dict[tuple[str, str, tuple[str, ...]], torch.Tensor] = {}
        self.detector: Any = None
        self.det_prep: ModelPreprocess | None = None
        if cfg.detector:
            from mammoclip.detect import load_detector

            self.detector = load_detector(cfg.detector, map_location=self.device).eval()
            det_pre = dataclasses.replace(self.detector.clip_cfg.preprocess, image_size=self.detector.cfg.image_size)
            self.det_prep = ModelPreprocess(det_pre, prep.options)
        self.mapper: Any = None
        if cfg.factor:
            from mammoclip.attribution import Explainer, HeatmapContext, load_mapper

            self.mapper = load_mapper(cfg.factor)[0].to(self.device)
            Explainer(self.model, "factor", HeatmapContext(list(self.mapper.names), mapper=self.mapper))  # checks sizes

    # --- what the server reports ----------------------------------------------------------------
    def info(self, cfg: ServeConfig | None = None) -> dict[str, Any]:
        """What ``/v1/info`` answers; limits and batching are those of ``cfg`` (default: the engine's)."""
        cfg = cfg or self.cfg
        from mammoclip.evaluate.tasks import get_task, list_tasks

        h, w = self.prep.size
        return {
            "model": self.name,
            "checkpoint": Path(self.cfg.checkpoint).name,
            "device": str(self.device),
            "input_size": [h, w],
            "embed_dim": int(self.model.embed_dim),
            "preprocess": {"resize": self.prep.options.resize, "flip_to": self.prep.options.flip_to,
                           "window": self.prep.options.window, "mode": self.prep.options.mode},
            "tasks": {t: get_task(t).class_names for t in list_tasks()},
            "prompt_styles": list(_prompt_styles()),
            "loaded": {"zeroshot": True, "embed": True, "explain": self.mapper is not None,
                       "detect": self.detector is not None},
            "explain": {"attributes": list(self.mapper.names)} if self.mapper is not None else None,
            "detect": ({"classes": list(self.detector.cfg.classes), "input_size": list(self.detector.cfg.image_size)}
                       if self.detector is not None else None),
            "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_pixels": cfg.max_pixels,
                       "timeout_s": cfg.timeout_s, "max_concurrency": cfg.max_concurrency},
            "batching": {"max_size": cfg.batch_max_size, "max_wait_ms": cfg.batch_max_wait_ms},
        }

    # --- image -> model input (worker threads) ---------------------------------------------------
    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        """Stored pixels -> ``(1, 1, H, W)`` normalised float, exactly as ModelPreprocess and the datasets do."""
        return normalize_images(to_tensor(pixels)[None], self.prep.cfg)  # (1, 1, H, W)

    # --- model thread ---------------------------------------------------------------------------
    @torch.no_grad()
    def embed_images_sync(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, D)`` L2-normalised image embeddings on the CPU."""
        return self.model.encode_image(batch.to(self.device), normalize=True).float().cpu()  # (B, D)

    def prompt_table(self, task: str, style: str, labels: tuple[str, ...]) -> tuple[str, dict[str, list[str]]]:
        """``(task name, {class: prompts})`` for a registered task, or the custom ``labels`` (one prompt each).

        Raises:
            ConfigError: unknown task or prompt style (the message lists the known ones).
        """
        if task == CUSTOM_TASK:
            return CUSTOM_TASK, {label: [label] for label in labels}
        from mammoclip.evaluate.tasks import get_task
        from mammoclip.evaluate.zeroshot import load_prompts

        if style not in _prompt_styles():
            raise ConfigError(f"unknown prompt style {style!r}; choose one of {list(_prompt_styles())}")
        spec = get_task(task)
        table = load_prompts(spec, style)
        return spec.name, dict(zip(spec.class_names, table.values(), strict=True))

    @torch.no_grad()
    def class_weights_sync(self, key: tuple[str, str, tuple[str, ...]], table: dict[str, list[str]]) -> torch.Tensor:
        """``(K, D)`` class embeddings, computed once per (task, style, labels)."""
        from mammoclip.evaluate.zeroshot import class_embeddings

        if key not in self._weights:
            self._weights[key] = class_embeddings(self.model, table).float().cpu()  # (K, D)
        return self._weights[key]

    def zero_shot(self, embedding: torch.Tensor, weights: torch.Tensor, use_logit_scale: bool) -> list[float]:
        """Class probabilities of one ``(D,)`` embedding: zero_shot_probs' softmax over cosine similarities."""
        scale = float(self.model.scale().detach()) if use_logit_scale else 1.0
        sims = scale * embedding.float() @ weights.T  # (K,)
        return [float(p) for p in sims.softmax(dim=-1).double()]

    @torch.no_grad()
    def embed_texts_sync(self, texts: list[str]) -> np.ndarray:
        from mammoclip.evaluate.zeroshot import encode_texts

        return encode_texts(self.model, texts).cpu().numpy()  # (N, D)

    def explain_sync(self, tensor: torch.Tensor, attributes: list[str], record: TransformRecord | None,
                     original: bool) -> list[dict[str, Any]]:
        """FActOR heatmaps (base64 PNG, processed grid; original grid when asked) and regions in both spaces."""
        from mammoclip.attribution import Explainer, HeatmapContext, heat_regions, heatmap_to_original

        explainer = Explainer(self.model, "factor", HeatmapContext(attributes, mapper=self.mapper))
        heats, scores = explainer(tensor.to(self.device))  # (1, A, H, W), (1, A)
        out = []
        for a, name in enumerate(attributes):
            heat = heats[0, a]
            regions = heat_regions(heat)[:MAX_REGIONS]
            proc, orig = boxes_both(np.array([[r["xmin"], r["ymin"], r["xmax"], r["ymax"]] for r in regions]), record)
            item: dict[str, Any] = {
                "attribute": name, "score": float(scores[0, a]),
                "heatmap_png": png_base64(np.rint(heat * 255).astype(np.uint8)),
                "regions": [{"peak": round(r["peak"], 4), "area": r["area"], "box": box_dict(p, o)}
                            for r, p, o in zip(regions, proc, orig, strict=True)],
            }
            if original and record is not None:
                item["heatmap_original_png"] = png_base64(np.rint(heatmap_to_original(heat, record) * 255)
                                                          .astype(np.uint8))
            out.append(item)
        return out

    @torch.inference_mode()
    def detect_sync(self, pixels: np.ndarray, record: TransformRecord | None) -> list[dict[str, Any]]:
        """Boxes of the detector on stored pixels at its input size, in processed and original pixels."""
        det = self.detector
        x = to_tensor(pixels)[None].to(self.device)  # (1, 1, H, W) stored integers; the detector normalises
        result = det(x)[0]
        proc, orig = boxes_both(result["boxes"].cpu().numpy(), record)
        return [{"class": det.cfg.classes[int(lab)], "score": round(float(s), 5), "box": box_dict(p, o)}
                for p, o, s, lab in zip(proc, orig, result["scores"].cpu().numpy(), result["labels"].cpu().numpy(),
                                        strict=True)]


def _prompt_styles() -> tuple[str, ...]:
    from mammoclip.evaluate.zeroshot import PROMPT_STYLES

    return PROMPT_STYLES
