"""Free-text mammography reports: sections, structured fields, per-breast sentences, normalisation.

The original expects pre-extracted FINDINGS/IMPRESSION columns and cleans them with string hacks
plus a runtime NLTK download (docs/original.md §2.1, §10). Here one pass turns a raw report into a
:class:`ParsedReport`:

1. decode (bytes with bad UTF-8 are decoded with replacement and a warning), trim absurd lengths,
   de-identify dates, names and record numbers (:func:`deidentify`);
2. split into sections by header (:data:`SECTION_HEADERS`): upper or title case, with or without a
   colon, bracketed (``[Findings]``), inline (``... IMPRESSION: ...``), bulleted or numbered;
3. split sections into sentences with pysbd (rule-based, no downloads) after protecting the
   abbreviations it misreads ("approx.", "pt.", "Lt."), one sentence per list item;
4. attribute each sentence to the right breast, the left breast or both ("Right breast: ..."
   sub-headers set the side for the sentences that follow);
5. extract BI-RADS (0-6 with 4A/4B/4C), ACR density (A-D, from letters or words) and the findings
   each sentence asserts or negates (a small NegEx-style rule set).

Regular expressions are hand-written here because no maintained offline library parses report
layouts; pysbd is the well-kept part (sentence boundaries).

Layer 0: standard library, numpy-free even; pysbd is imported lazily.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from mammoclip.constants import DENSITIES
from mammoclip.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Longest report we parse. Screening reports run to a few thousand characters; anything past this
#: is a concatenation or a corrupt export and is trimmed with a warning (keeps pysbd fast).
MAX_REPORT_CHARS: int = 20_000

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


def decode_report(data: str | bytes, report_id: str | None = None) -> tuple[str, list[str]]:
    """Turn raw report content into clean text, with warnings for what had to be repaired.

    Bytes that are not UTF-8 are decoded with replacement characters (the report is kept). Control
    characters are removed, line endings unified, and text past :data:`MAX_REPORT_CHARS` trimmed.

    Returns:
        The text and a list of warnings, each naming ``report_id``.
    """
    name = report_id if report_id is not None else "<report>"
    warnings: list[str] = []
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            text = data.decode("utf-8", errors="replace")
            warnings.append(f"report {name}: not valid UTF-8 (byte {err.start}); bad bytes replaced")
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


def split_sections(text: str) -> tuple[dict[str, str], str]:
    """Split a report into its sections.

    A line opens a section when it starts with a known header (:data:`SECTION_HEADERS`) that is
    bracketed, followed by a colon or dash, or alone on its line; inline headers after a sentence
    end (``"... normal. IMPRESSION: benign."``) are split off first. Repeated headers append.

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
        # A capitalised line after one that does not end mid-phrase starts a new sentence even
        # without a period (one-finding-per-line templates); otherwise the line was hard-wrapped.
        starts_new = (
            not open_block
            or marker is not None
            or (blocks[-1][-1][-1:] not in ",-" and (line[:1].isupper() or line[:1] == "["))
            or bool(_SIDE_LABEL.match(line))
        )
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
    paragraph is split separately and list markers are removed.

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


def extract_birads(text: str) -> tuple[int, str | None] | None:
    """The most severe BI-RADS category stated in ``text``.

    Recognises "BI-RADS 4A", "BIRADS: 2", "ACR BI-RADS category 3", "BI-RADS assessment: 0" and a
    bare "Category 3". Several categories (one per breast) give the most worrisome one
    (:data:`BIRADS_SEVERITY`).

    Returns:
        ``(category, subcategory)`` such as ``(4, "4A")`` or ``(2, None)``; ``None`` when absent.
    """
    found = [m for m in _BIRADS.finditer(text)] or [m for m in _CATEGORY.finditer(text)]
    if not found:
        return None
    best = max(found, key=lambda m: _severity(int(m.group("cat"))))
    cat = int(best.group("cat"))
    sub = best.group("sub")
    return cat, (f"{cat}{sub.upper()}" if sub and cat == 4 else None)


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
        birads: Overall BI-RADS category 0-6 (the most worrisome stated), or ``None``.
        birads_subcategory: ``"4A"``/``"4B"``/``"4C"`` when stated.
        birads_by_side: BI-RADS stated in sentences about one breast, ``{"R": 2, "L": 4}``.
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
        text: The report as text or raw bytes (decoded as UTF-8 with replacement).
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
            birads = extract_birads(sentence)
            if birads is not None and side in ("L", "R"):
                previous = report.birads_by_side.get(side)
                if previous is None or _severity(birads[0]) > _severity(previous):
                    report.birads_by_side[side] = birads[0]

    # The full text, headers included: "BI-RADS: 4A" loses its keyword once split into sections.
    everything = decoded
    birads = extract_birads(everything)
    if birads is not None:
        report.birads, report.birads_subcategory = birads
    report.density = extract_density(everything, sections.get("composition", ""))
    report.rcr = extract_rcr(everything)
    _log(report)
    return report


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
