"""Free-text mammography reports: sections, structured fields, per-breast sentences, normalisation.

The original expects pre-extracted FINDINGS/IMPRESSION columns and cleans them with string hacks
plus a runtime NLTK download (docs/original.md §2.1, §10). Here one pass turns a raw report into a
:class:`ParsedReport`:

1. decode (bytes that are not UTF-8 are read as cp1252, else latin-1, with a warning), trim absurd
   lengths, de-identify dates, names and record numbers (:func:`deidentify`);
2. split into sections by header (:data:`SECTION_HEADERS`): upper or title case, with or without a
   colon, bracketed (``[Findings]``), inline (``... IMPRESSION: ...``), bulleted or numbered, or
   misspelt within a bounded edit distance at the start of a line (:func:`fuzzy_header`);
3. split sections into sentences with pysbd (rule-based, no downloads) after protecting the
   abbreviations it misreads ("approx.", "pt.", "Lt."), one sentence per list item, bulleted or one
   per line (hard-wrapped prose lines are joined back);
4. attribute each sentence to the right breast, the left breast or both ("Right breast: ..."
   sub-headers set the side for the sentences that follow);
5. extract BI-RADS (0-6 with 4A/4B/4C, the dedicated assessment line first:
   :data:`BIRADS_PRECEDENCE`), ACR density (A-D, from letters or words) and the findings each
   sentence asserts or negates (a small NegEx-style rule set).

Regular expressions are hand-written here because no maintained offline library parses report
layouts; pysbd is the well-kept part (sentence boundaries).

Layer 0: standard library, numpy-free even; pysbd is imported lazily.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from mammoclip.constants import DENSITIES
from mammoclip.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Longest report we parse. Screening reports run to a few thousand characters; anything past this
#: is a concatenation or a corrupt export and is trimmed with a warning (keeps pysbd fast).
MAX_REPORT_CHARS: int = 20_000

#: Codecs tried in order on report bytes: UTF-8 (a byte-order mark is dropped), then cp1252, the usual
#: encoding of Windows exports, then latin-1, which accepts any byte (cp1252 leaves five undefined).
REPORT_ENCODINGS: tuple[str, ...] = ("utf-8-sig", "cp1252", "latin-1")

#: Canonical section -> header phrases that open it (matched case-insensitively).
SECTION_HEADERS: dict[str, tuple[str, ...]] = {
    "history": ("history", "clinical history", "indication", "indications", "clinical indication",
                "clinical indications", "reason for exam", "reason for examination", "reason for study",
                "clinical information", "clinical details", "clinical data", "reason for referral",
                "referral reason", "presenting complaint", "symptoms", "clinical notes"),
    "comparison": ("comparison", "comparisons", "prior studies", "prior examinations", "prior exams",
                   "previous studies", "previous imaging", "previous examinations", "priors"),
    "technique": ("technique", "procedure", "examination", "exam", "views", "views obtained", "study",
                  "mammographic technique", "type of examination", "mammography", "mammogram", "mammograms"),
    "composition": ("breast composition", "breast density", "density", "composition", "breast tissue",
                    "parenchymal density", "tissue density", "parenchymal pattern", "acr density",
                    "acr breast density", "breast density category", "acr breast density category",
                    "breast composition category"),
    "findings": ("findings", "finding", "report", "observations", "mammographic findings",
                 "mammogram findings", "description", "mammography findings"),
    "impression": ("impression", "impressions", "conclusion", "conclusions", "summary", "opinion",
                   "overall impression", "diagnosis"),
    "assessment": ("bi-rads", "birads", "bi-rads assessment", "bi-rads category", "birads category",
                   "bi-rads assessment category", "acr bi-rads", "assessment", "final assessment",
                   "overall assessment", "assessment category", "classification", "overall classification",
                   "result", "final assessment category", "overall bi-rads", "overall bi-rads assessment",
                   "overall bi-rads category", "bi-rads final assessment", "final bi-rads"),
    "recommendation": ("recommendation", "recommendations", "plan", "follow-up", "follow up", "management",
                       "advice", "outcome", "recommended action"),
}

#: Section order used when a report is written back as text.
SECTIONS: tuple[str, ...] = tuple(SECTION_HEADERS)

#: Severity order of BI-RADS categories for the overall assessment of a two-breast report
#: (ACR BI-RADS Atlas, 5th ed.: the overall assessment follows the more worrisome breast, in the
#: hierarchy 1 < 2 < 3 < 6 < 0 < 4 < 5).
BIRADS_SEVERITY: tuple[int, ...] = (1, 2, 3, 6, 0, 4, 5)

#: Side codes of attributed sentences: right, left, both/unspecified.
SIDES: tuple[str, ...] = ("R", "L", "B")

#: Where a BI-RADS category stands decides which one a report is assessed with (lower wins): the
#: dedicated assessment line ("BIRADS: 4c", "ASSESSMENT: BI-RADS 4C") over the impression ("BI-RADS
#: category 2") over any other section or the preamble ("(BIRADS 5)" inside the findings). Within the
#: winning place the most severe category counts (:data:`BIRADS_SEVERITY`). A mention put in the past
#: by its sentence ("prior BI-RADS 5 lesion, now ...", "was BI-RADS 3 in 2021") counts only when nothing
#: else is stated, and the history and comparison sections never count: they describe earlier exams.
BIRADS_PRECEDENCE: dict[str, int] = {"assessment": 0, "impression": 1}
_OTHER_TIER = len(BIRADS_PRECEDENCE)
_PAST_TIER = _OTHER_TIER + 1
BIRADS_IGNORED_SECTIONS: tuple[str, ...] = ("history", "comparison")

#: Sections whose sentences state findings (history and recommendation only refer to them).
FINDING_SECTIONS: tuple[str, ...] = ("findings", "impression", "assessment")

#: Finding name -> pattern of its mention. Names match the manifest's label columns.
FINDING_PATTERNS: dict[str, str] = {
    "mass": r"\bmass(?:es)?\b",
    "calcification": r"\b(?:micro)?calcifications?\b|\bcalcs\b",
    "distortion": r"\bdistortions?\b",
    "asymmetry": r"\basymmetr(?:y|ies)\b",
}

_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|absence of|absent|resolved|neither|nor|none|"
    r"rules? out|ruled out|removed|obscure|obscures|to exclude)\b",
    re.I,
)
#: Phrases that contain a negation word but do not negate the finding (NegEx "pseudo-negations").
_PSEUDO_NEGATION = re.compile(
    r"\bno (?:significant |interval |appreciable )?(?:change|increase|growth)\b|\bnot only\b|"
    r"\bno longer\b(?! (?:seen|visible|present|identified))",
    re.I,
)
_BENIGN = re.compile(
    r"\b(?:benign|vascular|dystrophic|popcorn|secretory|skin|rim|eggshell|milk of calcium|coarse(?! heterogeneous)|"
    r"rod-like|large rodlike|involuting|fibroadenoma|lymph node|cyst|oil)\b",
    re.I,
)

#: A benign conclusion later in the clause ("mass ..., most consistent with a benign lymph node").
_BENIGN_CLAUSE = re.compile(r"\b(?:benign|consistent with (?:an? )?(?:cyst|fibroadenoma|lymph node|fat necrosis))\b", re.I)

_RIGHT = re.compile(r"\bright\b|\brt\b|\bR(?=\s*(?:breast|axilla|CC|MLO|side|nipple)\b)|\bR(?:CC|MLO|ML|XCCL)\b", re.I)
_LEFT = re.compile(r"\bleft\b|\blt\b|\bL(?=\s*(?:breast|axilla|CC|MLO|side|nipple)\b)|\bL(?:CC|MLO|ML|XCCL)\b", re.I)
_BOTH = re.compile(r"\b(?:bilateral(?:ly)?|both breasts|both sides|either breast|either side|breasts)\b", re.I)
_SIDE_LABEL = re.compile(
    r"^\s*(?:the\s+)?(?P<side>right|left|rt|lt|bilateral|both)(?:\s+breasts?)?(?:\s+findings)?\s*"
    r"(?:[:\-\u2013]\s*|$)",
    re.I,
)

_BIRADS = re.compile(
    r"\b(?:acr\s*)?bi-?\s?rads(?:\u00ae)?\s*(?:assessment|category|cat\.?|score|classification|final)?\s*"
    r"(?:category|cat\.?)?\s*(?:is\s*)?[:\-=\u2013]?\s*\(?\s*(?P<cat>[0-6])\s*(?P<sub>[abc])?(?!\w|\.\d)",
    re.I,
)
_CATEGORY = re.compile(r"\b(?:assessment\s+)?category\s*[:\-]?\s*(?P<cat>[0-6])\s*(?P<sub>[abc])?(?!\w|\.\d)", re.I)
#: More categories listed after one: "4A/4B", "4a, 4c", "4A or B", "3/4". After a comma, "and", "to" or a
#: dash only a 4 with its letter continues the list ("BI-RADS 2, 3 cm" is not a list).
_BIRADS_MORE = re.compile(
    r"\s*(?:(?:/|\bor\b)\s*(?:(?P<cat>[0-6])\s*(?P<sub>[abc])?|(?P<letter>[abc]))"
    r"|(?:,|&|\band\b|\bto\b|-|\u2013)\s*4\s*(?P<sub4>[abc]))(?!\w|\.\d|\s*(?:mm|cm)\b)",
    re.I,
)
#: A category standing alone at the start of an assessment section, its header having held the keyword
#: ("BI-RADS: 4A - low suspicion", "Final assessment: 2. Benign", "BI-RADS Category: 0 (incomplete)").
_ASSESSMENT_VALUE = re.compile(
    r"\s*\(?\s*(?P<cat>[0-6])\s*(?P<sub>[abc])?\s*\)?(?=\s*(?:$|[.,;:()/\-\u2013]|\s(?:or|and)\b))", re.I
)
#: Words up to four words before a BI-RADS mention, with no comma or sentence mark between, that put
#: it in the past ("prior BI-RADS 5 lesion", "previously rated BI-RADS 3", "history of a BI-RADS 4 lesion").
_HISTORICAL = re.compile(
    r"\b(?:prior|previous(?:ly)?|history of|earlier|former(?:ly)?)\b(?:[^\w,.;:]+\w+){0,4}[^\w,.;:]*$", re.I
)
#: The same, said after the mention: "BI-RADS 3 in 2021", "BI-RADS 4 on [DATE]", "... on the prior exam".
_HISTORICAL_AFTER = re.compile(
    r"^[^\w,.;:]*(?:\w+[^\w,.;:]+){0,3}?(?:in|on|from|at)\s+(?:\[DATE\]|(?:19|20)\d\d\b|the\s+(?:prior|previous))",
    re.I,
)
#: "Category 2" right after these words is a density category, not BI-RADS.
_DENSITY_CONTEXT = re.compile(r"\b(?:density|composition|tissue|acr|type)\s*$", re.I)
_RCR = re.compile(r"\b(?:classification|score|category|grade)?\s*:?\s*\bM(?P<cat>[1-5])\b")

_DENSITY_LETTER = re.compile(
    r"\b(?:acr|density|composition|breast\s+density|category|type|pattern)\s*"
    r"(?:density|category|type|class|grade|composition)?\s*(?:is\s+|of\s+)?[:\-=]?\s*\(?\s*(?P<d>[a-d])"
    r"(?=\s*(?:$|[).,;:]|\s+[-\u2013(]|\s*\n))",
    re.I,
)
_DENSITY_NUMBER = re.compile(
    r"\b(?:acr|density)\s*(?:density|category|type|grade)?\s*[:\-=]?\s*\(?\s*(?P<d>[1-4])(?!\w|\.\d)", re.I
)
#: Words of the ACR composition categories (BI-RADS 5th ed.), checked in this order.
DENSITY_WORDS: dict[str, str] = {
    "D": r"extremely dense",
    "C": r"heterogeneous(?:ly)?\s+dense",
    "B": r"scattered\s+(?:areas\s+of\s+)?fibroglandular",
    "A": r"(?:almost\s+)?entirely\s+fat(?:ty)?|predominantly\s+fat(?:ty)?|fatty\s+(?:replaced|involuted|breasts?)"
         r"|breasts?\s+(?:are|is)\s+fatty",
}

_ABBREVIATIONS = re.compile(
    r"\b(?:Dr|Drs|Mr|Mrs|Ms|Prof|approx|appr|pt|pts|vs|cf|fig|figs|esp|incl|resp|yr|yrs|mos|wk|wks|"
    r"Rt|Lt|St|hx|dx|Sr|Jr|ca|no|nr)\.(?=\s+\S)|\b(?:i\.e|e\.g|a\.m|p\.m|n\.b|q\.v|b\.i\.d)\.",
    re.I,
)
_INNER_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s")
_DOT_GUARD = "\u2024"  # ONE DOT LEADER: stands in for a protected period while pysbd runs.
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022\u00b7\u25aa\u2023>]+|\(?\d{1,2}[.)]|\(?[a-hA-H][.)])\s+")

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_DATE_PATTERNS = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})\b"),
    re.compile(rf"\b(?:\d{{1,2}}(?:st|nd|rd|th)?\s+)?{_MONTH}\.?,?\s+(?:\d{{1,2}}(?:st|nd|rd|th)?,?\s+)?\d{{4}}\b"),
    re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\b"),
)
_NAME = r"[A-Z][A-Za-z'\-]*\.?(?:,?[ \t](?![A-Za-z]+:)[A-Z][A-Za-z'\-]*\.?){0,3}"
_NAME_LABELS = (
    r"patient(?:'s)?\s+name|patient|pt\.?\s+name|name|radiologist|reporting\s+radiologist|reported\s+by|"
    r"dictated\s+by|signed\s+by|electronically\s+signed\s+by|read\s+by|interpreted\s+by|verified\s+by|"
    r"referring\s+(?:physician|doctor|clinician)|referrer|referred\s+by|physician|consultant|technologist|"
    r"radiographer|attending|gp"
)
_NAME_PATTERNS = (
    re.compile(rf"(?P<keep>\b(?i:{_NAME_LABELS})\s*[:\-]\s*)(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)?{_NAME}"),
    re.compile(rf"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+{_NAME}"),
)
_ID_PATTERNS = (
    re.compile(
        r"(?P<keep>\b(?:MRN|MR\s?#|medical\s+record(?:\s+(?:number|no\.?))?|accession(?:\s+(?:number|no\.?|#))?|"
        r"acc\.?\s?#|NHS\s+(?:number|no\.?)|NHS|patient\s+id|study\s+id|hospital\s+(?:number|no\.?)|"
        r"hosp\.?\s+no\.?|ID)\s*[:#\-]?\s*)[A-Z]{0,4}[\-/]?\d[\w\-/]*(?:[ \-]\d+)*",
        re.I,
    ),
    re.compile(r"\b\d{3}[ \-]\d{3}[ \-]\d{4}\b"),
    re.compile(r"\b[A-Z]{0,3}\d{6,}\b"),
)


# --- Decoding and de-identification ---------------------------------------------------------------


def decode_bytes(data: bytes) -> tuple[str, str]:
    """Decode report bytes with the first of :data:`REPORT_ENCODINGS` that fits.

    Reports exported from Windows RIS systems are often cp1252 ("café", curly quotes, "±"); reading
    them as cp1252 keeps those characters where UTF-8 with replacement would drop them. latin-1 maps
    every byte, so decoding never fails.

    Returns:
        The text and the codec that decoded it.
    """
    for codec in REPORT_ENCODINGS:
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any byte string")  # pragma: no cover - REPORT_ENCODINGS ends with it


def _first_bad_utf8_byte(data: bytes) -> int:
    try:
        data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        return err.start
    return -1


def decode_report(data: str | bytes, report_id: str | None = None) -> tuple[str, list[str]]:
    """Turn raw report content into clean text, with warnings for what had to be repaired.

    Bytes that are not UTF-8 are read as cp1252, else latin-1 (:func:`decode_bytes`). Control
    characters are removed, line endings unified, and text past :data:`MAX_REPORT_CHARS` trimmed.

    Returns:
        The text and a list of warnings, each naming ``report_id``.
    """
    name = report_id if report_id is not None else "<report>"
    warnings: list[str] = []
    if isinstance(data, bytes):
        text, codec = decode_bytes(data)
        if codec != REPORT_ENCODINGS[0]:
            start = _first_bad_utf8_byte(data)
            warnings.append(f"report {name}: not valid UTF-8 (byte {start}); read as {codec}")
    elif isinstance(data, str):
        text = data
    else:
        raise DataError(f"report {name}: expected text or bytes, got {type(data).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")
    if len(text) > MAX_REPORT_CHARS:
        warnings.append(f"report {name}: {len(text)} characters is implausibly long; trimmed to {MAX_REPORT_CHARS}")
        text = text[:MAX_REPORT_CHARS]
    if not text.strip():
        warnings.append(f"report {name}: empty report")
    return text, warnings


def deidentify(text: str) -> str:
    """Replace dates, personal names and record/accession numbers by ``[DATE]``, ``[NAME]``, ``[ID]``.

    Rules, not a model: names are caught after titles ("Dr. Smith", "Mrs Jones") and after labels
    ("Patient: John Doe", "Reported by: ..."); numbers after record labels (MRN, accession, NHS
    number, ID, DOB) and any bare run of six or more digits. Clinical numbers ("4.5 cm",
    "10 o'clock", "BI-RADS 4A") are left alone.
    """
    for pattern in _ID_PATTERNS[:1]:
        text = pattern.sub(lambda m: m.group("keep") + "[ID]", text)
    for pattern in _DATE_PATTERNS:
        text = pattern.sub("[DATE]", text)
    for pattern in _ID_PATTERNS[1:]:
        text = pattern.sub("[ID]", text)
    text = _NAME_PATTERNS[0].sub(lambda m: m.group("keep") + "[NAME]", text)
    return _NAME_PATTERNS[1].sub("[NAME]", text)


# --- Sections -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _header_regexes() -> tuple[re.Pattern[str], re.Pattern[str], dict[str, str]]:
    lookup = {alias: section for section, aliases in SECTION_HEADERS.items() for alias in aliases}
    names = "|".join(re.escape(a).replace(r"\ ", r"\s+").replace(r"\-", r"[\-\s]?")
                     for a in sorted(lookup, key=len, reverse=True))
    # "FINDINGS AND IMPRESSION:", "IMPRESSION/RECOMMENDATION:" open the first named section.
    joined = rf"(?:\s*(?:/|&|,|\band\b)\s*(?:{names}))*"
    line = re.compile(
        rf"^\s*(?:[-*\u2022]\s*|\d{{1,2}}[.)]\s*)?"
        rf"(?:\[\s*(?P<bracket>{names})\s*\]|\*\*(?P<bold>{names})\s*(?P<boldsep>:)?\s*\*\*"
        rf"|(?P<plain>{names}){joined}(?![\w\-]))"
        rf"\s*(?P<sep>:|\s-\s|\u2013)?\s*(?P<rest>.*)$",
        re.I,
    )
    # A header in the middle of a line: upper case, or after a sentence end; always with a colon.
    inline = re.compile(rf"(?:(?<=[.;!?])\s+|\s{{2,}})(?=(?:{names}){joined}\s*:)|\s+(?=\[(?:{names})\])", re.I)
    return line, inline, lookup


def _header_key(raw: str) -> str:
    return re.sub(r"[\s\-]+", " ", raw.strip().lower())


def _canonical_header(raw: str, lookup: Mapping[str, str]) -> str | None:
    key = _header_key(raw)
    for alias, section in lookup.items():
        if _header_key(alias) == key:
            return section
    return None


#: A line that could be a misspelt header: a capitalised run of one to four words at the start of the line
#: (after an optional bullet or number), followed by a colon or alone on its line.
_HEADER_LIKE = re.compile(
    r"^\s*(?:[-*\u2022]\s*|\d{1,2}[.)]\s*)?(?P<head>[A-Z][A-Za-z\-']*(?:[ \t]+[A-Za-z][A-Za-z\-']*){0,3})"
    r"[ \t]*(?:(?P<colon>:)\s*(?P<rest>.*)|$)"
)


def max_header_edits(alias: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) a misspelt header may be from ``alias``.

    None for headers under six letters ("exam", "plan", "views": one edit makes other words of them),
    one up to eight ("FINDNGS", "Finidngs", "Impresion" are one edit from theirs), two beyond
    ("Brest Compositon").
    """
    n = len(alias)
    return 0 if n < 6 else 1 if n < 9 else 2


