"""Every numeric option of every command is checked while the command line is parsed.

A bad value exits with code 2 and one ``error: argument --OPT: ...`` line (argparse's format) before
any file is read or model built; good values (including the edges of each range) still parse.
"""

from __future__ import annotations

import argparse

import pytest

from mammoclip.cli import _options
from mammoclip.cli.main import build_parser, main

EVAL = ["--checkpoint", "x", "--manifest", "m", "--out", "o"]
COMMANDS: dict[str, list[str]] = {
    "zeroshot": ["zeroshot", *EVAL, "--task", "mass"],
    "retrieval": ["retrieval", *EVAL],
    "probe": ["probe", *EVAL, "--task", "mass"],
    "finetune": ["finetune", *EVAL, "--task", "mass"],
    "embed": ["embed", *EVAL],
    "neighbors": ["neighbors", "--index", "i.npz", "--text", "mass"],
    "preprocess": ["preprocess", "in", "--out", "o"],
    "synth": ["synth", "--out", "o", "--patients", "1"],
    "demo": ["demo"],
    "text stats": ["text", "stats", "m"],
}

# (command, option, bad value, what the message says)
BAD: list[tuple[str, str, str, str]] = [
    *[(c, "--batch-size", v, "positive integer") for c in ("zeroshot", "retrieval", "probe", "finetune", "embed")
      for v in ("0", "-3", "1.5", "many")],
    *[(c, "--workers", "-1", "integer >= 0") for c in ("zeroshot", "retrieval", "probe", "finetune", "embed",
                                                      "preprocess")],
    ("preprocess", "--workers", "two", "integer >= 0"),
    ("synth", "--workers", "0", "positive integer"),
    ("demo", "--workers", "0", "positive integer"),
    *[(c, "--val-fraction", v, "fraction in (0, 1)") for c in ("probe", "finetune")
      for v in ("1.5", "1", "0", "-0.2", "nan", "inf", "x")],
    *[(c, "--n-boot", "-5", "integer >= 0") for c in ("zeroshot", "probe", "finetune")],
    *[("retrieval", "--ks", v, m) for v, m in (("0,-1", "got '0' (in the list"), ("1,-5", "got '-5' (in the list"), ("1,,5", "empty items"),
                                              ("", "empty items"), ("1,x", "positive integer"))],
    *[(c, "--size", v, m) for c in ("preprocess", "synth")
      for v, m in (("100000x100000", "[8, 16384]"), ("16385x912", "[8, 16384]"), ("0x10", "[8, 16384]"),
                   ("4x4", "[8, 16384]"), ("big", "HEIGHTxWIDTH"), ("1520x", "HEIGHTxWIDTH"),
                   ("-64x48", "[8, 16384]"))],
    ("finetune", "--epochs", "0", "positive integer"),
    ("demo", "--epochs", "-2", "positive integer"),
    *[("finetune", "--lr", v, "number > 0") for v in ("0", "-1e-3", "inf", "nan", "fast")],
    ("finetune", "--weight-decay", "-0.1", "number >= 0"),
    *[("finetune", "--dropout", v, "rate in [0, 1)") for v in ("1", "-0.1", "1.5")],
    ("finetune", "--max-steps", "0", "positive integer"),
    *[(c, "--seed", v, "integer seed") for c in ("synth", "demo") for v in ("-1", "4294967296", "0.5")],
    *[(c, "--seeds", v, "integer seed") for c in ("probe", "finetune") for v in ("0,-1", "1,a")],
    *[(c, "--fractions", v, "fraction in (0, 1]") for c in ("probe", "finetune") for v in ("0.5,1.5", "0", "a,b")],
    *[("synth", "--typo-rate", v, "probability in [0, 1]") for v in ("1.5", "-0.1", "nan")],
    ("synth", "--patients", "0", "positive integer"),
    ("demo", "--patients", "-4", "positive integer"),
    ("neighbors", "-k", "0", "positive integer"),
    ("text stats", "--max-length", "0", "positive integer"),
]


@pytest.mark.parametrize(("command", "option", "value", "message"), BAD,
                         ids=[f"{c}{o}={v}" for c, o, v, _ in BAD])
