"""Image grids composed as one picture (xaibench.report.mosaic): panels are the image, the map blended
over it and the mask's boundary, at an integer scale; the grid places them where its size says."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps

from xaibench.report.mosaic import GAP_PX, _wrap, grid_figure, panel


def test_panel_scales_by_an_integer_factor_and_outlines_the_mask_boundary_only():
    img = np.zeros((16, 16))
    mask = np.zeros((16, 16), bool)
    mask[4:10, 5:12] = True
    p = panel(img, None, mask, px=64)
    assert p.shape == (64, 64, 3)  # 16 px x 4
    white = (p == 1.0).all(-1)
    up = mask.repeat(4, 0).repeat(4, 1)
    # every white pixel lies on the up-scaled mask, and none strictly inside it
    assert white.sum() > 0 and not (white & ~up).any()
    assert not white[4 * 4 + 1:10 * 4 - 1, 5 * 4 + 1:12 * 4 - 1].any()
    assert white[4 * 4, 5 * 4:12 * 4].all() and white[10 * 4 - 1, 5 * 4:12 * 4].all()


def test_panel_blends_the_min_max_scaled_map_with_the_colormap():
    img = np.full((8, 8), 0.5)
    heat = np.tile(np.linspace(-3.0, 5.0, 8), (8, 1))
    p = panel(img, heat, alpha=0.45, px=8)
    jet = colormaps["jet"]
    for col, v in ((0, 0.0), (7, 1.0)):
        np.testing.assert_allclose(p[3, col], 0.55 * 0.5 + 0.45 * np.asarray(jet(v)[:3]), atol=1e-6)
    # a fixed range (signed maps) is not rescaled: 0 maps to the colormap's middle
    q = panel(img, np.zeros((8, 8)), cmap="RdBu_r", alpha=1.0, vrange=(-1, 1), px=8)
    np.testing.assert_allclose(q[0, 0], colormaps["RdBu_r"](0.5)[:3], atol=1e-6)


def test_a_coarse_map_is_stretched_over_its_image_and_large_images_are_strided():
    p = panel(np.zeros((32, 32)), np.arange(16.0).reshape(4, 4), px=32)
    assert p.shape == (32, 32, 3)
    big = panel(np.zeros((500, 300)), px=120)
    assert big.shape == (100, 60, 3)  # stride ceil(500 / 120) = 5


def test_grid_places_every_panel_and_leaves_none_blank(tmp_path):
    a, b = np.zeros((20, 20, 3), np.float32), np.full((20, 20, 3), 0.25, np.float32)
    fig = grid_figure([[a, None], [b, a]], ["one", "two"], ["r0", "r1"], "title")
    w, h = (fig.get_size_inches() * fig.dpi).round().astype(int)
    canvas = fig.axes[0].images[0].get_array()
    assert canvas.shape[:2] == (h, w)
    top = h - 6 - 2 * 20 - GAP_PX
    left = w - 6 - 2 * 20 - GAP_PX
    assert (canvas[top:top + 20, left:left + 20] == 0).all()  # panel a at (0, 0)
    assert (canvas[top:top + 20, left + 20 + GAP_PX:left + 40 + GAP_PX] == 1).all()  # None: background
    assert (canvas[top + 20 + GAP_PX:top + 40 + GAP_PX, left:left + 20] == 0.25).all()  # panel b at (1, 0)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert {"title", "one", "two", "r0", "r1"} <= set(texts)
    fig.savefig(tmp_path / "g.png", dpi=fig.dpi)


@pytest.mark.parametrize("text,px", [("cnn.guided_backprop", 60), ("a very long title with words", 50),
                                     ("averyveryverylongwordwithoutbreaks", 40)])
def test_wrap_keeps_every_character_and_each_line_within_width(text, px):
    lines = _wrap(text, px)
    width = int(px / 5.2)
    assert all(len(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
