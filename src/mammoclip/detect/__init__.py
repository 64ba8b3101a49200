"""mammoclip.detect: lesion localization with a RetinaNet on a Mammo-CLIP image tower (docs/detection.md).

>>> from mammoclip.detect import DetectorCfg, DetectTrainCfg, train_detector, evaluate_detector, predict
"""

from __future__ import annotations

from mammoclip.detect.config import (
    DetectorCfg,
    DetectTrainCfg,
    list_detect_classes,
    load_detect_config,
    register_detect_class,
)
from mammoclip.detect.model import MammoDetector, build_detector, load_detector, load_image_tower
from mammoclip.detect.run import DetectRun, evaluate_detector, predict, train_detector

__all__ = [
    "DetectRun",
    "DetectTrainCfg",
    "DetectorCfg",
    "MammoDetector",
    "build_detector",
    "evaluate_detector",
    "list_detect_classes",
    "load_detect_config",
    "load_detector",
    "load_image_tower",
    "predict",
    "register_detect_class",
    "train_detector",
]
