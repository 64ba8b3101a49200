"""Film-style synthetic images: artefacts outside the breast box at every gap, with ground truth."""

from __future__ import annotations

import numpy as np

from mammoclip.synthetic.film import ARTEFACTS, film_image


def test_film_images_have_marker_truth_outside_the_breast_box() -> None:
    images = [film_image(0, i, (380, 228)) for i in range(12)]
    kinds = {k for f in images for k, _ in f.kinds}
    assert kinds == set(ARTEFACTS)
    assert {f.view + f.laterality for f in images} == {"CCL", "MLOL", "CCR", "MLOR"}
    assert any(gap == 0 for f in images for _, gap in f.kinds)  # some touch the breast
    for f in images:
        rows, cols = np.flatnonzero(f.breast.any(1)), np.flatnonzero(f.breast.any(0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        assert not f.markers[box].any() and f.markers.any()
        assert f.image.dtype == np.uint16 and f.image[f.markers].mean() > f.image[f.breast].mean()
        chest = f.breast[:, 0] if f.laterality == "L" else f.breast[:, -1]
        assert chest.mean() > 0.5


def test_film_images_are_seeded() -> None:
    a, b = film_image(3, 5, (380, 228)), film_image(3, 5, (380, 228))
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, film_image(3, 6, (380, 228)).image)


def test_film_boxes_hold_their_artefacts() -> None:
    """``boxes`` aligns with ``kinds``; together they cover every marker pixel, each holding its own."""
    for i in range(8):
        f = film_image(1, i, (380, 228))
        assert len(f.boxes) == len(f.kinds) >= 1
        covered = np.zeros(f.markers.shape, bool)
        for (kind, _), (x0, y0, x1, y1) in zip(f.kinds, f.boxes):
            assert 0 <= x0 < x1 <= 228 and 0 <= y0 < y1 <= 380
            covered[y0:y1, x0:x1] = True
            if kind != "film_edge":  # a dark film edge is background: a box without marker pixels
                assert f.markers[y0:y1, x0:x1].any(), kind
        assert not (f.markers & ~covered).any()
