"""``mammoclip convert-official``: turn a released Mammo-CLIP ``.tar`` into a mammoclip checkpoint.

``mammoclip convert-official b5-model-best-epoch-7.tar OUT_DIR [--text-encoder PATH_OR_NAME] [--arch b5|b2]``

The file is read by the restricted unpickler (``mammoclip.models.unpickle``: tensors and plain
containers are rebuilt, numpy values too, every other object in the metadata becomes an inert placeholder
and is reported in one ``note:`` line; no pickled code runs), the lukemelas EfficientNet and BERT weights
are mapped onto our towers and loaded strictly, and ``OUT_DIR`` gets ``model.safetensors`` +
``config.json`` (+ the tokenizer when ``--text-encoder`` names a local one, or a hub one with
``--allow-download``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert-official`` command."""
    parser = subparsers.add_parser("convert-official",
                                   help="convert an official Mammo-CLIP .tar checkpoint (B5/B2) to our format")
    parser.add_argument("checkpoint", type=Path, help="official file, e.g. b5-model-best-epoch-7.tar")
    parser.add_argument("out_dir", type=Path, help="folder to write model.safetensors + config.json into")
    parser.add_argument("--text-encoder", default=None,
                        help="Bio_ClinicalBERT tokenizer: local folder or hub name "
                             "(default: emilyalsentzer/Bio_ClinicalBERT, fetched only with --allow-download)")
    parser.add_argument("--allow-download", action="store_true",
                        help="let a hub-named tokenizer be downloaded to store it in OUT_DIR")
    parser.add_argument("--arch", choices=("b5", "b2"), default=None,
                        help="expected image encoder (default: detected from the weights)")
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from mammoclip.models.checkpoint import convert_official, read_checkpoint_config

    model = convert_official(args.checkpoint, args.out_dir, text_encoder=args.text_encoder, arch=args.arch,
                             allow_download=args.allow_download)
    meta = read_checkpoint_config(args.out_dir)
    official = meta["extra"]["official"]
    print(f"converted {args.checkpoint.name}: EfficientNet-{official['arch'].upper()} + "
          f"{model.cfg.text.hf_config['num_hidden_layers']}-layer BERT, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters -> {args.out_dir}")
    ignored = official.get("ignored") or {}
    if ignored:
        names = ", ".join(sorted(ignored)[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        print(f"note: ignored {sum(ignored.values())} non-tensor object(s) in the file's metadata, kept as "
              f"inert placeholders (not imported, not run): {names}")
    tok = meta["tokenizer"]
    if not tok.get("saved"):
        print(f"note: tokenizer not saved ({tok.get('error', 'unavailable')}); "
              "rerun with --text-encoder LOCAL_DIR (or --allow-download) to make the checkpoint self-contained")
    return 0
