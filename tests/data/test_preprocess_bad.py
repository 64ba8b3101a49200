"""End-to-end batch runs over broken inputs, missing decoders, progress, orientation and the CLI.

The single-file error cases live in ``test_dicom.py``; here they are mixed into one batch to show
that each bad file costs exactly one ``failures.csv`` row (naming the file and the problem) while
the good images of the same batch are still written, in process and in a worker pool.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoclip.cli.main import main
from mammoclip.constants import PAPER_BORDER_CROP
from mammoclip.data.manifest import Bundle, load_bundle
from mammoclip.data.preprocess import PreprocessOptions, preprocess
from mammoclip.errors import DataError
from mammoclip.imaging.breast import paper_preprocess
from mammoclip.imaging.dicom import read_dicom
from mammoclip.imaging.imageio import read_image
from tests.data.test_preprocess import SIZE, make_source
from tests.imaging.dicom_factory import phantom, write_dicom

GOOD = 3

#: image_id of each bad input -> a substring its failure reason must contain.
BAD_REASONS: dict[str, str] = {
    "truncated": "truncated",
    "junk": "not a DICOM",
    "nopixels": "no pixel data",
    "ct": "modality 'CT'",
    "mpeg": "no decoder for transfer syntax 'MPEG2",
    "gone": "not found",
}
#: image_id of each bad input -> its failure code.
BAD_CODES: dict[str, str] = {"truncated": "DECODE_ERROR", "junk": "NOT_DICOM", "nopixels": "NO_PIXELS",
                             "ct": "NOT_MG", "mpeg": "UNSUPPORTED_SYNTAX", "gone": "MISSING_FILE"}


def _add_rows(manifest: Path, extra: list[tuple[str, str]]) -> Path:
    """Append ``(image_id, relative path)`` rows (copies of the first row otherwise) to a manifest."""
    bundle = load_bundle(manifest)
    first = bundle.images.iloc[0].to_dict()
    rows = [{**first, "image_id": iid, "path": rel} for iid, rel in extra]
    images = pd.concat([bundle.images, pd.DataFrame(rows)], ignore_index=True)
    return Bundle(images, bundle.boxes, bundle.reports, bundle.root).save(bundle.root)


def make_bad_source(root: Path) -> Path:
    """``GOOD`` phantoms plus one file of each broken kind in :data:`BAD_REASONS`."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    manifest = make_source(root, n=GOOD)
    dicom = root / "dicom"
    img = phantom((400, 256), seed=7)

    truncated = write_dicom(dicom / "truncated.dcm", img, bits=12)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut in half

    (dicom / "junk.dcm").write_bytes(b"this is a text file, not a DICOM\n" * 20)
    write_dicom(dicom / "nopixels.dcm", img, bits=12, pixel_data=False)
    write_dicom(dicom / "ct.dcm", img, bits=12, modality="CT")

    mpeg = write_dicom(dicom / "mpeg.dcm", img, bits=12)
    ds = pydicom.dcmread(mpeg)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])  # pydicom has no MPEG-2 decoder
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.save_as(mpeg)

    extra = [(iid, f"dicom/{iid}.dcm") for iid in BAD_REASONS if iid != "gone"]
    extra.append(("gone", "dicom/missing.dcm"))
    return _add_rows(manifest, extra)


def _check_bad_batch(src: Path, out: Path, workers: int) -> list[tuple[str, str]]:
    result = preprocess(src, out, PreprocessOptions(size=SIZE), workers=workers)
    assert (result.processed, result.skipped, result.failed) == (GOOD, 0, len(BAD_REASONS))

    manifest = load_bundle(out, check_files=True).images
    assert sorted(manifest["image_id"]) == [f"im{i}" for i in range(GOOD)]
    for rel in manifest["path"]:
        img = read_image(out / rel)
        assert img.shape == SIZE and img.dtype == np.uint8 and img.max() > 0

    failures = pd.read_csv(out / "failures.csv")
    assert list(failures.columns) == ["file", "code", "reason"] and len(failures) == len(BAD_REASONS)
    by_name = {Path(f).stem: (f, c, r) for f, c, r in zip(failures["file"], failures["code"], failures["reason"],
                                                          strict=True)}
    by_name["gone"] = by_name.pop("missing")
    assert set(by_name) == set(BAD_REASONS)
    assert result.by_code == {code: 1 for code in BAD_CODES.values()}
    for iid, needle in BAD_REASONS.items():
        file, code, reason = by_name[iid]
        assert code == BAD_CODES[iid], (iid, code, reason)
        assert "\n" not in reason
        assert Path(file).is_absolute() and Path(file).parent == src.parent / "dicom"
        assert file in reason, f"{iid}: the reason should name the file: {reason}"
        assert needle in reason, f"{iid}: expected {needle!r} in {reason!r}"

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["processed"], summary["skipped"], summary["failed"]) == (GOOD, 0, len(BAD_REASONS))
    assert summary["failures_by_code"] == result.by_code
    assert summary["workers"] == workers
    return sorted(zip(failures["file"], failures["reason"], strict=True))


def test_mixed_bad_batch_in_process_and_in_pool(tmp_path: Path) -> None:
    src = make_bad_source(tmp_path / "src")
    in_process = _check_bad_batch(src, tmp_path / "one", workers=1)
    pooled = _check_bad_batch(src, tmp_path / "two", workers=2)
    assert pooled == in_process  # same rows, same reasons: no worker crashed or lost a result


