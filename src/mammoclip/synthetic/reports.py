"""Report grammar of the synthetic cohort: one screening report per study.

The report is written in the sections real mammography reports use (HISTORY/INDICATION,
COMPARISON, BREAST COMPOSITION, FINDINGS, IMPRESSION), each on its own line starting with an
upper-case header and a colon so that :mod:`mammoclip.text.reports` can split it. The grammar
keeps three promises the labels depend on:

* every drawn finding is described in one sentence that names its side (``right``/``left``
  breast), its kind (``mass``, ``calcifications`` with morphology and distribution,
  ``architectural distortion``, ``focal asymmetry``, ``skin thickening``), its clock position (or
  ``retroareolar``) and, where the kind has one, its size;
* benign calcifications are always called ``benign`` and never ``suspicious``; suspicious
  calcification sentences never contain the word ``benign``;
* nothing is mentioned that is not drawn; negative sentences ("no suspicious mass, calcifications
  or architectural distortion") only deny what is absent. Sentences that deny something for both
  breasts say ``either breast`` or ``bilaterally``.

The assessment of each breast with a finding is repeated in the IMPRESSION as
``Right breast: BI-RADS 4 ...``, followed by an overall ``BI-RADS <n>`` category.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mammoclip.synthetic.lesions import BIRADS_SEVERITY, Finding

SIDE_NAME = {"R": "right", "L": "left"}
BIRADS_NAMES: dict[int, tuple[str, ...]] = {
    0: ("incomplete, need additional imaging evaluation", "incomplete"),
    1: ("negative",),
    2: ("benign", "benign finding(s)"),
    3: ("probably benign",),
    4: ("suspicious", "suspicious abnormality"),
    5: ("highly suggestive of malignancy",),
    6: ("known biopsy-proven malignancy",),
}
RECOMMENDATION: dict[int, tuple[str, ...]] = {
    0: ("Recommend additional imaging evaluation with spot compression views.",
        "Diagnostic mammography and ultrasound are recommended."),
    1: ("Recommend routine annual screening mammography.", "Continue annual screening."),
    2: ("Routine screening mammography in one year is recommended.", "Continue annual screening."),
    3: ("Short-interval follow-up mammography in 6 months is recommended.",
        "Recommend 6-month follow-up diagnostic mammogram."),
    4: ("Tissue sampling is recommended.", "Biopsy should be considered."),
    5: ("Biopsy is strongly recommended.", "Appropriate action should be taken; recommend biopsy."),
}
COMPOSITION: dict[str, tuple[str, ...]] = {
    "A": ("The breasts are almost entirely fatty.", "The breast tissue is almost entirely fatty (ACR A).",
          "Almost entirely fatty breast tissue."),
    "B": ("There are scattered areas of fibroglandular density.",
          "Scattered fibroglandular densities (ACR B).",
          "The breasts show scattered areas of fibroglandular tissue."),
    "C": ("The breasts are heterogeneously dense, which may obscure small masses.",
          "Heterogeneously dense breast tissue (ACR C), which may lower the sensitivity of mammography.",
          "The breast tissue is heterogeneously dense."),
    "D": ("The breasts are extremely dense, which lowers the sensitivity of mammography.",
          "Extremely dense breast tissue (ACR D).",
          "The breasts are extremely dense."),
}

#: Words a typo never touches: everything a label or location is read from.
_PROTECTED = re.compile(
    r"(right|left|breast|mass|calcif|distortion|asymmetr|skin|thicken|benign|suspicious|no|not|without|"
    r"negative|bi-?rads|o'clock|quadrant|retroareolar|subareolar|nipple|either|bilateral|findings?|"
    r"impression|history|indication|comparison|composition|dense|fatty|fibroglandular|cm|mm|\d|"
    r"architect|focal|cluster|oval|round|irregular|circumscribed|obscured|lobulated|indistinct|spiculated|"
    r"punctate|amorphous|coarse|heterogeneous|pleomorphic|linear|grouped|regional|segmental|vascular|rim|"
    r"popcorn|upper|lower|outer|inner|anterior|middle|posterior|depth|third|region|assessment)",
    re.IGNORECASE,
)
_ABBREVIATIONS = {"approximately": "approx.", "examination": "exam", "mammogram": "mammo",
                  "recommended": "recommended", "measuring": "meas."}


@dataclass(frozen=True)
class Report:
    """The report of one study, by section."""

    history: str
    comparison: str
    composition: str
    findings: str
    impression: str
    text: str


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _size(rng: np.random.Generator, mm: float) -> str:
    return f"{mm:.0f} mm" if rng.random() < 0.5 else f"{mm / 10:.1f} cm"


def _location(rng: np.random.Generator, f: Finding, *, with_depth: bool = True) -> str:
    """Location in radiologists' language; always names the clock position or retroareolar."""
    clock = f"{f.clock_text} o'clock"
    dist = f"{f.dist_cm:.0f} cm from the nipple" if rng.random() < 0.5 else f"{f.dist_cm:.1f} cm FN"
    if f.quadrant == "retroareolar":
        area = _pick(rng, ("retroareolar", "subareolar"))
        return _pick(rng, (f"in the {area} region at {clock}", f"in the {area} region, {clock}, {dist}"))
    q = f"{f.quadrant} quadrant"
    depth = f"{f.depth} depth" if rng.random() < 0.5 else f"{f.depth} third"
    options = [f"at {clock}, {dist}", f"in the {q} at {clock}", f"at the {clock} position, {dist}"]
    if with_depth:
        options += [f"at {clock}, {depth}, {dist}", f"in the {q} at {clock}, {depth}",
                    f"in the {q}, {clock}, {depth}, {dist}"]
    return _pick(rng, options)


