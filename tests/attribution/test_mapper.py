"""The FActOR mapper: the loss against a hand computation, the stacked-heads layout, saving and loading."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mammoclip.attribution import AttributeSpec, FactorMapper, factor_loss, load_mapper, save_mapper
from mammoclip.errors import CheckpointError, ConfigError

SPECS = [AttributeSpec("mass", "mass", ("mass",)), AttributeSpec("calcification", "calcification", ("calc",))]


def _mapper(seed: int = 0, shape: tuple[int, int, int] = (6, 3, 2), d: int = 5) -> FactorMapper:
    torch.manual_seed(seed)
    return FactorMapper(SPECS, torch.randn(2, d), shape, (96, 64), hidden=7)


def _hand_loss(sim: list[list[list[float]]], y: list[list[int]], tau: float, form: str) -> float:
    """The formula of docs/original.md §7 with plain floats and loops."""
    b_n, a_n = len(sim), len(sim[0][0])
    s = [[max(sim[b][c][a] for c in range(len(sim[b]))) / tau for a in range(a_n)] for b in range(b_n)]
    total, pairs = 0.0, 0
    for a in range(a_n):
        for b in range(b_n):
            if not y[b][a]:
                continue
            if form == "original":
                n = sum(math.exp(s[k][a] * (1 - y[k][a])) for k in range(b_n))
            else:
                n = sum(math.exp(s[k][a]) for k in range(b_n) if not y[k][a])
            total += -math.log(math.exp(s[b][a]) / (math.exp(s[b][a]) + n))
            pairs += 1
    return total / pairs


@pytest.mark.parametrize("form", ["original", "corrected"])
def test_loss_equals_hand_computation(form: str) -> None:
    sim = [[[0.2, -0.1], [0.5, 0.3], [-0.4, 0.1]],  # image 0: 3 channels x 2 attributes
           [[0.1, 0.6], [0.0, -0.2], [0.3, 0.2]],
           [[-0.3, 0.05], [0.25, 0.15], [0.1, -0.5]],
           [[0.4, 0.0], [-0.1, 0.35], [0.2, 0.1]]]
    y = [[1, 0], [0, 1], [1, 1], [0, 0]]
    got = factor_loss(torch.tensor(sim), torch.tensor(y), temperature=0.07, form=form)
    assert float(got) == pytest.approx(_hand_loss(sim, y, 0.07, form), rel=1e-5)


def test_original_form_counts_every_positive_as_one() -> None:
    # two positives, one negative: the original denominator holds e^0 + e^0 for the positives.
    sim = torch.tensor([[[0.1]], [[0.1]], [[0.0]]])  # (3, 1, 1)
    y = torch.tensor([[1], [1], [0]])
    s = 0.1 / 0.07
    expect_original = -math.log(math.exp(s) / (math.exp(s) + 2.0 + 1.0))
    expect_corrected = -math.log(math.exp(s) / (math.exp(s) + 1.0))
    assert float(factor_loss(sim, y, form="original")) == pytest.approx(expect_original, rel=1e-5)
    assert float(factor_loss(sim, y, form="corrected")) == pytest.approx(expect_corrected, rel=1e-5)


def test_loss_without_positives_or_negatives_is_finite() -> None:
    sim = torch.randn(4, 3, 2, requires_grad=True)
    zero = factor_loss(sim, torch.zeros(4, 2))
    zero.backward()
    assert float(zero.detach()) == 0.0 and torch.isfinite(sim.grad).all()
    sim.grad = None
    allpos = factor_loss(sim, torch.ones(4, 2), form="corrected")  # no negatives: e^s / e^s
    allpos.backward()
    assert float(allpos.detach()) == pytest.approx(0.0, abs=1e-6) and torch.isfinite(sim.grad).all()


def test_unknown_loss_form() -> None:
    with pytest.raises(ConfigError, match="unknown FActOR loss form"):
        factor_loss(torch.zeros(2, 1, 1), torch.ones(2, 1), form="nope")


def test_head_a_projects_channel_c_at_slot_c_a() -> None:
    """Regression for the notebook's reshape bug: ``out[:, c, a]`` is head a applied to channel c."""
    mapper = _mapper()
    fmap = torch.randn(2, 6, 3, 2)  # (B, C, h, w)
    out = mapper(fmap)  # (B, C, A, D)
    x = fmap.flatten(2)  # (B, C, S)
    for a in range(2):
        hid = torch.relu(x @ mapper.w1[a] + mapper.b1[a])  # (B, C, H)
        ref = F.normalize(hid @ mapper.w2[a] + mapper.b2[a], dim=-1)  # (B, C, D)
        torch.testing.assert_close(out[:, :, a], ref)
    # neighbouring channels of one head are *not* what the other attribute slot holds
    assert not torch.allclose(out[:, 1, 0], out[:, 0, 1])


