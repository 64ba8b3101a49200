"""Checkpoints: a directory with ``model.safetensors`` + ``config.json``; import of the official ``.tar``.

Layout written by :func:`save_checkpoint`::

    OUT_DIR/
      model.safetensors   # the state dict (no pickle)
      config.json         # {"format", "format_version", "model" (full model config incl. preprocess),
                          #  "tokenizer" (source + saved folder), "provenance", "extra"}
      tokenizer/          # the vocabulary files, so the checkpoint loads without its original source

Loading never executes pickled code: safetensors for our format, the restricted unpickler of
:mod:`mammoclip.models.unpickle` for the official Mammo-CLIP files and other ``torch.save`` files
(tensors and plain containers are rebuilt, every other global becomes an inert placeholder;
docs/original.md §3 "Checkpoint state_dict layout" and §5 "Checkpoint dict keys"). Paths stored inside
the official config (cluster paths, HF ``cache_dir``) are never used. A damaged folder (a truncated or
empty ``model.safetensors``, a ``config.json`` that is not JSON or lacks its model) fails with one
:class:`CheckpointError` line naming the file, and a tokenizer is read from the checkpoint folder, never
from a hub unless the caller allows it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import numbers
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import mammoclip
from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models.clip import MammoCLIP
from mammoclip.models.config import MammoClipCfg
from mammoclip.models.image import lukemelas_to_timm
from mammoclip.models.pretrained import resolve_source
from mammoclip.models.registry import resolve_config
from mammoclip.models.text import get_tokenizer
from mammoclip.models.unpickle import RestrictedLoad, restricted_load

log = logging.getLogger(__name__)

FORMAT = "mammoclip"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
TOKENIZER_DIR = "tokenizer"

#: Official image encoders, keyed by the width of their conv head (docs/original.md §3: B5 2048, B2 1408).
OFFICIAL_ARCHS: dict[str, dict[str, Any]] = {
    "b5": {"config": "mammoclip-b5-paper", "head_width": 2048},
    "b2": {"config": "mammoclip-b2-paper", "head_width": 1408},
}
#: The official text encoder (docs/original.md §2.4), used for the tokenizer when none is given.
OFFICIAL_TEXT_ENCODER = "emilyalsentzer/Bio_ClinicalBERT"
#: How many keys of each kind a mismatch error names (the counts are always complete).
MISMATCH_SHOWN = 5


# --- provenance ------------------------------------------------------------------------------------


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def provenance() -> dict[str, Any]:
    """Versions and revision of the code that wrote a checkpoint."""
    import timm
    import transformers

    return {
        "mammoclip_version": mammoclip.__version__,
        "git_revision": _git_revision(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# --- our format --------------------------------------------------------------------------------------


def _umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(state: dict[str, torch.Tensor], path: str | Path, *,
                     metadata: dict[str, str] | None = None) -> Path:
    """``safetensors.torch.save_file`` with the permissions of every other output file.

    safetensors creates its file with mode 0600 (a private temporary file renamed into place), so a
    checkpoint shared on a group or lab volume could not be read by anyone else. The mode is set to
    what ``open()`` would have given: ``0o666`` minus the umask (0644 under the usual umask 022).
    """
    path = Path(path)
    save_file(state, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())
    return path


def save_checkpoint(model: MammoCLIP, out_dir: str | Path, save_tokenizer: bool = True,
                    allow_download: bool = False, **extra: Any) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``tokenizer/``) into ``out_dir``.

    Args:
        model: The model to save.
        out_dir: Folder to create (existing files of the same names are replaced).
        save_tokenizer: Copy the vocabulary into ``tokenizer/`` so the checkpoint is self-contained;
            skipped with a note in ``config.json`` when the tokenizer source is not reachable.
        allow_download: Let a hub-named tokenizer source be fetched to be saved; by default only a
            local or package source is copied (no network, no minute-long hub retries).
        **extra: JSON-serialisable values stored under ``"extra"`` (epoch, metrics, a data summary ...).

    Returns:
        The checkpoint folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    cfg = model.cfg.to_dict()
    tok_info: dict[str, Any] = {"source": model.cfg.text.tokenizer, "saved": None}
    if save_tokenizer and model.cfg.text.tokenizer is not None:
        try:
            src = resolve_source(model.cfg.text.tokenizer, base_dir=getattr(model, "source_dir", None))
            if src.kind == "hub" and not allow_download:
                raise ConfigError(f"tokenizer {src.ref!r} is a hub name and downloads are not allowed")
            get_tokenizer(model).save(out / TOKENIZER_DIR)
            tok_info["saved"] = TOKENIZER_DIR
        except ConfigError as err:
            tok_info["error"] = str(err)
    try:
        extra_json = json.loads(json.dumps(extra))
    except TypeError as err:
        raise ConfigError(f"save_checkpoint extra values must be JSON-serialisable: {err}") from err
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": cfg,
        "tokenizer": tok_info,
        "provenance": provenance(),
        "extra": extra_json,
    }
    save_safetensors(state, out / WEIGHTS_NAME, metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed and checked ``config.json`` of a checkpoint folder.

    Raises:
        CheckpointError: One line naming ``config.json`` and what is wrong with it: missing, not
            UTF-8 JSON, not an object, another format, a bad or newer ``format_version``, no ``model``.
    """
    folder = _folder(path)
    file = folder / CONFIG_NAME
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist" if not folder.exists()
                              else f"{folder} is not a mammoclip checkpoint folder")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{folder} is not a mammoclip checkpoint: no {CONFIG_NAME}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON: {str(err).splitlines()[0]}") from err
    except OSError as err:
        raise CheckpointError(f"cannot read {file}: {err.strerror or err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} is not a mammoclip checkpoint config (a JSON {type(meta).__name__}, "
                              "not an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a mammoclip checkpoint (format={meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{file} has an invalid format_version {version!r} (expected an integer "
                              f"1..{FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{file} was written by a newer mammoclip (format_version {version}; this "
                              f"version reads up to {FORMAT_VERSION}): upgrade mammoclip")
    if not isinstance(meta.get("model"), dict):
        what = "has no \"model\" entry" if "model" not in meta else f"has \"model\": {json.dumps(meta['model'])[:40]}"
        raise CheckpointError(f"{file} {what}; the model config is needed to rebuild the model")
    if not isinstance(meta.get("tokenizer", {}), dict):
        raise CheckpointError(f"{file} has a malformed \"tokenizer\" entry (expected an object)")
    return meta


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_NAME, CONFIG_NAME):
        return p.parent
    return p


