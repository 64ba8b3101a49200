"""Checkpoints: a directory with ``model.safetensors`` + ``config.json``; import of the official ``.tar``.

Layout written by :func:`save_checkpoint`::

    OUT_DIR/
      model.safetensors   # the state dict (no pickle)
      config.json         # {"format", "format_version", "model" (full model config incl. preprocess),
                          #  "tokenizer" (source + saved folder), "provenance", "extra"}
      tokenizer/          # the vocabulary files, so the checkpoint loads without its original source

Loading never executes pickled code: safetensors for our format, ``torch.load(weights_only=True)`` for
the official Mammo-CLIP files (a ``torch.save`` zip holding tensors and a plain config dict,
docs/original.md §3 "Checkpoint state_dict layout" and §5 "Checkpoint dict keys"). Paths stored inside
the official config (cluster paths, HF ``cache_dir``) are never used.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import mammoclip
from mammoclip.errors import CheckpointError, ConfigError
from mammoclip.models.clip import MammoCLIP
from mammoclip.models.config import MammoClipCfg
from mammoclip.models.image import lukemelas_to_timm
from mammoclip.models.registry import resolve_config
from mammoclip.models.text import get_tokenizer

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


def save_checkpoint(model: MammoCLIP, out_dir: str | Path, save_tokenizer: bool = True, **extra: Any) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (+ ``tokenizer/``) into ``out_dir``.

    Args:
        model: The model to save.
        out_dir: Folder to create (existing files of the same names are replaced).
        save_tokenizer: Copy the vocabulary into ``tokenizer/`` so the checkpoint is self-contained;
            skipped with a note in ``config.json`` when the tokenizer source is not reachable.
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
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder."""
    folder = _folder(path)
    try:
        meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{folder} is not a mammoclip checkpoint: no {CONFIG_NAME}") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not valid JSON: {err}") from err
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{folder / CONFIG_NAME} is not a mammoclip checkpoint (format={meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer mammoclip (format_version {meta['format_version']})")
    return meta


def _folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_NAME, CONFIG_NAME):
        return p.parent
    return p


def _strict_load(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` and fail naming every missing / unexpected / mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match the model: missing keys {missing}, unexpected keys {unexpected}, "
            f"shape mismatches {shapes}"
        )
    model.load_state_dict(state, strict=True)


def load_weights_into(model: MammoCLIP, path: str | Path) -> None:
    """Strictly load the weights of a checkpoint folder (or an official ``.tar``) into ``model``."""
    p = Path(path)
    if p.is_file() and p.suffix not in (".safetensors", ".json"):
        state = official_state_dict(p, model)
        _strict_load(model, state, str(p))
        return
    folder = _folder(p)
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        raise CheckpointError(f"{folder} is not a mammoclip checkpoint: no {WEIGHTS_NAME}")
    _strict_load(model, load_file(str(weights)), str(weights))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> MammoCLIP:
    """Rebuild a model from a checkpoint folder, offline and without unpickling anything.

    Args:
        path: A checkpoint folder (or its ``model.safetensors``/``config.json``), or an official
            Mammo-CLIP ``.tar`` (converted in memory, see :func:`convert_official`).
        map_location: Device for the weights.

    Returns:
        The model in eval mode; ``get_tokenizer(model)`` finds the saved vocabulary.

    Raises:
        CheckpointError: Not a checkpoint, a pickle that is not plain tensors, or mismatching keys.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    if p.is_file() and p.suffix not in (".safetensors", ".json"):
        model = convert_official(p)
    else:
        folder = _folder(p)
        meta = read_checkpoint_config(folder)
        cfg = MammoClipCfg.from_dict(meta["model"])
        if meta.get("tokenizer", {}).get("saved"):
            cfg.text.tokenizer = meta["tokenizer"]["saved"]
        model = MammoCLIP(cfg, pretrained=False)
        model.source_dir = folder
        load_weights_into(model, folder)
    return model.to(map_location).eval()


# --- the official Mammo-CLIP checkpoints ---------------------------------------------------------------


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, ... all mean "refused"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor checkpoint (torch.load weights_only=True "
            f"failed: {first})"
        ) from err


def _official_model_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise CheckpointError(f"{path} is not an official Mammo-CLIP checkpoint: no 'image_encoder.*' weights")
    # DDP-wrapped saves prefix every key with "module.".
    return {re.sub(r"^module\.", "", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


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
        state = _official_model_state(safe_torch_load(path_or_state), Path(path_or_state))
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
                     arch: str | None = None, image_size: tuple[int, int] | None = None) -> MammoCLIP:
    """Convert an official Mammo-CLIP ``.tar`` (``b5-model-best-epoch-7.tar`` ...) into a :class:`MammoCLIP`.

    Args:
        ckpt_path: The official file (a ``torch.save`` zip, loaded with ``weights_only=True``).
        out_dir: If given, the converted checkpoint is saved there (:func:`save_checkpoint`).
        text_encoder: Tokenizer source (local folder or hub name) for Bio_ClinicalBERT; the weights
            themselves come from the checkpoint. Defaults to the hub name (needs network to tokenize).
        arch: "b5" or "b2"; detected from the weights when None (a mismatch is an error).
        image_size: Input (H, W) to record; the paper's 1520x912 by default.

    Returns:
        The converted model in eval mode.
    """
    path = Path(ckpt_path)
    obj = safe_torch_load(path)
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
        info: dict[str, Any] = {"file": path.name, "sha256": _sha256(path), "arch": found}
        if isinstance(obj, dict):
            info.update({k: obj[k] for k in ("epoch", "train_loss") if isinstance(obj.get(k), (int, float))})
        save_checkpoint(model, out_dir, official=info)
    return model
