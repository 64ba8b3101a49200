"""Shared fixtures of the server tests: a tiny random checkpoint, a FActOR mapper and a detector for it,
synthetic DICOMs (with a generated PatientName), and one loaded :class:`Engine` reused by every app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from mammoclip.serve import ServeConfig


@dataclass
class Served:
    ckpt: Path
    mapper: Path
    detector: Path
    manifest: Path  # the DICOM cohort's manifest
    dicoms: list[Path]


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    from mammoclip.attribution import AttributeSpec, FactorMapper, save_mapper
    from mammoclip.data.manifest import load_bundle
    from mammoclip.detect import DetectorCfg, build_detector
    from mammoclip.models import create_model, save_checkpoint
    from mammoclip.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = create_model("mammoclip-tiny").eval()
    ckpt = save_checkpoint(model, root / "ckpt")
    size = tuple(model.preprocess_cfg.image_size)
    with torch.no_grad():
        shape = tuple(model.image_feature_map(torch.zeros(1, 1, *size)).shape[1:])  # (C, h, w)
    specs = [AttributeSpec("mass", "mass", ("mass",)), AttributeSpec("calcification", "calcification",
                                                                     ("calcification",))]
    mapper = FactorMapper(specs, torch.randn(2, model.embed_dim), shape, size, hidden=16)
    save_mapper(mapper, root / "mapper")
    det = build_detector(ckpt, DetectorCfg(image_size=size, fpn_channels=16, score_thresh=0.0, max_detections=3), init="pretrained")
    det.save(root / "detector")
    manifest = generate_cohort(root / "dicoms", 1, seed=5, image_size=(320, 192), fmt="dicom", progress=False)
    bundle = load_bundle(manifest)
    dicoms = [Path(bundle.abspath(p)) for p in bundle.images["path"]]
    return Served(Path(ckpt), root / "mapper", root / "detector", manifest, dicoms)


@pytest.fixture(scope="session")
def engine(served: Served):  # noqa: ANN201
    from mammoclip.serve.engine import Engine

    return Engine(ServeConfig(checkpoint=str(served.ckpt), factor=str(served.mapper), detector=str(served.detector),
                              device="cpu"))


def config(served: Served, **kw: object) -> ServeConfig:
    base = {"checkpoint": str(served.ckpt), "factor": str(served.mapper), "detector": str(served.detector),
            "device": "cpu"}
    return ServeConfig(**{**base, **kw})  # type: ignore[arg-type]
