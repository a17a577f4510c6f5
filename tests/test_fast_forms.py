"""Every fast form in deit_functional/fast_forms.py equals the plain form its docstring names."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deit_functional.fast_forms import bilinear_resize, cls_row_of_product, kth_smallest, mean_over_heads
from deit_functional.model import H, N

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


def test_kth_smallest_is_torchs_kthvalue_ties_included():
    values = torch.randn(5, 1000, generator=torch.Generator().manual_seed(6))
    values[2, :500] = 0.25  # ties
    values[3] = 0.0          # a row of one value
    for k in (1, 2, 499, 500, 501, 900, 1000):
        assert torch.equal(kth_smallest(values, k), values.kthvalue(k, dim=1).values)
    assert torch.equal(kth_smallest(values.requires_grad_(), 7), values.kthvalue(7, dim=1).values)


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


@pytest.mark.parametrize("size", [(280, 420), (300, 451), (16, 16), (7, 300), (14, 14), (1000, 3)])
def test_bilinear_resize_is_torchs_bilinear_interpolation(size):
    grid = torch.rand(14, 14, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(bilinear_resize(grid.numpy(), size), expected.numpy(), rtol=0, atol=1e-6)
