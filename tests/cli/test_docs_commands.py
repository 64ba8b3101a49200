"""Every command block of README.md and docs/*.md runs, so the docs cannot drift from the code.

Blocks are discovered, not listed: every fenced block marked ``bash``, ``console``, ``sh``, ``shell``
or ``python`` in README.md and docs/*.md (docs/cli.md is generated from the parsers and checked by
test_cli_docs.py). A shell block runs command by command (``mammoclip ...`` in this process through
:func:`mammoclip.cli.main.main`, which must return 0); a Python block runs with ``exec``. Each block
runs in its own empty working directory, so relative outputs (``runs/...``) land there.

What the docs name but a test machine lacks is substituted, in the open (:data:`SUBSTITUTIONS`, each
with its reason): paper-scale models and checkpoints become ``mammoclip-tiny`` saved as a checkpoint
folder, real data paths a generated synthetic cohort (PNG, DICOM, or the DICOMs preprocessed), sizes
128x80 (the tiny model's input), patients a handful and epochs 1. Names that the prose around a
Python fragment defines (``images``, ``rng`` ...) come from :data:`PRELUDES`. The few commands that
cannot run anywhere here are in :data:`NOT_RUNNABLE`, with the reason; nothing else is skipped.

``pytest -s tests/cli/test_docs_commands.py`` prints the inventory: every block found, how many of
its commands ran, and what was substituted.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli.test_newcomer import flat_dicom_folder

ROOT = Path(__file__).resolve().parents[2]
LANGS = {"bash": "shell", "console": "shell", "sh": "shell", "shell": "shell", "python": "python"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced block of a docs page."""

    file: str
    line: int
    kind: str  # "shell" | "python"
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def discover() -> list[Block]:
    """Every runnable fenced block of README.md and docs/*.md, in file order."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    blocks = []
    for page in pages:
        if page.name == "cli.md":
            continue
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            kind = LANGS.get(m.group(1).lower())
            if kind:
                blocks.append(Block(str(page.relative_to(ROOT)), text[: m.start()].count("\n") + 1, kind, m.group(2)))
    return blocks


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and ``$ `` prompts dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


#: Commands that cannot run in a test anywhere: (command prefix, reason). Keep it short.
NOT_RUNNABLE: list[tuple[str, str]] = [
    ("make demo", "the full demo takes 15+ minutes; `mammoclip demo --quick` runs in tests/cli/test_demo.py"),
    ("make test", "runs this test suite itself"),
    ("torchrun", "multi-GPU DDP launcher; the same `pretrain` runs single-process in docs/training.md's blocks"),
    ("mammoclip convert-official b5-model-best-epoch-7.tar",
     "needs the released official checkpoint (not redistributable); conversion of a synthetic official "
     "file is tested in tests/models/test_checkpoint.py"),
]
#: Python blocks that cannot run: (a line of the block, reason).
NOT_RUNNABLE_PYTHON: list[tuple[str, str]] = [
    ("MarianMTModel.from_pretrained", "downloads translation models from the Hugging Face hub (tests are offline)"),
]

#: (regex, replacement, reason), applied in order to every block. ``{name}`` is a fixture path.
SUBSTITUTIONS: list[tuple[str, str, str]] = [
    (r"/data/my-dicoms", "{flat}", "your DICOMs -> a flat folder of 32 synthetic DICOMs (8 patients)"),
    (r"/data/my-labels\.csv", "{labels}", "your labels -> their mass labels as a CSV"),
    (r"--adapter vindr /data/vindr-mammo", "--adapter synthetic {dicoms}",
     "real data -> a synthetic DICOM cohort (12 patients, read by the synthetic adapter)"),
    (r"runs/pretrain-b5-paper/best|runs/pretrain/best|ckpt-b5/?(?=\s|$)",
     "{ckpt}", "paper checkpoint -> mammoclip-tiny saved as a checkpoint folder"),
    (r"\bCKPT\b", "{ckpt}", "the placeholder checkpoint -> mammoclip-tiny saved as a checkpoint folder"),
    (r"(?<![\w/.-])image\.png", "{png}", "the placeholder image -> a synthetic PNG"),
    (r"data/vindr-paper|data/manifest\.csv", "{processed}", "real data -> the synthetic DICOMs preprocessed"),
    (r"new-cohort/manifest\.csv|cohort/manifest\.csv", "{cohort}/manifest.csv", "data -> synthetic PNG cohort"),
    (r"(?<![\w/-])(new-)?cohort/(?=\s)", "{cohort}", "data -> synthetic PNG cohort"),
    (r"1520x912|512x304", "128x80", "paper size -> the tiny model's input"),
    (r"image_size=\(1520, 912\)", "image_size=(128, 80)", "paper size -> the tiny model's input"),
    (r"--patients \d+", "--patients 3", "fewer patients"),
    (r"n_patients=\d+", "n_patients=3", "fewer patients"),
    (r"--workers 16", "--workers 1", "2-core test machine"),
    (r"(mammoclip synth (?:(?!--size).)*?)$", r"\1 --size 128x80", "small images (synth without --size)"),
    (r"configs/pretrain-b5-paper\.yaml", "configs/pretrain-lite-cpu.yaml", "paper preset -> the CPU preset"),
    (r"configs/", "{root}/configs/", "presets are read from the repository"),
    (r"data\.image_text=\[\.\.\.\]", "data.image_text=[demo/cohort]", "the elided cohort -> the one made above"),
    (r"(mammoclip pretrain .*)$", r"\1 --set loop.epochs=1 --set loop.batch_size=2",
     "one epoch, batches of 2 (3 patients)"),
    (r"epochs=10", "epochs=1", "one epoch"),
    (r"batch_size=16", "batch_size=4", "batches that fit the 8-item stand-in dataset"),
    (r"(mammoclip detect train .*)$", r"\1 --epochs 1", "one epoch"),
    (r"DetectTrainCfg\(", "DetectTrainCfg(epochs=1, ", "one epoch"),
    (r'"val/auc": \.\.\.', '"val/auc": 0.5', "the elided metric -> a number"),
    (r"path/to/tokenizer", "{ckpt}/tokenizer", "a local tokenizer folder"),
    (r"/models/Bio_ClinicalBERT", "{ckpt}/tokenizer", "a local tokenizer folder"),
]

#: Names that the prose around a Python fragment defines: (a line of the block, code run first).
PRELUDES: list[tuple[str, str]] = [
    ("TransformRecord.from_row(manifest_row)", """
