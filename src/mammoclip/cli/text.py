"""``mammoclip text``: parse radiology reports and summarise a report corpus.

* ``mammoclip text parse REPORT.txt [...]`` prints sections, structured fields and per-breast
  sentences as JSON.
* ``mammoclip text stats MANIFEST [--tokenizer DIR]`` summarises the ``reports.csv`` beside a
  manifest: section coverage, lengths, BI-RADS/density distributions, agreement with the
  manifest's labels and, with a tokenizer, token lengths and truncation warnings.
  ``mammoclip text stats REPORT_DIR`` (a folder without ``manifest.csv``, or ``--reports-dir DIR``)
  does the same for every ``*.txt`` under a folder, with no labels to agree with.
* ``mammoclip text prompts [TASK] [--style paper|ensemble]`` lists the zero-shot tasks or prints
  one task's prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mammoclip.cli._options import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``text`` command group."""
    parser = subparsers.add_parser("text", help="parse radiology reports and summarise a report corpus")
    group = parser.add_subparsers(dest="text_command", metavar="<subcommand>")
    parser.set_defaults(func=lambda args: _usage(parser))

    parse = group.add_parser("parse", help="print a report's sections and fields as JSON")
    parse.add_argument("reports", nargs="+", type=Path, help="report text file(s)")
    parse.add_argument("--no-deidentify", action="store_true", help="keep dates, names and record numbers")
    _add_out(parse, "write the JSON here instead of stdout")
    parse.set_defaults(func=_parse)

    stats = group.add_parser("stats", help="summarise the reports of a manifest or a folder of report files")
    stats.add_argument("manifest", type=Path, nargs="?",
                       help="manifest.csv (or its folder) with reports.csv beside it, or a folder of *.txt reports")
    stats.add_argument("--reports-dir", type=Path,
                       help="read every *.txt under this folder (recursively) instead of a manifest's reports.csv")
    stats.add_argument("--tokenizer", type=Path, help="local Hugging Face tokenizer folder for token lengths")
    stats.add_argument("--max-length", type=positive_int, default=None, help="text encoder limit (default: 256, the paper's)")
    _add_out(stats, "also write the summary as JSON here")
    stats.set_defaults(func=_stats)

    prompts = group.add_parser("prompts", help="list zero-shot tasks or print a task's prompts as JSON")
    prompts.add_argument("task", nargs="?", help="task name (omit to list the tasks)")
    prompts.add_argument("--style", default="paper", help="'paper' (two-word pairs) or 'ensemble'")
    prompts.set_defaults(func=_prompts)


def _add_out(parser: argparse.ArgumentParser, text: str) -> None:
    """``--out FILE``, the spelling of every other command; ``--output`` (the old one) still works, unlisted."""
    parser.add_argument("--out", dest="output", type=Path, metavar="FILE", help=text)
    parser.add_argument("--output", dest="output", type=Path, help=argparse.SUPPRESS)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _emit(data: Any, output: Path | None) -> None:
    text = json.dumps(data, indent=2)
    if output is None:
        print(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n", encoding="utf-8")


def _parse(args: argparse.Namespace) -> int:
    from mammoclip.text.reports import read_report

    results = [read_report(p, deidentify_text=not args.no_deidentify).to_dict() for p in args.reports]
    for result in results:
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
    _emit(results[0] if len(results) == 1 else results, args.output)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from mammoclip.constants import TEXT_MAX_LENGTH
    from mammoclip.data.manifest import MANIFEST_FILE, load_bundle
    from mammoclip.errors import ConfigError, DataError
    from mammoclip.text.stats import corpus_summary, folder_summary

    if (args.manifest is None) == (args.reports_dir is None):
        raise ConfigError("text stats: give a manifest (or a folder of reports) or --reports-dir, exactly one")
    max_length = args.max_length or TEXT_MAX_LENGTH
    folder = args.reports_dir
    if folder is None and args.manifest.is_dir() and not (args.manifest / MANIFEST_FILE).is_file():
        folder = args.manifest  # a plain folder of report files: no manifest to read
    if folder is not None:
        summary = folder_summary(folder, tokenizer=args.tokenizer, max_length=max_length)
    else:
        bundle = load_bundle(args.manifest)
        if not len(bundle.reports):
            raise DataError(f"{args.manifest}: no reports.csv with rows beside the manifest")
        summary = corpus_summary(bundle.reports, bundle.images, tokenizer=args.tokenizer, max_length=max_length)
    _print_summary(summary)
    if args.output is not None:
        _emit(summary, args.output)
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from mammoclip.text.prompts import list_zero_shot_tasks, zero_shot_prompts, zero_shot_task

    if args.task is None:
        for name in list_zero_shot_tasks():
            info = zero_shot_task(name)
            print(f"{name:<14} column {info.label_column:<14} classes {', '.join(info.classes)}")
        return 0
    _emit(zero_shot_prompts(args.task, args.style), None)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    print(f"reports: {s['n_reports']} ({s['n_parsed']} parsed), "
          f"{s['sentences_per_report']:.1f} sentences and {s['chars']['mean']:.0f} characters on average")
    print("section coverage: " + ", ".join(f"{k} {v:.0%}" for k, v in s["section_coverage"].items()))
    print("BI-RADS: " + ", ".join(f"{k}: {v}" for k, v in s["birads"].items()))
    print("density: " + ", ".join(f"{k}: {v}" for k, v in s["density"].items()))
    if s.get("non_utf8"):
        print(f"not UTF-8, read with a fallback codec: {len(s['non_utf8'])} of {s['n_reports']} files: "
              + ", ".join(f"{k} ({v})" for k, v in s["non_utf8"].items()))
    for column, agreement in s.get("label_agreement", {}).items():
        if agreement["agreement"] is not None:
            print(f"{column} agrees with the manifest for {agreement['agreement']:.0%} of {agreement['n']} reports")
    for section, stats in s.get("tokens", {}).items():
        print(f"tokens ({section}): mean {stats['mean']:.1f}, p95 {stats['p95']:.0f}, max {stats['max']}, "
              f"{stats['n_truncated']} over {stats['max_length']}")
    for warning in s["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
