"""Drawing an explanation: colours, the overlay on the original picture, and the figures.

Everything here makes pictures as (H, W, 3) uint8 arrays (or, for the matplotlib plot, a figure);
writing them is writing.py's job.
"""
import logging
from contextlib import contextmanager

import numpy as np
import torch

from .fast_forms import bilinear_resize
from .images import resize


def upsample(grid, size):
    """(G, G) map (array, or tensor on any device) -> (H, W) float32 array in [0, 1] at
    ``size`` = (H, W), pixel-aligned with the picture.

    The picture was resized whole to the patch grid (images.py), so patch (i, j) covers rows
    i*H/G..(i+1)*H/G; bilinear interpolation with align_corners=False maps those areas back.
    """
    if isinstance(grid, torch.Tensor):
        grid = grid.detach().cpu().numpy()
    mask = bilinear_resize(np.asarray(grid, dtype=np.float32), size)
    return np.clip(mask, 0, 1, out=mask)


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


def labelled(picture, text, size=14):
    """(H, W, 3) uint8 -> the picture under a white band that holds ``text`` (cut at the
    picture's width), drawn by Pillow in its own font at ``size`` pixels."""
    from PIL import Image, ImageDraw, ImageFont

    band = Image.new("RGB", (picture.shape[1], size + size // 2), "white")
    ImageDraw.Draw(band).text((1, size // 4), text, fill=(0, 0, 0), font=ImageFont.load_default(size))
    return np.concatenate([np.asarray(band), picture])


def join(panels, axis=1, gap=8):
    """(H, W, 3) pictures -> one: side by side (axis=1, equal heights) or stacked (axis=0, equal
    widths), with white gaps between them."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    spacer = np.full(shape, 255, np.uint8)
    parts = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=axis)


def to_height(picture, height):
    """(H, W, 3) uint8 -> the same picture ``height`` pixels high, aspect ratio kept."""
    return resize(picture, (height, max(1, round(picture.shape[1] * height / picture.shape[0]))))


def layer_figure(picture, by_layer, own, title, height=112, gap=8):
    """The per-layer view of (L, G, G) maps, under ``title``: top row, the map through layers
    1..l; bottom row, each layer's own CLS attention; each panel the picture ``height`` pixels
    high with the map over it, each column headed by its layer."""
    small = to_height(picture, height)
    panels = lambda grids: [overlay(small, upsample(g, small.shape[:2])) for g in grids]
    top = join([labelled(p, f"layer {l}") for l, p in enumerate(panels(by_layer), start=1)], gap=gap)
    rows = [labelled(top, "the map through layers 1..l"),
            labelled(join(panels(own), gap=gap), "each layer's own attention of the class token, heads fused")]
    return labelled(join(rows, axis=0, gap=gap), title, size=16)


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
