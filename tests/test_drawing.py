"""Drawing: colours, blending, pixel alignment of the upsampled mask, panels, the curves plot."""
import numpy as np
import pytest
import torch

from deit_functional.drawing import (curves_figure, grey, jet, join, labelled, layer_figure, overlay, stretched,
                                     to_height, upsample)
from deit_functional.evaluate import FRACTIONS, auc

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


def test_jet_runs_from_dark_blue_to_dark_red():
    colours = jet(np.array([0.0, 0.5, 1.0]))
    np.testing.assert_array_equal(colours, [[0, 0, 128], [128, 255, 128], [128, 0, 0]])


def test_overlay_is_the_half_blend_of_picture_and_colours():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = rng.random((30, 40), dtype=np.float32)
    exact = 0.5 * picture + 0.5 * jet(mask).astype(np.float64)
    blended = overlay(picture, mask)
    assert blended.dtype == np.uint8 and blended.shape == picture.shape
    assert np.abs(blended - exact).max() <= 2.5  # colours are looked up at 256 levels


def test_overlay_is_the_fixed_point_blend_of_the_looked_up_colours():
    """Bit for bit, for several alphas: ((256 - a) * pixel + a * JET[level] + 128) >> 8, in
    plain integers, each pixel's colour the JET colour of its float32 mask rounded to 255ths."""
    rng = np.random.default_rng(1)
    picture = rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)
    mask = rng.random((23, 31), dtype=np.float32)
    mask[0, :2] = [0, 1]
    levels = np.floor(mask * np.float32(255) + np.float32(0.5)).astype(int)
    for alpha in (0, 0.25, 0.5, 0.7, 1):
        a = round(alpha * 256)
        colours = jet(levels / 255).astype(np.int64)
        expected = ((256 - a) * picture.astype(np.int64) + a * colours + 128) >> 8
        np.testing.assert_array_equal(overlay(picture, mask, alpha), expected)


def test_upsampled_mask_is_pixel_aligned_with_the_whole_picture():
    grid = torch.zeros(14, 14)
    grid[3, 10] = 1  # one hot patch: rows 3/14..4/14, columns 10/14..11/14 of the picture
    height, width = 280, 420  # 20 x 30 pixels per patch
    mask = upsample(grid, (height, width))
    assert mask.shape == (height, width) and mask.dtype == np.float32
    assert 0 <= mask.min() and mask.max() <= 1
    y, x = np.unravel_index(mask.argmax(), mask.shape)
    assert 60 <= y < 80 and 300 <= x < 330
    assert mask[:40].max() == 0 and mask[:, :270].max() == 0  # nothing far from the patch


def test_upsample_takes_arrays_and_tensors_alike():
    grid = torch.rand(14, 14, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = upsample(grid.float().numpy(), (50, 70))
    np.testing.assert_array_equal(upsample(grid.requires_grad_(), (50, 70)), expected)
    np.testing.assert_array_equal(upsample(grid.detach().numpy(), (50, 70)), expected)


def test_join_puts_white_gaps_between_panels():
    a, b = np.zeros((5, 4, 3), np.uint8), np.ones((5, 6, 3), np.uint8)
    joined = join([a, b], gap=2)
    assert joined.shape == (5, 12, 3) and np.all(joined[:, 4:6] == 255)
    assert np.array_equal(joined[:, :4], a) and np.array_equal(joined[:, 6:], b)
    stacked = join([a, a], axis=0, gap=3)
    assert stacked.shape == (13, 4, 3) and np.all(stacked[5:8] == 255)


def test_labelled_puts_the_text_in_a_white_band_above():
    picture = np.full((30, 120, 3), 90, np.uint8)
    one, other = labelled(picture, "layer 1"), labelled(picture, "layer 12")
    assert one.shape == (30 + 21, 120, 3) and np.array_equal(one[21:], picture)
    band = one[:21]
    dark = band.min(axis=2) < 128
    assert dark.any() and not dark[:, 70:].any()  # the text, at the left, short
    assert (band[~dark] > 128).all() and not np.array_equal(band, other[:21])


def test_per_layer_figure_has_the_expected_panels_labels_and_size():
    """Each panel is its map over the grey picture, stretched to the panel's own range (which
    its heading gives), in both rows; white gaps; a title, row titles and a colour key."""
    picture = np.random.default_rng(0).integers(0, 256, (150, 300, 3), dtype=np.uint8)
    by_layer = torch.rand(12, 14, 14, generator=torch.Generator().manual_seed(1))
    own = torch.rand(12, 14, 14, generator=torch.Generator().manual_seed(2)) * 0.1 + 0.5  # narrow ranges
    figure = layer_figure(picture, by_layer, own, "a title", height=100, gap=8)
    title, row_title, layer_label, key = 24, 21, 21 + 17, 21 + 10  # bands of 16- and 14-pixel text
    tops = (title + row_title + layer_label, title + row_title + layer_label + 100 + 8 + row_title + layer_label)
    assert figure.shape == (tops[1] + 100 + 8 + key, 12 * 200 + 11 * 8, 3)
    back = grey(to_height(picture, 100))
    for top, grids in zip(tops, (by_layer, own)):
        for layer in (0, 5, 11):
            left = layer * 208
            grid = grids[layer].numpy()
            expected = overlay(back, stretched(upsample(grid, (100, 200)), grid.min(), grid.max()))
            np.testing.assert_array_equal(figure[top:top + 100, left:left + 200], expected)
    assert all(np.all(figure[top:top + 100, 200:208] == 255) for top in tops)  # white gaps between panels
    labels = [figure[tops[0] - layer_label:tops[0], l * 208:l * 208 + 200] for l in range(12)]
    assert all((label.min(axis=2) < 128).any() for label in labels)  # every column headed ...
    assert len({label.tobytes() for label in labels}) == 12  # ... by its own number and range
    for band in (figure[:title], figure[title:title + row_title], figure[tops[0] + 108:tops[1] - layer_label],
                 figure[-key:-10]):
        assert (band.min(axis=2) < 128).any()  # the title, both row titles and the key are written
    np.testing.assert_array_equal(figure[-10:, :600], np.repeat(jet(np.linspace(0, 1, 600, dtype=np.float32))[None],
                                                               10, axis=0))  # the key's strip


def test_curves_figure_plots_every_fusions_curves_with_their_areas():
    rng = np.random.default_rng(3)
    evaluation = {}
    for fusion in ("mean", "max"):
        positive, negative = sorted(rng.random(10))[::-1], sorted(rng.random(10))
        evaluation[fusion] = {"fractions": list(FRACTIONS), "positive": positive, "negative": negative,
                              "positive_auc": auc(FRACTIONS, positive), "negative_auc": auc(FRACTIONS, negative)}
    figure = curves_figure(evaluation, "Samoyed")
    left, right = figure.axes
    assert left.get_ylabel() == "p(Samoyed)" and "most relevant removed first" in left.get_title()
    assert "least relevant removed first" in right.get_title()
    for ax, order in ((left, "positive"), (right, "negative")):
        assert [line.get_label() for line in ax.lines] == [
            f"{fusion}: AUC {scores[order + '_auc']:.3f}" for fusion, scores in evaluation.items()]
        for line, scores in zip(ax.lines, evaluation.values()):
            np.testing.assert_array_equal(line.get_xdata(), FRACTIONS)
            np.testing.assert_array_equal(line.get_ydata(), scores[order])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [line.get_label() for line in ax.lines]
    np.testing.assert_allclose(figure.get_size_inches(), (9, 4.2))


def test_curves_figure_is_none_without_matplotlib(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    assert curves_figure({}, "Samoyed") is None
