"""Round trip with the synthetic cohort: parse_report recovers what the generator wrote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mammoclip.data.manifest import load_bundle
from mammoclip.text.reports import BIRADS_SEVERITY, FINDING_PATTERNS, parse_report


def test_parser_recovers_birads_density_and_finding_sides(make_cohort: Callable[..., Path]) -> None:
    # Raised prevalences and typo rate: every finding kind, benign look-alikes and noisy words occur.
    prevalence = {"mass": 0.5, "calcification": 0.5, "distortion": 0.3, "asymmetry": 0.3,
                  "skin_thickening": 0.2, "benign_calcification": 0.4}
    bundle = load_bundle(make_cohort(n_patients=6, size=(64, 48), seed=3, prevalence=prevalence, typo_rate=0.05))
    images = bundle.images
    assert len(bundle.reports) == images["report_id"].nunique() > 0
    seen: set[tuple[str, str]] = set()
    for report_id, text in zip(bundle.reports["report_id"], bundle.reports["text"]):
        parsed = parse_report(text, report_id)
        rows = images[images["report_id"] == report_id]
        assert parsed.warnings == [], report_id
        assert parsed.density == rows["density"].iloc[0], report_id
        overall = max((int(b) for b in rows["birads"].dropna()), key=BIRADS_SEVERITY.index)
        assert parsed.birads == overall, report_id
        positives = parsed.positive_findings()
        assert positives["B"] == set(), report_id
        for side in ("L", "R"):
            breast = rows[rows["laterality"] == side]
            truth = {f for f in FINDING_PATTERNS if (breast[f] == 1).any()}
            assert positives[side] == truth, (report_id, side)
            seen |= {(side, f) for f in truth}
            if side in parsed.birads_by_side:
                assert parsed.birads_by_side[side] == int(breast["birads"].iloc[0]), (report_id, side)
    assert {f for _, f in seen} == set(FINDING_PATTERNS)  # every kind was there to recover
