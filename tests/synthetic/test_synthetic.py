"""The synthetic cohort: layout, determinism, consistency of images/masks/boxes/reports/labels, DICOM, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammoclip.data.manifest import BOX_SPACES, load_bundle
from mammoclip.errors import ConfigError, DataError, MammoclipError
from mammoclip.imaging.imageio import read_image
from mammoclip.synthetic import FINDING_KINDS, GENERATOR_VERSION, generate_cohort
from mammoclip.synthetic.acquisition import to_display
from tests.conftest import small_cohort

ALL_KINDS_HALF = {k: 0.5 for k in FINDING_KINDS}
SIDE_WORD = {"R": "right", "L": "left"}


@pytest.fixture(scope="module")
def rich_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 patients, every finding kind common, densities balanced (256x160)."""
    return small_cohort(tmp_path_factory.mktemp("rich"), n_patients=24, seed=5, prevalence=ALL_KINDS_HALF,
                        density_p=(0.25, 0.25, 0.25, 0.25))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _breast(img: np.ndarray) -> np.ndarray:
    """Breast (tissue) pixels of a processed image: above the air level."""
    img = img.astype(np.float64)
    bg = np.percentile(img, 1)
    return img > bg + 0.06 * (img.max() - bg)


# --- layout -------------------------------------------------------------------------------------

def test_shared_fixture_is_a_valid_cohort(synthetic_cohort: Path) -> None:
    bundle = load_bundle(synthetic_cohort, check_files=True)
    images = bundle.images
    assert len(images) == 6 * 4
    assert (images.groupby("patient_id").size() == 4).all()
    assert set(zip(images["laterality"], images["view"])) == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")}
    assert (images["source"] == "synthetic").all()
    assert set(images["density"]) <= set("ABCD")
    assert images["birads"].between(0, 6).all()
    assert set(bundle.reports["report_id"]) == set(images["report_id"])
    assert (images.groupby("patient_id")["split"].nunique() == 1).all()
    boxes = bundle.boxes
    assert len(boxes) > 0 and set(boxes["label"]) <= set(FINDING_KINDS)
    assert set(boxes["space"]) == {"processed"} and set(boxes["space"]) <= set(BOX_SPACES)
    assert all(bundle.abspath(p).exists() for p in boxes["mask_path"])
    img = read_image(bundle.abspath(images["path"].iloc[0]))
    assert img.shape == (256, 160) and img.dtype == np.uint8
    info = json.loads((synthetic_cohort.parent / "cohort.json").read_text())
    assert info["version"] == GENERATOR_VERSION and info["settings"]["seed"] == 0 and info["complete"]
    for col in ("history", "findings", "impression", "text"):
        assert bundle.reports[col].str.len().min() > 0


def test_splits_cover_train_val_test_by_patient(tmp_path: Path) -> None:
    bundle = load_bundle(small_cohort(tmp_path, n_patients=30, size=(96, 64)))
    per_patient = bundle.images.groupby("patient_id")["split"].agg(["nunique", "first"])
    assert (per_patient["nunique"] == 1).all()
    assert set(per_patient["first"]) == {"train", "val", "test"}


# --- determinism ----------------------------------------------------------------------------------

def test_same_seed_gives_identical_bytes_and_workers_do_not_matter(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", 3, seed=7, image_size=(128, 80), progress=False)
    b = generate_cohort(tmp_path / "b", 3, seed=7, image_size=(128, 80), workers=2, progress=False)
    c = generate_cohort(tmp_path / "c", 3, seed=8, image_size=(128, 80), progress=False)
    fa, fb, fc = _files(a.parent), _files(b.parent), _files(c.parent)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    images = [k for k in fa if k.startswith("images/")]
    assert sum(fa[k] != fc.get(k) for k in images) == len(images)
    # The first patients of a larger cohort are those of a smaller one with the same seed.
    d = generate_cohort(tmp_path / "d", 4, seed=7, image_size=(128, 80), progress=False)
    assert all(fa[k] == _files(d.parent)[k] for k in images)


# --- consistency -----------------------------------------------------------------------------------

def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.])\s+(?=[A-Z])", text) if s.strip()]


