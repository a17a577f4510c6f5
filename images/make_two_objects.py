"""Regenerate cat_and_coffee.jpg: the cat and the espresso cup side by side on one canvas.

A test picture with two objects of different ImageNet classes for gradient rollout
(e.g. --category 281 for the cat, --category 968 for the cup). Needs numpy and imageio only:

    python images/make_two_objects.py

Each photo is cropped to a square around its object and brought to 300x300 pixels, then the two
squares are put next to each other (300x600). Square crops keep the canvas at 2:1: the model
sees every picture squashed to 224x224, and two uncropped photos side by side (about 3:1) would
be squashed much more.
"""
from pathlib import Path

import imageio.v3 as iio
import numpy as np

HERE = Path(__file__).resolve().parent
SIZE = 300  # side of each square, in pixels
CAT_BOX = (0, 300, 65, 365)       # rows, columns in cat.jpg (300x451): the cat's face
COFFEE_BOX = (0, 400, 78, 478)    # rows, columns in coffee.jpg (400x600): cup and saucer


def area_weights(n_in, n_out):
    """(n_out, n_in) matrix averaging the input cells each output cell covers (box filter)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def square(picture, box):
    top, bottom, left, right = box
    crop = picture[top:bottom, left:right].astype(np.float64)
    rows, cols = area_weights(crop.shape[0], SIZE), area_weights(crop.shape[1], SIZE)
    out = np.einsum("ij,jkc,lk->ilc", rows, crop, cols)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def main():
    cat = iio.imread(HERE / "cat.jpg")
    coffee = iio.imread(HERE / "coffee.jpg")
    canvas = np.concatenate([square(cat, CAT_BOX), square(coffee, COFFEE_BOX)], axis=1)
    iio.imwrite(HERE / "cat_and_coffee.jpg", canvas, extension=".jpg", quality=92)
    print(f"wrote {HERE / 'cat_and_coffee.jpg'} ({canvas.shape[1]}x{canvas.shape[0]})")


if __name__ == "__main__":
    main()
