"""Label -> text templates and zero-shot prompt sets (mammoclip.text.prompts)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from mammoclip.constants import VINDR_FINDINGS
from mammoclip.errors import ConfigError, DataError
from mammoclip.text import prompts as P


def test_deterministic_text_is_stable_and_lateralised() -> None:
    text = P.labels_to_text({"mass": True, "calcification": False}, "L", deterministic=True)
    assert text == "there is a mass in the left breast. there are no suspicious calcifications in the left breast."
    assert P.labels_to_text({"mass": True, "calcification": False}, "L", deterministic=True) == text


def test_random_text_depends_on_seed_only() -> None:
    labels = {"mass": True, "calcification": True, "distortion": False, "asymmetry": False}
    a = P.labels_to_text(labels, "R", np.random.default_rng(3), density="C", birads="4A")
    b = P.labels_to_text(labels, "R", np.random.default_rng(3), density="C", birads="4A")
    texts = {P.labels_to_text(labels, "R", np.random.default_rng(s)) for s in range(20)}
    assert a == b
    assert len(texts) > 10  # many phrasings
    assert "left" not in a and "right" in a
    assert a.count(".") == 6  # density + 2 positives + 2 negatives + BI-RADS


def test_positive_and_negative_sentences_per_finding() -> None:
    rng = np.random.default_rng(0)
    for name in P.finding_names():
        pos = {P.finding_sentence(name, True, "R", rng) for _ in range(30)}
        neg = {P.finding_sentence(name, False, "L", rng) for _ in range(30)}
        assert len(pos) >= 3 and len(neg) >= 3, name
        assert not pos & neg
        assert all("  " not in s and "{" not in s for s in pos | neg)


def test_unknown_values_never_silently_pass() -> None:
    with pytest.raises(ConfigError, match="unknown finding"):
        P.labels_to_text({"tumour blob": True}, "L", deterministic=True)
    with pytest.raises(ConfigError, match="rng"):
        P.labels_to_text({"mass": True}, "L")
    with pytest.raises(ConfigError, match="laterality"):
        P.labels_to_text({"mass": True}, "X", deterministic=True)
    with pytest.raises(ConfigError, match="density"):
        P.labels_to_text({"mass": True}, "L", deterministic=True, density="E")
    with pytest.raises(ConfigError, match="birads"):
        P.labels_to_text({"mass": True}, "L", deterministic=True, birads=7)


def test_unknown_labels_are_skipped_and_no_finding_is_written() -> None:
    text = P.labels_to_text({"mass": None, "calcification": float("nan")}, None, deterministic=True, density="D")
    assert "mass" not in text.split("extremely dense")[1]
    assert "no mammographic evidence of malignancy" in text
    assert "extremely dense" in text


def test_vindr_negatives_are_the_other_findings() -> None:
    text = P.vindr_findings_to_text("['Mass', 'Suspicious Calcification']", "L", deterministic=True,
                                    density="DENSITY B", birads="BI-RADS 4")
    sentences = text.split(". ")
    assert len(sentences) == len(VINDR_FINDINGS) + 2
    assert sentences[1] == "there is a mass in the left breast"
    assert "scattered" in sentences[0] and "bi-rads 4" in sentences[-1]
    none = P.vindr_findings_to_text(["No Finding"], "R", deterministic=True)
    assert "there is a mass" not in none and none.count(".") == len(VINDR_FINDINGS)


def test_positive_no_finding_clears_negatives() -> None:
    text = P.labels_to_text((["No Finding"], ["Mass", "Asymmetry"]), "R", deterministic=True)
    assert text == "no mammographic evidence of malignancy in the right breast."


def test_cbis_and_rsna_sentences() -> None:
    rng = np.random.default_rng(1)
    mass = P.cbis_to_text("MASS", "R", rng, shape="IRREGULAR-OVAL", margin="SPICULATED", pathology="MALIGNANT")
    assert "irregular or oval" in mass and "spiculated" in mass and "right" in mass
    calc = P.cbis_to_text("calcification", "L", None, calc_type="FINE_LINEAR_BRANCHING")
    assert calc == "there are fine linear branching calcifications in the left breast."
    bare = P.cbis_to_text("mass", "L", None)
    assert bare == "there is a mass in the left breast."
    assert "malignan" in P.rsna_to_text(True, "L") and "no" in P.rsna_to_text(False, "L")


def test_zero_shot_paper_pairs_match_the_original() -> None:
    assert P.zero_shot_prompts("mass") == {"no_mass": ["no mass"], "mass": ["mass"]}
    calc = P.zero_shot_prompts("suspicious_calcification", style="paper")
    assert list(calc.values()) == [["no suspicious calcification"], ["suspicious calcification"]]
    assert list(P.zero_shot_prompts("malignant").values()) == [["no malignancy"], ["malignancy"]]


@pytest.mark.parametrize("task", P.list_zero_shot_tasks())
def test_every_task_has_both_styles_in_label_order(task: str) -> None:
    info = P.zero_shot_task(task)
    paper = P.zero_shot_prompts(task, "paper")
    ens = P.zero_shot_prompts(task, "ensemble")
    assert list(paper) == list(ens) == list(info.classes)
    assert len(info.values) == len(info.classes)
    assert all(len(v) >= 3 for v in ens.values())
    if len(info.classes) == 2:
        assert info.values == (0, 1)
        assert re.match(r"no\b", paper[info.classes[0]][0])
    flat = [p for v in ens.values() for p in v]
    assert len(flat) == len(set(flat))


def test_required_tasks_exist() -> None:
    assert set(P.list_zero_shot_tasks()) >= {"mass", "calcification", "distortion", "asymmetry", "density",
                                            "birads", "malignancy"}
    assert P.zero_shot_task("density").values == ("A", "B", "C", "D")
    with pytest.raises(ConfigError, match="unknown zero-shot task"):
        P.zero_shot_prompts("fracture")
    with pytest.raises(ConfigError, match="style"):
        P.zero_shot_prompts("mass", style="fancy")


def test_user_prompt_file(tmp_path) -> None:
    good = tmp_path / "p.json"
    good.write_text(json.dumps({"mass": {"neg": ["no lump"], "pos": ["a lump", "a mass"]}}))
    assert P.load_prompt_file(good) == {"mass": {"neg": ["no lump"], "pos": ["a lump", "a mass"]}}
    cases = {
        "[1, 2]": "JSON object",
        "{not json": "not a valid JSON",
        '{"mass": {"only": ["x"]}}': "at least two",
        '{"mass": {"a": ["x"], "b": []}}': "class 'b'",
        '{"density": {"a": ["x"], "b": ["y"]}}': "built-in task has 4",
    }
    for i, (content, message) in enumerate(cases.items()):
        bad = tmp_path / f"bad{i}.json"
        bad.write_text(content)
        with pytest.raises(DataError, match=message) as err:
            P.load_prompt_file(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(DataError, match="not found"):
        P.load_prompt_file(tmp_path / "missing.json")


def test_user_prompt_file_for_one_task(tmp_path) -> None:
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"suspicious_calcification": {"no": ["no calcs"], "yes": ["calcs"]}}))
    # Aliases find the task either way round.
    assert P.load_prompt_file(many, task="calcification") == {"no": ["no calcs"], "yes": ["calcs"]}
    with pytest.raises(DataError, match="no prompts for task 'mass'"):
        P.load_prompt_file(many, task="mass")
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"A": ["fatty"], "B": ["scattered"], "C": ["hetero"], "D": ["dense"]}))
    assert list(P.load_prompt_file(one, task="density")) == ["A", "B", "C", "D"]
    assert P.load_prompt_file(one) == {"custom": {"A": ["fatty"], "B": ["scattered"], "C": ["hetero"], "D": ["dense"]}}
    with pytest.raises(DataError, match="built-in task has 2"):
        P.load_prompt_file(one, task="mass")
