"""Report layouts real reports broke the parser with (issue 18): precedence of the assessment line,
subcategory lists, misspelt headers, unbulleted one-per-line lists, non-UTF-8 bytes."""

from __future__ import annotations

import pytest

from mammoclip.text import reports as R

# --- 1. the dedicated assessment line wins over categories mentioned in passing ---------------------


@pytest.mark.parametrize(
    ("text", "birads", "sub"),
    [
        # A passing "(BIRADS 5)" inside the findings loses to the assessment line.
        ("FINDINGS: Irregular mass in the left breast (BIRADS 5) at 2 o'clock.\nIMPRESSION: Suspicious mass.\n"
         "BIRADS: 4c", 4, "4C"),
        ("FINDINGS: Spiculated mass, BI-RADS 5 appearance.\nASSESSMENT: BI-RADS 4C", 4, "4C"),
        # ... and to the impression's category when there is no assessment line.
        ("FINDINGS: Cyst in the left breast (BIRADS 3). Mass with (BIRADS 5) features.\n"
         "Impression: Benign findings, BI-RADS category 2.", 2, None),
        # The history sentence describes an earlier exam: never the report's category.
        ("HISTORY: prior BI-RADS 5 lesion, now benign on biopsy.\nFINDINGS: No suspicious mass.\n"
         "IMPRESSION: Negative. BI-RADS 1.", 1, None),
        # A past mention in the findings yields to the current one, wherever that stands.
        ("FINDINGS: The prior BI-RADS 5 lesion, now excised, has left a scar. Oval mass, BI-RADS 3.", 3, None),
        ("FINDINGS: Mass previously rated as BI-RADS 4 is unchanged.\nIMPRESSION: BI-RADS 2 - Benign.", 2, None),
        ("FINDINGS: BI-RADS 4 in 2021; now a stable oval mass.\nIMPRESSION: BI-RADS 3.", 3, None),
        # The assessment's category stands on its own line after a header that held the keyword.
        ("FINDINGS: normal\nBI-RADS: 2. Benign.", 2, None),
        ("IMPRESSION: Mass with BI-RADS 5 features.\nBI-RADS Category: 0 (incomplete)", 0, None),
        # Within the winning place the most severe category counts, as before.
        ("IMPRESSION: Right breast BI-RADS 2. Left breast BI-RADS 4B.", 4, "4B"),
        # "density category 2" is a density category, not BI-RADS.
        ("BREAST COMPOSITION: density category 2\nFINDINGS: No mass. Category 1.", 1, None),
    ],
)
def test_assessment_line_wins_over_passing_mentions(text: str, birads: int, sub: str | None) -> None:
    report = R.parse_report(text, "p")
    assert (report.birads, report.birads_subcategory) == (birads, sub)
    assert report.warnings == []


def test_a_past_mention_alone_still_counts() -> None:
    # With nothing else stated, a past category is better than none (the precedence's last resort).
    assert R.parse_report("FINDINGS: prior BI-RADS 5 lesion, now stable.", "p").birads == 5
    # ... but never one from the history or comparison sections.
    assert R.parse_report("HISTORY: BI-RADS 4 in 2021.\nFINDINGS: No mass.", "p").birads is None


def test_per_breast_categories_follow_the_same_precedence() -> None:
    text = ("FINDINGS: Right breast: prior BI-RADS 5 lesion, now resolved. Left breast: irregular mass "
            "(BIRADS 5).\nIMPRESSION: Right breast: benign, BI-RADS 2. Left breast: suspicious, BI-RADS 4A.\n"
            "ASSESSMENT: BI-RADS 4A")
    report = R.parse_report(text, "p")
    assert report.birads_by_side == {"R": 2, "L": 4}
    assert (report.birads, report.birads_subcategory) == (4, "4A")
    # The passing findings mention does not become the breast's category when the assessment decides.
    assert R.parse_report("FINDINGS: Left breast mass (BIRADS 5).\nBIRADS: 4c", "p").birads_by_side == {}


# --- 2. lists of subcategories take the highest ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "birads"),
    [("BIRADS 4a, 4c", (4, "4C")), ("BI-RADS 4A/4B", (4, "4B")), ("BI-RADS 4C/4A", (4, "4C")),
     ("BI-RADS 4A or B", (4, "4B")), ("BI-RADS 4A-4C", (4, "4C")), ("BI-RADS 3/4", (4, None)),
     ("BI-RADS 4/5", (5, None)), ("BI-RADS 2, 3 cm mass", (2, None)), ("BI-RADS 4A, 4 cm mass", (4, "4A")),
     ("BI-RADS 2 or 3 cm", (2, None))],
)
def test_subcategory_lists_take_the_highest(text: str, birads: tuple[int, str | None]) -> None:
    assert R.extract_birads(text) == birads


@pytest.mark.parametrize(("line", "sub"), [("BIRADS: 4a, 4c", "4C"), ("BI-RADS: 4A/4B", "4B"),
                                           ("ASSESSMENT: BI-RADS 4b and 4c", "4C")])
def test_subcategory_lists_on_the_assessment_line(line: str, sub: str) -> None:
    report = R.parse_report(f"FINDINGS: Irregular mass in the right breast.\n{line}", "p")
    assert (report.birads, report.birads_subcategory) == (4, sub)


# --- 3. misspelt and variant section headers ---------------------------------------------------------


