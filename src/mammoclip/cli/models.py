"""``mammoclip models``: list the registered model configs and show one.

* ``mammoclip models list`` prints a table: name, image tower, text tower, input size, embedding size,
  and whether the weights ``pretrained=True`` loads are on this machine (no network is used to tell).
* ``mammoclip models show NAME|CHECKPOINT_DIR [--params]`` prints a config as JSON (a checkpoint's
  ``config.json`` for a folder); ``--params`` builds the model with random weights and counts parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command group."""
    parser = subparsers.add_parser("models", help="list registered model configs or show one")
    group = parser.add_subparsers(dest="models_command", metavar="<subcommand>")
    parser.set_defaults(func=lambda args: _usage(parser))

    lst = group.add_parser("list", help="table of registered models")
    lst.add_argument("--json", action="store_true", help="print the names as a JSON list")
    lst.set_defaults(func=_list)

    show = group.add_parser("show", help="print a model config (registry name or checkpoint folder) as JSON")
    show.add_argument("name", help="registered name (see `models list`) or a checkpoint folder")
    show.add_argument("--params", action="store_true", help="build with random weights and count parameters")
    show.set_defaults(func=_show)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _list(args: argparse.Namespace) -> int:
    from mammoclip.models import get_model_config, list_models
    from mammoclip.models.pretrained import model_availability

    names = list_models()
    if args.json:
        print(json.dumps(names))
        return 0
    rows = [("name", "image tower", "text tower", "input HxW", "embed", "weights here", "description")]
    for name in names:
        cfg = get_model_config(name)
        h, w = cfg.get("preprocess", {}).get("image_size", (1520, 912))
        text = cfg["text"].get("pretrained") or f"random {cfg['text']['hf_config'].get('model_type', 'bert')}"
        rows.append((name, cfg["image"]["model_name"], text, f"{h}x{w}", str(cfg.get("embed_dim", 512)),
                     model_availability(cfg), cfg.get("description", "")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:6])) + "  " + row[6])
    print("\nweights here: the tower initialisations pretrained=True loads (packaged: shipped in an installed "
          "package; local: a path that exists; hub cache: downloaded before; download needed: fetched from the "
          "hub on first use; random init: none). The paper's Mammo-CLIP weights come from "
          "`mammoclip convert-official`.")
    return 0


def _show(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mammoclip.models import create_model, get_model_config
    from mammoclip.models.checkpoint import read_checkpoint_config

    if Path(args.name).is_dir():
        meta = read_checkpoint_config(args.name)
        cfg = meta["model"]
        out = meta
    else:
        cfg = get_model_config(args.name)
        out = cfg
    if args.params:
        model = create_model(cfg, pretrained=False)
        count = {
            "image_tower": sum(p.numel() for p in model.image_tower.parameters()),
            "text_tower": sum(p.numel() for p in model.text_tower.parameters()),
            "total": sum(p.numel() for p in model.parameters()),
        }
        out = {**out, "parameters": count}
    print(json.dumps(out, indent=2))
    return 0
