"""Model-test settings: everything offline, small text towers for the paper configs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: A 2-layer BERT with the paper tower's vocabulary and width: keeps paper-model tests fast while
#: exercising the same key layout (the full 12-layer layout is checked once in test_checkpoint.py).
SMALL_PAPER_TEXT = {"hf_config": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2,
                                  "intermediate_size": 256}}