def test_misspelt_headers_open_their_sections() -> None:
    text = ("Clinical Histroy: screening.\nBrest Composition\nACR C\nFinidngs:\nNo suspicious mass.\n"
            "FINDNGS: Oval mass in the left breast.\nImpresion\nBenign. BI-RADS 2\nRecomendation: annual screening.")
    report = R.parse_report(text, "typos")
    assert report.sections == {
        "history": "screening.", "composition": "ACR C",
        "findings": "No suspicious mass.\nOval mass in the left breast.",
        "impression": "Benign. BI-RADS 2", "recommendation": "annual screening.",
    }
    assert (report.density, report.birads) == ("C", 2) and report.warnings == []
    assert R.parse_report("Breast Compositions: scattered fibroglandular\nFINDINGS: x", "p").density == "B"


@pytest.mark.parametrize(
    ("line", "expected"),
    [("Finidngs:", ("findings", "")), ("FINDNGS: no mass", ("findings", "no mass")),
     ("Brest Composition", ("composition", "")), ("Breast Compositions: ACR B", ("composition", "ACR B")),
     ("Impresion", ("impression", "")), ("BIRAD: 4", ("assessment", "4")),
     # Not headers: prose, too far from any header, lower case, short words, more than four words.
     ("Findings of note were discussed with the patient.", None), ("Findings of note:", None),
     ("Results of the biopsy: benign", None), ("Diagnostic Mammogram Report", None),
     ("Right breast: no mass", None), ("Name: Jane", None), ("finidngs:", None), ("Exams:", None),
     ("Plans:", None), ("Assessed:", None), ("Impresion of the radiologist today: x", None)],
)
def test_fuzzy_header_is_bounded(line: str, expected: tuple[str, str] | None) -> None:
    assert R.fuzzy_header(line) == expected


def test_fuzzy_headers_create_no_false_sections() -> None:
    text = ("FINDINGS:\nFindings of note were discussed with the patient.\nComparision with prior films shows "
            "no change.\nDensities are scattered.\nSummery of the above is below.\nIMPRESSION: Benign. BI-RADS 2.")
    report = R.parse_report(text, "prose")
    assert list(report.sections) == ["findings", "impression"]
    assert report.section("findings").count("\n") == 3
    # Inside a line a header must be spelt right: "... normal. Impresion: ..." stays prose.
    assert list(R.parse_report("FINDINGS: normal. Impresion: benign.", "p").sections) == ["findings"]


def test_edit_distance() -> None:
    assert R.edit_distance("finidngs", "findings", 2) == 1  # a swap of neighbours is one edit
    assert R.edit_distance("findngs", "findings", 2) == 1
    assert R.edit_distance("brest composition", "breast composition", 2) == 1
    assert R.edit_distance("impression", "impression", 0) == 0
    assert R.edit_distance("density", "findings", 2) == 3  # over the limit: limit + 1
    assert [R.max_header_edits(a) for a in ("exam", "report", "findings", "impression")] == [0, 1, 1, 2]


# --- 4. one list item per line without bullets --------------------------------------------------------


def test_unbulleted_items_are_separate_sentences() -> None:
    text = ("FINDINGS:\nIrregular spiculated mass in the left breast at 2 o'clock, highly suspicious,\n"
            "Benign-appearing calcifications in the right breast\n12 mm oval mass in the right breast, "
            "most consistent with a cyst\nNo architectural distortion\nIMPRESSION: BI-RADS 5.")
    report = R.parse_report(text, "list")
    assert [s.text for s in report.sentences if s.section == "findings"] == [
        "Irregular spiculated mass in the left breast at 2 o'clock, highly suspicious,",
        "Benign-appearing calcifications in the right breast",
        "12 mm oval mass in the right breast, most consistent with a cyst",
        "No architectural distortion",
    ]
    # The malignant mass is neither benign nor negated, and stays on the left.
    assert report.positive_findings() == {"R": set(), "L": {"mass"}, "B": set()}


def test_wrapped_prose_lines_stay_joined() -> None:
    text = ("FINDINGS:\nThere is an irregular mass in the left breast at 2 o'clock\nwith spiculated margins, "
            "measuring\n12 mm, and an\nArchitectural distortion. The right breast\nis normal.")
    assert R.split_sentences(R.parse_report(text, "wrap").section("findings")) == [
        "There is an irregular mass in the left breast at 2 o'clock with spiculated margins, measuring 12 mm, "
        "and an Architectural distortion.",
        "The right breast is normal.",
    ]
    # A line after one ending with sentence punctuation starts anew, whatever its case.
    assert R.split_sentences("No mass.\nno calcifications") == ["No mass.", "no calcifications"]


# --- 5. non-UTF-8 bytes -------------------------------------------------------------------------------


def test_cp1252_bytes_are_read_not_replaced() -> None:
    data = "FINDINGS: Mass in the left breast, 12 mm \u00b1 1 mm, \u201cspiculated\u201d. BI-RADS 4.".encode("cp1252")
    report = R.parse_report(data, "win")
    assert report.warnings == ["report win: not valid UTF-8 (byte 41); read as cp1252"]
    assert "\u00b1 1 mm" in report.section("findings") and "\ufffd" not in report.section("findings")
    assert R.decode_bytes(data)[1] == "cp1252"
    assert R.decode_bytes(b"\x81\x8d mass") == ("\x81\x8d mass", "latin-1")  # bytes cp1252 leaves undefined
    assert R.decode_bytes("\ufeffok".encode()) == ("ok", "utf-8-sig")
