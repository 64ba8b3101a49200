"""Report parsing on eight-plus real-world layouts, sentence splitting, normalisation, de-identification."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mammoclip.errors import ConfigError, DataError
from mammoclip.text import reports as R

FIXTURES = Path(__file__).parent / "fixtures" / "reports"

# layout -> (sections present, BI-RADS, subcategory, density, positive findings per side)
EXPECTED: dict[str, tuple[set[str], int | None, str | None, str | None, dict[str, set[str]]]] = {
    "us_acr": ({"history", "comparison", "technique", "composition", "findings", "impression", "assessment",
                "recommendation"}, 4, "4A", "C", {"R": {"mass"}, "L": set(), "B": set()}),
    "uk_nhs": ({"history", "technique", "composition", "findings", "impression", "assessment"}, None, None, "B",
               {"R": set(), "L": {"calcification"}, "B": set()}),
    "bracketed": ({"history", "findings", "impression"}, 2, None, "B", {"R": set(), "L": set(), "B": set()}),
    "inline": ({"technique", "history", "comparison", "findings", "impression", "recommendation"}, 1, None, "A",
               {"R": set(), "L": set(), "B": set()}),
    "title_case": ({"history", "comparison", "findings", "impression", "assessment"}, 3, None, "D",
                   {"R": set(), "L": {"asymmetry"}, "B": set()}),
    "numbered": ({"history", "composition", "findings", "impression", "assessment"}, 0, None, "C",
                 {"R": {"calcification"}, "L": set(), "B": set()}),
    "per_breast": ({"composition", "findings", "impression"}, 4, "4B", "C",
                   {"R": set(), "L": {"mass", "distortion"}, "B": set()}),
    "missing_sections": ({"impression"}, 1, None, None, {"R": set(), "L": set(), "B": set()}),
    "european": ({"history", "findings", "impression", "recommendation"}, 2, None, "B",
                 {"R": {"distortion"}, "L": set(), "B": set()}),
}


def test_there_are_at_least_eight_layouts() -> None:
    assert len(EXPECTED) >= 8
    assert {p.stem for p in FIXTURES.glob("*.txt")} == set(EXPECTED)


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_layout_parses_into_sections_and_fields(layout: str) -> None:
    sections, birads, sub, density, positives = EXPECTED[layout]
    report = R.read_report(FIXTURES / f"{layout}.txt")
    assert set(report.sections) == sections
    assert (report.birads, report.birads_subcategory, report.density) == (birads, sub, density)
    assert report.positive_findings() == positives
    assert report.warnings == []
    assert all(s.text.strip() and s.side in R.SIDES for s in report.sentences)


def test_section_contents_and_header_styles() -> None:
    us = R.read_report(FIXTURES / "us_acr.txt")
    assert us.section("impression") == "Suspicious new mass in the right breast at 10 o'clock."
    assert us.section("composition").startswith("The breasts are heterogeneously dense")
    assert us.preamble.startswith("BILATERAL SCREENING MAMMOGRAM")
    inline = R.read_report(FIXTURES / "inline.txt")
    assert inline.section("findings").startswith("The breasts are almost entirely fatty.")
    assert inline.section("impression") == "No mammographic evidence of malignancy. BI-RADS 1 - Negative."
    bracketed = R.read_report(FIXTURES / "bracketed.txt")
    # Inside a bracketed report, "Breast density: ..." is prose of [Findings], not a new section.
    assert bracketed.section("findings").startswith("Breast density: ACR B.")
    uk = R.read_report(FIXTURES / "uk_nhs.txt")
    assert uk.rcr == 3 and uk.section("composition") == "Scattered areas of fibroglandular density."
    with pytest.raises(ConfigError, match="unknown section"):
        uk.section("summary")


def test_per_breast_attribution() -> None:
    report = R.read_report(FIXTURES / "per_breast.txt")
    assert report.birads_by_side == {"R": 2, "L": 4}
    left = report.breast_text("L")
    right = report.breast_text("R")
    assert "9 mm irregular mass" in left and "9 mm irregular mass" not in right
    assert "vascular calcifications" in right and "vascular calcifications" not in left
    assert "RIGHT" not in right  # side labels are not sentences
    numbered = R.read_report(FIXTURES / "numbered.txt")
    assert numbered.breast_sentences("L", ["findings"]) == ["no suspicious findings.", "No suspicious axillary lymph nodes."]
    both = R.read_report(FIXTURES / "inline.txt")
    assert both.breast_text("L") == both.breast_text("R")
    with pytest.raises(ConfigError):
        both.breast_text("X")


@pytest.mark.parametrize(
    ("sentence", "side"),
    [("There is a mass in the right breast.", "R"), ("Lt. breast: benign.", "L"), ("R CC view only.", "R"),
     ("The breasts are dense.", "B"), ("No change on the right or left.", "B"), ("Bilateral cysts.", "B"),
     ("A lesion is seen.", "B"), ("Right is worse than left.", "B"), ("Only on the LMLO view.", "L")],
)
def test_sentence_side(sentence: str, side: str) -> None:
    assert R.sentence_side(sentence) == side


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("No suspicious mass, calcifications or architectural distortion.",
         [("mass", True, False), ("calcification", True, False), ("distortion", True, False)]),
        ("There is a mass with no associated calcifications.", [("mass", False, False), ("calcification", True, False)]),
        ("No change in the spiculated mass.", [("mass", False, False)]),
        ("Scattered vascular calcifications.", [("calcification", False, True)]),
        ("Oval mass, most consistent with a benign lymph node.", [("mass", False, True)]),
        ("No mass; new focal asymmetry at 3 o'clock.", [("mass", True, False), ("asymmetry", False, False)]),
    ],
)
def test_finding_mentions_and_negation(sentence: str, expected: list[tuple[str, bool, bool]]) -> None:
    assert R.finding_mentions(sentence) == expected


@pytest.mark.parametrize(
    ("text", "birads"),
    [("BI-RADS 4A.", (4, "4A")), ("BIRADS: 2", (2, None)), ("Category 3, probably benign", (3, None)),
     ("ACR BI-RADS category 5", (5, None)), ("Bi-Rads assessment: 0.", (0, None)),
     ("right BI-RADS 2, left BI-RADS 0", (0, None)), ("BI-RADS 6 and BI-RADS 4C", (4, "4C")),
     ("BI-RADS 5th edition lexicon", None), ("no assessment", None)],
)
def test_extract_birads(text: str, birads: tuple[int, str | None] | None) -> None:
    assert R.extract_birads(text) == birads


@pytest.mark.parametrize(
    ("text", "density"),
    [("ACR C", "C"), ("Density: b.", "B"), ("breast density category D", "D"), ("ACR 3", "C"),
     ("The breasts are almost entirely fatty.", "A"), ("scattered areas of fibroglandular density", "B"),
     ("Heterogeneously dense tissue.", "C"), ("extremely dense breasts", "D"),
     ("Density: a few scattered nodules.", None), ("BI-RADS 2", None)],
)
def test_extract_density(text: str, density: str | None) -> None:
    assert R.extract_density(text) == density


def test_sentence_splitter_keeps_abbreviations_numbers_and_lists() -> None:
    text = ("There is a 4.5 cm mass at 10 o'clock, approx. 3 cm from the nipple. Discussed with Dr. Smith, "
            "i.e. the referrer, at 3 p.m. today. Pt. was informed.\n"
            "1. Right breast: grouped calcs.\n2. Left breast: negative\n- Lt. axilla normal\n"
            "A line that is hard-\nwrapped across two lines.")
    assert R.split_sentences(text) == [
        "There is a 4.5 cm mass at 10 o'clock, approx. 3 cm from the nipple.",
        "Discussed with Dr. Smith, i.e. the referrer, at 3 p.m. today.",
        "Pt. was informed.",
        "Right breast: grouped calcs.",
        "Left breast: negative",
        "Lt. axilla normal",
        "A line that is hard- wrapped across two lines.",
    ]
    assert R.split_sentences("") == []


def test_paper_normalisation_follows_the_original() -> None:
    text = "BIRADS: 4, patient is: 69 years old.\nNo mass.  OK. The mass measures 4.5 cm\u00e9."
    # docs/original.md §2.1: split at every period (so "4.5" breaks), lowercase, wordpunct tokens,
    # drop non-ASCII, keep sentences with more than two tokens, join by spaces, no periods.
    assert R.normalize_text(text, style="paper") == "birads : 4 , patient is : 69 years old the mass measures 4"
    assert R.wordpunct_tokenize("no-mass (r)") == ["no", "-", "mass", "(", "r", ")"]


def test_clean_normalisation() -> None:
    text = "FINDINGS \u2022 Right breast \u2013 no mass\n- birads 2\nNormal\u00a0study"
    assert R.normalize_text(text, style="clean") == "FINDINGS Right breast - no mass. BI-RADS 2. Normal study."
    with pytest.raises(ConfigError, match="style"):
        R.normalize_text("x", style="bert")


def test_deidentify() -> None:
    text = ("Patient: John Doe  MRN: 12345678  DOB: 04/12/1961\nAccession #: A99812345\n"
            "Compared with 2023-03-02 and March 5, 2022. Seen by Dr. Jane Smith on 5 Jan.\n"
            "NHS number 943 476 5919. A 4.5 cm mass at 10 o'clock, BI-RADS 4A, 69 years old.")
    clean = R.deidentify(text)
    for secret in ("John", "Doe", "12345678", "1961", "A99812345", "2023", "2022", "Jane", "Smith", "5919"):
        assert secret not in clean
    assert "Patient: [NAME]" in clean and "MRN: [ID]" in clean and "[DATE]" in clean
    assert "4.5 cm mass at 10 o'clock, BI-RADS 4A, 69 years old" in clean
    report = R.parse_report(text, "r1")
    assert "Smith" not in str(report.to_dict())
    assert "Smith" in str(R.parse_report(text, "r1", deidentify_text=False).to_dict())


def test_bad_input_warns_with_report_id(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    with caplog.at_level(logging.WARNING, logger="mammoclip.text.reports"):
        empty = R.parse_report("  \n ", "rep-empty")
    assert empty.sections == {} and empty.sentences == []
    assert empty.warnings == ["report rep-empty: empty report"]
    assert "rep-empty" in caplog.text

    bad_bytes = R.parse_report("FINDINGS: mass in the left breast caf\u00e9.".encode("latin-1"), "rep-bytes")
    assert "rep-bytes" in bad_bytes.warnings[0] and "UTF-8" in bad_bytes.warnings[0]
    assert bad_bytes.positive_findings()["L"] == {"mass"}

    headerless = R.parse_report("Spiculated mass in the right breast. BI-RADS 5.", "rep-free")
    assert headerless.warnings == ["report rep-free: no recognisable section header; whole text taken as findings"]
    assert headerless.section("findings").startswith("Spiculated") and headerless.birads == 5

    monkeypatch.setattr(R, "MAX_REPORT_CHARS", 500)  # the real limit works the same, just slower to test
    huge = R.parse_report("FINDINGS: " + "No mass. " * 5000, "rep-huge")
    assert huge.warnings == ["report rep-huge: 45010 characters is implausibly long; trimmed to 500"]
    assert len(huge.section("findings")) <= 500


def test_batch_carries_on_and_collects_warnings(tmp_path: Path) -> None:
    parsed, warnings = R.parse_reports([("a", "IMPRESSION: BI-RADS 1."), ("b", ""), ("c", 42),
                                        ("d", b"FINDINGS: \xff\xfe mass on the right")])
    assert [p.report_id for p in parsed] == ["a", "b", "d"]
    assert [w.split(":")[0] for w in warnings] == ["report b", "report c", "report d"]
    assert parsed[0].birads == 1
    with pytest.raises(DataError, match="not found"):
        R.read_report(tmp_path / "nope.txt")


def test_to_dict_is_json_ready() -> None:
    import json

    data = R.read_report(FIXTURES / "per_breast.txt").to_dict()
    assert json.loads(json.dumps(data))["positive_findings"]["L"] == ["distortion", "mass"]


@pytest.mark.parametrize(
    ("text", "sections", "birads"),
    [
        ("**Findings:** Oval mass in the right breast.\n**Impression:** BI-RADS\u00ae 3.",
         {"findings": "Oval mass in the right breast.", "impression": "BI-RADS\u00ae 3."}, 3),
        ("FINDINGS AND IMPRESSION: No mass. BI-RADS 1.", {"findings": "No mass. BI-RADS 1."}, 1),
        ("IMPRESSION/RECOMMENDATION: Benign.\nOverall BI-RADS: 2", {"impression": "Benign.", "assessment": "2"}, 2),
        ("findings: normal.\nFinal Assessment Category: 2 - Benign", {"findings": "normal.", "assessment": "2 - Benign"}, 2),
        ("Findings: normal. Impression and recommendation: negative.",
         {"findings": "normal.", "impression": "negative."}, None),
        ("Findings: Density is heterogeneous.\nAssessment of the axilla: normal.",
         {"findings": "Density is heterogeneous.\nAssessment of the axilla: normal."}, None),
    ],
)
def test_header_variants(text: str, sections: dict[str, str], birads: int | None) -> None:
    report = R.parse_report(text, "v")
    assert report.sections == sections
    assert report.birads == birads and report.warnings == []


def test_captions_per_section_and_breast() -> None:
    report = R.read_report(FIXTURES / "per_breast.txt")
    left = report.captions("L", style="paper")
    assert left == ["there is a 9 mm irregular mass with indistinct margins in the upper outer quadrant at mid depth "
                    "associated architectural distortion is present", "bi - rads 4b"]  # <= 2-token sentences go
    assert len(report.captions()) == 2 and report.captions()[1].startswith("Benign.")
    assert R.read_report(FIXTURES / "missing_sections.txt").captions("R") == [
        "No mammographic evidence of malignancy in either breast. BI-RADS 1."]
