"""Damaged checkpoint folders: one ``CheckpointError`` line naming the file; summarised key mismatches;
tokenizers read from the folder only, never from a hub."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
import transformers.utils.hub as hf_utils_hub
from safetensors.torch import save_file

from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models import create_model, get_tokenizer, load_checkpoint, save_checkpoint
from mammoclip.models.checkpoint import mismatch_summary


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create_model("mammoclip-tiny", pretrained=False), tmp_path_factory.mktemp("c") / "ckpt")


@pytest.fixture()
def ckpt(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ckpt"))


def _one_line(err: pytest.ExceptionInfo[CheckpointError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def _edit_config(ckpt: Path, **changes: Any) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del meta[key]
        else:
            meta[key] = value
    (ckpt / "config.json").write_text(json.dumps(meta))


_DELETE = object()


def test_pristine_copy_loads(ckpt: Path) -> None:
    assert load_checkpoint(ckpt).cfg.name == "mammoclip-tiny"


def test_truncated_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    assert str(weights) in _one_line(err) and "damaged or truncated" in str(err.value)


def test_header_only_weights(ckpt: Path) -> None:
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5])  # cut inside the 8-byte header length
    with pytest.raises(CheckpointError, match="damaged or truncated") as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_empty_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model\.safetensors is empty \(0 bytes\)") as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_missing_weights(ckpt: Path) -> None:
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing") as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_config_not_json(ckpt: Path) -> None:
    (ckpt / "config.json").write_text('{"format": "mammoclip", "model": ')
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON") as err:
        load_checkpoint(ckpt)
    _one_line(err)
    (ckpt / "config.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match=r"config\.json is not valid JSON"):
        load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="a JSON list, not an object"):
        load_checkpoint(ckpt)


def test_config_without_model(ckpt: Path) -> None:
    _edit_config(ckpt, model=_DELETE)
    with pytest.raises(CheckpointError, match=r'config\.json has no "model" entry') as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_config_model_null(ckpt: Path) -> None:
    _edit_config(ckpt, model=None)
    with pytest.raises(CheckpointError, match=r'config\.json has "model": null') as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_config_model_invalid(ckpt: Path) -> None:
    meta = json.loads((ckpt / "config.json").read_text())
    meta["model"]["colour"] = "blue"
    (ckpt / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"config\.json: unknown model config keys: \['colour'\]"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("version", ["1", None, True, 0, -3, 1.5])
def test_bad_format_version(ckpt: Path, version: Any) -> None:
    _edit_config(ckpt, format_version=version)
    with pytest.raises(CheckpointError, match=r"config\.json has an invalid format_version") as err:
        load_checkpoint(ckpt)
    _one_line(err)


def test_missing_format_version(ckpt: Path) -> None:
    _edit_config(ckpt, format_version=_DELETE)
    with pytest.raises(CheckpointError, match="invalid format_version None"):
        load_checkpoint(ckpt)


def test_future_format_version(ckpt: Path) -> None:
    _edit_config(ckpt, format_version=7)
    with pytest.raises(CheckpointError, match=r"newer mammoclip \(format_version 7; this version reads up to 1\)"):
        load_checkpoint(ckpt)


def test_folder_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a mammoclip checkpoint: no config.json"):
        load_checkpoint(tmp_path)


# --- architecture mismatch --------------------------------------------------------------------------


def test_architecture_mismatch_is_summarised(ckpt: Path, tmp_path: Path) -> None:
    """The lite image tower's weights against the tiny one: hundreds of keys, one short line."""
    lite = create_model("mammoclip-lite", pretrained=False)
    state = {k: v.contiguous() for k, v in lite.state_dict().items()}
    save_file(state, str(ckpt / "model.safetensors"))
    tiny = create_model("mammoclip-tiny", pretrained=False)
    own = tiny.state_dict()
    n_missing, n_unexpected = len(set(own) - set(state)), len(set(state) - set(own))
    n_shape = sum(1 for k in set(own) & set(state) if own[k].shape != state[k].shape)
    assert n_missing > 5 and n_unexpected > 100 and n_shape > 0  # a real whole-model mismatch
    with pytest.raises(CheckpointError) as err:
        create_model("mammoclip-tiny", pretrained=str(ckpt), embed_dim=32)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 1500, len(msg)
    assert f"{n_missing} missing (" in msg and f"{n_unexpected} unexpected (" in msg
    assert f"{n_shape} shape-mismatched (" in msg
    assert f"... (+{n_unexpected - 5})" in msg
    first_unexpected = sorted(set(state) - set(own))[:5]
    assert all(k in msg for k in first_unexpected)
    assert "made with config 'mammoclip-tiny'" in msg and "embed_dim: 64 vs 32" in msg