import numpy as np, pandas as pd
manifest_row = pd.read_csv("{processed}/manifest.csv").iloc[0].to_dict()
original_boxes = np.array([[10.0, 20.0, 60.0, 90.0]])
mask_original = np.zeros((int(manifest_row["orig_height"]), int(manifest_row["orig_width"])), np.uint8)
"""),
    ("model.encode_image(images)", """
import torch
images = torch.randn(2, 1, 128, 80)
x1, x2 = torch.randn(2, 1, 128, 80), torch.randn(2, 1, 128, 80)
"""),
    ('parse_report(open("report.txt"', """
import pandas as pd
open("report.txt", "w").write(pd.read_csv("{cohort}/reports.csv")["text"].iloc[0])
"""),
    ("augment(text)", "import numpy as np\ntext = 'scattered fibroglandular density. no suspicious mass.'"),
    ("labels_to_text(", "import numpy as np\nrng = np.random.default_rng(0)"),
    ("length_stats(captions", "captions = ['no mass in the left breast', 'a spiculated mass']\nreport_ids = ['a', 'b']"),
    ("explainer(images)", """
import torch
from mammoclip.models import load_checkpoint
model = load_checkpoint("{ckpt}")
images = torch.randn(2, 1, 128, 80)
"""),
    ("class ClassifyTask(Task)", """
import torch
import torch.nn.functional as F
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
train_ds = [{"image": torch.rand(1, 8, 8), "label": i % 2} for i in range(8)]
val_ds = train_ds[:4]
"""),
]
#: Python fragments whose captions need the model's tokenizer output: appended after the prelude.
LATE: dict[str, str] = {"model.encode_image(images)": "captions = dict(tok(['mass', 'no mass']))"}


def fill(text: str, paths: dict[str, str]) -> str:
    """``{name}`` -> the fixture path (other braces, e.g. of a dict literal, are left alone)."""
    for name, path in paths.items():
        text = text.replace("{" + name + "}", path)
    return text


def substitute(text: str, paths: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with :data:`SUBSTITUTIONS` applied line by line; returns it and the reasons used."""
    used: list[str] = []
    lines = []
    for line in text.splitlines():
        for pattern, repl, why in SUBSTITUTIONS:
            new = re.sub(pattern, fill(repl, paths), line)
            if new != line:
                used.append(why)
                line = new
        lines.append(line)
    return "\n".join(lines), list(dict.fromkeys(used))


def not_runnable(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUNNABLE if command.startswith(prefix)), None)