def _mass(rng: np.random.Generator, f: Finding, side: str) -> str:
    shape, margin = str(f.attrs["shape"]), str(f.attrs["margin"])
    size, loc = _size(rng, f.size_mm), _location(rng, f)
    templates = (
        f"In the {side} breast there is {_article(shape)} {shape} mass with {margin} margins {loc}, measuring {size}.",
        f"{_article(shape).capitalize()} {size} {shape} {margin} mass is seen in the {side} breast {loc}.",
        f"{side.capitalize()} breast: {shape} mass with {margin} margins {loc}, measuring {size}.",
        f"There is {_article(shape)} {shape} mass in the {side} breast {loc} with {margin} margins, "
        f"measuring {size}.",
        f"{_article(margin).capitalize()} {margin} {shape} mass measuring {size} is present {loc} of the {side} breast.",
        f"A {size} mass is identified in the {side} breast {loc}; it is {shape} with {margin} margins.",
        f"{side.capitalize()} breast mass {loc}: {shape}, {margin} margins, {size}.",
    )
    return _pick(rng, templates)


_DISTRIBUTION_PHRASE = {
    "grouped": ("in a grouped distribution", "grouped", "clustered"),
    "regional": ("in a regional distribution", "regional"),
    "linear": ("in a linear distribution", "linear"),
    "segmental": ("in a segmental distribution", "segmental"),
}


def _calcification(rng: np.random.Generator, f: Finding, side: str) -> str:
    morph, dist = str(f.attrs["morphology"]), str(f.attrs["distribution"])
    size, loc = _size(rng, f.size_mm), _location(rng, f)
    dphrase = _pick(rng, _DISTRIBUTION_PHRASE[dist])
    word = _pick(rng, ("calcifications", "microcalcifications"))
    if dphrase.startswith("in a"):
        templates = (
            f"In the {side} breast there are {morph} {word} {dphrase} {loc}, spanning {size}.",
            f"{morph.capitalize()} {word} {dphrase} are seen in the {side} breast {loc}, spanning {size}.",
            f"{side.capitalize()} breast: {morph} {word} {dphrase} {loc} over an area of {size}.",
            f"There are {morph} {word} {dphrase} in the {side} breast {loc}, measuring {size} in extent.",
        )
    else:
        templates = (
            f"In the {side} breast there are {dphrase} {morph} {word} {loc}, spanning {size}.",
            f"{dphrase.capitalize()} {morph} {word} are present in the {side} breast {loc}, extending over {size}.",
            f"{side.capitalize()} breast: {_article(dphrase)} {dphrase} cluster of {morph} {word} {loc}, "
            f"spanning {size}.",
        )
    return _pick(rng, templates)


def _distortion(rng: np.random.Generator, f: Finding, side: str) -> str:
    loc = _location(rng, f)
    return _pick(rng, (
        f"Architectural distortion is seen in the {side} breast {loc}.",
        f"In the {side} breast there is an area of architectural distortion {loc}, measuring approximately "
        f"{_size(rng, f.size_mm)}.",
        f"{side.capitalize()} breast: architectural distortion {loc}.",
    ))


