"""Run the loop on the toy task in its own process (used by the interruption test).

Usage: python -m tests.train.run_toy RUN_DIR [--resume] [--delay SECONDS]
"""

from __future__ import annotations

import argparse

import torch

from mammoclip.losses import MammoClipLoss
from mammoclip.train.config import LoopConfig, OptimConfig
from mammoclip.train.loop import fit
from mammoclip.train.tasks import PretrainTask
from tests.train.toy import ToyClip, ToyPairs, collate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--delay", type=float, default=0.0)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = ToyPairs(48, delay=a.delay)
    loop = LoopConfig(epochs=3, batch_size=8, checkpoint_every=2, keep_last=2, workers=1, seed=5,
                      deterministic=True, device="cpu", log_every=1)
    task = PretrainTask(ToyClip(dropout=0.2), MammoClipLoss())
    fit(task, data, loop=loop, optim=OptimConfig(lr=1e-2, warmup_epochs=0.5), run_dir=a.run_dir,
        collate=collate, val_data=ToyPairs(12, seed=1), resume=a.resume)


if __name__ == "__main__":
    main()