def edit_distance(a: str, b: str, limit: int) -> int:
    """Damerau-Levenshtein distance (optimal string alignment) of ``a`` and ``b``, or ``limit + 1`` when over.

    A swap of two neighbouring letters counts as one edit: the commonest typo in headers ("Finidngs").
    """
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            row[j] = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                row[j] = min(row[j], prev2[j - 2] + 1)
        if min(row) > limit:
            return limit + 1
        prev2, prev = prev, row
    return min(prev[-1], limit + 1)


def fuzzy_header(line: str) -> tuple[str, str] | None:
    """The section a misspelt or variant header opens ("Finidngs:", "Brest Composition"), and the rest of the line.

    Only a header-like line counts (:data:`_HEADER_LIKE`: capitalised, one to four words, then a colon
    or nothing), and only within :func:`max_header_edits` of a known header, so "Findings of note
    were discussed" or "Results of the biopsy: ..." stay prose.

    Returns:
        ``(section, rest)`` or ``None``.
    """
    match = _HEADER_LIKE.match(line)
    if not match:
        return None
    key = _header_key(match.group("head"))
    best: tuple[int, str] | None = None
    for alias, section in _header_regexes()[2].items():
        target = _header_key(alias)
        limit = max_header_edits(target)
        if limit == 0:
            continue
        distance = edit_distance(key, target, limit)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, section)
    if best is None:
        return None
    return best[1], (match.group("rest") or "").strip()


