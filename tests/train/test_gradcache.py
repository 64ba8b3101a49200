"""Gradient caching computes the exact large-batch gradient of a contrastive loss."""

from __future__ import annotations

import torch

from mammoclip.losses import MammoClipLoss
from mammoclip.train.gradcache import gradcache_backward, split_batch
from mammoclip.train.tasks import PretrainTask
from tests.train.toy import ToyClip, batch_of


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_batch_16_in_micro_batches_of_4_equals_one_pass() -> None:
    torch.manual_seed(0)
    model = ToyClip()
    task = PretrainTask(model, MammoClipLoss())
    batch = batch_of(16)

    full = task(batch)
    full["loss"].backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)

    cached = gradcache_backward(model, batch, 4, task.outputs, task.loss_from_outputs)
    got = _grads(model)
    assert torch.allclose(cached["loss"], full["loss"].detach(), atol=1e-6)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-4), name
    assert ref["logit_scale"].abs() > 0  # the shared scalar's gradient is not lost or counted 4 times


def test_plain_accumulation_differs_from_the_large_batch_gradient() -> None:
    # why caching is needed: summing the losses of 4 micro-batches is another objective.
    torch.manual_seed(0)
    model = ToyClip()
    task = PretrainTask(model, MammoClipLoss())
    batch = batch_of(16)
    task(batch)["loss"].backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    for chunk in split_batch(batch, 4):
        (task(chunk)["loss"] / 4).backward()
    acc = _grads(model)
    assert not torch.allclose(acc["image.1.weight"], ref["image.1.weight"], atol=1e-4)


def test_dropout_masks_are_replayed() -> None:
    # the reference: the same chunked forwards (same RNG stream) with the graph kept, one loss.
    model = ToyClip(dropout=0.5)
    task = PretrainTask(model, MammoClipLoss())
    batch = batch_of(12)

    torch.manual_seed(3)
    parts = [task.outputs(c) for c in split_batch(batch, 4)]
    outs = {k: torch.cat([p[k] for p in parts]) if parts[0][k].ndim else parts[0][k] for k in parts[0]}
    task.loss_from_outputs(outs)["loss"].backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)

    torch.manual_seed(3)
    gradcache_backward(model, batch, 4, task.outputs, task.loss_from_outputs)
    got = _grads(model)
    for name in ref:
        assert torch.allclose(got[name], ref[name], atol=1e-5, rtol=1e-4), name


def test_batchnorm_running_stats_updated_once_per_micro_batch() -> None:
    torch.manual_seed(0)
    model = ToyClip(batchnorm=True)
    task = PretrainTask(model, MammoClipLoss())
    batch = batch_of(8)
    twin = ToyClip(batchnorm=True)
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        for chunk in split_batch(batch, 4):
            twin(chunk)
    gradcache_backward(model, batch, 4, task.outputs, task.loss_from_outputs)
    bn, bn_twin = model.image[2], twin.image[2]
    assert int(bn.num_batches_tracked) == int(bn_twin.num_batches_tracked) == 4  # 2 chunks x 2 views
    assert torch.allclose(bn.running_mean, bn_twin.running_mean, atol=1e-6)
