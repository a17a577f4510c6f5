"""Drawing an explanation: colours, the overlay on the original picture, and the figures.

Everything here makes pictures as (H, W, 3) uint8 arrays (or, for the matplotlib plot, a figure);
writing them is writing.py's job.
"""
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .fast_forms import bilinear_resize


def as_array(grid, dtype):
    """A map, a numpy array or a tensor on any device -> a numpy array of ``dtype``."""
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().numpy()
    return np.asarray(grid, dtype)


def upsample(grid, size):
    """A (h, w) map (array, or tensor on any device): a (G, G) patch grid, or a value per pixel
    of the model's (224, 224) input -> (H, W) float32 array at ``size`` = (H, W), pixel-aligned
    with the picture, within the map's own range ([0, 1] for a patch map).

    The picture was resized whole to the model's input (images.py), so patch (i, j) covers rows
    i*H/G..(i+1)*H/G, and input pixel (i, j) rows i*H/224..(i+1)*H/224; bilinear interpolation
    with align_corners=False maps those areas back.
    """
    grid = as_array(grid, np.float32)
    mask = bilinear_resize(grid, size)
    return np.clip(mask, min(grid.min(), 0), max(grid.max(), 0), out=mask)  # the rounding of the blend clipped


def jet(mask):
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 JET colours: dark blue (0) .. dark red (1)."""
    x = np.asarray(mask, np.float32)[..., None] * 4
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0, 1)
    return (rgb * 255 + 0.5).astype(np.uint8)


JET_TABLE = jet(np.linspace(0, 1, 256))  # (256, 3): the 256 levels overlay() looks colours up at


def overlay(picture, mask, alpha=0.5):
    """Blend the JET-coloured (H, W) mask over an (H, W, 3) uint8 picture of the same size:
    (1 - alpha) * picture + alpha * colour, in 8.8 fixed point, rounded:
    ((256 - a) * picture + a * colour + 128) >> 8 with a = round(256 * alpha).

    Colours are looked up at 256 levels (the .npy mask keeps full precision), from a table that
    already holds a * colour + 128, so a pixel costs one lookup and one multiply-add: 0.85 ms
    for a 600x400 photo, where looking up the colours and blending them took 1.7 ms.
    """
    a = round(alpha * 256)
    blended = np.take(a * JET_TABLE.astype(np.uint16) + 128, (mask * 255 + 0.5).astype(np.uint8), axis=0)
    blended += np.multiply(picture, np.uint16(256 - a), dtype=np.uint16)
    blended >>= 8
    return blended.astype(np.uint8)


# ---- the result figure ------------------------------------------------------------------------

SIDE = 448   # a result figure's panels, on their longer side: a 16-px patch of a square picture is 32 px
FLAT = 0.25  # a map whose values span less than this share of its largest is "nearly flat"
LABEL, TITLE = 16, 18  # text sizes in result figures, pixels
BACKDROPS = ("grey", "colour")


@dataclass(frozen=True)
class Look:
    """How a result figure draws a map over its picture."""
    backdrop: str = "grey"  # over a greyscale copy, so that red means relevance and nothing else; or "colour"
    alpha: float = 0.5      # the map's share of each pixel


def grey(picture):
    """(H, W, 3) uint8 -> its luma (ITU-R 601) in all three channels: a red object turns mid-grey,
    so that no red in the figure comes from the photo."""
    luma = picture.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((luma + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def backdrop(picture, look):
    """The picture a map is drawn over: ``picture`` itself, or its grey copy."""
    if look.backdrop not in BACKDROPS:
        raise ValueError(f"unknown backdrop {look.backdrop!r}; choose one of {', '.join(BACKDROPS)}")
    return grey(picture) if look.backdrop == "grey" else picture


def scaled(picture, size):
    """(H, W, 3) uint8 -> (h, w, 3) at ``size`` = (h, w), bilinear (Pillow, which antialiases
    when shrinking and lets other threads run meanwhile: no torch in the writer threads).
    Bilinear, not bicubic: 1.5 against 2.6 ms for a 451 x 300 photo, for a panel to look at."""
    from PIL import Image
    return np.asarray(Image.fromarray(picture).resize(size[::-1], Image.Resampling.BILINEAR))


def to_side(picture, side=SIDE):
    """(H, W, 3) uint8 -> the same picture ``side`` pixels on its longer side, aspect ratio kept."""
    height, width = picture.shape[:2]
    scale = side / max(height, width)
    return scaled(picture, (max(1, round(height * scale)), max(1, round(width * scale))))


def to_height(picture, height):
    """(H, W, 3) uint8 -> the same picture ``height`` pixels high, aspect ratio kept."""
    return scaled(picture, (height, max(1, round(picture.shape[1] * height / picture.shape[0]))))


def value_range(grid):
    """A map -> (lowest, highest) of its values, the span its colours are stretched over."""
    values = as_array(grid, np.float64)
    return float(values.min()), float(values.max())


def stretched(mask, low, high):
    """Map values -> [0, 1]: ``low`` dark blue, ``high`` dark red (min-max). A map at its own
    maximum scale (1) and lowest 0 is unchanged; a nearly flat one (Attention Flow without
    discard: 0.96-1.0) shows its contrast instead of one red sheet, and its colour bar says how
    small that contrast is. A constant map is all blue."""
    if high <= low:
        return np.zeros_like(mask)
    return np.clip((mask - np.float32(low)) / np.float32(high - low), 0, 1)


def number_pair(low, high):
    """``low`` and ``high`` as text, with the decimals that tell them apart (at least two)."""
    decimals = 2 if high - low <= 0 else max(2, int(np.ceil(-np.log10(high - low))) + 1)
    return f"{low:.{decimals}f}", f"{high:.{decimals}f}"


def colour_bar(width, low, high, size=14):
    """A JET strip ``width`` wide, then its scale: the map's lowest value under the blue end,
    its highest under the red end, and between them what the colours mean."""
    strip = np.repeat(jet(np.linspace(0, 1, width, dtype=np.float32))[None], 10, axis=0)
    left, right = number_pair(low, high)
    meaning = ("nearly flat: colours stretched" if high - low < FLAT * max(abs(high), 1e-12) else
               "relevance: low to high")
    band = text_band([(left, "left"), (meaning, "centre"), (right, "right")], width, size)
    return np.concatenate([np.full((3, width, 3), 255, np.uint8), strip, band])


FOR, AGAINST = np.array([255, 0, 0], np.float32), np.array([0, 0, 255], np.float32)  # a signed map's colours


def signed_overlay(picture, mask, alpha=0.5):
    """Blend a signed (H, W) mask in [-1, 1] over an (H, W, 3) uint8 picture: red where it is
    positive, blue where negative, each with weight alpha * |value|, so that 0 leaves the picture
    as it is (a JET colour would tint it: a signed map's 0 lies mid-scale)."""
    weight = (alpha * np.abs(mask))[..., None]
    colour = np.where(mask[..., None] >= 0, FOR, AGAINST)
    return (picture * (1 - weight) + colour * weight + 0.5).astype(np.uint8)


CLIPPED = 2  # percent of a signed map's total |value| drawn at full colour, as captum draws attributions


def signed_reach(grid):
    """The |value| at which a signed map's colours are full: the smallest |value| such that those
    up to it hold (100 - CLIPPED)% of the map's total |value| (captum's visualisation does so:
    outlier_perc=2). A pixel map is heavy-tailed: scaled to its maximum, all but a few pixels
    would stay grey. 0 for an all-zero map."""
    magnitude = np.abs(as_array(grid, np.float64))
    magnitude = np.sort(magnitude[np.isfinite(magnitude)])
    if magnitude.size == 0:
        return 0.0
    total = np.cumsum(magnitude)
    return float(magnitude[np.searchsorted(total, total[-1] * (100 - CLIPPED) / 100)])


def signed_colour_bar(width, reach, size=14):
    """A strip from blue (-reach) through grey (0) to red (+reach), then its scale: its ends are
    where the colours become full (<= -reach, >= reach), not the map's extremes."""
    values = np.linspace(-1, 1, width, dtype=np.float32)[None].repeat(10, axis=0)
    strip = signed_overlay(np.full((10, width, 3), 160, np.uint8), values, alpha=1.0)
    if reach > 0:
        left, right = number_pair(-reach, reach)
        pieces = [(f"<= {left}", "left"), ("against | for the class", "centre"), (f">= {right}", "right")]
    else:
        pieces = [("0 everywhere: no relevance", "centre")]
    band = text_band(pieces, width, size)
    return np.concatenate([np.full((3, width, 3), 255, np.uint8), strip, band])


def map_panel(back, grid, label, look, size=14, signed=False):
    """A map (patch grid or pixels) drawn over the panel-sized backdrop ``back`` under ``label``
    and over its colour bar: stretched to its value range in JET colours, or where it is
    ``signed`` (a relevance that can speak against the class) red and blue either side of 0, full
    at signed_reach."""
    low, high = value_range(grid)
    mask = upsample(grid, back.shape[:2])
    if signed:
        reach = signed_reach(grid)
        shown = np.clip(mask / reach, -1, 1) if reach > 0 else np.zeros_like(mask)
        return np.concatenate([labelled(signed_overlay(back, shown, look.alpha), label, size),
                               signed_colour_bar(back.shape[1], reach, size)])
    return np.concatenate([labelled(overlay(back, stretched(mask, low, high), look.alpha), label, size),
                           colour_bar(back.shape[1], low, high, size)])


def result_figure(picture, grids, title, look=Look(), side=SIDE, signed=False):
    """The picture a run writes for each explanation: ``title`` across the top, then the picture
    as given and each map of ``grids`` {label: (G, G) or (224, 224)} over it, each panel ``side`` pixels on its
    longer side with a colour bar beneath: the map's own value range, or for ``signed`` maps (red
    and blue) where their colours become full (map_panel); up to three panels in a row, four as two rows of two (so that a page
    shows the labels at their size)."""
    small = to_side(picture, side)
    back = backdrop(small, look)
    maps = [map_panel(back, grid, label, look, LABEL, signed) for label, grid in grids.items()]
    original = labelled(small, "the picture", LABEL)
    below = text_band([(f"{picture.shape[1]} x {picture.shape[0]} pixels", "left")], small.shape[1], 14)
    original = np.concatenate([original, np.full((maps[0].shape[0] - original.shape[0] - below.shape[0],
                                                  small.shape[1], 3), 255, np.uint8), below])
    panels = [original, *maps]
    columns = 2 if len(panels) == 4 else len(panels)
    rows = [join(panels[i:i + columns]) for i in range(0, len(panels), columns)]
    return labelled(join(rows, axis=0), title, size=TITLE)


# ---- text ---------------------------------------------------------------------------------------

def text_band(text, width, size=14):
    """A white band ``width`` pixels wide holding ``text`` in Pillow's own font at ``size``
    pixels: a string, wrapped at spaces onto as many lines as it needs (and at newlines), or one
    line of [(text, "left" | "centre" | "right")] pieces. Read-only: the same bands (panel labels,
    colour-bar scales) recur picture after picture, and drawing one took 0.5-0.9 ms, so they are
    kept (a folder's figures cost ~3 ms less each)."""
    return _band(text if isinstance(text, str) else tuple(text), width, size)


@lru_cache(maxsize=512)
def _band(text, width, size):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size)
    lines = [[(line, "left")] for line in _wrapped(text, width, font)] if isinstance(text, str) else [text]
    step = size + size // 4
    band = Image.new("RGB", (width, size + size // 2 + (len(lines) - 1) * step), "white")
    draw = ImageDraw.Draw(band)
    for row, pieces in enumerate(lines):
        for piece, where in pieces:
            left = {"left": 1, "centre": (width - font.getlength(piece)) / 2,
                    "right": width - 1 - font.getlength(piece)}[where]
            draw.text((left, size // 4 + row * step), piece, fill=(0, 0, 0), font=font)
    pixels = np.asarray(band)
    pixels.flags.writeable = False
    return pixels


def _wrapped(text, width, font):
    """``text`` broken into lines no wider than ``width`` at spaces (a longer word stands alone)."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            longer = f"{line} {word}" if line else word
            if line and font.getlength(longer) > width - 2:
                lines.append(line)
                line = word
            else:
                line = longer
        lines.append(line)
    return lines


def labelled(picture, text, size=14):
    """(H, W, 3) uint8 -> the picture under a white band that holds ``text``, wrapped to the
    picture's width (text_band)."""
    return np.concatenate([text_band(text, picture.shape[1], size), picture])


def join(panels, axis=1, gap=8):
    """(H, W, 3) pictures -> one: side by side (axis=1, equal heights) or stacked (axis=0, equal
    widths), with white gaps between them."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, np.uint8)
    parts = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=axis)


def layer_figure(picture, by_layer, own, title, look=Look(), height=112, gap=8):
    """The per-layer view of (L, G, G) maps, under ``title``: top row, the map through layers
    1..l; bottom row, each layer's own CLS attention; each panel the picture ``height`` pixels
    high with the map over it, stretched to the panel's own value range (stretched), which its
    heading gives under the layer's number; a colour bar at the foot."""
    back = backdrop(to_height(picture, height), look)

    def row(grids):
        panels = []
        for l, grid in enumerate(grids, start=1):
            low, high = value_range(grid)
            mask = stretched(upsample(grid, back.shape[:2]), low, high)
            heading = "layer {}\n{} - {}".format(l, *number_pair(low, high))
            panels.append(labelled(overlay(back, mask, look.alpha), heading))
        return join(panels, gap=gap)

    rows = [labelled(row(by_layer), "the map through layers 1..l"),
            labelled(row(own), "each layer's own attention of the class token, heads fused")]
    figure = join(rows, axis=0, gap=gap)
    strip = np.repeat(jet(np.linspace(0, 1, min(figure.shape[1], 600), dtype=np.float32))[None], 10, axis=0)
    key = labelled(strip, "colours: each panel from its lowest value (blue) to its highest (red), as under its layer")
    key = np.concatenate([key, np.full((key.shape[0], figure.shape[1] - key.shape[1], 3), 255, np.uint8)], axis=1)
    return labelled(join([figure, key], axis=0, gap=gap), title, size=16)


@contextmanager
def quiet_logger(name):
    """For the block, the logger ``name`` reports errors only."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


def curves_figure(evaluation, class_name):
    """The perturbation test's curves (evaluate.py) as a matplotlib figure, or None where
    matplotlib is not installed. ``evaluation`` is {fusion: scores}."""
    try:
        with quiet_logger("matplotlib"):  # e.g. its warning where HOME is read-only: stderr is the run's
            from matplotlib.figure import Figure  # not pyplot: no global state, safe in a writer thread
    except ImportError:
        return None

    figure = Figure(figsize=(9, 4.2), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, order, title in zip(axes, ("positive", "negative"),
                                ("most relevant removed first (lower is better)",
                                 "least relevant removed first (higher is better)")):
        for name, scores in evaluation.items():
            ax.plot(scores["fractions"], scores[order], marker="o", markersize=4,
                    label=f"{name}: AUC {scores[order + '_auc']:.3f}")
        ax.set(title=title, xlabel="share of patches removed")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)  # below: no curve hidden
    axes[0].set_ylabel(f"p({class_name})")
    return figure
