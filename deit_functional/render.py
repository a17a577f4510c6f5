"""Drawing an explanation over the original picture, and writing results safely."""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def upsample(grid, size):
    """(G, G) map -> (H, W) float32 array in [0, 1], pixel-aligned with an (H, W) picture.

    The picture was resized whole to the patch grid (images.py), so patch (i, j) covers rows
    i*H/G..(i+1)*H/G; bilinear interpolation with align_corners=False maps those areas back.
    """
    mask = F.interpolate(grid[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return mask[0, 0].clamp_(0, 1).cpu().numpy()


def jet(mask):
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 JET colours: dark blue (0) .. dark red (1)."""
    x = mask[..., None] * 4
    rgb = np.clip(1.5 - np.abs(x - np.array([3.0, 2.0, 1.0], dtype=np.float32)), 0, 1)
    return (rgb * 255 + 0.5).astype(np.uint8)


def overlay(picture, mask, alpha=0.5):
    """Blend the JET-coloured mask over an (H, W, 3) uint8 picture of the same size."""
    blended = (1 - alpha) * picture.astype(np.float32) + alpha * jet(mask).astype(np.float32)
    return (blended + 0.5).astype(np.uint8)


def side_by_side(panels, gap=8):
    """Equal-height (H, W, 3) panels -> one picture, separated by white gaps."""
    spacer = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
    parts = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def write_atomically(path, save):
    """Write ``path`` through ``save(temporary_path)`` then rename, so a failed or interrupted
    run never leaves a half-written result under the final name."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        save(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_png(path, picture):
    import imageio.v3 as iio
    write_atomically(path, lambda p: iio.imwrite(p, picture, extension=".png"))


def save_npy(path, array):
    write_atomically(path, lambda p: np.save(p, array))