def test_bad_value_exits_2_with_one_line_naming_the_option(command: str, option: str, value: str, message: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*COMMANDS[command], f"{option}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert f"error: argument {option}:" in errors[0] and message in errors[0], errors[0]
    assert repr(value) in errors[0], errors[0]


# (command, option, value, attribute, parsed value)
GOOD: list[tuple[str, str, str, str, object]] = [
    ("zeroshot", "--batch-size", "1", "batch_size", 1),
    ("embed", "--workers", "0", "workers", 0),
    ("zeroshot", "--n-boot", "0", "n_boot", 0),
    ("probe", "--val-fraction", "0.5", "val_fraction", 0.5),
    ("retrieval", "--ks", "1,5, 20", "ks", [1, 5, 20]),
    ("preprocess", "--size", "64x48", "size", (64, 48)),
    ("preprocess", "--size", "16384X8", "size", (16384, 8)),
    ("synth", "--size", "96x64", "size", (96, 64)),
    ("finetune", "--lr", "1e-4", "lr", 1e-4),
    ("finetune", "--weight-decay", "0", "weight_decay", 0.0),
    ("finetune", "--dropout", "0", "dropout", 0.0),
    ("finetune", "--fractions", "0.1,1", "fractions", [0.1, 1.0]),
    ("probe", "--seeds", "0,4294967295", "seeds", [0, 4294967295]),
    ("synth", "--seed", "4294967295", "seed", 4294967295),
    ("synth", "--typo-rate", "1", "typo_rate", 1.0),
    ("synth", "--typo-rate", "0", "typo_rate", 0.0),
    ("preprocess", "--workers", "0", "workers", 0),
    ("demo", "--epochs", "1", "epochs", 1),
    ("neighbors", "-k", "3", "k", 3),
    ("text stats", "--max-length", "512", "max_length", 512),
]


@pytest.mark.parametrize(("command", "option", "value", "attr", "expected"), GOOD,
                         ids=[f"{c}{o}={v}" for c, o, v, _, _ in GOOD])
def test_good_values_parse(command: str, option: str, value: str, attr: str, expected: object) -> None:
    args = build_parser().parse_args([*COMMANDS[command], option, value])
    assert getattr(args, attr) == expected


def test_string_defaults_go_through_the_same_types() -> None:
    """argparse converts a string default with ``type``: the commands see parsed values."""
    assert build_parser().parse_args(COMMANDS["retrieval"]).ks == [1, 5, 10]
    assert build_parser().parse_args(COMMANDS["preprocess"]).size == (1520, 912)
    probe = build_parser().parse_args(COMMANDS["probe"])
    assert probe.fractions == [0.1, 0.5, 1.0] and probe.seeds == [0, 1, 2]
    assert _options.sweep_kwargs(probe)["fractions"] == [0.1, 0.5, 1.0]


def _actions(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                out.extend(_actions(sub, f"{prefix} {name}"))
        else:
            out.append((prefix, action))
    return out


def test_every_numeric_option_of_every_command_is_range_checked() -> None:
    """A bare ``type=int``/``type=float`` accepts -5, 0, nan: every numeric option uses a checked type
    (or a fixed set of choices), so a new option cannot slip through unchecked."""
    actions = _actions(build_parser(), "mammoclip")
    assert len({p for p, _ in actions}) >= 18  # every command and sub-command was walked
    bare = [f"{p} {'/'.join(a.option_strings) or a.dest}" for p, a in actions
            if a.type in (int, float) and a.choices is None]
    assert bare == []
    numeric = {p + " " + a.option_strings[0] for p, a in actions
               if a.option_strings and getattr(a.type, "__module__", "") == _options.__name__}
    for name in ("mammoclip zeroshot --workers", "mammoclip retrieval --ks", "mammoclip preprocess --size",
                 "mammoclip finetune --lr", "mammoclip probe --val-fraction", "mammoclip synth --seed"):
        assert name in numeric, name


def test_image_size_bounds_are_the_documented_ones() -> None:
    assert _options.image_size(f"{_options.MAX_IMAGE_SIDE}x{_options.MIN_IMAGE_SIDE}") == (16384, 8)
    with pytest.raises(argparse.ArgumentTypeError, match=r"\[8, 16384\]"):
        _options.image_size("100000x100000")