def _first(items: list[str], n: int = MISMATCH_SHOWN) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")


def mismatch_summary(own: dict[str, torch.Tensor], state: dict[str, Any]) -> str:
    """``""`` when ``state`` fits ``own``; else counts of missing / unexpected / mis-shaped keys, first few each.

    A whole-model mismatch names thousands of keys: the counts say how bad it is, the first few
    which part of the model it is, without an 18,000-character line.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state)
                    if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape)
    parts = [f"{len(keys)} {what} ({_first(keys)})"
             for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", shapes))
             if keys]
    return "; ".join(parts)


def _strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` strictly; a mismatch is one :class:`CheckpointError` line with counts and first keys."""
    summary = mismatch_summary(model.state_dict(), state)
    if summary:
        raise CheckpointError(f"{source} does not match the model: {summary}" + (f". {hint}" if hint else ""))
    model.load_state_dict(state, strict=True)


def _config_hint(folder: Path, model: MammoCLIP) -> str:
    """Which config a checkpoint folder was made with, against the one asked for (when they differ)."""
    try:
        made_cfg = read_checkpoint_config(folder)["model"]
    except CheckpointError:
        return ""
    made = made_cfg.get("name")
    asked_cfg = model.cfg.to_dict()
    diffs = [f"{k}: {_short(made_cfg.get(k))} vs {_short(asked_cfg.get(k))}"
             for k in sorted(set(made_cfg) | set(asked_cfg)) if k not in ("name", "description", "text")
             and made_cfg.get(k) != asked_cfg.get(k)]
    made_text, asked_text = made_cfg.get("text") or {}, asked_cfg.get("text") or {}
    diffs += [f"text.{k}: {_short(made_text.get(k))} vs {_short(asked_text.get(k))}"
              for k in ("pretrained", "hf_config", "pooling") if made_text.get(k) != asked_text.get(k)]
    asked = model.cfg.name
    if made != asked or diffs:
        return (f"The checkpoint was made with config {made!r}, the model was built from {asked!r}"
                + (f" (differs in {_first(diffs, 3)})" if diffs else ""))
    return "config.json and model.safetensors disagree (a checkpoint edited or assembled by hand?)"