@pytest.mark.parametrize("attribute", [0, 1])
def test_gradient_of_one_attribute_reaches_only_its_head(attribute: int) -> None:
    mapper = _mapper()
    fmap = torch.rand(4, 6, 3, 2)
    y = torch.zeros(4, 2)
    y[:2, attribute] = 1  # only this attribute is present in the batch
    factor_loss(mapper.similarities(fmap), y).backward()
    other = 1 - attribute
    for name in ("w1", "b1", "w2", "b2"):
        grad = getattr(mapper, name).grad
        assert grad[attribute].abs().sum() > 0, name
        assert torch.count_nonzero(grad[other]) == 0, name


def test_changing_one_head_leaves_the_other_attribute_unchanged() -> None:
    mapper = _mapper()
    fmap = torch.rand(2, 6, 3, 2)
    before = mapper.similarities(fmap).detach()
    with torch.no_grad():
        mapper.w1[1].add_(1.0)
        mapper.w2[1].mul_(-2.0)
    after = mapper.similarities(fmap).detach()
    torch.testing.assert_close(after[:, :, 0], before[:, :, 0])
    assert not torch.allclose(after[:, :, 1], before[:, :, 1])


@pytest.mark.parametrize("hidden", [3, 7, 12])
def test_similarities_equal_the_cosine_of_the_projections(hidden: int) -> None:
    """The H < D shortcut (never building the projections) and the direct path give the same cosine."""
    torch.manual_seed(1)
    mapper = FactorMapper(SPECS, torch.randn(2, 9), (6, 3, 2), (96, 64), hidden=hidden)
    fmap = torch.rand(3, 6, 3, 2) * 4
    ref = torch.einsum("bcad,ad->bca", mapper(fmap), mapper.text)  # (B, C, A)
    torch.testing.assert_close(mapper.similarities(fmap), ref, rtol=1e-4, atol=1e-5)


