"""Environment-driven distribution: sampler, env parsing, and DDP == one big process (gloo, CPU)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mammoclip.losses import MammoClipLoss
from mammoclip.train import distributed as D
from mammoclip.train.gradcache import gradcache_backward
from mammoclip.train.tasks import PretrainTask
from tests.train.toy import ToyClip, batch_of

B = 4


def test_env_world_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert D.env_world() == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.env_world() == (3, 4, 1)
    info = D.DistInfo(rank=3, world_size=4)
    assert info.distributed and not info.is_primary


def test_resumable_sampler_shards_and_resumes() -> None:
    shards = [D.ResumableSampler(10, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(2)
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    again = D.ResumableSampler(10, seed=1, rank=0, world_size=2)
    again.set_position(2, 3)
    assert list(again) == a[3:] and len(again) == 2
    again.set_epoch(3)
    assert list(again) != a  # a new permutation each epoch
    ordered = D.ResumableSampler(5, shuffle=False)
    assert list(ordered) == [0, 1, 2, 3, 4]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = ToyClip()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        task = PretrainTask(ddp, MammoClipLoss(rank=rank, world_size=world))
        full = batch_of(B * world)
        local = {k: v[rank * B : (rank + 1) * B] for k, v in full.items()}
        loss = task(local)["loss"]
        loss.backward()
        result = {"loss": D.all_reduce_mean(loss), "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}
        model.zero_grad(set_to_none=True)
        cached = gradcache_backward(ddp, local, 2, task.outputs, task.loss_from_outputs)
        result["gc_loss"] = D.all_reduce_mean(cached["loss"])
        result["gc_grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        torch.save(result, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_twice_the_batch(tmp_path: Path) -> None:
    out = str(tmp_path / "res")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)

    torch.manual_seed(0)
    model = ToyClip()
    ref = PretrainTask(model, MammoClipLoss())(batch_of(2 * B))["loss"]
    ref.backward()
    for rank in range(2):
        res = torch.load(f"{out}.{rank}", weights_only=True)
        for key in ("loss", "gc_loss"):
            assert torch.allclose(res[key], ref.detach(), atol=1e-5), (rank, key)
        for gkey in ("grads", "gc_grads"):
            for name, p in model.named_parameters():
                assert torch.allclose(res[gkey][name], p.grad, atol=1e-5, rtol=1e-4), (rank, gkey, name)
