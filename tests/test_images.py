"""Pictures in: every common file flavour decodes to RGB; the input matches timm's statistics."""
import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import ImageError, MEAN, STD, load_image, read_picture
from deit_functional import images as images_module

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


def test_preprocessing_constants_equal_timms_pretrained_config(timm_model):
    import timm.data
    config = timm.data.resolve_model_data_config(timm_model)
    assert config["mean"] == MEAN and config["std"] == STD
    assert config["interpolation"] == images_module.INTERPOLATION
    assert config["input_size"] == (3, 224, 224)


RGB = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)


@pytest.mark.parametrize("name, save, expected", [
    ("rgb.png", lambda p: Image.fromarray(RGB).save(p), RGB),
    ("grey.png", lambda p: Image.fromarray(RGB[..., 0]).save(p), np.repeat(RGB[..., :1], 3, -1)),
    ("opaque_rgba.png", lambda p: Image.fromarray(np.dstack([RGB, np.full_like(RGB[..., 0], 255)])).save(p), RGB),
    ("transparent.png", lambda p: Image.fromarray(np.dstack([RGB, np.zeros_like(RGB[..., 0])])).save(p),
     np.full_like(RGB, 255)),
    ("grey16.png", lambda p: Image.fromarray(RGB[..., 0].astype(np.uint16) * 257).save(p),
     np.repeat(RGB[..., :1], 3, -1)),
    ("palette.png", lambda p: Image.fromarray(RGB).quantize(256).save(p), None),
    ("transparent_palette.png", lambda p: Image.fromarray(np.zeros_like(RGB)).quantize(2).save(p, transparency=0),
     np.full_like(RGB, 255)),
    ("transparent.gif", lambda p: Image.fromarray(np.zeros_like(RGB)).quantize(2).save(p, transparency=0),
     np.full_like(RGB, 255)),
    ("frames.gif", lambda p: Image.fromarray(RGB).quantize(256).save(p, save_all=True,
                                                                      append_images=[Image.new("P", (50, 40))]), None),
    ("lossless.webp", lambda p: Image.fromarray(RGB).save(p, lossless=True), RGB),
    ("print.jpg", lambda p: Image.fromarray(RGB).convert("CMYK").save(p, quality=100), None),
])
def test_every_file_flavour_decodes_to_rgb8(tmp_path, name, save, expected):
    path = tmp_path / name
    save(path)
    picture = read_picture(path)
    assert picture.shape == (40, 50, 3) and picture.dtype == np.uint8
    if expected is None:  # palette, CMYK: compare with PIL's own conversion to RGB
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert np.abs(picture.astype(int) - RGB).mean() < 40  # and it is still the same picture
    np.testing.assert_array_equal(picture, expected)


def test_input_is_the_whole_picture_resized_and_normalised(tmp_path):
    half = np.zeros((60, 90, 3), np.uint8)
    half[:, 45:] = 255  # left half black, right half white: nothing may be cropped away
    Image.fromarray(half).save(tmp_path / "half.png")
    x, picture = load_image(tmp_path / "half.png")
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    np.testing.assert_array_equal(picture, half)
    black = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(x[:, :, 0], black[:, None].expand(3, 224))
    torch.testing.assert_close(x[:, :, -1], white[:, None].expand(3, 224))
    assert x.min() >= black.min() - 1e-6 and x.max() <= white.max() + 1e-6  # no overshoot


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not a readable picture"),
    (b"hello, I am text", "not a readable picture"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as caught:
        read_picture(path)
    assert str(path) in str(caught.value)


def test_float_pictures_are_scaled_to_their_range(tmp_path):
    from deit_functional.images import _to_rgb8
    unit = np.linspace(0, 1, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3)
    np.testing.assert_array_equal(_to_rgb8(unit, "unit"), _to_rgb8(unit * 255, "bytes"))
    assert _to_rgb8(unit, "unit").max() == 255 and _to_rgb8(unit, "unit").min() == 0


def test_truncated_file_is_refused(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_picture(tmp_path / "cut.jpg")


def test_picture_smaller_than_a_patch_is_refused(tmp_path):
    Image.fromarray(RGB[:15]).save(tmp_path / "thin.png")
    with pytest.raises(ImageError, match="smaller than one 16x16 patch"):
        read_picture(tmp_path / "thin.png")