def _kind_of(sentence: str) -> str | None:
    s = sentence.lower()
    if "calcification" in s and "benign" in s:
        return "benign_calcification"
    for kind, word in (("calcification", "calcification"), ("mass", "mass"), ("distortion", "architectural distortion"),
                       ("asymmetry", "asymmetry"), ("skin_thickening", "skin thickening")):
        if word in s:
            return kind
    return None


def test_reports_mention_every_finding_with_side_and_location_and_nothing_else(rich_cohort: Path) -> None:
    bundle = load_bundle(rich_cohort)
    images = bundle.images.set_index("image_id")
    findings = bundle.boxes.drop_duplicates("finding_id").copy()
    findings["patient_id"] = findings["image_id"].map(images["patient_id"])
    findings["side"] = findings["image_id"].map(images["laterality"])
    assert set(findings["label"]) == set(FINDING_KINDS)  # the test covers every kind
    reports = bundle.reports.set_index("report_id")
    for pid, group in images.groupby("patient_id"):
        report = reports.loc[group["report_id"].iloc[0]]
        positives: list[tuple[str, str, str]] = []
        for sentence in _sentences(report["findings"]):
            kind = _kind_of(sentence)
            negated = re.search(r"\b(no|not|without)\b", sentence, re.IGNORECASE)
            sides = [s for s, w in SIDE_WORD.items() if re.search(rf"\b{w}\b", sentence, re.IGNORECASE)]
            if kind is None or negated:
                continue
            assert len(sides) == 1, f"{pid}: positive sentence must name one side: {sentence!r}"
            positives.append((sides[0], kind, sentence))
        mine = findings[findings["patient_id"] == pid]
        assert len(positives) == len(mine), f"{pid}: {positives} vs {mine[['side', 'label']].values.tolist()}"
        for _, f in mine.iterrows():
            match = [s for side, kind, s in positives if side == f["side"] and kind == f["label"]]
            assert len(match) == 1, f"{pid}: {f['label']} ({f['side']}) not described exactly once"
            where = "areolar" if f["quadrant"] == "retroareolar" else f"{f['clock']} o'clock"
            assert where in match[0], f"{pid}: location {where!r} missing in {match[0]!r}"
            if f["label"] == "mass":
                assert f"{f['size_mm']:.0f} mm" in match[0] or f"{f['size_mm'] / 10:.1f} cm" in match[0]


def test_labels_follow_findings_and_report(rich_cohort: Path) -> None:
    bundle = load_bundle(rich_cohort)
    images = bundle.images
    reports = bundle.reports.set_index("report_id")
    for _, row in images.iterrows():
        breast_boxes = bundle.boxes[bundle.boxes["image_id"] == row["image_id"]]
        for label in ("mass", "calcification", "distortion", "asymmetry"):
            assert row[label] == int(label in set(breast_boxes["label"])), (row["image_id"], label)
        assert row["malignant"] == int(breast_boxes["malignant"].astype(int).any())
        impression = reports.loc[row["report_id"], "impression"]
        stated = re.search(rf"{SIDE_WORD[row['laterality']].capitalize()} breast: [^.]*\. BI-RADS (\d)", impression)
        if stated:
            assert int(stated.group(1)) == row["birads"]
        else:
            assert row["birads"] == (2 if "benign_calcification" in set(breast_boxes["label"]) else 1)
    overall = images.groupby("report_id")["birads"].agg(lambda b: max(b, key=[1, 2, 3, 0, 4, 5, 6].index))
    for rid, b in overall.items():
        assert f"BI-RADS {b}" in reports.loc[rid, "impression"].split("OVERALL ASSESSMENT:")[1]


