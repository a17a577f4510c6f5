"""Fast forms of plain formulas, kept apart so that the teaching modules read as the formulas.

Each function here computes what its docstring's *plain form* computes -- the same numbers, or
the same up to float rounding where it says so -- only faster, and says by how much it measured,
and where (the build machines are in bench/README.md). tests/test_fast_forms.py proves every
one equal to its plain form.
"""
import functools
from concurrent.futures import ThreadPoolExecutor

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

    On the CPU (float32 or float64 maps, without autograd) it is done a few images at a time in
    numpy: their maps stay in the core's cache from the selection to the product, where a
    batch's (5 MB at 32) goes back and forth to memory between torch's passes. On the Intel
    build machine, per picture for 12 layers: 1.4 -> 0.8 ms at batch 32 and 1.7 -> 0.8 ms at
    batch 1 for attention maps, 3.8 -> 1.2 ms at batch 32 for clamped gradient maps, image by
    image; four at a time, 2-3% less again.
    """
    if not numpy_takes(fused):
        patches = fused[:, :, 1:].reshape(fused.shape[0], -1)
        keep = fused > patches.kthvalue(k, dim=1).values[:, None, None]
        keep[:, :, 0] = True
        return fused * keep
    kept = fused.numpy().copy()  # C order, whatever the input's strides
    keep = np.empty(kept[:IMAGES_AT_ONCE].shape, dtype=bool)
    for start in range(0, len(kept), IMAGES_AT_ONCE):
        images = kept[start:start + IMAGES_AT_ONCE]
        _zero_up_to_kth_smallest(images, k, keep[:len(images)])
    return torch.from_numpy(kept)


def numpy_takes(maps):
    """Whether the numpy fast forms serve ``maps``: float32 or float64 on the CPU, no autograd."""
    return maps.device.type == "cpu" and not maps.requires_grad and maps.dtype in (torch.float32, torch.float64)


# Images a numpy step takes at once: their fused maps, keep masks and the selection's copy
# (1.4 MB) stay in a core's 2 MB cache, and each call is long enough that the threads of
# attention_rollout_cls_row do not queue for the GIL between calls, as they did one image each.
IMAGES_AT_ONCE = 4


def attention_rollout_cls_row(maps, head_fusion, k):
    """L maps (B, H, N, N), first layer first -> (B, N): Attention Rollout's CLS row, where A_l is
    layer l's heads fused by ``head_fusion`` ("mean", "min" or "max"), then, if k > 0, its
    entries outside column 0 up to their k-th smallest set to 0. Plain form (rollout.py):

        cls_row_of_product([discard_lowest(fuse_heads(m, head_fusion), ratio) for m in maps])

    with the same fused maps and the same kept entries, bitwise, and the same row up to float
    rounding. For maps that ``numpy_takes``, every one.

    The plain stages each pass over the whole batch: fusion reads 12 maps of 15 MB at batch 32
    and writes 12 of 5 MB, the discard reads those back and writes its own, the rollout reads
    them twice more, and each image's map has long left the cache between passes. Here a few
    images at a time go through all of it, top layer first (v <- v Ã_l as in
    cls_row_of_product), layer by layer in buffers that stay in the core's cache: the maps are
    read from memory once. The images are split among as many threads as torch uses
    (``torch.get_num_threads()``), as numpy lets go of the GIL while it works. Per picture,
    after the forward (max fusion, discard 0.9), on the Intel build machine: 2.7 -> 1.5 ms at
    batch 32 (2.4 ms on one thread), 5.0 -> 2.8 ms at batch 1.
    """
    layers = [m.contiguous().numpy() for m in maps]
    B, N = layers[0].shape[0], layers[0].shape[-1]
    rows = np.empty((B, N), dtype=layers[0].dtype)

    def roll_out(share):
        fused = np.empty((IMAGES_AT_ONCE, N, N), dtype=rows.dtype)
        keep = np.empty(fused.shape, dtype=bool)
        ones = np.ones(N, dtype=rows.dtype)  # row sums as products with ones: BLAS, 4x numpy's sum
        for start in range(share.start, share.stop, IMAGES_AT_ONCE):
            chunk = slice(start, min(start + IMAGES_AT_ONCE, share.stop))
            a, mask = fused[:chunk.stop - start], keep[:chunk.stop - start]
            v = np.zeros((len(a), N), dtype=rows.dtype)
            v[:, 0] = 1  # e_0: the CLS row of R_0 = I
            for layer in reversed(layers):
                _fuse_heads(layer[chunk], head_fusion, out=a)
                if k:
                    _zero_up_to_kth_smallest(a, k, mask)
                u = v / (a @ ones + 1)
                v = (u[:, None] @ a)[:, 0] + u
            rows[chunk] = v

    threads = max(1, min(torch.get_num_threads(), -(-B // IMAGES_AT_ONCE)))
    cuts = [B * i // threads for i in range(threads + 1)]
    shares = [range(start, stop) for start, stop in zip(cuts, cuts[1:])]
    if len(shares) == 1:
        roll_out(shares[0])
    else:
        with ThreadPoolExecutor(len(shares) - 1) as pool:  # the calling thread takes the first share
            running = [pool.submit(roll_out, share) for share in shares[1:]]
            roll_out(shares[0])
            for done in running:
                done.result()  # raises what the thread raised
    return torch.from_numpy(rows)


_NUMPY_FUSIONS = {"mean": np.add, "min": np.minimum, "max": np.maximum}


def _fuse_heads(maps, head_fusion, out):
    """(b, H, N, N) numpy maps -> ``out`` (b, N, N), as rollout.fuse_heads: the mean as
    mean_over_heads makes it (added head after head, then divided), so bitwise the same."""
    combine = _NUMPY_FUSIONS[head_fusion]
    if maps.shape[1] == 1:
        out[...] = maps[:, 0]
    else:
        combine(maps[:, 0], maps[:, 1], out=out)
        for h in range(2, maps.shape[1]):
            combine(out, maps[:, h], out=out)
    if head_fusion == "mean":
        out /= maps.shape[1]


def _zero_up_to_kth_smallest(images, k, keep):
    """In place: in each of (b, N, N) numpy maps, the entries outside column 0 set to 0 up to
    the k-th smallest of them, ties at it too. ``keep`` is a (b, N, N) bool buffer."""
    np.greater(images, _kth_smallest_patch_entries(images, k)[:, None, None], out=keep)
    keep[:, :, 0] = True
    np.multiply(images, keep, out=images)


def _kth_smallest_patch_entries(images, k):
    """(b, N, N) numpy maps -> (b,): each one's k-th smallest entry outside column 0.

    numpy's partition is fast on distinct values but ~20x slower when one value fills most of
    the map, as zeros do in a clamped gradient map (0.6 against 0.03 ms). So where zeros could
    fill a quarter of one float32 map and no value is negative, it selects among keys that are
    all distinct: such values' bit patterns order as the values do, so each entry's key is its
    bits above its position, and the k-th smallest key holds the k-th smallest value. (The zeros
    are counted over all b maps at once: counted map by map, with ``axis``, it took 4x longer.)
    """
    values = images[:, :, 1:].reshape(len(images), -1)  # a copy, partitioned in place
    if values.dtype == np.float32 and np.count_nonzero(values == 0) > values.shape[1] // 4 and values.min() >= 0:
        keys = values.view(np.int32).astype(np.int64)
        keys <<= 32
        keys |= _positions(values.shape[1])
        keys.partition(k - 1, axis=1)
        return (keys[:, k - 1] >> 32).astype(np.int32).view(np.float32)
    values.partition(k - 1, axis=1)
    return values[:, k - 1]


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