def test_edited_config_mismatch_names_keys_and_cause(ckpt: Path) -> None:
    _edit_config(ckpt, model={**json.loads((ckpt / "config.json").read_text())["model"], "embed_dim": 32})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    msg = _one_line(err)
    assert "image_projection.weight (64, 256) vs model (32, 256)" in msg and "4 shape-mismatched" in msg
    assert "config.json and model.safetensors disagree" in msg


def test_mismatch_summary_counts() -> None:
    own = {f"k{i}": torch.zeros(2) for i in range(8)}
    state = {f"k{i}": torch.zeros(2) for i in range(3, 20)}
    state["k3"] = torch.zeros(3)
    summary = mismatch_summary(own, state)
    assert summary.startswith("3 missing (k0, k1, k2); 12 unexpected (k10, k11, k12, k13, k14, ... (+7))")
    assert summary.endswith("1 shape-mismatched (k3 (3,) vs model (2,))")
    assert mismatch_summary(own, dict(own)) == ""


# --- tokenizer: the folder only ---------------------------------------------------------------------


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Online mode, but every hub download and every socket connect is recorded and refused."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls: list[str] = []

    def refuse(name: str) -> Any:
        def fn(*args: Any, **kwargs: Any) -> Any:
            calls.append(f"{name}{args[:2]}")
            raise AssertionError(f"network call {name}")
        return fn

    for mod in (huggingface_hub, hf_utils_hub):
        for name in ("hf_hub_download", "snapshot_download"):
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, refuse(name))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    return calls


def test_missing_tokenizer_folder_never_reaches_the_hub(ckpt: Path, no_network: list[str]) -> None:
    """The reported case: ``saved: "tokenizer"`` but no folder, and a hub source: no hub repo "tokenizer"."""
    shutil.rmtree(ckpt / "tokenizer")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["tokenizer"]["source"] = "emilyalsentzer/Bio_ClinicalBERT"
    (ckpt / "config.json").write_text(json.dumps(meta))
    model = load_checkpoint(ckpt)  # the weights load: image-only use needs no tokenizer
    assert model.cfg.text.tokenizer == str((ckpt / "tokenizer").resolve())
    with pytest.raises(ConfigError, match=r"tokenizer' does not exist"):
        get_tokenizer(model)
    assert no_network == []


def test_saved_tokenizer_loads_offline_in_online_mode(ckpt: Path, no_network: list[str]) -> None:
    tok = get_tokenizer(load_checkpoint(ckpt))
    assert tok(["no mass"])["input_ids"].shape[0] == 1 and no_network == []


def test_hub_tokenizer_only_when_allowed(ckpt: Path, no_network: list[str]) -> None:
    shutil.rmtree(ckpt / "tokenizer")
    meta = json.loads((ckpt / "config.json").read_text())
    meta["tokenizer"] = {"source": "someorg/some-tokenizer", "saved": None}
    (ckpt / "config.json").write_text(json.dumps(meta))
    assert load_checkpoint(ckpt).cfg.text.tokenizer == str((ckpt / "tokenizer").resolve())
    allowed = load_checkpoint(ckpt, allow_download=True)
    assert allowed.cfg.text.tokenizer == "someorg/some-tokenizer"
    assert no_network == []


def test_package_tokenizer_is_the_fallback(ckpt: Path, no_network: list[str]) -> None:
    """A local/package source recorded at save time is used when ``tokenizer/`` is gone (no network)."""
    shutil.rmtree(ckpt / "tokenizer")
    meta = json.loads((ckpt / "config.json").read_text())
    source = meta["tokenizer"]["source"]
    assert source.startswith("package:")
    model = load_checkpoint(ckpt)
    assert model.cfg.text.tokenizer == source
    assert get_tokenizer(model)(["mass"])["input_ids"].shape[0] == 1 and no_network == []


def test_save_does_not_download_a_hub_tokenizer(tmp_path: Path, no_network: list[str]) -> None:
    model = create_model("mammoclip-tiny", pretrained=False, text={"tokenizer": "someorg/some-tokenizer"})
    out = save_checkpoint(model, tmp_path / "c")
    meta = json.loads((out / "config.json").read_text())
    assert meta["tokenizer"]["saved"] is None and "downloads are not allowed" in meta["tokenizer"]["error"]
    assert not (out / "tokenizer").exists() and no_network == []
