"""Drawing: colours, blending, pixel alignment of the upsampled mask, safe writing."""
import numpy as np
import pytest
import torch

from deit_functional.render import jet, join, overlay, save_npy, upsample, write_atomically


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


@pytest.mark.parametrize("size", [(280, 420), (300, 451), (16, 16), (7, 300), (14, 14)])
def test_upsample_is_torch_bilinear_interpolation(size):
    grid = torch.rand(14, 14, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(grid[None, None], size=size, mode="bilinear",
                                               align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(upsample(grid, size), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(upsample(grid.clone().requires_grad_(), size), upsample(grid.numpy(), size))


def test_join_puts_white_gaps_between_panels():
    a, b = np.zeros((5, 4, 3), np.uint8), np.ones((5, 6, 3), np.uint8)
    joined = join([a, b], gap=2)
    assert joined.shape == (5, 12, 3) and np.all(joined[:, 4:6] == 255)
    assert np.array_equal(joined[:, :4], a) and np.array_equal(joined[:, 6:], b)
    stacked = join([a, a], axis=0, gap=3)
    assert stacked.shape == (13, 4, 3) and np.all(stacked[5:8] == 255)


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    def fails(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "result.npy", fails)
    assert list(tmp_path.iterdir()) == []
    save_npy(tmp_path / "mask.npy", np.ones(3, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["mask.npy"]


@pytest.mark.parametrize("height, width", [(1, 1), (7, 13), (300, 451)])  # 451x300: several stored blocks
def test_encoded_png_decodes_to_the_same_pixels(height, width):
    import imageio.v3 as iio
    from deit_functional.render import encode_png
    picture = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(iio.imread(encode_png(picture), extension=".png"), picture)
