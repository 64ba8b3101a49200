"""Checkpoint files get the permissions of every other output: 0o666 minus the umask, not 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_saved_checkpoint_respects_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    from mammoclip.models import create_model
    from mammoclip.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, save_checkpoint

    model = create_model("mammoclip-tiny")
    old = os.umask(umask)
    try:
        out = save_checkpoint(model, tmp_path / "ckpt", save_tokenizer=False)
    finally:
        os.umask(old)
    # safetensors alone writes 0600 whatever the umask; the config.json written by open() is the reference.
    assert stat.S_IMODE((out / WEIGHTS_NAME).stat().st_mode) == mode
    assert stat.S_IMODE((out / CONFIG_NAME).stat().st_mode) == mode
