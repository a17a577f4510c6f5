"""Every fast form in deit_functional/fast_forms.py equals the plain form its docstring names."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deit_functional.fast_forms import (_fuse_heads, attention_rollout_cls_row, bilinear_resize, cls_row_of_product,
                                        keep_above_kth_smallest, mean_over_heads)
from deit_functional.model import H, N
from deit_functional.rollout import HEAD_FUSIONS, fuse_heads

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

B = 3


def attention_maps(seed, dtype=torch.float32, layers=12):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, N, N, generator=g) * 3).softmax(-1).to(dtype) for _ in range(layers)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_over_heads_is_bitwise_torchs_mean(dtype):
    maps = attention_maps(seed=4, dtype=dtype, layers=1)[0]
    signed = torch.randn(B, H, N, N, generator=torch.Generator().manual_seed(5), dtype=dtype)
    for m in (maps, signed, maps[:, :1], maps[:, :2]):  # one and two heads too
        assert torch.equal(mean_over_heads(m), m.mean(dim=1))


def plain_keep_above_kth_smallest(fused, k):
    patches = fused[:, :, 1:].reshape(fused.shape[0], -1)
    keep = fused > patches.kthvalue(k, dim=1).values[:, None, None]
    keep[:, :, 0] = True
    return fused * keep


def fused_maps(seed, batch, dtype):
    """Fused maps as the methods make them, and harder ones, image b of kind b % 6: attention
    rows; the same quantised to a few levels (long runs of equal values at any threshold);
    mostly zeros, as clamped gradient maps are; signed values; zeros of both signs; constant."""
    g = torch.Generator().manual_seed(seed)
    maps = (torch.randn(batch, N, N, generator=g) * 3).softmax(-1).to(dtype)
    maps[1::6] = (maps[1::6] * 2000).round() / 2000
    maps[2::6] = maps[2::6] * (torch.rand(maps[2::6].shape, generator=g) > 0.93)
    maps[3::6] = maps[3::6] - maps[3::6].mean()
    maps[4::6] = torch.where(torch.rand(maps[4::6].shape, generator=g) > 0.5, maps[4::6], -0.0)
    maps[5::6] = 0.25
    return maps


@pytest.mark.parametrize("seed", range(12))
def test_keep_above_kth_smallest_is_its_plain_form_ties_included(seed):
    batch = [1, 6, 7, 32][seed % 4]
    maps = fused_maps(seed, batch, torch.float64 if seed % 3 == 2 else torch.float32)
    n = N * (N - 1)
    for k in (1, 2, int(n * 0.5), int(n * 0.9), int(n * 0.9) + 1, int(n * 0.93), int(n * 0.99), n):
        kept = keep_above_kth_smallest(maps, k)
        assert kept.dtype == maps.dtype and kept.data_ptr() != maps.data_ptr()
        assert torch.equal(kept, plain_keep_above_kth_smallest(maps, k)), (seed, k)
    assert torch.equal(maps, fused_maps(seed, batch, maps.dtype))  # the input is left as it was


def test_keep_above_kth_smallest_keeps_autograd_and_non_contiguous_inputs():
    maps = fused_maps(0, 3, torch.float32)
    k = int(N * (N - 1) * 0.9)
    tracked = maps.clone().requires_grad_()
    kept = keep_above_kth_smallest(tracked, k)
    assert kept.requires_grad and torch.equal(kept.detach(), plain_keep_above_kth_smallest(maps, k))
    transposed = maps.transpose(1, 2)
    assert torch.equal(keep_above_kth_smallest(transposed, k), plain_keep_above_kth_smallest(transposed, k))


def plain_cls_row(layers, renormalise):
    """Row 0 of Ã_L ... Ã_1, every Ã_l built and the full (N, N) matrices multiplied."""
    eye = torch.eye(layers[0].shape[-1], dtype=layers[0].dtype)
    R = eye.expand_as(layers[0])
    for a in layers:
        augmented = a + eye
        if renormalise:
            augmented = augmented / augmented.sum(dim=-1, keepdim=True)
        R = augmented @ R
    return R[:, 0]


@pytest.mark.parametrize("renormalise", [True, False])
@pytest.mark.parametrize("depth", [1, 2, 12])
def test_cls_row_of_product_is_row_0_of_the_matrix_product(renormalise, depth):
    # fused maps as the methods make them: rows that do not sum to 1, zeros from discarding
    layers = [a.amax(dim=1) * (a.amax(dim=1) > 0.004) for a in attention_maps(seed=7, dtype=torch.float64)][:depth]
    expected = plain_cls_row(layers, renormalise)
    np.testing.assert_allclose(cls_row_of_product(layers, renormalise).numpy(), expected.numpy(),
                               rtol=1e-12, atol=0)


def tied_attention_maps(seed, batch, dtype):
    """12 layers of attention maps, every third one's heads quantised to a few levels, so that
    long runs of equal values meet any threshold."""
    g = torch.Generator().manual_seed(seed)
    maps = [(torch.randn(batch, H, N, N, generator=g) * 3).softmax(-1).to(dtype) for _ in range(12)]
    return [(m * 2000).round() / 2000 if layer % 3 == 1 else m for layer, m in enumerate(maps)]


def plain_attention_rollout_cls_row(maps, fusion, k):
    return cls_row_of_product([plain_keep_above_kth_smallest(fuse_heads(m, fusion), k) if k else fuse_heads(m, fusion)
                               for m in maps])


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("batch, threads", [(1, 1), (5, 2), (8, 2), (9, 3)])  # one chunk; shares of 4 or not
def test_attention_rollout_cls_row_is_its_plain_form_ties_included(fusion, batch, threads):
    # The fused maps and kept entries are bitwise the plain ones through the helpers it shares
    # with keep_above_kth_smallest (tested above) and the head fusion (tested below); this tests
    # the chain: the layer order, the chunks and the threads' shares, the row-vector step.
    maps = tied_attention_maps(seed=batch + threads, batch=batch, dtype=torch.float32)
    n = N * (N - 1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)  # the images are split among as many threads
        for k in (0, 1, int(n * 0.5), int(n * 0.9), n):
            fast = attention_rollout_cls_row(maps, fusion, k)
            assert fast.dtype == torch.float32 and fast.shape == (batch, N)
            np.testing.assert_allclose(fast.numpy(), plain_attention_rollout_cls_row(maps, fusion, k).numpy(),
                                       rtol=1e-5, atol=1e-9, err_msg=str(k))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_attention_rollout_cls_row_in_float64_with_six_heads_and_strided_maps(fusion):
    g = torch.Generator().manual_seed(11)
    maps = [(torch.randn(N, N, 6, 5, generator=g, dtype=torch.float64) * 3).softmax(0).permute(3, 2, 1, 0)
            for _ in range(12)]  # (5, 6, N, N), rows summing to 1, not contiguous
    k = int(N * (N - 1) * 0.9)
    fast = attention_rollout_cls_row(maps, fusion, k)
    assert fast.dtype == torch.float64
    np.testing.assert_allclose(fast.numpy(), plain_attention_rollout_cls_row(maps, fusion, k).numpy(), rtol=1e-12)


def test_attention_rollout_cls_row_of_no_images_is_empty():
    maps = [torch.rand(0, H, N, N) for _ in range(12)]
    assert attention_rollout_cls_row(maps, "max", int(N * (N - 1) * 0.9)).shape == (0, N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
def test_the_numpy_head_fusion_is_bitwise_fuse_heads(fusion, dtype):
    maps = tied_attention_maps(seed=3, batch=4, dtype=dtype)[0]
    for m in (maps, maps[:, :1], maps[:, :2]):  # one and two heads too
        out = np.empty((4, N, N), dtype=m.numpy().dtype)
        _fuse_heads(m.numpy(), fusion, out)
        assert torch.equal(torch.from_numpy(out), fuse_heads(m, fusion))


@pytest.mark.parametrize("size", [(280, 420), (300, 451), (16, 16), (7, 300), (14, 14), (1000, 3)])
def test_bilinear_resize_is_torchs_bilinear_interpolation(size):
    grid = torch.rand(14, 14, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(bilinear_resize(grid.numpy(), size), expected.numpy(), rtol=0, atol=1e-6)
