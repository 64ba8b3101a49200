"""``mammoclip pretrain`` / ``pretrain()`` end to end on the tiny model and the synthetic cohort."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mammoclip.cli.main import main
from mammoclip.train.loop import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "configs" / "pretrain-lite-cpu.yaml")


def _tiny_args(cohort: Path, *extra: str) -> list[str]:
    sets = ["model.name=mammoclip-tiny", f"data.image_text=[{cohort}]", "data.image_size=[128, 80]",
            "loop.batch_size=4", "loop.workers=0", "eval.zero_shot=[]", *extra]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_cli_pretrain_runs_then_resumes_to_more_epochs(synthetic_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", "--config", PRESET, *_tiny_args(synthetic_cohort, "loop.epochs=1"), "--out", str(run)]) == 0
    first = list_checkpoints(run)
    assert first and (run / "best" / "config.json").is_file()
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["model"]["name"] == "mammoclip-tiny" and "git_revision" in args
    steps1 = json.loads((first[-1] / "meta.json").read_text())["global_step"]

    assert main(["pretrain", "--config", PRESET, *_tiny_args(synthetic_cohort, "loop.epochs=2"), "--out", str(run),
                 "--resume"]) == 0
    steps2 = json.loads((list_checkpoints(run)[-1] / "meta.json").read_text())["global_step"]
    assert steps2 == 2 * steps1
    from mammoclip.models import load_checkpoint

    model = load_checkpoint(run / "best")
    assert tuple(model.preprocess_cfg.image_size) == (128, 80)


def test_cli_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["pretrain", "--config", PRESET, "--set", f"data.image_text=[{tmp_path / 'missing'}]",
                 "--set", "model.name=mammoclip-tiny", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing" in err and len(err.splitlines()) == 1
    assert main(["pretrain", "--config", PRESET, "--set", "loop.bogus=1"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.dist
def test_torchrun_two_processes_same_command(synthetic_cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "mammoclip", "pretrain", "--config", PRESET,
           *_tiny_args(synthetic_cohort, f"data.image_label=[{synthetic_cohort}]", "loop.epochs=1", "loop.batch_size=2",
                      "loop.micro_batch=1", "loop.max_steps=2", "loop.device=cpu"), "--out", str(run)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["resolved"]["world_size"] == 2
    assert [p.name for p in list_checkpoints(run)] == ["step-00000002"]
    assert str(run) in proc.stdout and proc.stdout.count(str(run)) == 1  # rank 0 alone prints/writes
