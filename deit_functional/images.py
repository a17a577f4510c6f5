"""Pictures in: decode any common image file and make a ViT's input tensor from it.

The input's size, the normalisation's mean and std and the interpolation are the checkpoint's
own (its timm pretrained_cfg, in architectures.Architecture): DeiT's 224 and ImageNet
statistics, ViT's mean = std = 0.5, DINOv2's 518.

How a picture is fit to 224x224 (or the model's size): the *whole* picture is resized (bicubic,
antialiased), aspect ratio not kept. timm's eval transform instead resizes the short side to
224 / crop_pct (248) and centre-crops 224, which hides the picture's borders from the model --
and then no explanation can be drawn over them. So crop_pct is read but not applied. Resizing
the whole picture makes every pixel of the original sit under exactly one patch, so the 14x14
map stretches back over the original pixel for pixel. The cost is a mild stretch of non-square
pictures, the convention of the rollout tools users know.
"""
import re

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .architectures import IMAGENET, architecture
from .model import DEFAULT_MODEL, P

# The pretrained data config of timm's deit_tiny_patch16_224 (ImageNet statistics), recorded so
# a run need not import timm; tests/test_images.py asserts they equal timm's.
MEAN, STD = IMAGENET
INTERPOLATION = "bicubic"


OTHER_COLOUR_MODELS = {"CMYK", "YCbCr"}  # Pillow's names; both convert exactly to RGB

# How to turn (H, W, 3) pixels stored under each EXIF orientation (tag 274) upright, as
# viewers show them: mirrored (2), turned half round (3), flipped (4), transposed (5), stored a
# quarter turn anticlockwise (6), transversed (7), a quarter turn clockwise (8).
UPRIGHT = {1: lambda p: p, 2: lambda p: p[:, ::-1], 3: lambda p: p[::-1, ::-1], 4: lambda p: p[::-1],
           5: lambda p: p.transpose(1, 0, 2), 6: lambda p: np.rot90(p, -1),
           7: lambda p: np.rot90(p.transpose(1, 0, 2), 2), 8: lambda p: np.rot90(p, 1)}


class ImageError(ValueError):
    """A file that cannot be used as a picture; the message names the file and the problem."""


def read_picture(path):
    """Decode an image file into an (H, W, 3) uint8 RGB array, upright as viewers show it.

    A camera's EXIF orientation tag is applied (phone photos are often stored on their side).
    Greyscale, palette, 1-bit, 16-bit, float, alpha, CMYK, YCbCr and multi-frame files are
    accepted: the first frame is taken, alpha is composited over white, 16-bit values are scaled
    to 8 bits, float values to [0, 1] (by their maximum, where it exceeds 1).
    """
    import imageio.v3 as iio  # imported here: its plugin machinery costs ~0.2 s at start-up

    try:
        with iio.imopen(path, "r", plugin="pillow") as image:
            metadata = image.metadata(index=0, exclude_applied=False)
            # Pillow hands over CMYK and YCbCr channels as they are stored, and palette
            # colours without their transparency: convert them
            converted = ({"mode": "RGB"} if metadata.get("mode") in OTHER_COLOUR_MODELS else
                         {"mode": "RGBA"} if metadata.get("mode") == "P" and "transparency" in metadata else {})
            pixels = np.asarray(image.read(index=0, **converted))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not a picture") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Exception as error:  # imageio reports bad data through many exception types
        raise ImageError(f"{path}: not a readable picture: {why_unreadable(path, error)}") from None
    # turned upright on the RGB pixels: imageio's own rotate=True flips a palette picture's
    # colour channels instead of its columns
    upright = UPRIGHT.get(metadata.get("Orientation"), UPRIGHT[1])
    return np.ascontiguousarray(upright(_to_rgb8(pixels, path)))