def _short(value: Any, n: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors``; a damaged file is one line naming it."""
    if not weights.is_file():
        what = "is missing" if not weights.exists() else "is not a file"
        raise CheckpointError(f"{weights} {what}: the checkpoint has no weights")
    size = weights.stat().st_size
    if size == 0:
        raise CheckpointError(f"{weights} is empty (0 bytes): the checkpoint was not written completely")
    try:
        return load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{weights} is damaged or truncated ({size} bytes): {first}") from err


def load_weights_into(model: MammoCLIP, path: str | Path) -> None:
    """Strictly load the weights of a checkpoint folder (or an official ``.tar``) into ``model``."""
    p = Path(path)
    if p.is_file() and p.suffix not in (".safetensors", ".json"):
        state = official_state_dict(p, model)
        _strict_load(model, state, str(p))
        return
    folder = _folder(p)
    weights = folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist")
    if not weights.exists() and not (folder / CONFIG_NAME).exists():
        raise CheckpointError(f"{folder} is not a mammoclip checkpoint: no {WEIGHTS_NAME}")
    _strict_load(model, _read_safetensors(weights), str(weights), _config_hint(folder, model))


def checkpoint_tokenizer(folder: Path, meta: dict[str, Any], allow_download: bool = False) -> str | None:
    """The tokenizer source a checkpoint folder's model should use, decided without any network.

    1. ``tokenizer/`` saved in the folder and present: ``"tokenizer"``, resolved against the folder
       (``model.source_dir``). Only when it is present: a relative ``"tokenizer"`` that is missing
       would be taken for a hub repo of that name, and transformers retries it for a minute.
    2. Otherwise the source recorded at save time, if it resolves locally (``package:NAME``, a
       folder that exists) or ``allow_download`` is set for a hub name.
    3. Otherwise the absolute path of the missing ``tokenizer/``: tokenizing then fails at once with
       a one-line error naming it, while the weights still load (image-only use needs no tokenizer).
    """
    saved = folder / TOKENIZER_DIR
    tok = meta.get("tokenizer") or {}
    if tok.get("saved") and (folder / str(tok["saved"])).is_dir():
        return str(tok["saved"])
    source = tok.get("source", meta["model"].get("text", {}).get("tokenizer"))
    if not isinstance(source, str) or not source:
        return None if source is None and not tok.get("saved") else str(saved.resolve())
    try:
        kind = resolve_source(source).kind
    except ConfigError:
        return str(saved.resolve())
    return source if kind == "local" or allow_download else str(saved.resolve())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    allow_download: bool = False) -> MammoCLIP:
    """Rebuild a model from a checkpoint folder, offline and without unpickling anything.

    Args:
        path: A checkpoint folder (or its ``model.safetensors``/``config.json``), or an official
            Mammo-CLIP ``.tar`` (converted in memory, see :func:`convert_official`).
        map_location: Device for the weights.
        allow_download: Let the tokenizer fall back to a hub name recorded in ``config.json`` when
            the folder has no ``tokenizer/`` (see :func:`checkpoint_tokenizer`). Off by default.

    Returns:
        The model in eval mode; ``get_tokenizer(model)`` finds the saved vocabulary.

    Raises:
        CheckpointError: Not a checkpoint, a damaged file (one line naming it), or mismatching keys.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_file() and p.suffix not in (".safetensors", ".json"):
        model = convert_official(p, allow_download=allow_download)
    else:
        folder = _folder(p)
        meta = read_checkpoint_config(folder)
        try:
            cfg = MammoClipCfg.from_dict(meta["model"])
        except ConfigError as err:
            raise CheckpointError(f"{folder / CONFIG_NAME}: {err}") from err
        cfg.text.tokenizer = checkpoint_tokenizer(folder, meta, allow_download)
        try:
            model = MammoCLIP(cfg, pretrained=False)
        except ConfigError as err:
            raise CheckpointError(f"{folder / CONFIG_NAME} describes a model that cannot be built: {err}") from err
        model.source_dir = folder
        load_weights_into(model, folder)
    return model.to(map_location).eval()


# --- the official Mammo-CLIP checkpoints ---------------------------------------------------------------


def safe_torch_load(path: str | Path) -> RestrictedLoad:
    """A ``torch.save`` file through the restricted unpickler: tensors out, metadata inert, nothing runs."""
    loaded = restricted_load(path)
    if loaded.placeholders:
        log.info("%s: %s", path, loaded.note())
    return loaded


def _official_model_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise CheckpointError(f"{path} is not an official Mammo-CLIP checkpoint: no 'image_encoder.*' weights")
    # DDP-wrapped saves prefix every key with "module.".
    return {re.sub(r"^module\.", "", k): v for k, v in state.items()
            if isinstance(k, str) and isinstance(v, torch.Tensor)}


def detect_official_arch(state: dict[str, torch.Tensor]) -> str:
    """"b5" or "b2", from the width of ``image_encoder._conv_head``."""
    head = state.get("image_encoder._conv_head.weight")
    if head is None:
        raise CheckpointError("official checkpoint has no image_encoder._conv_head.weight")
    for arch, spec in OFFICIAL_ARCHS.items():
        if head.shape[0] == spec["head_width"]:
            return arch
    raise CheckpointError(f"unknown official image encoder: conv head width {head.shape[0]} "
                          f"(known: { {a: s['head_width'] for a, s in OFFICIAL_ARCHS.items()} })")


def _text_arch_from_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """BERT shape read from the text weights (so the tower matches whatever was trained)."""
    pre = "text_encoder.text_encoder."
    words = state[pre + "embeddings.word_embeddings.weight"]  # (V, D)
    layers = {int(m.group(1)) for k in state if (m := re.match(re.escape(pre) + r"encoder\.layer\.(\d+)\.", k))}
    hidden = int(words.shape[1])
    return {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": len(layers),
        "num_attention_heads": max(1, hidden // 64),
        "intermediate_size": int(state[pre + "encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state[pre + "embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state[pre + "embeddings.token_type_embeddings.weight"].shape[0]),
    }


def official_state_dict(path_or_state: str | Path | dict[str, torch.Tensor], model: MammoCLIP) -> dict[str, torch.Tensor]:
    """Map an official state dict onto ``model``'s parameter names.

    ``image_encoder.*`` (lukemelas) -> ``image_tower.trunk.*`` (timm), ``text_encoder.text_encoder.*`` ->
    ``text_tower.encoder.*``, ``{image,text}_projection.projection.*`` -> ``{image,text}_projection.*``,
    ``logit_scale`` -> ``logit_scale``. A lukemelas ``_fc`` head and BERT's ``position_ids`` buffer are
    dropped. Unknown keys are kept so the strict load names them.
    """
    if isinstance(path_or_state, dict):
        state = path_or_state
    else:
        state = _official_model_state(safe_torch_load(path_or_state).obj, Path(path_or_state))
    own = model.state_dict()
    image = {k[len("image_encoder."):]: v for k, v in state.items()
             if k.startswith("image_encoder.") and not k.startswith("image_encoder._fc.")}
    out = {f"image_tower.trunk.{k}": v for k, v in lukemelas_to_timm(image, model.image_tower.trunk).items()}
    if model.cfg.image.in_chans == 1:
        stem = "image_tower.trunk.conv_stem.weight"
        out[stem] = out[stem].sum(dim=1, keepdim=True)  # (O, 3, k, k) -> (O, 1, k, k)
    renames = (("text_encoder.text_encoder.", "text_tower.encoder."),
               ("image_projection.projection.", "image_projection."),
               ("text_projection.projection.", "text_projection."))
    for key, value in state.items():
        if key.startswith(("image_encoder.", "module.")):
            continue
        new = key
        for old_prefix, new_prefix in renames:
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix):]
                break
        if new.endswith("embeddings.position_ids") and new not in own:
            continue
        out[new] = value
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def convert_official(ckpt_path: str | Path, out_dir: str | Path | None = None, text_encoder: str | None = None,
                     arch: str | None = None, image_size: tuple[int, int] | None = None,
                     allow_download: bool = False) -> MammoCLIP:
    """Convert an official Mammo-CLIP ``.tar`` (``b5-model-best-epoch-7.tar`` ...) into a :class:`MammoCLIP`.

    Args:
        ckpt_path: The official file (a ``torch.save`` zip or legacy stream, read by the restricted
            unpickler: its metadata's numpy values load, any other object becomes an inert placeholder
            recorded in ``config.json`` under ``extra.official.ignored``).
        out_dir: If given, the converted checkpoint is saved there (:func:`save_checkpoint`).
        text_encoder: Tokenizer source (local folder or hub name) for Bio_ClinicalBERT; the weights
            themselves come from the checkpoint. Defaults to the hub name, which is fetched only with
            ``allow_download`` (otherwise the checkpoint is saved without ``tokenizer/``).
        arch: "b5" or "b2"; detected from the weights when None (a mismatch is an error).
        image_size: Input (H, W) to record; the paper's 1520x912 by default.
        allow_download: Let a hub-named ``text_encoder`` be fetched to save the tokenizer.

    Returns:
        The converted model in eval mode.
    """
    path = Path(ckpt_path)
    loaded = safe_torch_load(path)
    obj = loaded.obj
    state = _official_model_state(obj, path)
    found = detect_official_arch(state)
    if arch is not None and arch != found:
        raise CheckpointError(f"--arch {arch} given but {path} holds an EfficientNet-{found.upper()} image encoder")
    overrides: dict[str, Any] = {"text": {"hf_config": _text_arch_from_state(state),
                                          "pretrained": text_encoder or OFFICIAL_TEXT_ENCODER,
                                          "tokenizer": text_encoder or OFFICIAL_TEXT_ENCODER}}
    if image_size is not None:
        overrides["image_size"] = image_size
    cfg = resolve_config(OFFICIAL_ARCHS[found]["config"], **overrides)
    cfg.name = f"{cfg.name}:{path.name}"
    model = MammoCLIP(cfg, pretrained=False)
    _strict_load(model, official_state_dict(state, model), str(path))
    model.eval()
    if out_dir is not None:
        info: dict[str, Any] = {"file": path.name, "sha256": _sha256(path), "arch": found,
                                "ignored": dict(sorted(loaded.placeholders.items()))}
        if isinstance(obj, dict):  # numpy scalars are numbers.Real too; JSON needs plain Python values
            info.update({k: int(v) if isinstance(v, numbers.Integral) else float(v) for k in ("epoch", "train_loss")
                         if isinstance(v := obj.get(k), numbers.Real) and not isinstance(v, bool)})
        save_checkpoint(model, out_dir, allow_download=allow_download, official=info)
    return model
