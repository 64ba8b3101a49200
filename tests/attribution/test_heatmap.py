"""Heatmap geometry: a feature-map peak placed by hand lands where expected, on the processed image and on
the original DICOM pixels (flips included); channel weights; regions; size checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mammoclip.attribution import (
    AttributeSpec,
    Explainer,
    FactorMapper,
    HeatmapContext,
    channel_weights,
    heat_regions,
    heatmap_to_original,
    upsample_normalise,
    weighted_maps,
)
from mammoclip.attribution.heatmap import check_input_size
from mammoclip.errors import ConfigError, DataError
from mammoclip.imaging.breast import TransformRecord

H, W = 256, 160  # processed image
FH, FW = 8, 5  # feature map: 32 x 32 pixels per cell


def _peak_heat(i: int, j: int) -> np.ndarray:
    fmap = torch.zeros(1, 3, FH, FW)
    fmap[0, 1, i, j] = 5.0  # the peak, in channel 1
    fmap[0, 2] = 1.0  # a flat channel that gets no weight
    weights = torch.zeros(1, 3, 1)
    weights[0, 1, 0] = 1.0
    return upsample_normalise(weighted_maps(fmap, weights), (H, W))[0, 0]  # (H, W)


@pytest.mark.parametrize(("i", "j"), [(0, 0), (3, 2), (7, 4), (5, 1)])
def test_peak_lands_in_its_cell_after_upsampling(i: int, j: int) -> None:
    heat = _peak_heat(i, j)
    assert heat.shape == (H, W) and heat.min() == 0.0 and heat.max() == pytest.approx(1.0)
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    # cell (i, j) covers rows [32 i, 32 i + 32) and columns [32 j, 32 j + 32); the four pixels around its
    # centre sit 1/64 cell from it: (1 - 1/64)^2 of the peak at least (bilinear, align_corners=False; at
    # the border the edge value is held, a plateau out to the image edge)
    assert 32 * i <= py < 32 * i + 32 and 32 * j <= px < 32 * j + 32
    centre = heat[32 * i + 15:32 * i + 17, 32 * j + 15:32 * j + 17]
    assert centre.min() >= (1 - 1 / 64) ** 2 - 1e-6
    outside = np.ones_like(heat, dtype=bool)
    outside[32 * i:32 * i + 32, 32 * j:32 * j + 32] = False
    assert heat[outside].max() < heat.max()


@pytest.mark.parametrize("flipped", [False, True])
def test_peak_maps_back_to_original_pixels(flipped: bool) -> None:
    # original 1000 x 700, crop columns 100..600 and rows 50..850, scaled into 256 x 160 (pad 0)
    rec = TransformRecord(orig_height=1000, orig_width=700, crop_x0=100, crop_y0=50, crop_x1=600, crop_y1=850,
                          scale_x=160 / 500, scale_y=256 / 800, pad_left=0, pad_top=0, flipped=flipped,
                          height=H, width=W)
    i, j = 2, 1  # processed centre (48, 80) in (x, y)
    heat = _peak_heat(i, j)
    orig = heatmap_to_original(heat, rec)
    assert orig.shape == (1000, 700)
    assert orig[:50].max() == 0 and orig[850:].max() == 0 and orig[:, :100].max() == 0 and orig[:, 600:].max() == 0
    oy, ox = np.unravel_index(int(np.argmax(orig)), orig.shape)
    expect = rec.map_points(np.array([[32 * (j + 0.5), 32 * (i + 0.5)]]), inverse=True)[0]
    # by hand: x = 48 / 0.32 = 150 into the crop (mirrored: 500 - 150 = 350), + 100; y = 80 / 0.32 + 50
    assert expect[0] == pytest.approx(100 + (350 if flipped else 150)) and expect[1] == pytest.approx(300)
    tol = 1 / rec.scale_x + 1  # one processed pixel, in original pixels
    assert abs(ox + 0.5 - expect[0]) <= tol and abs(oy + 0.5 - expect[1]) <= tol


def test_channel_weights_softmax_over_top_k() -> None:
    sim = torch.tensor([[[0.1], [0.5], [0.3], [-0.2]]])  # (1, C=4, A=1)
    w = channel_weights(sim, top_k=2, temperature=0.1)
    e5, e3 = np.exp(5.0), np.exp(3.0)
    expect = [0.0, e5 / (e5 + e3), e3 / (e5 + e3), 0.0]
    np.testing.assert_allclose(w[0, :, 0].numpy(), expect, rtol=1e-6)


def test_regions_are_the_components_above_the_95th_percentile() -> None:
    heat = np.zeros((40, 50), np.float32)
    heat[5:10, 5:15] = 0.6  # 50 px
    heat[20:25, 30:40] = 0.9  # 50 px: 100 of 2000 px = the top 5 %
    heat[22, 35] = 1.0
    regions = heat_regions(heat)
    assert len(regions) == 2
    top, second = regions
    assert (top["xmin"], top["ymin"], top["xmax"], top["ymax"]) == (30, 20, 40, 25)
    assert top["peak"] == pytest.approx(1.0) and (top["peak_x"], top["peak_y"]) == (35.5, 22.5)
    assert (second["xmin"], second["ymin"], second["xmax"], second["ymax"], second["area"]) == (5, 5, 15, 10, 50)
    assert heat_regions(np.zeros((4, 4))) == []


class _Stub(torch.nn.Module):
    """A model with a fixed feature map and an input size: enough for the explainer."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.preprocess_cfg = type("P", (), {"image_size": size})()

    def image_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        fmap = torch.zeros(images.shape[0], 4, FH, FW)
        fmap[:, 2, 6, 3] = 3.0
        return fmap