# What a file's first bytes say it is: (test, Pillow's name of the format, as users know it).
SIGNATURES = [
    (lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"), "PNG", "PNG"),
    (lambda b: b.startswith(b"\xff\xd8\xff"), "JPEG", "JPEG"),
    (lambda b: b[:6] in (b"GIF87a", b"GIF89a"), "GIF", "GIF"),
    (lambda b: b.startswith(b"BM"), "BMP", "BMP"),
    (lambda b: b[:4] in (b"II*\x00", b"MM\x00*"), "TIFF", "TIFF"),
    (lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP", "WEBP", "WebP"),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"avif", b"avis"), "AVIF", "AVIF"),
    (lambda b: b[4:8] == b"ftyp" and b[8:12] in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"),
     "HEIF", "HEIC"),
    (lambda b: b.startswith(b"\xff\x0a") or b.startswith(b"\x00\x00\x00\x0cJXL "), "JXL", "JPEG XL"),
]
# Decoders Pillow does not have built in, where a package adds one (imageio registers it).
DECODER_PACKAGES = {"HEIF": "pillow-heif", "AVIF": "pillow-heif"}
NOT_PICTURES = [(lambda b: b.startswith(b"%PDF"), "a PDF document, not a picture"),
                (lambda b: b"<svg" in b, "an SVG drawing, vector graphics rather than pixels (export it as PNG)")]


def why_unreadable(path, error):
    """Why a file that imageio could not decode (raising ``error``) is not a picture, in a
    user's words: too large, empty, a picture format with no decoder here, a damaged file of a
    known format, or not a picture at all -- read from the file's first bytes, not from the
    decoder's message (imageio's is about its plugins: "can not handle the given uri")."""
    from PIL import Image

    chain = [error, error.__cause__, error.__context__]
    if any(isinstance(e, Image.DecompressionBombError) for e in chain):
        pixels = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", " ".join(map(str, chain)))
        return ("too large to decode safely" + (f": {int(pixels[1]):,} pixels, over Pillow's limit of {int(pixels[2]):,}"
                                                 if pixels else ""))
    with open(path, "rb") as file:
        start = file.read(1024)
    if not start:
        return "the file is empty"
    Image.init()  # every format Pillow, and any plugin imageio registered, can open
    for test, format_id, name in SIGNATURES:
        if test(start):
            if format_id in Image.OPEN:
                return f"a truncated or damaged {name} file"
            package = DECODER_PACKAGES.get(format_id)
            return (f"a {name} picture, and no {name} decoder is installed"
                    + (f": pip install {package}, or the project's extra: pip install -e '.[heif]'" if package else ""))
    described = next((text for test, text in NOT_PICTURES if test(start)), None)
    return described or "its contents are in no picture format (not PNG, JPEG, GIF, BMP, TIFF, WebP, ...)"


def _to_rgb8(pixels, path):
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or pixels.size == 0:
        raise ImageError(f"{path}: unsupported picture layout {pixels.shape}")
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    elif pixels.dtype == np.uint16:
        pixels = (pixels >> 8).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        pixels = np.nan_to_num(pixels, nan=0.0) / max(1.0, float(np.nanmax(pixels)))
        pixels = (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise ImageError(f"{path}: unsupported pixel type {pixels.dtype}")
    colour, alpha = (pixels[..., :-1], pixels[..., -1:]) if pixels.shape[-1] in (2, 4) else (pixels, None)
    if alpha is not None:  # transparent areas hold arbitrary colours: show them as white
        a = alpha.astype(np.float32) / 255
        colour = (colour * a + 255 * (1 - a) + 0.5).astype(np.uint8)
    if colour.shape[-1] == 1:
        colour = np.repeat(colour, 3, axis=-1)
    if min(colour.shape[:2]) < P:
        raise ImageError(f"{path}: picture is {colour.shape[1]}x{colour.shape[0]} pixels, "
                         f"smaller than one {P}x{P} patch")
    return np.ascontiguousarray(colour)


def resize(picture, size, interpolation=INTERPOLATION):
    """(H, W, 3) uint8 -> (h, w, 3) uint8 at ``size`` = (h, w), bicubic and antialiased.

    It works on the 8-bit pixels, as timm's PIL-based transform does (they agree within one
    level), and is ~4x faster than resizing a float copy of a large picture.
    """
    pixels = rearrange(torch.from_numpy(picture), "h w c -> 1 c h w")
    small = F.interpolate(pixels, size=size, mode=interpolation, antialias=True, align_corners=False)
    return rearrange(small, "1 c h w -> h w c").numpy()


def to_input(picture, model=DEFAULT_MODEL):
    """(H, W, 3) uint8 picture -> (3, 224, 224) float32 tensor, resized whole and normalised, at
    ``model``'s input size (a timm name, or an architectures.Architecture)."""
    a = architecture(model)
    small = resize(picture, (a.image_size, a.image_size), a.interpolation)
    return normalised(rearrange(torch.from_numpy(small), "h w c -> c h w").float() / 255, a)


def normalised(pixels, model=DEFAULT_MODEL):
    """(..., 3, H, W) pixel values in [0, 1] -> the model's input: each channel less its mean,
    over its standard deviation (DeiT's: ImageNet's MEAN and STD)."""
    a = architecture(model)
    mean, std = (torch.tensor(values, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
                 for values in (a.mean, a.std))
    return (pixels - mean) / std


def load_image(path, model=DEFAULT_MODEL):
    """Read ``path`` -> ``(input, picture)``: the (3, 224, 224) model input (at ``model``'s size)
    and the original (H, W, 3) uint8 picture, kept for drawing the explanation over it."""
    picture = read_picture(path)
    return to_input(picture, model), picture