def split_sections(text: str) -> tuple[dict[str, str], str]:
    """Split a report into its sections.

    A line opens a section when it starts with a known header (:data:`SECTION_HEADERS`) that is
    bracketed, followed by a colon or dash, or alone on its line; inline headers after a sentence
    end (``"... normal. IMPRESSION: benign."``) are split off first. Repeated headers append. A
    line-initial header within a bounded edit distance of a known one ("Finidngs:", "Impresion",
    "Brest Composition") opens its section too (:func:`fuzzy_header`); headers inside a line must be
    spelt right.

    Returns:
        ``({section: text}, preamble)`` in order of appearance; the preamble is what precedes the
        first header (title, demographics).
    """
    line_re, inline_re, lookup = _header_regexes()
    lines = text.split("\n")
    # A report written with bracketed headers uses them for every section: then "Breast density:
    # ACR B" inside [Findings] is prose, not a new section.
    bracketed = sum(1 for line in lines if (m := line_re.match(line)) and m.group("bracket")) >= 2
    sections: dict[str, list[str]] = {}
    preamble: list[str] = []
    current: list[str] = preamble
    for raw_line in lines:
        for line in ([raw_line] if bracketed else inline_re.split(raw_line)):
            match = line_re.match(line)
            section = None
            if match and (match.group("bracket") or not bracketed):
                header = match.group("bracket") or match.group("bold") or match.group("plain")
                rest = match.group("rest").strip()
                is_header = bool(match.group("bracket") or match.group("bold") or match.group("sep")) or not rest
                # "Density is ..." / "Assessment of ..." are prose, not headers.
                section = _canonical_header(header, lookup) if is_header else None
            if section is None and not bracketed and (fuzzy := fuzzy_header(line)) is not None:
                section, rest = fuzzy
            if section is None:
                current.append(line)
                continue
            current = sections.setdefault(section, [])
            if rest:
                current.append(rest)
    out = {k: "\n".join(v).strip() for k, v in sections.items()}
    return {k: v for k, v in out.items() if v}, "\n".join(preamble).strip()