def _asymmetry(rng: np.random.Generator, f: Finding, side: str) -> str:
    loc = _location(rng, f)
    size = _size(rng, f.size_mm)
    return _pick(rng, (
        f"A focal asymmetry is noted in the {side} breast {loc}, measuring {size}.",
        f"In the {side} breast there is a focal asymmetry {loc}, seen on both views.",
        f"{side.capitalize()} breast: focal asymmetry {loc} measuring approximately {size}.",
    ))


def _skin(rng: np.random.Generator, f: Finding, side: str) -> str:
    loc = _location(rng, f, with_depth=False)
    t = float(f.attrs["thickness_mm"])
    return _pick(rng, (
        f"Skin thickening of the {side} breast {loc}, measuring up to {t:.0f} mm.",
        f"There is focal skin thickening in the {side} breast {loc}.",
        f"{side.capitalize()} breast: skin thickening {loc}, up to {t:.0f} mm.",
    ))


def _benign_calc(rng: np.random.Generator, f: Finding, side: str) -> str:
    kind = str(f.attrs["type"])
    loc = _location(rng, f, with_depth=False)
    if kind == "vascular":
        return _pick(rng, (f"Benign vascular calcifications are noted in the {side} breast {loc}.",
                           f"{side.capitalize()} breast: benign vascular calcifications {loc}."))
    if kind == "rim":
        return _pick(rng, (f"A benign rim calcification, likely an oil cyst, is seen in the {side} breast {loc}.",
                           f"{side.capitalize()} breast: benign rim (eggshell) calcification {loc}."))
    return _pick(rng, (
        f"Benign coarse popcorn-type calcifications in the {side} breast {loc}, "
        "consistent with an involuting fibroadenoma.",
        f"{side.capitalize()} breast: benign popcorn calcifications {loc}.",
    ))


_SENTENCES = {
    "mass": _mass,
    "calcification": _calcification,
    "distortion": _distortion,
    "asymmetry": _asymmetry,
    "skin_thickening": _skin,
    "benign_calcification": _benign_calc,
}
_SUSPICIOUS = ("mass", "calcification", "distortion", "asymmetry", "skin_thickening")
_NOUN = {"mass": "masses", "calcification": "calcifications", "distortion": "architectural distortion"}


def _negative(rng: np.random.Generator, side: str | None, absent: list[str]) -> str:
    """Deny the absent kinds among mass/calcification/distortion for one breast (or both)."""
    where = f"in the {side} breast" if side else _pick(rng, ("in either breast", "bilaterally"))
    nouns = [_NOUN[k] for k in ("mass", "calcification", "distortion") if k in absent]
    if not nouns:
        return ""
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " or " + nouns[-1]
    if len(nouns) == 3 and rng.random() < 0.4:
        if side:
            return _pick(rng, (f"The {side} breast shows no suspicious masses, microcalcifications or areas "
                               "of architectural distortion.",
                               f"{side.capitalize()} breast: no dominant mass, suspicious calcification "
                               "or distortion."))
        return _pick(rng, ("No suspicious masses, calcifications or architectural distortion bilaterally.",
                           "There is no dominant mass, suspicious calcification or architectural distortion "
                           "in either breast."))
    return _pick(rng, (f"No suspicious {listed} {where}.", f"There are no suspicious {listed} {where}.",
                       f"No evidence of suspicious {listed} {where}.",
                       f"{where[0].upper()}{where[1:]}, there are no suspicious {listed}.",
                       f"No {listed} suspicious for malignancy {where}."))


def _typos(rng: np.random.Generator, text: str, rate: float) -> str:
    """Swap letters or abbreviate in a small share of unprotected words."""
    if rate <= 0:
        return text

    def fix(m: re.Match[str]) -> str:
        w = m.group(0)
        if _PROTECTED.search(w) or len(w) < 5 or rng.random() >= rate:
            return w
        if w.lower() in _ABBREVIATIONS and rng.random() < 0.5:
            return _ABBREVIATIONS[w.lower()]
        i = int(rng.integers(1, len(w) - 2))
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]

    return re.sub(r"[A-Za-z']+", fix, text)