def test_inventory_every_block_is_run_or_listed() -> None:
    """Print every block found and what happens to it; every exemption must still match a block."""
    blocks = discover()
    assert len(blocks) >= 20, "fewer docs blocks than expected: is the discovery broken?"
    used_exemptions = set()
    print(f"\n{len(blocks)} command blocks in README.md and docs/*.md:")
    for block in blocks:
        if block.kind == "shell":
            commands = shell_commands(block.text)
            skipped = [(c, not_runnable(c)) for c in commands if not_runnable(c)]
            used_exemptions.update(p for c, _ in skipped for p, _ in NOT_RUNNABLE if c.startswith(p))
            print(f"  {block.id:<24} shell   {len(commands) - len(skipped)} of {len(commands)} commands run"
                  + "".join(f"\n      not run: {c[:60]} ({why})" for c, why in skipped))
            assert all(c.split()[0] == "mammoclip" for c in commands if not not_runnable(c)), block.id
        else:
            why = next((w for key, w in NOT_RUNNABLE_PYTHON if key in block.text), None)
            used_exemptions.update(key for key, _ in NOT_RUNNABLE_PYTHON if key in block.text)
            print(f"  {block.id:<24} python  " + (f"not run ({why})" if why else "run"))
    stale = {p for p, _ in NOT_RUNNABLE + NOT_RUNNABLE_PYTHON} - used_exemptions
    assert not stale, f"exemptions that match no docs block any more: {stale}"


@pytest.fixture(scope="session")
def docs_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The stand-ins for the docs' models and data, made once: tiny checkpoint, cohorts, preprocessed DICOMs."""
    import pandas as pd

    from mammoclip.data.preprocess import PreprocessOptions, preprocess
    from mammoclip.models import create_model, save_checkpoint
    from mammoclip.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("docs")
    ckpt = save_checkpoint(create_model("mammoclip-tiny"), root / "ckpt")
    options = {"prevalence": {"mass": 0.5, "calcification": 0.5}}
    cohort = generate_cohort(root / "cohort", 12, seed=3, image_size=(128, 80), progress=False, **options)
    dicoms = generate_cohort(root / "dicoms", 12, seed=3, image_size=(128, 80), fmt="dicom", progress=False,
                             **options)
    preprocess(dicoms, root / "processed", PreprocessOptions(size=(128, 80)), workers=1)
    flat, labels = flat_dicom_folder(root / "mine")
    return {"ckpt": str(ckpt), "cohort": str(cohort.parent), "dicoms": str(dicoms.parent), "flat": str(flat),
            "labels": str(labels), "png": str(cohort.parent / pd.read_csv(cohort)["path"].iloc[0]),
            "processed": str(root / "processed"), "root": str(ROOT)}


def run_shell(block: Block, paths: dict[str, str]) -> list[str]:
    from mammoclip.cli.main import main

    ran, used = [], []
    for original in shell_commands(block.text):  # comments dropped first: substitutions may append options
        if not_runnable(original):
            continue
        command, why = substitute(original, paths)
        used += why
        argv = shlex.split(command)
        assert argv[0] == "mammoclip", f"{block.id}: only mammoclip commands can run here: {command}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv[1:])
            except SystemExit as exit_:  # argparse: an option the docs name does not exist
                rc = exit_.code
        assert rc == 0, f"{block.id}: `{command}` returned {rc}:\n{out.getvalue()[-2000:]}"
        ran.append(command)
    print(f"{block.id}: ran {len(ran)} command(s); substituted: {'; '.join(dict.fromkeys(used)) or 'nothing'}")
    return ran


def run_python(block: Block, paths: dict[str, str]) -> None:
    text, used = substitute(block.text, paths)
    prelude = "\n".join(fill(code, paths) for key, code in PRELUDES if key in block.text)
    late = "\n".join(code for key, code in LATE.items() if key in block.text)
    if late:  # after the block's imports, before the rest: split at the first line that uses it
        lines = text.splitlines()
        at = next(i for i, line in enumerate(lines) if "tok = " in line) + 1
        text = "\n".join([*lines[:at], late, *lines[at:]])
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(prelude + "\n" + text, block.id, "exec"), namespace)  # noqa: S102 - docs code, by design
    print(f"{block.id}: ran; substituted: {'; '.join(used) or 'nothing'}"
          + ("; prelude defines " + ", ".join(k for k, _ in PRELUDES if k in block.text) if prelude else ""))


BLOCKS = discover()


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_docs_block_runs(block: Block, docs_data: dict[str, str], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["mammoclip"])
    if block.kind == "python":
        why = next((w for key, w in NOT_RUNNABLE_PYTHON if key in block.text), None)
        if why:
            print(f"{block.id}: not run ({why})")
            return
        run_python(block, docs_data)
    else:
        commands = shell_commands(block.text)
        if all(not_runnable(c) for c in commands):
            print(f"{block.id}: not run ({'; '.join(sorted({not_runnable(c) or '' for c in commands}))})")
            return
        run_shell(block, docs_data)
    shutil.rmtree(tmp_path, ignore_errors=True)
