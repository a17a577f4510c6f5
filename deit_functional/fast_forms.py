"""Fast forms of plain formulas, kept apart so that the teaching modules read as the formulas.

Each function here computes what its docstring's *plain form* computes -- the same numbers, or
the same up to float rounding where it says so -- only faster, and says by how much it measured,
and where (the build machines are in bench/README.md). tests/test_fast_forms.py proves every
one equal to its plain form.
"""
import functools

import numpy as np
import torch
from einops import einsum


def mean_over_heads(maps):
    """(B, H, N, N) -> (B, N, N). Plain form: ``maps.mean(dim=1)``; bitwise the same numbers.

    Adds the head maps one after another into one new map, then divides it in place: 0.41
    against 0.55 ms per picture for 12 layers at batch 32 on the Intel build machine, as torch's
    reduction across a middle dimension is slow (0.17 against 0.38 ms on the first machine,
    where the sum still made a new map at every step).
    """
    total = maps[:, 0] + maps[:, 1] if maps.shape[1] > 1 else maps[:, 0].clone()
    for h in range(2, maps.shape[1]):
        total += maps[:, h]
    return total.div_(maps.shape[1])


def keep_above_kth_smallest(fused, k):
    """(B, N, N) -> a new (B, N, N): each image's entries outside column 0 kept where above the
    k-th smallest of them (k from 1), else 0; column 0 kept whole. Plain form, the same numbers:

        threshold = fused[:, :, 1:].reshape(B, -1).kthvalue(k, dim=1).values
        keep = fused > threshold[:, None, None];  keep[:, :, 0] = True;  fused * keep

    On the CPU (float32 or float64 maps, without autograd) it is done image by image in numpy:
    an image's map (150 KB) stays in the core's cache from the selection to the product, where a
    batch's (5 MB at 32) goes back and forth to memory between torch's passes. On the Intel
    build machine, per picture for 12 layers: 1.4 -> 0.8 ms at batch 32 and 1.7 -> 0.8 ms at
    batch 1 for attention maps, 3.8 -> 1.2 ms at batch 32 for clamped gradient maps. Splitting
    the images between two threads measured faster alone but slower after the forward pass,
    whose OpenMP threads still spin on the cores.
    """
    if fused.device.type != "cpu" or fused.requires_grad or fused.dtype not in (torch.float32, torch.float64):
        patches = fused[:, :, 1:].reshape(fused.shape[0], -1)
        keep = fused > patches.kthvalue(k, dim=1).values[:, None, None]
        keep[:, :, 0] = True
        return fused * keep
    maps = fused.contiguous().numpy()
    kept = np.empty_like(maps)
    for image, out in zip(maps, kept):
        np.multiply(image, image > _kth_smallest_patch_entry(image, k), out=out)
        out[:, 0] = image[:, 0]
    return torch.from_numpy(kept)


def _kth_smallest_patch_entry(image, k):
    """The k-th smallest entry of an (N, N) numpy map outside column 0.

    numpy's partition is fast on distinct values but ~20x slower when one value fills most of
    the map, as zeros do in a clamped gradient map (0.6 against 0.03 ms). So where zeros fill a
    quarter of a float32 map with no negative values, it selects among keys that are all
    distinct: such values' bit patterns order as the values do, so each entry's key is its bits
    above its position, and the k-th smallest key holds the k-th smallest value.
    """
    values = image[:, 1:].flatten()  # a copy, partitioned in place
    if values.dtype == np.float32 and np.count_nonzero(values == 0) > values.size // 4 and values.min() >= 0:
        keys = values.view(np.int32).astype(np.int64)
        keys <<= 32
        keys |= _positions(values.size)
        keys.partition(k - 1)
        return np.int32(keys[k - 1] >> 32).view(np.float32)
    values.partition(k - 1)
    return values[k - 1]


@functools.lru_cache(maxsize=4)
def _positions(size):
    """0, 1, ..., size - 1 (int64)."""
    return np.arange(size, dtype=np.int64)


def cls_row_of_product(layers, renormalise=True):
    """Per-layer maps A_1..A_L, each (B, N, N) -> (B, N): row 0 of R_L = Ã_L Ã_(L-1) ... Ã_1.

    Plain form: Ã_l = A_l + I, rows divided by their sums if ``renormalise``; multiply the L
    (N, N) matrices; take row 0. The same numbers up to float rounding.

    Row 0 of a product is e_0ᵀ Ã_L ... Ã_1: carried left to right, that is L vector-matrix
    products, v <- v Ã_l from v = e_0, instead of L matrix products (~1 against ~190 MFLOP per
    picture). And Ã_l is never built: with s = rowsum(A_l), v Ã_l = (v / (s + 1)) A_l + v / (s + 1)
    when rows are renormalised, and v A_l + v when not.
    """
    B, N, _ = layers[0].shape
    v = torch.zeros(B, N, dtype=layers[0].dtype, device=layers[0].device)
    v[:, 0] = 1  # e_0: the CLS row of R_0 = I
    for a in reversed(layers):
        u = v / (a.sum(dim=-1) + 1) if renormalise else v
        v = einsum(u, a, "b i, b i j -> b j") + u
    return v


def bilinear_resize(values, size):
    """(h, w) float32 array -> (H, W) float32 array at ``size`` = (H, W).
    Plain form: ``F.interpolate(values[None, None], size, mode="bilinear",
    align_corners=False)[0, 0]``; the same within 1e-6.

    numpy, so that the command line's writer threads never run a parallel torch op: each such
    thread would start an OpenMP pool of its own and slow the model (pipeline.py). Faster too:
    0.16 ms for a 600x400 mask, against 0.3 ms with torch.
    """
    columns = _interpolate(values, size[1], axis=1)  # (h, W)
    return _interpolate(columns, size[0], axis=0)


def _interpolate(values, n, axis):
    """Linear interpolation of ``values`` to ``n`` samples along ``axis``, each sample at the
    centre of its 1/n of the extent (align_corners=False), the ends held flat. Along axis 0 the
    gathers copy whole rows, so the full-size pass goes that way: gathering columns at full size
    took 1.4 ms."""
    cells = values.shape[axis]
    position = np.clip(np.float32(cells / n) * (np.arange(n, dtype=np.float32) + 0.5) - 0.5, 0, cells - 1)
    left = position.astype(np.intp)  # floor: positions are >= 0
    weight = np.expand_dims((position - left).astype(np.float32), 1 - axis)
    below = np.take(values, left, axis=axis)
    result = np.take(values, np.minimum(left + 1, cells - 1), axis=axis)
    result -= below
    result *= weight
    result += below
    return result