# --- Sentences ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _segmenter() -> Any:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


#: A line ending like this stops mid-phrase, so the next line continues it whatever its case.
_DANGLING = re.compile(
    r"(?:[\-/(&+]|\b(?:an|the|of|in|on|at|to|with|without|and|or|by|for|from|as|is|are|was|were|than|into|"
    r"within|measuring|approx\.?|approximately|e\.g\.|i\.e\.|vs\.?|Dr\.?|Mr\.?|Mrs\.?|Ms\.?))$",
    re.I,
)


def _continues(previous: str, line: str) -> bool:
    """Whether ``line`` is a hard-wrapped continuation of ``previous`` rather than a new list item.

    Reports list findings one per line without bullets or periods; merging two such lines puts a
    benign qualifier or a negation into the wrong finding's sentence. So a line continues the one
    before only when that line stops mid-phrase (:data:`_DANGLING`: "of", "measuring", a hyphen), or
    when it ends without sentence punctuation and this line starts in lower case.
    """
    if _DANGLING.search(previous):
        return True
    return previous[-1:] not in ".!?:;" and line[:1].islower()


def _blocks(text: str) -> list[str]:
    """Paragraphs and list items, with hard-wrapped lines joined back together."""
    blocks: list[list[str]] = []
    open_block = False
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            open_block = False
            continue
        marker = _LIST_MARKER.match(line)
        if marker:
            line = line[marker.end():].strip()
        starts_new = not open_block or marker is not None or bool(_SIDE_LABEL.match(line)) or not _continues(
            blocks[-1][-1], line)
        if starts_new:
            blocks.append([line])
        else:
            blocks[-1].append(line)
        open_block = True
    return [" ".join(b) for b in blocks if " ".join(b).strip()]


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences without any download.

    pysbd finds the boundaries; "4.5 cm", "Dr.", "i.e." and clock positions are kept intact, and the
    abbreviations pysbd splits on ("approx.", "pt.", "Lt.") are protected first. Each list item or
    paragraph is split separately and list markers are removed. A line is its own item unless it
    continues a hard-wrapped one (:func:`_continues`: the line before stops mid-phrase, or ends
    without sentence punctuation and this one starts in lower case).

    Example:
        >>> split_sentences("4.5 cm mass at 10 o'clock, approx. 3 cm from the nipple. No calcs.")
        ["4.5 cm mass at 10 o'clock, approx. 3 cm from the nipple.", 'No calcs.']
    """
    sentences: list[str] = []
    segmenter = _segmenter()
    for block in _blocks(text):
        guarded = _ABBREVIATIONS.sub(lambda m: m.group(0).replace(".", _DOT_GUARD), block)
        # No ". " / "? " / "! " inside: one sentence, no need for pysbd (most list items and lines).
        pieces = segmenter.segment(guarded) if _INNER_BOUNDARY.search(guarded.rstrip()) else [guarded]
        for piece in pieces:
            piece = piece.replace(_DOT_GUARD, ".").strip()
            if piece:
                sentences.append(piece)
    return sentences


# --- Normalisation --------------------------------------------------------------------------------

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "-", "\u00a0": " ", "\u2022": " ", "\ufffd": " "})


def wordpunct_tokenize(text: str) -> list[str]:
    """Tokens as NLTK's ``wordpunct_tokenize`` gives them (same regex, no NLTK needed)."""
    return _WORDPUNCT.findall(text)


