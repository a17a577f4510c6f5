"""Does the map point at the object? The pointing game (Zhang et al., "Top-down neural attention
by excitation backprop", ECCV 2016) and the relevance mass inside the object's boxes (Arras et
al., "CLEVR-XAI", Information Fusion 2022), where the user gives boxes (--boxes FILE).

A box is given in the picture's own pixels. The model sees the whole picture resized to 224 x
224 (images.py), so an input pixel is inside a box when the picture point at its centre is.
Both scores read the patch map as the model's input pixels see it: each patch's value on its
16 x 16 pixels (a per-pixel method's map summed per patch first, as every metric does).

The boxes file: a CSV with the header ``picture,class,x0,y0,x1,y1``, or a JSON list of
``{"picture": ..., "class": ..., "box": [x0, y0, x1, y1]}``; ``picture`` is the file's name,
``class`` an ImageNet index or name (labels.class_index), x0 <= x < x1 and y0 <= y < y1 the box's
pixels, x to the right and y down from the top-left corner. A picture may have several boxes.
"""
import csv
import json
import math
from pathlib import Path

import torch

from .labels import class_index
from .model import IMAGE_SIZE
from .pixel_relevance import patch_pixels


class BoxesError(ValueError):
    """A boxes file that cannot be read as one: the message names the file and the line."""


def read_boxes(path):
    """The boxes file ``path`` -> {picture name: [(class, (x0, y0, x1, y1))]}."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise BoxesError(f"{path}: cannot read the boxes file ({getattr(error, 'strerror', None) or error})") from None
    if path.suffix.lower() == ".json":
        try:
            records = json.loads(text)
            rows = [(r["picture"], r["class"], *r["box"]) for r in records]
        except (ValueError, TypeError, KeyError) as error:
            raise BoxesError(f"{path}: not a JSON list of {{picture, class, box: [x0, y0, x1, y1]}} ({error})") from None
        where = [f"entry {k + 1}" for k in range(len(rows))]
    else:
        table = [(number, row) for number, row in enumerate(csv.reader(text.splitlines()), start=1)
                 if any(cell.strip() for cell in row)]  # blank lines skipped
        header = ["picture", "class", "x0", "y0", "x1", "y1"]
        if not table or [h.strip().lower() for h in table[0][1]] != header:
            raise BoxesError(f"{path}: a boxes CSV starts with the header line {','.join(header)}")
        rows, where = [row for _, row in table[1:]], [f"line {number}" for number, _ in table[1:]]
    boxes = {}
    for place, row in zip(where, rows):
        if len(row) != 6:
            raise BoxesError(f"{path}, {place}: {len(row)} fields, not 6 (picture, class, x0, y0, x1, y1)")
        picture, category, *corners = row
        try:
            category = class_index(str(category).strip())
            x0, y0, x1, y1 = (float(c) for c in corners)
        except (ValueError, TypeError) as error:
            raise BoxesError(f"{path}, {place}: {error}") from None
        if not all(map(math.isfinite, (x0, y0, x1, y1))) or not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise BoxesError(f"{path}, {place}: a box needs 0 <= x0 < x1 and 0 <= y0 < y1, not {corners}")
        boxes.setdefault(Path(str(picture).strip()).name, []).append((category, (x0, y0, x1, y1)))
    return boxes


def box_mask(boxes, category, height, width, size=IMAGE_SIZE):
    """A picture's boxes [(class, (x0, y0, x1, y1))] -> (size, size) bool: the model's input pixels
    inside a box of ``category``, for a picture of height x width; None where it has no box of
    that class, or its boxes cover no input pixel's centre (too small to score)."""
    mine = [box for c, box in boxes if c == category]
    if not mine:
        return None
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    xs, ys = centres * width, centres * height  # the picture point at each input pixel's centre
    mask = torch.zeros(size, size, dtype=torch.bool)
    for x0, y0, x1, y1 in mine:
        mask |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    return mask if mask.any() else None


def pointing_game(grids, masks):
    """(B, R, G, G) maps, (B, 224, 224) masks -> (B, R) float: 1 where the map's peak is inside a
    box, else 0. The peak is every pixel of the largest value (a patch map's peak patch, or
    several where they tie): a hit where any of them is in a box, as Quantus counts."""
    values = patch_pixels(grids, masks.shape[-1]).flatten(-2)
    peak = values == values.amax(dim=-1, keepdim=True)
    return (peak & masks.flatten(-2)[:, None]).any(dim=-1).double()


def relevance_mass(grids, masks):
    """(B, R, G, G) maps, (B, 224, 224) masks -> (B, R): the share of the map's positive relevance
    that lies in the boxes, sum over the box's pixels over the sum over all (0 where the map has
    no positive relevance)."""
    positive = patch_pixels(grids, masks.shape[-1]).clamp_min(0).flatten(-2).double()
    inside = (positive * masks.flatten(-2)[:, None].double()).sum(-1)
    total = positive.sum(-1)
    return inside / total.where(total > 0, torch.ones_like(total))
