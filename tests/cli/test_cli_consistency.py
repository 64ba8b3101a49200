"""The command line behaves the same way everywhere: fast start, defaults in --help, plain-text help,
"did you mean", ``--out`` spelt one way, evaluation runs that do not demand ``--out``."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mammoclip.cli.main import build_parser, main, plain_text

HEAVY = ("torch", "transformers", "timm", "pandas", "matplotlib", "sklearn")


def _walk(parser: argparse.ArgumentParser, prefix: str = "mammoclip") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                out.append((f"{prefix} {name}", sub))
                out.extend(_walk(sub, f"{prefix} {name}"))
    return out


def test_building_the_parser_imports_no_heavy_module() -> None:
    code = ("import sys, mammoclip.cli.main as m; p = m.build_parser(); p.format_help(); "
            f"print([k for k in {HEAVY!r} if k in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


def test_bad_paths_fail_before_any_heavy_import(tmp_path: Path) -> None:
    """A wrong --checkpoint or --manifest is reported before torch/pandas are imported."""
    code = ("import sys; from mammoclip.cli.main import main; "
            "rc = main(sys.argv[1:]); "
            f"print(rc, [k for k in {HEAVY!r} if k in sys.modules])")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.csv").write_text("")
    cases = {
        "--manifest /nonexistent: no such file": ["--checkpoint", "mammoclip-tiny", "--manifest", "/nonexistent"],
        "--checkpoint /nonexistent: neither": ["--checkpoint", "/nonexistent", "--manifest", str(tmp_path / "m")],
        "the folder has no manifest.csv": ["--checkpoint", "mammoclip-tiny", "--manifest", str(tmp_path)],
    }
    for message, args in cases.items():
        proc = subprocess.run([sys.executable, "-c", code, "zeroshot", *args, "--task", "mass"], capture_output=True,
                              text=True, check=True)
        assert proc.stdout.strip() == "2 []", (message, proc.stdout)
        assert message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


@pytest.mark.parametrize(("argv", "suggestion"), [
    (["zeroshto"], "did you mean 'zeroshot'"),
    (["pretrian"], "did you mean 'pretrain'"),
    (["text", "stat"], "did you mean 'stats'"),
    (["models", "lsit"], "did you mean 'list'"),
    (["zeroshot", "--checkpoint", "x", "--manifest", "m", "--task", "mass", "--aggregate", "maxx"],
     "did you mean 'max'"),
])
def test_misspelt_command_gets_a_suggestion(argv: list[str], suggestion: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert suggestion in capsys.readouterr().err


def test_every_command_has_a_description_and_shows_defaults() -> None:
    for name, sub in _walk(build_parser()):
        assert sub.description and "\n" not in sub.description.strip().split(". ")[0], name
    help_text = dict(_walk(build_parser()))["mammoclip zeroshot"].format_help()
    assert "(default: 16)" in help_text and "(default: 1000)" in help_text and "(default: test)" in help_text
    assert "(default: None)" not in help_text and "(default: False)" not in help_text


def test_help_is_plain_text() -> None:
    assert plain_text("see :class:`~mammoclip.demo.DemoConfig` and ``--size`` in :func:`run`") == \
        "see DemoConfig and --size in run"
    for name, sub in _walk(build_parser()):
        text = sub.format_help()
        assert "``" not in text and not re.search(r":(class|func|mod|data|meth):`", text), name


def test_text_commands_take_out_and_still_take_output(tmp_path: Path) -> None:
    report = tmp_path / "r.txt"
    report.write_text("FINDINGS: No suspicious mass.\nIMPRESSION: Negative. BI-RADS 1.\n")
    for flag in ("--out", "--output"):
        out = tmp_path / f"parsed{flag}.json"
        assert main(["text", "parse", str(report), flag, str(out)]) == 0
        assert json.loads(out.read_text())["birads"] == 1
    help_text = dict(_walk(build_parser()))["mammoclip text parse"].format_help()
    assert "--out FILE" in help_text and "--output" not in help_text


@pytest.mark.slow
def test_zeroshot_without_out_writes_a_timestamped_run_and_says_what_it_scored(
        make_cohort: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No --out: runs/zeroshot-<timestamp>; the summary gives n, the split and CIs."""
    from mammoclip.data.manifest import SPLIT_SOURCE_COLUMN, load_bundle

    monkeypatch.chdir(tmp_path)
    cohort = make_cohort(n_patients=8, seed=1, size=(128, 80), prevalence={"mass": 0.5}).parent  # tiny's input
    bundle = load_bundle(cohort)
    bundle.images[SPLIT_SOURCE_COLUMN] = "hash"  # as the folder adapter writes it
    bundle.save(cohort)
    args = ["zeroshot", "--checkpoint", "mammoclip-tiny", "--manifest", str(cohort), "--task", "mass",
            "--workers", "0", "--n-boot", "50"]
    assert main(args) == 0
    out = capsys.readouterr().out
    runs = list((tmp_path / "runs").glob("zeroshot-*"))
    assert len(runs) == 1 and re.fullmatch(r"zeroshot-\d{8}-\d{6}", runs[0].name)
    assert (runs[0] / "results.json").exists() and out.rstrip().endswith(f"results -> runs/{runs[0].name}")
    test = bundle.images[bundle.images["split"] == "test"]
    positives = int((test["mass"] == 1).sum())
    assert (f"zeroshot mass on split 'test': {len(test)} images, {test['patient_id'].nunique()} patients"
            in out), out
    assert f"{positives} positive images" in out
    assert re.search(r"image +auc \d\.\d{3} \(95% CI \d\.\d{3}-\d\.\d{3}", out), out
    assert "drawn by patient hash" in out and "--split all" in out
    # --split all: every image, and no hash note
    assert main([*args, "--split", "all", "--out", "all"]) == 0
    out = capsys.readouterr().out
    assert f"on every split: {len(bundle.images)} images" in out and "drawn by patient hash" not in out