def _normalize_paper(text: str) -> str:
    # docs/original.md §2.1 steps 1-4, in the original's order.
    text = text.replace("\n", " ")
    text = text.replace(". ", ".").replace(".", ". ")
    kept: list[str] = []
    for sentence in text.split(". "):
        sentence = sentence.replace("\ufffd\ufffd", " ")
        tokens = wordpunct_tokenize(sentence.lower())
        if len(tokens) <= 1:
            continue
        tokens = [t for t in (tok.encode("ascii", "ignore").decode("ascii") for tok in tokens) if t]
        if len(tokens) > 2:
            kept.append(" ".join(tokens))
    return " ".join(kept)


def _normalize_clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY)
    text = re.sub(r"\bbi[\s\-]?rads\b", "BI-RADS", text, flags=re.I)
    out: list[str] = []
    for sentence in split_sentences(text):
        sentence = re.sub(r"\s+", " ", sentence).strip()
        if not re.search(r"\w", sentence):
            continue
        out.append(sentence if sentence[-1] in ".!?" else sentence + ".")
    return " ".join(out)


#: Normalisation styles: name -> function(text) -> text.
NORMALIZERS: dict[str, Any] = {"paper": _normalize_paper, "clean": _normalize_clean}


def normalize_text(text: str, style: str = "clean") -> str:
    """Normalise report text for the text encoder.

    Args:
        text: Section or report text.
        style: ``"paper"`` reproduces the original exactly (docs/original.md §2.1): newlines to spaces,
            split at every period (periods removed), lowercase, wordpunct tokens (other punctuation
            as separate tokens), non-ASCII characters dropped, sentences of <= 2 tokens dropped,
            sentences joined by single spaces. ``"clean"`` keeps case and sentence punctuation:
            Unicode and typography normalised, list markers removed, one space between sentences,
            each sentence ending with a period, "BIRADS" spelt "BI-RADS".

    Example:
        >>> normalize_text("BIRADS: 4, patient is: 69 years old.\\nOK.", style="paper")
        'birads : 4 , patient is : 69 years old'
    """
    try:
        return NORMALIZERS[style](text)
    except KeyError:
        raise ConfigError(f"normalisation style must be one of {sorted(NORMALIZERS)}, got {style!r}") from None