def test_findings_inside_breast_in_both_views_and_brighter_than_surroundings(rich_cohort: Path) -> None:
    """Boxes match masks, masks lie in the breast, and findings are brighter than a ring around them.

    Masses and calcification clusters must be brighter than their ring every time. The other kinds
    are subtler by nature (and may overlap another finding or dense tissue in a 256x160 image), so
    for them at least 90% must be brighter and the kind must be clearly brighter on average.
    """
    bundle = load_bundle(rich_cohort)
    paths = bundle.images.set_index("image_id")["path"]
    ring_kernel = np.ones((7, 7), np.uint8)
    views_per_finding = bundle.boxes.groupby("finding_id")["view"].agg(set)
    assert (views_per_finding == {"CC", "MLO"}).all()
    contrast: dict[str, list[float]] = {}
    for _, box in bundle.boxes.iterrows():
        img = read_image(bundle.abspath(paths[box["image_id"]])).astype(np.float64)
        mask = read_image(bundle.abspath(box["mask_path"])) > 0
        breast = _breast(img)
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (box["xmin"], box["ymin"], box["xmax"], box["ymax"])
        assert (mask & breast).sum() >= 0.97 * mask.sum(), f"{box['finding_id']} leaves the breast"
        ring = (cv2.dilate(mask.astype(np.uint8), ring_kernel) > 0) & ~mask & breast
        d_mean = img[mask].mean() - img[ring].mean()
        if box["label"] in ("mass", "calcification"):
            assert d_mean > 0, f"{box['finding_id']} ({box['label']}) not brighter than its surroundings"
        contrast.setdefault(box["label"], []).append(d_mean)
    for label, values in contrast.items():
        values_arr = np.asarray(values)
        assert (values_arr > 0).mean() >= 0.9 and values_arr.mean() > 5, (label, values_arr.round(1))


def test_consistent_position_between_views(rich_cohort: Path) -> None:
    """The same finding sits at a similar distance from the chest wall in CC and MLO."""
    boxes = load_bundle(rich_cohort).boxes
    boxes = boxes[boxes["label"].isin(["mass", "calcification"])].copy()
    w = 160
    centre = (boxes["xmin"] + boxes["xmax"]) / 2
    boxes["from_wall"] = np.where(boxes["laterality"] == "L", centre, w - centre)
    pivot = boxes.pivot(index="finding_id", columns="view", values="from_wall")
    assert len(pivot) >= 10
    assert np.corrcoef(pivot["CC"], pivot["MLO"])[0, 1] > 0.8


def test_density_increases_dense_fraction(rich_cohort: Path) -> None:
    bundle = load_bundle(rich_cohort)
    images = bundle.images.copy()
    fractions = []
    for path in images["path"]:
        img = read_image(bundle.abspath(path)).astype(np.float64)
        values = img[_breast(img)]
        bg = np.percentile(img, 1)
        fractions.append(float((values > bg + 0.5 * (np.percentile(values, 99.5) - bg)).mean()))
    images["measured"] = fractions
    by_density = images.groupby("density")[["measured", "dense_fraction"]].mean().loc[list("ABCD")]
    for col in by_density:
        assert np.all(np.diff(by_density[col].to_numpy()) > 0), by_density