def test_feature_map_of_another_size_is_refused() -> None:
    with pytest.raises(ConfigError, match="trained on 96x64"):
        _mapper()(torch.rand(1, 6, 4, 2))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    mapper = _mapper()
    save_mapper(mapper, tmp_path / "best", {"loss_form": "corrected"})
    loaded, cfg = load_mapper(tmp_path)  # a run folder resolves to its best/
    fmap = torch.rand(2, 6, 3, 2)
    torch.testing.assert_close(loaded.similarities(fmap), mapper.similarities(fmap))
    assert loaded.names == ["mass", "calcification"] and cfg["loss_form"] == "corrected"
    assert loaded.image_size == (96, 64) and loaded.attributes[1].label_column == "calcification"
    umask = os.umask(0o022)  # the weights get the permissions of every other output (safetensors alone: 0600)
    os.umask(umask)
    assert (tmp_path / "best" / "mapper.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(CheckpointError, match="not a FActOR mapper"):
        load_mapper(tmp_path / "nothing")


def test_tap_is_saved_and_a_mapper_without_one_reads_the_last_map(tmp_path: Path) -> None:
    import json

    torch.manual_seed(0)
    mapper = FactorMapper(SPECS, torch.randn(2, 5), (6, 3, 2), (96, 64), hidden=7, tap=-2)
    save_mapper(mapper, tmp_path / "tap")
    assert load_mapper(tmp_path / "tap")[0].tap == -2
    cfg = json.loads((tmp_path / "tap" / "mapper.json").read_text())
    del cfg["tap"]  # a mapper saved before taps existed
    (tmp_path / "tap" / "mapper.json").write_text(json.dumps(cfg))
    assert load_mapper(tmp_path / "tap")[0].tap is None


@pytest.mark.parametrize("tap", [0, 2, -6, 1.5, True])
def test_bad_tap_is_refused(tap: object) -> None:
    with pytest.raises(ConfigError, match="feature tap must be"):
        FactorMapper(SPECS, torch.randn(2, 5), (6, 3, 2), (96, 64), tap=tap)  # type: ignore[arg-type]


def test_descriptor_norms_remove_the_scale_they_promise(tmp_path: Path) -> None:
    torch.manual_seed(3)
    fmap = torch.randn(2, 6, 3, 2)
    scale = torch.tensor([0.5, 7.0])[:, None, None, None]  # one scale per image
    image = FactorMapper(SPECS, torch.randn(2, 5), (6, 3, 2), (96, 64), hidden=7, descriptor_norm="image")
    assert torch.allclose(image.similarities(fmap * scale), image.similarities(fmap), atol=1e-5)
    none = FactorMapper(SPECS, image.text, (6, 3, 2), (96, 64), hidden=7)
    none.load_state_dict(image.state_dict())
    assert not torch.allclose(none.similarities(fmap * scale), none.similarities(fmap), atol=1e-3)
    per_channel = torch.rand(2, 6, 1, 1) * 5 + 0.1  # a gain and an offset per channel
    channel = FactorMapper(SPECS, image.text, (6, 3, 2), (96, 64), hidden=7, descriptor_norm="channel")
    channel.load_state_dict(image.state_dict())
    assert torch.allclose(channel.similarities(fmap * per_channel + 3.0), channel.similarities(fmap), atol=1e-4)
    x = channel.descriptors(fmap)  # (B, C, h*w): zero mean, unit (unbiased) variance per channel
    assert torch.allclose(x.mean(-1), torch.zeros(2, 6), atol=1e-5)
    assert torch.allclose(x.std(-1), torch.ones(2, 6), atol=1e-5)
    flat = FactorMapper(SPECS, image.text, (6, 3, 2), (96, 64), hidden=7, descriptor_norm="sorted")
    flat.load_state_dict(image.state_dict())
    moved = fmap.flip(-1).roll(1, dims=-2)  # the same values in other cells
    assert torch.allclose(flat.similarities(moved), flat.similarities(fmap), atol=1e-6)
    assert torch.equal(flat.descriptors(fmap)[0, 0], fmap[0, 0].flatten().sort(descending=True).values)
    save_mapper(channel, tmp_path)
    loaded, cfg = load_mapper(tmp_path)
    assert cfg["descriptor_norm"] == loaded.descriptor_norm == "channel"
    assert torch.allclose(loaded.similarities(fmap), channel.similarities(fmap))
    with pytest.raises(ConfigError, match="unknown descriptor_norm 'l3'"):
        FactorMapper(SPECS, image.text, (6, 3, 2), (96, 64), descriptor_norm="l3")


def test_a_mapper_saved_without_descriptor_norm_reads_raw_maps(tmp_path: Path) -> None:
    import json

    mapper = _mapper()
    save_mapper(mapper, tmp_path)
    cfg = json.loads((tmp_path / "mapper.json").read_text())
    del cfg["descriptor_norm"]
    (tmp_path / "mapper.json").write_text(json.dumps(cfg))
    assert load_mapper(tmp_path)[0].descriptor_norm == "none"


def test_channel_ids_let_a_head_tell_identical_maps_of_two_channels_apart(tmp_path: Path) -> None:
    torch.manual_seed(4)
    plain = _mapper()
    ids = FactorMapper(SPECS, plain.text, (6, 3, 2), (96, 64), hidden=7, channel_ids=True)
    assert ids.e is not None and ids.e.shape == (2, 6, 7)  # (A, C, hidden)
    ids.load_state_dict({**plain.state_dict(), "e": torch.zeros(2, 6, 7)})
    fmap = torch.randn(1, 1, 3, 2).expand(2, 6, 3, 2).contiguous()  # every channel holds the same map
    assert torch.allclose(ids.similarities(fmap), plain.similarities(fmap))  # zero rows: the plain heads
    assert torch.allclose(plain.similarities(fmap), plain.similarities(fmap)[:, :1].expand(2, 6, 2))
    with torch.no_grad():
        ids.e[0, 4] = 3.0  # mass head, channel 4
    sim = ids.similarities(fmap)
    assert not torch.allclose(sim[:, 4, 0], sim[:, 0, 0])  # channel 4 now scores differently for mass ...
    assert torch.allclose(sim[:, :, 1], plain.similarities(fmap)[:, :, 1])  # ... and calcification is untouched
    assert torch.allclose(torch.einsum("bcad,ad->bca", ids(fmap), ids.text), sim, atol=1e-5)
    save_mapper(ids, tmp_path)
    loaded, cfg = load_mapper(tmp_path)
    assert cfg["channel_ids"] is True and torch.equal(loaded.e, ids.e)
    assert "e" not in plain.state_dict()  # the original's heads carry no channel rows