# --- Structured fields ----------------------------------------------------------------------------


def _severity(category: int) -> int:
    return BIRADS_SEVERITY.index(category)


@dataclass(frozen=True)
class _BiradsMention:
    """One stated category, with what decides its weight (:data:`BIRADS_PRECEDENCE`)."""

    category: int
    subcategory: str | None  # "4A"/"4B"/"4C", only with category 4
    keyword: bool  # said with "BI-RADS" (False: a bare "Category 3")
    historical: bool = False  # "prior BI-RADS 5 lesion"
    tier: int = 0
    side: str | None = None


def _rank(m: _BiradsMention) -> tuple[int, str]:
    return _severity(m.category), m.subcategory or ""


def _listed(text: str, end: int, category: int, letter: str | None) -> list[tuple[int, str | None]]:
    """The category matched just before ``end`` and those listed after it ("4A/4B", "4a, 4c")."""
    out: list[tuple[int, str | None]] = [(category, letter)]
    while (more := _BIRADS_MORE.match(text, end)) is not None:
        if more.group("sub4") is not None and out[-1][0] != 4:
            break
        if more.group("cat") is not None:
            out.append((int(more.group("cat")), more.group("sub")))
        else:
            out.append((out[-1][0], more.group("letter") or more.group("sub4")))
        end = more.end()
    return out


def _mention(category: int, letter: str | None, keyword: bool, before: str, after: str = "") -> _BiradsMention:
    sub = f"4{letter.upper()}" if letter and category == 4 else None
    historical = bool(_HISTORICAL.search(before) or _HISTORICAL_AFTER.match(after))
    return _BiradsMention(category, sub, keyword, historical=historical)


def _birads_mentions(text: str) -> list[_BiradsMention]:
    """Every category stated in ``text``: "BI-RADS ..." mentions, then bare "Category N" ones."""
    out: list[_BiradsMention] = []
    spans: list[tuple[int, int]] = []
    for keyword, pattern in ((True, _BIRADS), (False, _CATEGORY)):
        for m in pattern.finditer(text):
            if not keyword and (any(a <= m.start() < b for a, b in spans)
                                or _DENSITY_CONTEXT.search(text[: m.start()])):
                continue
            spans.append(m.span())
            listed = _listed(text, m.end(), int(m.group("cat")), m.group("sub"))
            out += [_mention(c, x, keyword, text[: m.start()], text[m.end():]) for c, x in listed]
    return out


def _as_result(m: _BiradsMention) -> tuple[int, str | None]:
    return m.category, m.subcategory


def extract_birads(text: str) -> tuple[int, str | None] | None:
    """The most severe BI-RADS category stated in ``text``.

    Recognises "BI-RADS 4A", "BIRADS: 2", "ACR BI-RADS category 3", "BI-RADS assessment: 0" and a
    bare "Category 3" (only when no "BI-RADS" is stated). Several categories (one per breast, or a
    list such as "BIRADS 4a, 4c" or "4A/4B") give the most worrisome one (:data:`BIRADS_SEVERITY`,
    then 4A < 4B < 4C). Where a category stands in a report is weighed by :func:`parse_report`
    (:data:`BIRADS_PRECEDENCE`), not here.

    Returns:
        ``(category, subcategory)`` such as ``(4, "4A")`` or ``(2, None)``; ``None`` when absent.
    """
    found = _birads_mentions(text)
    found = [m for m in found if m.keyword] or found
    return _as_result(max(found, key=_rank)) if found else None


def _assessment_value(body: str) -> list[_BiradsMention]:
    """A bare category opening an assessment section, whose header held the keyword ("BIRADS: 4c")."""
    first = next((line for line in body.split("\n") if line.strip()), "")
    # "1. Right breast: BI-RADS 2" opens with a list number, not a category.
    if _birads_mentions(first) or (match := _ASSESSMENT_VALUE.match(first)) is None:
        return []
    return [_mention(c, x, True, "") for c, x in _listed(first, match.end(), int(match.group("cat")),
                                                          match.group("sub"))]


def _choose_birads(mentions: Iterable[_BiradsMention], any_keyword: bool) -> _BiradsMention | None:
    """The category a report (or one breast) is assessed with: the strongest place, then the most severe.

    Bare "Category N" outside the assessment and impression counts only when the report never says
    "BI-RADS" (as :func:`extract_birads`).
    """
    usable = [m for m in mentions if m.keyword or m.tier < _OTHER_TIER or not any_keyword]
    if not usable:
        return None
    top = min(m.tier for m in usable)
    return max((m for m in usable if m.tier == top), key=_rank)


def extract_density(text: str, composition: str = "") -> str | None:
    """ACR breast density A-D.

    Looks in the composition section first, then the whole text: explicit letters ("ACR C",
    "Density: b", "category D"), then the old numeric scale ("ACR 3" = C), then the category words
    ("almost entirely fatty", "scattered fibroglandular", "heterogeneously dense",
    "extremely dense").
    """
    bare = re.match(r"\s*\(?(?P<d>[a-d])\)?(?=\s*(?:$|[).,;:\n]|\s[-\u2013(]))", composition, re.I)
    if bare:
        return bare.group("d").upper()
    for source in (composition, text):
        if not source:
            continue
        match = _DENSITY_LETTER.search(source)
        if match:
            return match.group("d").upper()
        match = _DENSITY_NUMBER.search(source)
        if match and not re.search(r"bi-?\s?rads\s*$", source[: match.start()], re.I):
            return DENSITIES[int(match.group("d")) - 1]
        hits = [(m.start(), code) for code, pat in DENSITY_WORDS.items() for m in re.finditer(pat, source, re.I)]
        if hits:
            return min(hits)[1]
    return None


