"""Options and helpers the evaluation commands share, defined once.

``zeroshot``, ``retrieval``, ``probe``, ``finetune``, ``embed`` and ``neighbors`` build their parsers
from these helpers, so a shared flag has one spelling, one default and one help text. The module name
starts with ``_``: :mod:`mammoclip.cli.main` skips it when it discovers commands.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, TypedDict

from mammoclip.errors import ConfigError


def add_model_args(parser: argparse.ArgumentParser, *, manifest: bool = True) -> None:
    """Model, manifest and data-loading options shared by the evaluation commands.

    Args:
        parser: The command's parser.
        manifest: Also add ``--manifest`` (every command that reads a cohort does).
    """
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory or registry model name (see `mammoclip models list`)")
    if manifest:
        parser.add_argument("--manifest", required=True, help="manifest.csv (or its folder)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers decoding images")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--allow-resize", action="store_true",
                        help="resize images whose size differs from the model's input instead of failing")


def add_task_arg(parser: argparse.ArgumentParser) -> None:
    """``--task``: the registered evaluation task (checked by ``get_task`` when the command runs)."""
    parser.add_argument("--task", required=True, help="mass|calcification|distortion|asymmetry|malignancy|density|birads")


def add_aggregate_arg(parser: argparse.ArgumentParser) -> None:
    """``--aggregate``: how the views of one breast are combined into a per-breast score."""
    parser.add_argument("--aggregate", default="max", choices=("max", "mean"), help="per-breast view aggregation")


def add_n_boot_arg(parser: argparse.ArgumentParser) -> None:
    """``--n-boot``: bootstrap replicates behind every reported 95% CI."""
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of the 95%% CIs")


def add_sweep_args(parser: argparse.ArgumentParser, *, fractions: str, seeds: str, seeds_help: str) -> None:
    """``--task`` and the grid a probe or fine-tune run sweeps: label fractions x seeds x inits.

    Args:
        parser: The command's parser.
        fractions: Default of ``--fractions`` (a comma list).
        seeds: Default of ``--seeds`` (a comma list).
        seeds_help: Help of ``--seeds`` (what the seed drives differs between commands).
    """
    add_task_arg(parser)
    parser.add_argument("--fractions", default=fractions, help="label fractions of the training patients")
    parser.add_argument("--seeds", default=seeds, help=seeds_help)
    parser.add_argument("--init", default="pretrained", help="comma list of pretrained|random|imagenet")


def add_selection_args(parser: argparse.ArgumentParser, *, val_fraction_help: str) -> None:
    """``--val-fraction``, ``--aggregate`` and ``--n-boot`` of a probe or fine-tune run.

    Args:
        parser: The command's parser.
        val_fraction_help: Help of ``--val-fraction`` (what the held-out patients select differs).
    """
    parser.add_argument("--val-fraction", type=float, default=0.2, help=val_fraction_help)
    add_aggregate_arg(parser)
    add_n_boot_arg(parser)


def parse_list(text: str, kind: type, option: str) -> list:
    """``"0.1,0.5"`` -> ``[0.1, 0.5]``; a ConfigError names the option on bad input."""
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{option}: cannot parse {text!r} as a comma-separated list of {kind.__name__}") from err


class SweepKwargs(TypedDict):
    """Keyword arguments that ``run_probe`` and ``run_finetune`` both take, read from the options."""

    fractions: list[float]
    seeds: list[int]
    inits: list[str]
    out_dir: str
    aggregate: str
    n_boot: int
    allow_resize: bool
    model_name: str


def sweep_kwargs(args: argparse.Namespace) -> SweepKwargs:
    """Check ``--task`` and parse the sweep options into ``run_probe``/``run_finetune`` arguments.

    The task is looked up first so a typo fails before any model is built; a malformed list raises a
    ConfigError that names its option.
    """
    from mammoclip.evaluate.tasks import get_task

    get_task(args.task)
    return SweepKwargs(
        fractions=parse_list(args.fractions, float, "--fractions"),
        seeds=parse_list(args.seeds, int, "--seeds"),
        inits=parse_list(args.init, str, "--init"),
        out_dir=args.out, aggregate=args.aggregate, n_boot=args.n_boot, allow_resize=args.allow_resize,
        model_name=str(args.checkpoint),
    )


def load_model(args: argparse.Namespace) -> Any:
    """The model named by ``--checkpoint``, on ``--device``, in eval mode."""
    import torch

    from mammoclip.evaluate.features import resolve_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_model(args.checkpoint).to(device).eval()


def load_manifest(args: argparse.Namespace) -> Any:
    """The bundle named by ``--manifest``."""
    from mammoclip.data.manifest import load_bundle

    return load_bundle(args.manifest)


def print_summary(results: dict[str, Any], out: str | None) -> None:
    """One JSON line of headline numbers (and where the run directory is)."""
    line = dict(results.get("summary", {}))
    if out:
        line["out"] = str(out)
    print(json.dumps(line))