class _TapStub(_Stub):
    """The final map is flat; the stride-16 level (tap -2, twice the cells) has one peak."""

    def image_feature_map(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(images.shape[0], 4, FH, FW)

    def image_intermediates(self, images: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
        assert indices == [-2]
        fmap = torch.zeros(images.shape[0], 3, 2 * FH, 2 * FW)
        fmap[:, :, 5, 7] = 2.0
        return [fmap]


@pytest.mark.parametrize("method", ["factor", "top_channels"])
def test_factor_and_top_channels_read_the_tapped_map(method: str) -> None:
    torch.manual_seed(0)
    mapper = FactorMapper([AttributeSpec("mass", "mass", ("mass",))], torch.randn(1, 8), (3, 2 * FH, 2 * FW), (H, W),
                          tap=-2)
    ex = Explainer(_TapStub((H, W)), method, HeatmapContext(["mass"], mapper=mapper, top_k=3, tap=mapper.tap))
    heats, _ = ex(torch.zeros(1, 1, H, W))
    py, px = np.unravel_index(int(np.argmax(heats[0, 0])), (H, W))
    cell_h, cell_w = H / (2 * FH), W / (2 * FW)
    assert int(py // cell_h) == 5 and int(px // cell_w) == 7


def test_explainer_output_and_size_checks() -> None:
    torch.manual_seed(0)
    mapper = FactorMapper([AttributeSpec("mass", "mass", ("mass",))], torch.randn(1, 8), (4, FH, FW), (H, W))
    ex = Explainer(_Stub((H, W)), "factor", HeatmapContext(["mass"], mapper=mapper, top_k=4))
    heats, scores = ex(torch.zeros(2, 1, H, W))
    assert heats.shape == (2, 1, H, W) and scores.shape == (2, 1)
    assert -1.0 <= scores.min() <= scores.max() <= 1.0
    with pytest.raises(ConfigError, match="trained at 256x160"):
        Explainer(_Stub((128, 80)), "factor", HeatmapContext(["mass"], mapper=mapper))
    with pytest.raises(ConfigError, match="no head for"):
        Explainer(_Stub((H, W)), "factor", HeatmapContext(["distortion"], mapper=mapper))
    with pytest.raises(ConfigError, match="unknown heatmap method"):
        Explainer(_Stub((H, W)), "magic", HeatmapContext(["mass"]))
    with pytest.raises(DataError, match="trained at 256x160"):
        check_input_size(np.zeros((128, 80), np.uint8), _Stub((H, W)), "x.png")