def extract_rcr(text: str) -> int | None:
    """UK RCR mammographic classification M1-M5 (highest stated), or ``None``."""
    found = [int(m.group("cat")) for m in _RCR.finditer(text)]
    return max(found) if found else None


def sentence_side(sentence: str, context: str | None = None) -> str:
    """``"R"``, ``"L"`` or ``"B"`` (both/unspecified) for one sentence.

    A sentence naming one side belongs to it; one naming both sides, "bilateral" or "breasts"
    belongs to both; otherwise the side set by the last "Right breast:" style label (``context``).
    """
    right, left = bool(_RIGHT.search(sentence)), bool(_LEFT.search(sentence))
    if right and left:
        return "B"
    if right or left:
        return "R" if right else "L"
    if _BOTH.search(sentence):
        return "B"
    return context or "B"


def _side_code(word: str) -> str:
    word = word.lower()
    return "R" if word in ("right", "rt") else "L" if word in ("left", "lt") else "B"


def _clauses(sentence: str) -> list[str]:
    # NegEx scope: a negation reaches to the end of its clause ("no mass, calcifications or
    # distortion" negates all three); these words and semicolons end it.
    terminators = r";|\bbut\b|\bhowever\b|\balthough\b|\bwhile\b|\bexcept\b|\bwith the exception\b"
    return [c for c in re.split(terminators, sentence, flags=re.I) if c.strip()]


def finding_mentions(sentence: str) -> list[tuple[str, bool, bool]]:
    """Findings named in a sentence: ``(finding, negated, benign)`` triples.

    Negation is NegEx-style: a negation cue ("no", "without", "negative for", ...) earlier in the
    same clause, ignoring pseudo-negations ("no change in the mass"). ``benign`` marks mentions
    qualified as benign ("vascular calcifications", "benign-appearing mass").
    """
    out: list[tuple[str, bool, bool]] = []
    for clause in _clauses(sentence):
        cleaned = _PSEUDO_NEGATION.sub(" ", clause)
        for name, pattern in FINDING_PATTERNS.items():
            for match in re.finditer(pattern, cleaned, re.I):
                before = cleaned[: match.start()]
                negated = bool(_NEGATION.search(before))
                benign = bool(_BENIGN.search(before[-40:]) or _BENIGN_CLAUSE.search(cleaned[match.end():]))
                out.append((name, negated, benign))
                break
    return out


# --- Parsed report ---------------------------------------------------------------------------------


@dataclass
class Sentence:
    """One sentence of a report, with its section and the breast it talks about."""

    text: str
    section: str
    side: str  # "R", "L" or "B" (both / not stated)


@dataclass
class FindingMention:
    """A finding named in a sentence."""

    finding: str  # a key of FINDING_PATTERNS
    side: str  # "R", "L" or "B"
    negated: bool
    benign: bool
    sentence: int  # index into ParsedReport.sentences