def test_mlo_has_pectoral_muscle_and_cc_does_not(rich_cohort: Path) -> None:
    bundle = load_bundle(rich_cohort)
    for _, row in bundle.images.iterrows():
        img = read_image(bundle.abspath(row["path"])).astype(np.float64)
        h, w = img.shape
        corner = img[: h // 12, : w // 10] if row["laterality"] == "L" else img[: h // 12, -(w // 10):]
        breast = _breast(img)
        if row["view"] == "MLO":  # a bright wedge at the top of the chest wall
            assert corner.mean() > np.median(img[breast]), row["image_id"]
        else:  # the chest-wall corner is air above the breast
            assert corner.mean() < np.percentile(img[breast], 5), row["image_id"]


def test_left_and_right_are_mirrored(synthetic_cohort: Path) -> None:
    bundle = load_bundle(synthetic_cohort)
    for _, row in bundle.images.iterrows():
        img = read_image(bundle.abspath(row["path"])).astype(np.float64)
        left, right = img[:, :20].mean(), img[:, -20:].mean()
        assert (left > right) == (row["laterality"] == "L"), row["image_id"]  # chest wall side is tissue


# --- DICOM --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["none", "rle", "j2k"])
def test_dicom_decodes_to_the_png_pixels_with_mammography_tags(tmp_path: Path, compression: str) -> None:
    pydicom = pytest.importorskip("pydicom")
    dcm = generate_cohort(tmp_path / "dcm", 2, seed=3, image_size=(128, 80), fmt="dicom", progress=False,
                          compression={compression: 1.0})
    png = generate_cohort(tmp_path / "png", 2, seed=3, image_size=(128, 80), progress=False)
    dcm_bundle, png_bundle = load_bundle(dcm, check_files=True), load_bundle(png)
    assert set(dcm_bundle.boxes["space"]) == {"original"}
    assert dcm_bundle.boxes[["xmin", "ymin", "xmax", "ymax"]].equals(png_bundle.boxes[["xmin", "ymin", "xmax", "ymax"]])
    syntaxes = {"none": "1.2.840.10008.1.2.1", "rle": "1.2.840.10008.1.2.5", "j2k": "1.2.840.10008.1.2.4.90"}
    uids = set()
    for (_, d), (_, p) in zip(dcm_bundle.images.iterrows(), png_bundle.images.iterrows()):
        ds = pydicom.dcmread(dcm_bundle.abspath(d["path"]))
        assert ds.file_meta.TransferSyntaxUID == syntaxes[compression] == syntaxes[d["transfer_syntax"]]
        assert ds.Modality == "MG" and ds.ViewPosition == d["view"] and ds.ImageLaterality == d["laterality"]
        assert ds.PhotometricInterpretation in ("MONOCHROME1", "MONOCHROME2")
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        assert (ds.Rows, ds.Columns) == (128, 80)
        assert all(0.5 < float(v) < 5 for v in ds.PixelSpacing)
        assert float(ds.WindowWidth) > 0 and "^" in str(ds.PatientName)
        uids.add(ds.SOPInstanceUID)
        assert ds.StudyInstanceUID and ds.SeriesInstanceUID
        stored = ds.pixel_array
        assert stored.dtype == np.uint16 and stored.max() < 2**ds.BitsStored
        raw = (2**ds.BitsStored - 1 - stored) if ds.PhotometricInterpretation == "MONOCHROME1" else stored
        expected = read_image(png_bundle.abspath(p["path"]))
        assert np.array_equal(to_display(raw.astype(np.uint16), 8), expected)
        if "VOILUTSequence" in ds:
            lut = ds.VOILUTSequence[0]
            assert len(lut.LUTDescriptor) == 3 and len(lut.LUTData) > 0
    assert len(uids) == len(dcm_bundle.images)


def test_dicom_cohort_mixes_photometric_and_syntax(tmp_path: Path) -> None:
    manifest = generate_cohort(tmp_path / "c", 16, seed=1, image_size=(64, 48), fmt="dicom", progress=False)
    images = pd.read_csv(manifest)
    assert images["photometric"].nunique() == 2
    assert images["transfer_syntax"].nunique() == 3


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"n_patients": 0}, {"n_patients": -3}, {"image_size": (10, 10)}, {"image_size": (256,)},
    {"fmt": "jpeg"}, {"workers": 0}, {"prevalence": {"tumour": 0.5}}, {"prevalence": {"mass": 2.0}},
    {"split_fractions": (0.5, 0.5, 0.5)}, {"colour": "red"},
])
def test_bad_settings_raise_config_error(tmp_path: Path, kwargs: dict) -> None:
    args = {"out_dir": tmp_path / "c", "n_patients": 1, "image_size": (64, 48), **kwargs}
    with pytest.raises(ConfigError):
        generate_cohort(**args)
    assert not (tmp_path / "c").exists()


