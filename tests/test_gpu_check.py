"""bench/gpu_check.py: its CPU fallback runs and passes, and its checks fail when what they check is broken.

The script is what a person runs on the first CUDA machine; until then these tests keep it from rotting:
the whole CPU fallback as a subprocess (as a person runs it), and, in process, that the equality and
budget checks turn FAIL (exit code 1) on a broken gradient cache and on memory that grows with the batch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _numbers(obj: Any) -> list[float]:
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return []


@pytest.mark.slow
@pytest.mark.dist
def test_cpu_fallback_passes_every_check_with_finite_numbers(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    result = json.loads(out.read_text())
    checks = {c["check"]: c for c in result["checks"]}
    assert list(checks) == ["throughput", "memory_checkpointing", "gradcache_budget", "gradcache_equality",
                            "ddp_equality"]
    assert result["passed"] and all(c["status"] == "PASS" for c in checks.values()), run.stdout
    assert all(math.isfinite(x) for x in _numbers(result["checks"]))
    # the table names each check with its status
    for name in checks:
        assert f"{name:<22} PASS" in run.stdout

    assert all(r["images_per_s"] > 0 for r in checks["throughput"]["rows"])
    mem = checks["memory_checkpointing"]
    assert mem["checkpointing"]["peak_mib"] < mem["plain"]["peak_mib"]
    budget = checks["gradcache_budget"]
    # micro-batches of 1, 2 fit 3x the measure of a micro-batch of 1; 4 does not (activations are linear)
    assert budget["largest_micro"] == 2 and [r["fits"] for r in budget["micro_rows"]] == [True, True, False]
    # the total batch costs only its inputs: 16 breasts fit where a micro-batch of 4 did not
    assert budget["largest_total_measured"] == 16
    assert budget["bytes_per_extra_breast"] <= 2 * budget["input_mib_per_breast"] * 2**20
    assert budget["largest_total_extrapolated"] >= 16
    eq = checks["gradcache_equality"]
    assert eq["rel_diff"] <= 1e-4 and eq["rel_l2"] <= 1e-4 and eq["max_abs_grad"] > 0
    ddp = checks["ddp_equality"]
    assert ddp["backend"] == "gloo" and len(ddp["rows"]) == 4 and ddp["worst_rel_diff"] <= 1e-4


def test_compare_scales_by_the_largest_gradient(gpu_check: ModuleType) -> None:
    ref = {"a": torch.tensor([2.0, -4.0]), "b": torch.tensor([0.0, 0.0])}
    got = {"a": torch.tensor([2.0, -3.0]), "b": torch.tensor([0.0, 1e-3])}
    cmp = gpu_check.compare(got, ref)
    assert cmp["max_abs_diff"] == pytest.approx(1.0) and cmp["max_abs_grad"] == pytest.approx(4.0)
    assert cmp["rel_diff"] == pytest.approx(0.25) and cmp["worst_param"] == "a"
    assert cmp["rel_l2"] == pytest.approx(math.sqrt((1.0 + 1e-6) / 20.0))
    assert gpu_check.compare(ref, ref)["rel_diff"] == 0.0


def _accumulate(model: Any, batch: Any, micro: int, outputs_fn: Any, loss_fn: Any, **_: Any) -> dict:
    """The bug gradient caching exists to avoid: one loss per micro-batch, gradients summed."""
    from mammoclip.train.gradcache import split_batch

    chunks = split_batch(batch, micro)
    total = 0.0
    for chunk in chunks:
        loss = loss_fn(outputs_fn(chunk))["loss"] / len(chunks)
        loss.backward()
        total += float(loss.detach())
    return {"loss": torch.tensor(total)}


def test_equality_check_fails_on_plain_accumulation(gpu_check: ModuleType, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mammoclip.train import gradcache

    monkeypatch.setattr(gradcache, "gradcache_backward", _accumulate)
    out = tmp_path / "r.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--checks", "gradcache_equality", "--json", str(out)])
    result = json.loads(out.read_text())
    (check,) = result["checks"]
    assert rc == 1 and not result["passed"] and check["status"] == "FAIL"
    assert check["rel_diff"] > 1e-2  # another objective, not rounding


@pytest.mark.slow  # two searches: ~7 s of CPU
def test_budget_check_fails_when_memory_grows_with_the_total_batch(gpu_check: ModuleType,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A budget everything fits, so both totals are measured and the growth rule decides.
    cfg = dataclasses.replace(gpu_check.PRESETS[("cpu", True)], budget_gib=1.0, micro_candidates=(1, 2),
                              total_candidates=(4, 8))
    cpu = torch.device("cpu")
    good = gpu_check.check_gradcache_budget(cfg, cpu)
    assert good["status"] == "PASS" and good["largest_micro"] == 2 and good["largest_total_measured"] == 8
    assert good["budget_mib"] == 1024

    # a gradient cache that kept every micro-batch's graph would cost activations per breast, not inputs
    real = gpu_check.Step.run

    def leaky(self: Any, batch: dict, micro: int | None) -> tuple[float, int]:
        loss, peak = real(self, batch, micro)
        return loss, peak + batch["image"].shape[0] * 2**18

    monkeypatch.setattr(gpu_check.Step, "run", leaky)
    bad = gpu_check.check_gradcache_budget(cfg, cpu)
    assert bad["status"] == "FAIL" and bad["largest_total_measured"] == 8
    assert bad["bytes_per_extra_breast"] > 2 * bad["input_mib_per_breast"] * 2**20