@dataclass
class ParsedReport:
    """A report split into sections and sentences, with its structured fields.

    Attributes:
        report_id: The id the report was parsed under (used in warnings).
        sections: Section name (:data:`SECTIONS`) -> de-identified text, in order of appearance.
        preamble: Text before the first header (title, demographics), de-identified.
        sentences: Every sentence of every section with its side.
        birads: Overall BI-RADS category 0-6, or ``None``: the most worrisome one stated in the
            strongest place (:data:`BIRADS_PRECEDENCE`: assessment line, impression, elsewhere).
        birads_subcategory: ``"4A"``/``"4B"``/``"4C"`` when stated (the highest of a list).
        birads_by_side: BI-RADS stated in sentences about one breast, ``{"R": 2, "L": 4}``, by the same
            precedence (from the assessment or impression, unless ``birads`` itself came from elsewhere).
        density: ACR density A-D, or ``None``.
        rcr: UK RCR classification 1-5 (M1-M5), or ``None``.
        mentions: Findings named in the sentences, with side and negation.
        warnings: Problems met while parsing, each naming the report.
    """

    report_id: str | None
    sections: dict[str, str] = field(default_factory=dict)
    preamble: str = ""
    sentences: list[Sentence] = field(default_factory=list)
    birads: int | None = None
    birads_subcategory: str | None = None
    birads_by_side: dict[str, int] = field(default_factory=dict)
    density: str | None = None
    rcr: int | None = None
    mentions: list[FindingMention] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def section(self, name: str) -> str:
        """Text of one section (empty when the report lacks it)."""
        if name not in SECTION_HEADERS:
            raise ConfigError(f"unknown section {name!r}; known: {list(SECTIONS)}")
        return self.sections.get(name, "")

    def breast_sentences(self, side: str, sections: Iterable[str] = ("findings", "impression")) -> list[str]:
        """Sentences about breast ``side`` ("L"/"R"): its own and those about both breasts."""
        if side not in ("L", "R"):
            raise ConfigError(f"side must be 'L' or 'R', got {side!r}")
        wanted = set(sections)
        return [s.text for s in self.sentences if s.section in wanted and s.side in (side, "B")]

    def breast_text(self, side: str, sections: Iterable[str] = ("findings", "impression")) -> str:
        """The text to pair with one breast's images: :meth:`breast_sentences` joined by spaces."""
        return " ".join(self.breast_sentences(side, sections))

    def captions(
        self, side: str | None = None, sections: Iterable[str] = ("findings", "impression"), style: str = "clean"
    ) -> list[str]:
        """One normalised caption per non-empty section, as the paper trains on (docs/original.md §2.1).

        Args:
            side: ``"L"``/``"R"`` keeps that breast's sentences (:meth:`breast_sentences`);
                ``None`` keeps every sentence.
            sections: Sections to caption, in order.
            style: :func:`normalize_text` style.
        """
        out = []
        for section in sections:
            if side is None:
                sentences = [s.text for s in self.sentences if s.section == section]
            else:
                sentences = self.breast_sentences(side, [section])
            text = normalize_text(" ".join(sentences), style=style) if sentences else ""
            if text:
                out.append(text)
        return out

    def positive_findings(self) -> dict[str, set[str]]:
        """Findings asserted (not negated, not benign) per side: ``{"R": {...}, "L": {...}, "B": {...}}``."""
        out: dict[str, set[str]] = {s: set() for s in SIDES}
        for m in self.mentions:
            if not m.negated and not m.benign:
                out[m.side].add(m.finding)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (sets as sorted lists)."""
        data = asdict(self)
        data["positive_findings"] = {k: sorted(v) for k, v in self.positive_findings().items()}
        return data


def parse_report(
    text: str | bytes, report_id: str | None = None, *, deidentify_text: bool = True
) -> ParsedReport:
    """Parse one free-text mammography report.

    Never raises on bad content: an empty report, undecodable bytes, a report with no recognisable
    section (its whole text is then taken as FINDINGS) or an absurd length give a warning in
    :attr:`ParsedReport.warnings` (also logged) that names ``report_id``.

    Args:
        text: The report as text or raw bytes (UTF-8, else cp1252, else latin-1: :func:`decode_bytes`).
        report_id: Name used in warnings.
        deidentify_text: Replace dates, names and record numbers before anything else
            (:func:`deidentify`).

    Returns:
        The :class:`ParsedReport`.

    Example:
        >>> r = parse_report("FINDINGS: Right breast: 1 cm oval mass.\\nIMPRESSION: BI-RADS 3.")
        >>> r.birads, r.sentences[0].side
        (3, 'R')
    """
    name = report_id if report_id is not None else "<report>"
    decoded, warnings = decode_report(text, report_id)
    report = ParsedReport(report_id=report_id, warnings=warnings)
    if not decoded.strip():
        _log(report)
        return report
    if deidentify_text:
        decoded = deidentify(decoded)
    sections, preamble = split_sections(decoded)
    if not sections:
        report.warnings.append(f"report {name}: no recognisable section header; whole text taken as findings")
        sections, preamble = {"findings": preamble}, ""
    report.sections, report.preamble = sections, preamble

    stated: list[_BiradsMention] = []
    for section, body in sections.items():
        context: str | None = None
        for sentence in split_sentences(body):
            label = _SIDE_LABEL.match(sentence)
            if label:
                context = _side_code(label.group("side"))
                sentence = sentence[label.end():].strip()
                if not re.search(r"\w", sentence):
                    continue
                side = context if not (_RIGHT.search(sentence) or _LEFT.search(sentence)) else sentence_side(sentence)
            else:
                side = sentence_side(sentence, context)
            index = len(report.sentences)
            report.sentences.append(Sentence(sentence, section, side))
            if section in FINDING_SECTIONS:
                for finding, negated, benign in finding_mentions(sentence):
                    report.mentions.append(FindingMention(finding, side, negated, benign, index))
            if section not in BIRADS_IGNORED_SECTIONS:
                stated += [_placed(m, section, side) for m in _birads_mentions(sentence)]
    stated += [_placed(m, "assessment", None) for m in _assessment_value(sections.get("assessment", ""))]
    stated += [_placed(m, "preamble", None) for m in _birads_mentions(preamble)]

    any_keyword = any(m.keyword for m in stated)
    overall = _choose_birads(stated, any_keyword)
    if overall is not None:
        report.birads, report.birads_subcategory = _as_result(overall)
        # A breast's category comes from the assessment or impression, or from the place the report's own
        # category came from: a passing "(BIRADS 5)" in the findings does not outrank the assessment there.
        limit = max(overall.tier, BIRADS_PRECEDENCE["impression"])
        for code in ("R", "L"):
            chosen = _choose_birads((m for m in stated if m.side == code and m.tier <= limit), any_keyword)
            if chosen is not None:
                report.birads_by_side[code] = chosen.category
    everything = decoded
    report.density = extract_density(everything, sections.get("composition", ""))
    report.rcr = extract_rcr(everything)
    _log(report)
    return report


def _placed(m: _BiradsMention, section: str, side: str | None) -> _BiradsMention:
    tier = _PAST_TIER if m.historical else BIRADS_PRECEDENCE.get(section, _OTHER_TIER)
    return replace(m, tier=tier, side=side if side in ("L", "R") else None)


def _log(report: ParsedReport) -> None:
    for message in report.warnings:
        log.warning(message)


def read_report(path: str | Path, *, deidentify_text: bool = True) -> ParsedReport:
    """Parse a report file; its stem is the report id.

    Raises:
        DataError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: report file not found")
    return parse_report(path.read_bytes(), path.stem, deidentify_text=deidentify_text)


def parse_reports(
    reports: Mapping[str, str | bytes] | Iterable[tuple[str, str | bytes]], *, deidentify_text: bool = True
) -> tuple[list[ParsedReport], list[str]]:
    """Parse many reports; a report that fails is logged and skipped, the batch goes on.

    Args:
        reports: ``{report_id: text}`` or ``(report_id, text)`` pairs.
        deidentify_text: See :func:`parse_report`.

    Returns:
        The parsed reports (in input order, failures left out) and every warning met.
    """
    items = reports.items() if isinstance(reports, Mapping) else reports
    parsed: list[ParsedReport] = []
    warnings: list[str] = []
    for report_id, text in items:
        try:
            report = parse_report(text, str(report_id), deidentify_text=deidentify_text)
        except Exception as err:  # noqa: BLE001 - a batch job reports a bad row and carries on
            message = f"report {report_id}: could not be parsed ({type(err).__name__}: {err})"
            log.warning(message)
            warnings.append(message)
            continue
        parsed.append(report)
        warnings.extend(report.warnings)
    return parsed, warnings