def test_existing_folder_is_protected_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "c"
    first = generate_cohort(out, 1, seed=1, image_size=(64, 48), progress=False)
    before = _files(out)
    # The same settings again: nothing to do, nothing changes.
    assert generate_cohort(out, 1, seed=1, image_size=(64, 48), progress=False) == first
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    generate_cohort(out, 1, seed=1, image_size=(64, 48), overwrite=True, progress=False)  # still nothing to do
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps
    with pytest.raises(DataError, match="different synthetic cohort"):
        generate_cohort(out, 1, seed=2, image_size=(64, 48), progress=False)
    assert _files(out) == before
    generate_cohort(out, 2, seed=2, image_size=(64, 48), overwrite=True, progress=False)
    assert len(pd.read_csv(first)) == 8
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="other files"):
        generate_cohort(other, 1, image_size=(64, 48), progress=False)
    generate_cohort(other, 1, image_size=(64, 48), overwrite=True, progress=False)
    assert (other / "notes.txt").read_text() == "mine"


# --- CLI --------------------------------------------------------------------------------------------

def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mammoclip.cli.main import main

    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--patients", "2", "--seed", "4", "--size", "96x64"]) == 0
    assert str(out / "manifest.csv") in capsys.readouterr().out
    assert read_image(out / "images/P00000/P00000_L_CC.png").shape == (96, 64)
    assert main(["synth", "--out", str(out), "--patients", "2", "--seed", "5", "--size", "96x64"]) == 2
    assert "different synthetic cohort" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # checked by the option type (cli/_options.py)
        main(["synth", "--out", str(out), "--patients", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(out), "--patients", "1", "--size", "big"])
    assert issubclass(ConfigError, MammoclipError)


# --- latent malignancy, left/right similarity, typos ------------------------------------------------

def test_malignancy_drives_descriptors_without_deciding_them() -> None:
    from mammoclip.synthetic.lesions import finding_birads, sample_findings

    rng = np.random.default_rng(0)
    rows = []
    for i in range(3000):
        for f in sample_findings(rng, "L", i, 0, {"mass": 1.0, "calcification": 1.0}):
            rows.append({"kind": f.kind, "malignant": f.malignant, "birads": finding_birads(f),
                         **{k: str(v) for k, v in f.attrs.items()}})
    df = pd.DataFrame(rows)
    masses, calcs = df[df["kind"] == "mass"], df[df["kind"] == "calcification"]
    ppv = masses.groupby("margin")["malignant"].mean()
    assert ppv["spiculated"] > 0.75 and ppv["circumscribed"] < 0.15
    assert 0 < ppv["spiculated"] < 1 and 0 < ppv["circumscribed"]  # no descriptor decides alone
    ppv = calcs.groupby("morphology")["malignant"].mean()
    assert ppv["fine linear"] > 0.6 and ppv["punctate"] < 0.15
    by_birads = df.groupby("birads")["malignant"].mean()
    assert by_birads[3] < by_birads[4] < by_birads[5]


def test_left_and_right_breasts_of_a_patient_are_similar(rich_cohort: Path) -> None:
    images = load_bundle(rich_cohort).images
    per_breast = images.groupby(["patient_id", "laterality"])["dense_fraction"].mean().unstack()
    assert np.corrcoef(per_breast["L"], per_breast["R"])[0, 1] > 0.9


def test_typos_never_touch_label_words() -> None:
    from mammoclip.synthetic.reports import _typos

    text = ("In the right breast there is an irregular mass with spiculated margins at 10 o'clock, measuring "
            "2.4 cm. Benign vascular calcifications are noted in the left breast. There is no architectural "
            "distortion. Recommend additional evaluation approximately tomorrow.")
    noisy = _typos(np.random.default_rng(0), text, 1.0)
    assert noisy != text
    for word in re.findall(r"[A-Za-z']+|\d+(?:\.\d+)?", text):
        if word.lower() in {"recommend", "additional", "evaluation", "approximately", "tomorrow", "there",
                            "measuring", "noted", "margins", "spiculated"} or len(word) < 5:
            continue
        assert word in noisy, word
