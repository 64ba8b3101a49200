"""Options and helpers the commands share, defined once: option types and the evaluation flags.

**Option types.** Every numeric option of every command is parsed by one of the ``type=`` callables
below (:func:`positive_int`, :func:`non_negative_int`, :func:`seed`, :func:`positive_float`,
:func:`non_negative_float`, :func:`fraction`, :func:`open_fraction`, :func:`probability`,
:func:`dropout_rate`, :func:`image_size` and the comma lists :data:`positive_int_list`,
:data:`seed_list`, :data:`fraction_list`). A bad value therefore fails while the command line is
parsed, before any file is read or model built, as argparse's one-line
``mammoclip CMD: error: argument --OPT: ...`` with exit code 2, instead of a traceback or a
meaningless result later.

**Evaluation flags.** ``zeroshot``, ``retrieval``, ``probe``, ``finetune``, ``embed`` and
``neighbors`` build their parsers from these helpers, so a shared flag has one spelling, one default
and one help text. The module name starts with ``_``: :mod:`mammoclip.cli.main` skips it when it
discovers commands.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any, TypedDict

from mammoclip.errors import ConfigError

#: Largest image side ``--size`` accepts. The largest full-field mammography detectors are under
#: 6000 pixels a side; 16384 leaves room for upsampling experiments while refusing sizes whose one
#: 16-bit image (16384 x 16384 x 2 bytes = 512 MiB, before any float copy) cannot be processed.
MAX_IMAGE_SIDE = 16384
#: Smallest image side: below it no crop, resize or CNN tower has anything to work on.
MIN_IMAGE_SIDE = 8
#: Largest seed: numpy's legacy ``RandomState`` (used by some libraries we seed) takes 32-bit seeds.
MAX_SEED = 2**32 - 1

# --------------------------------------------------------------------------------- option types ---


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, epochs, patients, steps, K of Recall@K)."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (``--workers``, where 0 means "in this process" or "auto"; ``--n-boot``, where 0
    means no confidence intervals)."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def seed(text: str) -> int:
    """A seed: an integer in ``[0, MAX_SEED]`` (numpy refuses negative seeds)."""
    value = _int(text, f"an integer seed in [0, {MAX_SEED}]")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer seed in [0, {MAX_SEED}], got {text!r}")
    return value


def _float_in(low: float, high: float | None, *, low_open: bool, high_open: bool, what: str,
              name: str) -> Callable[[str], float]:
    """A ``type=`` callable for a finite float in an interval (``what`` says which, for the message)."""

    def parse(text: str) -> float:
        value = _float(text, what)
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        if not (above and below):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = f"A finite number: {what}."
    return parse


#: A finite number > 0 (learning rates).
positive_float = _float_in(0.0, None, low_open=True, high_open=False, what="a number > 0", name="positive_float")
#: A finite number >= 0 (weight decay).
non_negative_float = _float_in(0.0, None, low_open=False, high_open=False, what="a number >= 0",
                               name="non_negative_float")
#: A share of something that must not be empty: (0, 1] (label fractions).
fraction = _float_in(0.0, 1.0, low_open=True, high_open=False, what="a fraction in (0, 1]", name="fraction")
#: A share carved out of a set that must keep the rest: (0, 1) (``--val-fraction``).
open_fraction = _float_in(0.0, 1.0, low_open=True, high_open=True, what="a fraction in (0, 1)",
                          name="open_fraction")
#: A probability or rate: [0, 1] (``--typo-rate``).
probability = _float_in(0.0, 1.0, low_open=False, high_open=False, what="a probability in [0, 1]",
                        name="probability")
#: A dropout rate: [0, 1) (1 would drop everything).
dropout_rate = _float_in(0.0, 1.0, low_open=False, high_open=True, what="a rate in [0, 1)", name="dropout_rate")


def image_size(text: str) -> tuple[int, int]:
    """``"1520x912"`` -> ``(1520, 912)`` (height x width), each side in ``[MIN_IMAGE_SIDE, MAX_IMAGE_SIDE]``.

    Checked here so that ``--size 100000x100000`` fails once, up front, and not image by image.
    """
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like HEIGHTxWIDTH (e.g. 1520x912), got {text!r}") from None
    if not (MIN_IMAGE_SIDE <= h <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= w <= MAX_IMAGE_SIDE):
        raise argparse.ArgumentTypeError(
            f"each side must be in [{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}] pixels, got {text!r}")
    return h, w


def comma_list(item: Callable[[str], Any], name: str) -> Callable[[str], list[Any]]:
    """A ``type=`` callable for a non-empty comma list whose items ``item`` parses (``"1,5,10"``)."""

    def parse(text: str) -> list[Any]:
        parts = [x.strip() for x in str(text).split(",")]
        if not any(parts) or not all(parts):
            raise argparse.ArgumentTypeError(f"must be a comma-separated list without empty items, got {text!r}")
        out = []
        for part in parts:
            try:
                out.append(item(part))
            except argparse.ArgumentTypeError as err:
                raise argparse.ArgumentTypeError(f"{err} (in the list {text!r})") from None
        return out

    parse.__name__ = parse.__qualname__ = name
    return parse


#: ``--ks``: positive integers.
positive_int_list = comma_list(positive_int, "positive_int_list")
#: ``--seeds``: seeds.
seed_list = comma_list(seed, "seed_list")
#: ``--fractions``: label fractions in (0, 1].
fraction_list = comma_list(fraction, "fraction_list")

# --------------------------------------------------------------------------- evaluation flags ---


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
    parser.add_argument("--batch-size", type=positive_int, default=16, help="images per forward pass")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="DataLoader workers decoding images (0: in the main process)")
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
    parser.add_argument("--n-boot", type=non_negative_int, default=1000,
                        help="bootstrap replicates of the 95%% CIs (0: no intervals)")


def add_sweep_args(parser: argparse.ArgumentParser, *, fractions: str, seeds: str, seeds_help: str) -> None:
    """``--task`` and the grid a probe or fine-tune run sweeps: label fractions x seeds x inits.

    Args:
        parser: The command's parser.
        fractions: Default of ``--fractions`` (a comma list).
        seeds: Default of ``--seeds`` (a comma list).
        seeds_help: Help of ``--seeds`` (what the seed drives differs between commands).
    """
    add_task_arg(parser)
    parser.add_argument("--fractions", type=fraction_list, default=fractions,
                        help="label fractions of the training patients, each in (0, 1]")
    parser.add_argument("--seeds", type=seed_list, default=seeds, help=seeds_help)
    parser.add_argument("--init", default="pretrained", help="comma list of pretrained|random|imagenet")


def add_selection_args(parser: argparse.ArgumentParser, *, val_fraction_help: str) -> None:
    """``--val-fraction``, ``--aggregate`` and ``--n-boot`` of a probe or fine-tune run.

    Args:
        parser: The command's parser.
        val_fraction_help: Help of ``--val-fraction`` (what the held-out patients select differs).
    """
    parser.add_argument("--val-fraction", type=open_fraction, default=0.2, help=val_fraction_help)
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

    The task is looked up first so a typo fails before any model is built; ``--fractions`` and
    ``--seeds`` were already checked by their option types, a malformed ``--init`` raises a
    ConfigError that names it.
    """
    from mammoclip.evaluate.tasks import get_task

    get_task(args.task)
    return SweepKwargs(
        fractions=list(args.fractions),
        seeds=list(args.seeds),
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




# ------------------------------------------------------------------ run folders and pre-flight ---

#: Folder (relative to the working directory) that holds the default run folders.
RUNS_DIR = "runs"
#: Name of the manifest inside a folder given as ``--manifest`` (``mammoclip.data.manifest.MANIFEST_FILE``,
#: repeated here because importing that module imports pandas; tests/cli/test_hints.py checks they agree).
MANIFEST_NAME = "manifest.csv"


def default_run_dir(command: str) -> str:
    """``runs/<command>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3`` ... when two runs start in the same second)."""
    import time
    from pathlib import Path

    base = Path(RUNS_DIR) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return str(folder)


def add_out_arg(parser: argparse.ArgumentParser, *, what: str = "run folder", file: str | None = None) -> None:
    """``--out``, optional: an evaluation run lands in ``runs/<command>-<timestamp>`` by default.

    Args:
        parser: The command's parser.
        what: What ``--out`` names, for the help text.
        file: The file name inside the default run folder when ``--out`` names a file.
    """
    default = f"{RUNS_DIR}/{parser.prog.split()[-1]}-YYYYmmdd-HHMMSS" + (f"/{file}" if file else "")
    parser.add_argument("--out", default=None, help=f"{what} (default: {default}, printed at the end)")
    parser.set_defaults(out_file=file)


def resolve_out(args: argparse.Namespace) -> str:
    """Fill in ``args.out`` when it was not given (see :func:`add_out_arg`); returns it."""
    if not args.out:
        folder = default_run_dir(str(args.command))
        file = getattr(args, "out_file", None)
        args.out = f"{folder}/{file}" if file else folder
    return str(args.out)


def _registered_model_names() -> set[str]:
    """The registry's model names, read from its JSON files without importing the model package
    (``mammoclip.models`` imports torch and timm: seconds, where this check must take milliseconds)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mammoclip.models")
    names: set[str] = set()
    for location in (spec.submodule_search_locations or []) if spec else []:
        for path in sorted(Path(location, "model_configs").glob("*.json")):
            try:
                names.add(str(json.loads(path.read_text(encoding="utf-8")).get("name", path.stem)))
            except (OSError, ValueError):
                names.add(path.stem)
    return names


def check_inputs(args: argparse.Namespace) -> None:
    """Fail in milliseconds on a missing ``--manifest`` or an unknown ``--checkpoint``.

    Called by the evaluation commands before they import torch, pandas or the model code, which takes
    seconds (tens of seconds on a loaded machine): a typo in a path must not cost that wait.

    Raises:
        ConfigError: naming the option, the value and what was expected.
    """
    from pathlib import Path

    manifest = getattr(args, "manifest", None)
    if manifest is not None:
        path = Path(manifest)
        if not path.exists():
            raise ConfigError(f"--manifest {manifest}: no such file or folder")
        if path.is_dir() and not (path / MANIFEST_NAME).is_file():
            raise ConfigError(f"--manifest {manifest}: the folder has no {MANIFEST_NAME} "
                              "(build one with `mammoclip manifest build SOURCE --out DIR`)")
    checkpoint = getattr(args, "checkpoint", None)
    if checkpoint is not None and not Path(checkpoint).exists():
        names = _registered_model_names()
        if str(checkpoint) not in names:
            raise ConfigError(f"--checkpoint {checkpoint}: neither a checkpoint folder or file nor a registered "
                              f"model (registered: {', '.join(sorted(names))}; see `mammoclip models list`)")


# ------------------------------------------------------------------------------------ summary ---


def split_counts(bundle: Any, task: str | None, split: str) -> dict[str, Any]:
    """What a run scored: images, patients and breasts of ``split`` (``all``: every row), and for a
    task, the images that carry its label and how many of them fall in each class."""
    from mammoclip.data.manifest import breast_key

    images = bundle.images if split == "all" else bundle.images[bundle.images["split"] == split]
    counts: dict[str, Any] = {"split": split}
    if task is not None:
        from mammoclip.evaluate.tasks import get_task, task_labels

        spec = get_task(task)
        if spec.column in images.columns and images[spec.column].notna().any():
            labels = task_labels(images, spec)
            images = images[labels >= 0]
            counts["per_class"] = {name: int((labels == i).sum()) for i, name in enumerate(spec.class_names)}
            counts["binary"] = spec.binary
    counts.update(n_images=int(len(images)), n_patients=int(images["patient_id"].nunique()),
                  n_breasts=int(breast_key(images).nunique()) if len(images) else 0)
    return counts


def _metric_lines(metrics: dict[str, Any]) -> list[str]:
    """``  image  auc 0.712 (95% CI 0.601-0.815)`` for each level's headline metrics."""
    lines = []
    for level, values in metrics.items():
        if not isinstance(values, dict):
            continue
        plain = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if plain:  # point estimates (Recall@K): no interval is computed for them
            lines.append(f"  {level:<18} " + ", ".join(f"{k} {float(v):.3f}" for k, v in plain.items()) + " (no CI)")
        for name in ("auc", "accuracy", "balanced_accuracy"):
            est = values.get(name)
            if not isinstance(est, dict) or est.get("value") is None:
                continue
            value = float(est["value"])
            low, high = est.get("ci_low"), est.get("ci_high")
            ci = (f"95% CI {float(low):.3f}-{float(high):.3f}, patient bootstrap"
                  if low is not None and high is not None and math.isfinite(float(low)) else "no CI (--n-boot 0 "
                  "or too few patients)")
            lines.append(f"  {level:<18} {name} {value:.3f} ({ci})" if math.isfinite(value)
                         else f"  {level:<18} {name} undefined (a single class)")
    return lines


def print_summary(results: dict[str, Any], out: str | None, *, counts: dict[str, Any] | None = None,
                  split_note: str = "") -> None:
    """What was scored and how well, for a person, then one JSON line of headline numbers for scripts.

    Args:
        results: The run's results dict (``metrics``, ``summary``, ``notes``).
        out: The run folder (or file), printed last.
        counts: From :func:`split_counts`: the n behind the numbers.
        split_note: How the split was used, e.g. "fitted on train, selected on val".
    """
    line = dict(results.get("summary", {}))
    if counts is not None:
        what = f"{results.get('kind', 'run')}"
        if results.get("task") and results.get("kind") != "retrieval":
            what += f" {results['task']}"
        split = counts["split"]
        parts = [f"{counts['n_images']} images", f"{counts['n_patients']} patients", f"{counts['n_breasts']} breasts"]
        per_class = counts.get("per_class")
        if per_class:
            if counts.get("binary"):
                parts.append(f"{list(per_class.values())[1]} positive images")
            else:
                parts.append("per class " + ", ".join(f"{k} {v}" for k, v in per_class.items()))
        where = "every split" if split == "all" else f"split {split!r}"
        print(f"{what} on {where}{f' ({split_note})' if split_note else ''}: " + ", ".join(parts))
        line.update({k: counts[k] for k in ("split", "n_images", "n_patients", "n_breasts")})
        if per_class:
            line["n_per_class"] = per_class
    for text in _metric_lines(results.get("metrics", {})):
        print(text)
    for note in results.get("notes", []):
        print(f"note: {note}")
    if out:
        line["out"] = str(out)
    print(json.dumps(line))
    if out:
        print(f"results -> {out}")
