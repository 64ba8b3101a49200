"""The restricted unpickler: tensors and plain values come out of foreign ``torch.save`` files, every other
global becomes an inert placeholder, hostile payloads never run (every pickle protocol, zip and legacy)."""

from __future__ import annotations

import argparse
import builtins
import collections
import functools
import io
import json
import operator
import os
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mammoclip.errors import CheckpointError
from mammoclip.models.unpickle import Placeholder, RestrictedUnpickler, restricted_load


class FakeDictConfig:
    """Stands for an OmegaConf container: a class the unpickler cannot (and must not) import."""

    def __init__(self, content: dict[str, Any]) -> None:
        self._content = content
        self._metadata = {"ref_type": "Any", "flags": {"readonly": True}}


class UnknownCallback:
    """A Lightning-callback-like object of the training code."""

    def __init__(self) -> None:
        self.best_score = np.float32(0.75)
        self.monitor = "val_loss"


class _Payload:
    """``__reduce__`` returns ``(func, args)``: unpickling would call ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, Any]:
    """Every way we know to make a pickle create ``marker`` (the file proves the payload ran)."""
    m = str(marker)
    return {
        "os.system": _Payload(os.system, f"touch {m}"),
        "builtins.eval": _Payload(builtins.eval, f"open({m!r}, 'w')"),
        "builtins.exec": _Payload(builtins.exec, f"open({m!r}, 'w')"),
        "builtins.open": _Payload(builtins.open, m, "w"),
        "subprocess.call": _Payload(subprocess.call, ["touch", m]),
        "subprocess.Popen": _Payload(subprocess.Popen, ["touch", m]),
        "functools.partial": _Payload(functools.partial(builtins.open, m, "w")),
        "operator.methodcaller": _Payload(operator.methodcaller("write_text", "x"), marker),
        "pathlib.touch": _Payload(Path.touch, marker),
    }


#: Hand-written protocol-0 pickles: the classic getattr/__import__ chains that no pickler writes itself.
def _raw_payloads(marker: Path) -> list[bytes]:
    m = str(marker).encode()
    return [
        b"cos\nsystem\n(S'touch " + m + b"'\ntR.",
        b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(S'os'\ntRS'system'\ntR(S'touch " + m + b"'\ntR.",
        b"coperator\nattrgetter\n(S'system'\ntR(cbuiltins\n__import__\n(S'os'\ntRtR(S'touch " + m + b"'\ntR.",
        b"c__builtin__\neval\n(S'open(\"" + m + b"\", \"w\")'\ntR.",
    ]


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_mean": torch.randn(4),
            "view": torch.arange(12.0).reshape(3, 4)[:, 1:3], "half": torch.randn(5, 2).half().t(),
            "ids": torch.arange(7), "flag": torch.tensor([True, False])}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_hostile_payloads_stay_inert_and_tensors_load(tmp_path: Path, protocol: int, zipped: bool) -> None:
    marker = tmp_path / "pwned"
    weights = _weights()
    path = tmp_path / "hostile.tar"
    torch.save({"model": weights, "config": _payloads(marker), "epoch": 3}, path,
               pickle_protocol=protocol, _use_new_zipfile_serialization=zipped)
    loaded = restricted_load(path)
    assert not marker.exists()
    assert loaded.format == ("zip" if zipped else "legacy")
    for key, value in weights.items():
        torch.testing.assert_close(loaded.obj["model"][key], value)
        assert loaded.obj["model"][key].stride() == value.stride()
    config = loaded.obj["config"]
    assert all(isinstance(v, Placeholder) for v in config.values())
    assert config["os.system"].target in ("posix.system", "os.system")
    assert config["subprocess.call"].target == "subprocess.call"
    assert config["os.system"].args == (f"touch {marker}",)
    assert loaded.obj["epoch"] == 3
    assert "subprocess.call" in loaded.placeholders and "inert placeholders" in loaded.note()
    # the placeholders themselves never run anything, even when called
    config["builtins.open"](str(marker), "w")
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_hostile_plain_pickles_stay_inert(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    blobs = [pickle.dumps(p, protocol=protocol) for p in _payloads(marker).values()]
    for blob in blobs + _raw_payloads(marker):
        obj = RestrictedUnpickler(io.BytesIO(blob)).load()
        assert isinstance(obj, Placeholder), obj
        assert not marker.exists()


def test_clean_file_matches_weights_only_torch_load(tmp_path: Path) -> None:
    path = tmp_path / "clean.pt"
    torch.save({"state_dict": _weights(), "param": torch.nn.Parameter(torch.ones(2, 2)),
                "od": collections.OrderedDict(a=torch.zeros(3)), "meta": {"epoch": 2, "lr": [1e-4, 1e-5]}}, path)
    ours, ref = restricted_load(path), torch.load(path, weights_only=True)
    assert ours.placeholders == {}
    assert ours.obj["meta"] == ref["meta"] and isinstance(ours.obj["od"], collections.OrderedDict)
    for key, value in ref["state_dict"].items():
        got = ours.obj["state_dict"][key]
        assert got.dtype == value.dtype and torch.equal(got, value) and got.stride() == value.stride()
    assert isinstance(ours.obj["param"], torch.nn.Parameter) and torch.equal(ours.obj["param"], ref["param"])
    torch.testing.assert_close(ours.obj["od"]["a"], ref["od"]["a"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's own loader, used as the baseline
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_research_metadata(tmp_path: Path, protocol: int) -> None:
    """numpy scalars/arrays load as numpy values; OmegaConf-like and unknown classes are placeholders."""
    path = tmp_path / "research.ckpt"
    meta = {"best": np.float64(0.8125), "step": np.int64(1234), "mask": np.arange(6, dtype=np.int16).reshape(2, 3),
            "hparams": FakeDictConfig({"lr": 3e-4, "img_size": [1520, 912]}), "callbacks": [UnknownCallback()],
            "args": argparse.Namespace(seed=7), "tags": {"a", "b"}, "raw": b"\x00\xff"}
    torch.save({"model": {"w": torch.ones(3)}, **meta}, path, pickle_protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):  # what the converter used before: refused outright
        torch.load(path, weights_only=True)
    out = restricted_load(path).obj
    assert type(out["best"]) is np.float64 and out["best"] == 0.8125
    assert type(out["step"]) is np.int64 and out["step"] == 1234
    assert out["mask"].dtype == np.int16 and out["mask"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["tags"] == {"a", "b"} and out["raw"] == b"\x00\xff"
    hp = out["hparams"]
    assert isinstance(hp, Placeholder) and hp.target == f"{__name__}.FakeDictConfig"
    assert hp.state["_content"] == {"lr": 3e-4, "img_size": [1520, 912]}
    callback = out["callbacks"][0]
    assert callback.target.endswith("UnknownCallback") and callback.state["best_score"] == np.float32(0.75)
    assert out["args"].target == "argparse.Namespace" and out["args"].state == {"seed": 7}
    torch.testing.assert_close(out["model"]["w"], torch.ones(3))


def test_object_array_holds_only_what_the_unpickler_made(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "obj.pt"
    arr = np.array([1, _Payload(os.system, f"touch {marker}")], dtype=object)
    torch.save({"a": arr, "w": torch.zeros(1)}, path)
    out = restricted_load(path).obj
    assert out["a"][0] == 1 and isinstance(out["a"][1], Placeholder) and not marker.exists()


def test_damaged_files_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    torch.save({"w": torch.randn(100)}, path)
    data = path.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint at all" * 10,
             "plain pickle": pickle.dumps({"a": 1})}
    for name, blob in cases.items():
        path.write_bytes(blob)
        with pytest.raises(CheckpointError) as err:
            restricted_load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value), name
    with pytest.raises(CheckpointError, match="does not exist"):
        restricted_load(tmp_path / "nope.tar")


def test_tensor_reading_past_its_storage_is_refused(tmp_path: Path) -> None:
    """A storage shorter than the tensor says (a crafted or cut file) is an error, not an out-of-bounds read."""
    path = tmp_path / "short.pt"
    torch.save({"w": torch.randn(10)}, path, _use_new_zipfile_serialization=False)
    data = bytearray(path.read_bytes())
    # the legacy storage is the last 40 bytes, preceded by its int64 element count: claim 10, hold 10,
    # but make the pickle's tensor size larger by rewriting the size tuple (10,) -> (99,)
    idx = data.rfind(b"K\n\x85")  # BININT1 10, TUPLE1
    assert idx > 0
    data[idx + 1] = 99
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="reads past its storage"):
        restricted_load(path)


def test_converter_note_lists_what_was_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from efficientnet_pytorch import EfficientNet
    from transformers import BertConfig, BertModel

    from mammoclip.cli.main import main
    from tests.models.test_checkpoint import _official_dict

    torch.manual_seed(0)
    text = BertModel(BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=64))
    d = _official_dict(EfficientNet.from_name("efficientnet-b2"), text, torch.nn.Linear(1408, 512),
                       torch.nn.Linear(64, 512), torch.tensor(2.7))
    d.update(epoch=np.int64(7), train_loss=np.float64(1.25), hparams=FakeDictConfig({"lr": 1.0}),
             callbacks=[UnknownCallback(), UnknownCallback()])
    tar = tmp_path / "b2-model-best-epoch-7.tar"
    torch.save(d, tar)
    out = tmp_path / "out"
    assert main(["convert-official", str(tar), str(out)]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if line.startswith("note: ignored")]
    assert len(notes) == 1 and "FakeDictConfig" in notes[0] and "UnknownCallback" in notes[0]
    official = json.loads((out / "config.json").read_text())["extra"]["official"]
    assert official["epoch"] == 7 and official["train_loss"] == 1.25
    assert official["ignored"] == {f"{__name__}.FakeDictConfig": 1, f"{__name__}.UnknownCallback": 2}
