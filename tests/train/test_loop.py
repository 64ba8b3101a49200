"""The loop: checkpoints, atomic writes, exact resume (also after SIGKILL), non-finite losses, AMP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mammoclip.losses import MammoClipLoss
from mammoclip.train.config import LoopConfig, OptimConfig
from mammoclip.train.loop import NonFiniteLossError, fit, list_checkpoints, load_training_state
from mammoclip.train.tasks import PretrainTask
from tests.train.toy import ToyClip, ToyPairs, collate

ROOT = Path(__file__).resolve().parents[2]


def _loop(**kw: object) -> LoopConfig:
    base = {"epochs": 2, "batch_size": 8, "workers": 0, "seed": 1, "device": "cpu", "log_every": 1}
    return LoopConfig(**{**base, **kw})


def _fit(run_dir: Path, model: ToyClip | None = None, **kw: object):
    resume = kw.pop("resume", False)
    task = PretrainTask(model or ToyClip(dropout=0.1), MammoClipLoss())
    result = fit(task, ToyPairs(48), loop=_loop(**kw), optim=OptimConfig(lr=1e-2, warmup_epochs=0.5),
                 run_dir=run_dir, collate=collate, val_data=ToyPairs(12, seed=1), resume=resume,
                 config={"note": "test"})
    return task, result


def test_fit_checkpoints_metrics_and_best(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task, res = _fit(tmp_path, checkpoint_every=2, keep_last=2, epochs=3)
    assert res.steps == 18  # 48 items / 8 per step x 3 epochs
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-00000016", "step-00000018"]  # the last two kept
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert (tmp_path / "best" / "model.pt").is_file() and (tmp_path / "best" / "meta.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val/loss" in x]
    assert len(val) == 3 and val[-1]["val/loss"] < val[0]["val/loss"]  # the toy task learns
    assert all(x["images_per_s"] > 0 for x in lines if "train/loss" in x)
    args = (tmp_path / "args.yaml").read_text()
    assert "git_revision" in args and "note: test" in args


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full, _ = _fit(tmp_path / "a", epochs=2)
    torch.manual_seed(0)
    _fit(tmp_path / "b", epochs=2, max_steps=5, checkpoint_every=100)  # stops mid-epoch 1 (6 steps/epoch)
    assert list_checkpoints(tmp_path / "b")[-1].name == "step-00000005"
    torch.manual_seed(123)  # a fresh process has other RNG state and other weights
    resumed, res = _fit(tmp_path / "b", model=ToyClip(dropout=0.1), epochs=2, resume=True)
    assert res.steps == 12
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def _run_toy(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.train.run_toy", str(run_dir), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path: Path) -> None:
    ref = _run_toy(tmp_path / "ref")
    victim = _run_toy(tmp_path / "run", "--delay", "0.01")
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a mid-epoch checkpoint exists (step 4 of 6 in epoch 1)
        done = list_checkpoints(tmp_path / "run")
        if done and json.loads((done[-1] / "meta.json").read_text())["global_step"] >= 4:
            break
        assert victim.poll() is None, victim.stderr.read().decode()
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = list_checkpoints(tmp_path / "run")
    assert killed_at and max(json.loads((p / "meta.json").read_text())["global_step"] for p in killed_at) < 18
    for ckpt in killed_at:  # every visible checkpoint is complete and loadable
        assert load_training_state(ckpt)["global_step"] > 0

    resumed = _run_toy(tmp_path / "run", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    a = load_training_state(list_checkpoints(tmp_path / "ref")[-1])
    b = load_training_state(list_checkpoints(tmp_path / "run")[-1])
    assert a["global_step"] == b["global_step"] == 18
    for name, p in a["model"].items():
        assert torch.equal(p, b["model"][name]), name
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=r"step 5 \(epoch 1, batch 5\).*step-00000004"):
        _fit(tmp_path, model=ToyClip(nan_at_call=5), checkpoint_every=2)
    last = list_checkpoints(tmp_path)[-1]
    assert last.name == "step-00000004"
    state = load_training_state(last)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_fp16_scaler_skips_a_nan_step_and_training_goes_on(tmp_path: Path, recwarn: pytest.WarningsRecorder
                                                           ) -> None:
    torch.manual_seed(0)
    task, res = _fit(tmp_path, model=ToyClip(nan_at_call=3), precision="fp16", grad_clip=1.0, epochs=1)
    assert res.steps == 6
    assert all(torch.isfinite(p).all() for p in task.model.parameters())
    # a skipped step is routine for the scaler: torch's scheduler-order warning is not shown for it
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]


def test_bf16_autocast_and_gradient_caching_run(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task, res = _fit(tmp_path, precision="bf16", micro_batch=4, epochs=1)
    assert res.steps == 6 and res.history and res.history[0]["val/loss"] > 0