def write_report(rng: np.random.Generator, *, age: int, density: str, findings: dict[str, list[Finding]],
                 birads: dict[str, int], prior_year: int | None, typo_rate: float = 0.0) -> Report:
    """Compose the report of a study.

    Args:
        rng: The patient's generator.
        age: Patient age (years).
        density: BI-RADS density category A-D.
        findings: Side (``"R"``/``"L"``) -> the breast's findings.
        birads: Side -> breast BI-RADS category.
        prior_year: Year of a prior examination, or None when there is none.
        typo_rate: Probability that an unprotected word gets a typo or abbreviation.
    """
    family = _pick(rng, ("", "", "", " Family history of breast cancer (mother).",
                         " Family history of breast cancer in a sister.", " History of benign left breast biopsy."
                         if not findings["L"] else "", " Hormone replacement therapy."))
    history = _pick(rng, (f"{age}-year-old woman presenting for routine screening mammography.",
                          f"Screening. {age} year old female, asymptomatic.",
                          f"Routine screening mammogram, age {age}.")) + family
    comparison = (_pick(rng, (f"Prior mammograms from {prior_year}.", f"Compared with the study of {prior_year}.",
                              f"Comparison is made to exam dated {prior_year}."))
                  if prior_year else _pick(rng, ("None.", "No prior studies available.", "Baseline examination.")))
    composition = _pick(rng, COMPOSITION[density])

    sentences: list[str] = []
    sides = ["R", "L"] if rng.random() < 0.7 else ["L", "R"]
    none_anywhere = all(not [f for f in findings[s] if f.kind in _SUSPICIOUS] for s in "RL")
    if none_anywhere and rng.random() < 0.5:
        for s in sides:
            sentences += [_benign_calc(rng, f, SIDE_NAME[s]) for f in findings[s]]
        sentences.append(_negative(rng, None, ["mass", "calcification", "distortion"]))
    else:
        for s in sides:
            side = SIDE_NAME[s]
            present = {f.kind for f in findings[s]}
            for f in findings[s]:
                sentences.append(_SENTENCES[f.kind](rng, f, side))
            absent = [k for k in ("mass", "calcification", "distortion") if k not in present]
            if len(absent) == 3 or (absent and rng.random() < 0.35):
                sentences.append(_negative(rng, side, absent))
    if prior_year and none_anywhere and rng.random() < 0.5:
        sentences.append("There is no significant change from the prior examination.")
    if not any(f.kind == "skin_thickening" for s in "RL" for f in findings[s]) and rng.random() < 0.3:
        sentences.append(_pick(rng, ("The skin and nipples are unremarkable.", "The skin is normal in thickness.")))
    findings_text = " ".join(s for s in sentences if s)

    overall = max(birads.values(), key=BIRADS_SEVERITY.__getitem__)
    imp: list[str] = []
    if overall == 1:
        imp.append(_pick(rng, ("Negative mammogram.", "No mammographic evidence of malignancy.",
                               "Negative bilateral screening mammogram.")))
    elif overall == 2:
        imp.append(_pick(rng, ("Benign findings. No mammographic evidence of malignancy.", "Benign findings.")))
    else:
        for s in sides:
            sus = [f for f in findings[s] if f.kind in _SUSPICIOUS]
            if not sus:
                continue
            b = birads[s]
            what = "; ".join(_summary(f) for f in sus)
            imp.append(f"{SIDE_NAME[s].capitalize()} breast: {what}. BI-RADS {b}: {_pick(rng, BIRADS_NAMES[b])}.")
    imp.append(f"OVERALL ASSESSMENT: BI-RADS {overall} - {_pick(rng, BIRADS_NAMES[overall])}. "
               f"{_pick(rng, RECOMMENDATION[overall])}")
    impression = " ".join(imp)

    findings_text = _typos(rng, findings_text, typo_rate)
    impression = _typos(rng, impression, typo_rate)
    history_header = _pick(rng, ("HISTORY", "CLINICAL HISTORY", "INDICATION"))
    text = "\n".join((
        f"{history_header}: {history}",
        f"COMPARISON: {comparison}",
        f"BREAST COMPOSITION: {composition}",
        f"FINDINGS: {findings_text}",
        f"IMPRESSION: {impression}",
    ))
    return Report(history=history, comparison=comparison, composition=composition,
                  findings=findings_text, impression=impression, text=text)


def _summary(f: Finding) -> str:
    """Short impression phrase for a suspicious finding, with its clock position."""
    where = "retroareolar" if f.quadrant == "retroareolar" else f"at {f.clock_text} o'clock"
    if f.kind == "mass":
        return f"{f.size_mm:.0f} mm {f.attrs['margin']} {f.attrs['shape']} mass {where}"
    if f.kind == "calcification":
        return f"{f.attrs['morphology']} calcifications {where}"
    if f.kind == "distortion":
        return f"architectural distortion {where}"
    if f.kind == "asymmetry":
        return f"focal asymmetry {where}"
    return f"skin thickening {where}"