@pytest.fixture
def no_jpeg2000_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every JPEG 2000 decoder plugin look uninstalled, as on a machine without pylibjpeg/gdcm.

    pydicom keeps one ``Decoder`` per transfer syntax with ``_available`` (label -> decode function)
    and ``_unavailable`` (label -> missing packages); moving every plugin to ``_unavailable`` with
    the packages the plugin module itself declares is the state pydicom builds when they are absent.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000, JPEG2000Lossless

    for uid in (JPEG2000Lossless, JPEG2000):
        decoder = get_decoder(uid)
        assert decoder.is_available  # the test means something only where a plugin is installed
        missing = {label: tuple(sys.modules[func.__module__].DECODER_DEPENDENCIES[uid])
                   for label, func in decoder._available.items()}
        monkeypatch.setattr(decoder, "_available", {})
        monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable, **missing})
        assert not decoder.is_available


def _assert_missing_decoder_reason(reason: str, path: Path) -> None:
    assert str(path) in reason
    assert "JPEG 2000" in reason
    assert "no decoder for transfer syntax" in reason
    assert "install" in reason and "pylibjpeg" in reason and "gdcm" in reason
    assert "\n" not in reason  # one line: readable in failures.csv and in the CLI's "failed:" list


def test_jpeg2000_without_decoder_plugins(tmp_path: Path, no_jpeg2000_decoder: None) -> None:
    manifest = make_source(tmp_path / "src", n=2)
    j2k = write_dicom(tmp_path / "src" / "dicom" / "j2k.dcm", phantom((400, 256), seed=3), bits=12, syntax="j2k")
    with pytest.raises(DataError) as err:
        read_dicom(j2k)
    _assert_missing_decoder_reason(str(err.value), j2k)

    src = _add_rows(manifest, [("j2k", "dicom/j2k.dcm")])
    # isolate=False: the decoders are removed in this process only, by the fixture
    result = preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=1, isolate=False)
    assert (result.processed, result.failed) == (2, 1)
    assert result.codes == ["UNSUPPORTED_SYNTAX"]
    failures = pd.read_csv(tmp_path / "out" / "failures.csv")
    assert list(failures["file"]) == [str(j2k)]
    _assert_missing_decoder_reason(failures["reason"][0], j2k)


def test_progress_bar_shows_rate_and_total(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src", n=3)
    preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE), workers=1, progress=True)
    final = capsys.readouterr().err.rsplit("\r", 1)[-1]  # tqdm redraws with \r; the last draw is the end state
    # tqdm pads a rate under 10 to five characters (", 7.98img/s" gets two spaces on a loaded machine)
    match = re.search(r"preprocess: 100%.* 3/3 \[.*, +(\d+\.\d+)img/s\]", final)
    assert match, final
    assert float(match.group(1)) > 0  # a measured rate, not tqdm's "?img/s" placeholder

    preprocess(src, tmp_path / "quiet", PreprocessOptions(size=SIZE), workers=1, progress=False)
    assert capsys.readouterr().err == ""


def _bright_side(img: np.ndarray) -> str:
    """Which half of the image holds more signal: the chest wall side of a mammogram."""
    cols = img.astype(np.float64).mean(axis=0)
    half = len(cols) // 2
    left, right = cols[:half].mean(), cols[-half:].mean()
    assert abs(left - right) > 0.2 * max(left, right), (left, right)  # a clear difference, not noise
    return "left" if left > right else "right"


@pytest.mark.parametrize("flip_to", ["none", "left"])
def test_flip_to(tmp_path: Path, flip_to: str) -> None:
    src = make_source(tmp_path / "src", n=4)  # im0, im2 face left; im1, im3 face right
    preprocess(src, tmp_path / "out", PreprocessOptions(size=SIZE, flip_to=flip_to), workers=1)
    images = load_bundle(tmp_path / "out").images
    assert len(images) == 4
    for row in images.itertuples():
        facing = "left" if row.laterality == "L" else "right"
        mirrored = flip_to == "left" and facing == "right"
        assert bool(row.flipped) is mirrored and int(row.flipped) == int(mirrored)
        expected = "left" if flip_to == "left" else facing
        assert _bright_side(read_image(tmp_path / "out" / row.path)) == expected, row.image_id


def test_cli_paper_mode_matches_paper_preprocess(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", n=2)
    out = tmp_path / "o"
    assert main(["preprocess", str(src), "--out", str(out), "--size", "64x48", "--mode", "paper"]) == 0
    bundle = load_bundle(out, check_files=True)
    source = load_bundle(src)
    assert len(bundle.images) == 2
    for row in bundle.images.itertuples():
        got = read_image(out / row.path)
        assert got.shape == (64, 48) and got.dtype == np.uint8
        dcm = source.abspath(source.images.set_index("image_id").loc[row.image_id, "path"])
        values, meta = read_dicom(dcm, voi=False, invert=False)
        expected, record = paper_preprocess(values, meta.inverted, (64, 48), border=PAPER_BORDER_CROP)
        np.testing.assert_array_equal(got, expected)
        assert not row.flipped and (row.crop_x0, row.crop_x1) == (record.crop_x0, record.crop_x1)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["options"]["mode"] == "paper" and summary["options"]["size"] == [64, 48]


def test_cli_shards_with_merge_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src", n=4)
    out = tmp_path / "o"
    size = ["--size", "64x48", "--workers", "1"]
    assert main(["preprocess", str(src), "--out", str(out), *size, "--shard", "0/2"]) == 0
    assert not (out / "manifest.csv").exists()  # a shard alone writes only its part
    assert main(["preprocess", str(src), "--out", str(out), *size, "--shard", "1/2", "--merge"]) == 0
    assert "merged ->" in capsys.readouterr().out
    merged = load_bundle(out, check_files=True)
    assert sorted(merged.images["image_id"]) == [f"im{i}" for i in range(4)]
    assert sorted(merged.boxes["image_id"]) == [f"im{i}" for i in range(4)]
    for rel in merged.images["path"]:
        assert read_image(out / rel).shape == (64, 48)
