"""Every method against an independent naive reference, and properties that must always hold."""
import numpy as np
import pytest
import torch

from deit_functional import METHODS, explain, explain_by_layer, forward
from deit_functional.fast_forms import cls_row_of_product
from deit_functional.rollout import (HEAD_FUSIONS, attention_rollout, by_layer, chefer_rollout,
                                     discard_lowest, fuse_heads, gradient_rollout, layer_maps, rolled_out,
                                     rollout, ROLLOUTS)
from deit_functional.model import G, H, L, N
from timm_reference import timm_attention

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

B = 3


def random_maps(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    attentions = [(torch.randn(B, H, N, N, generator=g) * 3).softmax(-1).to(dtype) for _ in range(L)]
    gradients = [torch.randn(B, H, N, N, generator=g).to(dtype) for _ in range(L)]
    return attentions, gradients


def naive(attentions, gradients=None, fusion="mean", ratio=0.0, method="attention"):
    """Per image, per layer, full N x N matrices in float64, straight from the definitions."""
    fuse = {"mean": lambda a: a.mean(0), "min": lambda a: a.min(0), "max": lambda a: a.max(0)}[fusion]
    maps = []
    for b in range(attentions[0].shape[0]):
        R = np.eye(N)
        for layer in range(len(attentions)):
            a = attentions[layer][b].double().numpy()
            if gradients is not None:
                a = a * gradients[layer][b].double().numpy()
            if method == "chefer":
                a = np.maximum(a, 0)  # clamp each head, then fuse
            A = fuse(a)
            if method == "gradient":
                A = np.maximum(A, 0)  # fuse, then clamp
            if ratio:
                values = np.sort(A[:, 1:].ravel())
                threshold = values[int(values.size * ratio) - 1]
                keep = A > threshold
                keep[:, 0] = True
                A = A * keep
            if method == "chefer":
                R = R + A @ R
            else:
                A = A + np.eye(N)
                R = (A / A.sum(axis=1, keepdims=True)) @ R
        row = R[0, 1:]
        maps.append((row / row.max()).reshape(G, G))
    return np.stack(maps)


CASES = [(f, r) for f in HEAD_FUSIONS for r in (0.0, 0.9)]


@pytest.mark.parametrize("fusion, ratio", CASES)
def test_attention_rollout_equals_naive_reference(fusion, ratio):
    attentions, _ = random_maps(seed=1)
    expected = naive(attentions, fusion=fusion, ratio=ratio)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        ours = attention_rollout([a.to(dtype) for a in attentions], fusion, ratio)
        assert ours.shape == (B, G, G) and ours.dtype == dtype
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("fusion, ratio", CASES)
@pytest.mark.parametrize("method, function", [("gradient", gradient_rollout), ("chefer", chefer_rollout)])
def test_gradient_rollouts_equal_naive_reference(fusion, ratio, method, function):
    attentions, gradients = random_maps(seed=2)
    expected = naive(attentions, gradients, fusion, ratio, method)
    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        ours = function([a.to(dtype) for a in attentions], [g.to(dtype) for g in gradients], fusion, ratio)
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("seed", range(8))
def test_properties_hold_for_every_method_fusion_and_ratio(seed):
    attentions, gradients = random_maps(seed=100 + seed)
    ratio = [0.0, 0.5, 0.9, 0.99][seed % 4]
    for fusion in HEAD_FUSIONS:
        fused = [discard_lowest(fuse_heads(a, fusion), ratio) for a in attentions]
        # the CLS row keeps total mass 1 through every product, as it must if each Ã row sums to 1
        torch.testing.assert_close(cls_row_of_product(fused).sum(dim=1), torch.ones(B, dtype=torch.float32))
        for maps in (attention_rollout(attentions, fusion, ratio),
                     gradient_rollout(attentions, gradients, fusion, ratio),
                     chefer_rollout(attentions, gradients, fusion, ratio)):
            assert torch.isfinite(maps).all()
            assert maps.min() >= 0 and maps.max() <= 1
            assert torch.equal(maps.amax(dim=(1, 2)), torch.ones(B))


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_discard_keeps_the_cls_column_and_zeroes_the_lowest_share_of_each_image(ratio):
    attentions, _ = random_maps(seed=3)
    fused = fuse_heads(attentions[0], "mean")
    fused[1] *= 10  # images on different scales: a threshold shared across the batch would fail
    kept = discard_lowest(fused, ratio)
    assert torch.equal(kept[:, :, 0], fused[:, :, 0])
    k = int(N * (N - 1) * ratio)
    for b in range(B):
        patches, original = kept[b, :, 1:], fused[b, :, 1:]
        assert (patches == 0).sum() == k
        assert patches[patches > 0].min() > original[patches == 0].max()


def test_discard_ratio_outside_range_is_refused():
    attentions, _ = random_maps(seed=4)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="discard_ratio"):
            attention_rollout(attentions, "mean", bad)
    with pytest.raises(ValueError, match="unknown head fusion"):
        attention_rollout(attentions, "median")


def test_a_method_that_uses_the_gradient_refuses_maps_without_their_gradients():
    attentions, gradients = random_maps(seed=4)
    for bad in (None, gradients[:-1], [None] * L, [g[:, :1] for g in gradients]):
        with pytest.raises(ValueError, match="needs one gradient per attention map"):
            gradient_rollout(attentions, bad)
        with pytest.raises(ValueError, match="needs one gradient per attention map"):
            rolled_out(ROLLOUTS["chefer"], attentions, bad)


def test_explain_takes_a_category_exactly_when_the_method_uses_the_gradient(weights, images):
    with pytest.raises(ValueError, match="uses no gradient"):
        explain(weights, images, "attention", category=87)
    for method in ("gradient", "chefer"):
        with pytest.raises(ValueError, match="explains one class"):
            explain(weights, images, method)
    with pytest.raises(ValueError, match="unknown method 'rollout'; choose one of attention, gradient, chefer"):
        explain(weights, images, "rollout")


@pytest.mark.parametrize("method", ["gradient", "chefer"])
def test_explain_pairs_each_layer_with_its_own_gradient(timm_model, weights, images, method):
    category = 87
    _, maps, gradients = timm_attention(timm_model, images, category)
    expected = naive(maps, gradients, "max", 0.0, method)
    reversed_pairing = naive(maps, gradients[::-1], "max", 0.0, method)
    tolerance = 1e-5
    # the pairing matters far beyond the tolerance, so the check below tells the two apart
    assert np.abs(expected - reversed_pairing).max() > 100 * tolerance
    logits, ours = explain(weights, images, method, category=category, head_fusions=("max",))
    np.testing.assert_allclose(ours["max"].numpy(), expected, rtol=0, atol=tolerance)


def test_explain_without_category_is_attention_rollout_of_the_forward(weights, images):
    logits, ours = explain(weights, images, head_fusions=HEAD_FUSIONS, discard_ratio=0.9)
    with torch.no_grad():
        ref_logits, attentions = forward(weights, images)
    assert torch.equal(logits, ref_logits)
    for fusion in HEAD_FUSIONS:  # the maths of attention_rollout is checked against naive() above
        assert torch.equal(ours[fusion], attention_rollout(attentions, fusion, 0.9))


def test_explain_takes_one_category_per_image(weights, images):
    categories = torch.tensor([87, 258, 3])
    _, together = explain(weights, images, "gradient", category=categories)
    for b in range(B):
        _, alone = explain(weights, images[b:b + 1], "gradient", category=int(categories[b]))
        torch.testing.assert_close(together["mean"][b], alone["mean"][0], rtol=0, atol=1e-6)


def test_rollout_by_layer_is_the_rollout_of_the_first_layers():
    attentions, _ = random_maps(seed=5)
    through = by_layer(rollout, layer_maps(ROLLOUTS["attention"], attentions, None, "max", 0.5))
    assert through.shape == (L, B, G, G)
    for depth in (1, 2, 7, 12):
        np.testing.assert_allclose(through[depth - 1].numpy(), naive(attentions[:depth], fusion="max", ratio=0.5),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", [name for name, m in METHODS.items() if m.rollout])
def test_explain_by_layer_ends_where_explain_does_and_gives_each_layers_own_cls_row(weights, images, method):
    # flow solves 197 max-flow problems per picture and depth: one fusion is enough to check it
    fusions = ("max",) if method == "flow" else HEAD_FUSIONS
    how = dict(category=87 if METHODS[method].uses_gradient else None, head_fusions=fusions, discard_ratio=0.5)
    logits, by_layer, own = explain_by_layer(weights, images, method, **how)
    final_logits, maps = explain(weights, images, method, **how)
    assert torch.equal(logits, final_logits)
    with torch.no_grad():
        _, attentions = forward(weights, images)
    for fusion in fusions:
        assert own[fusion].shape == by_layer[fusion].shape == (L, B, G, G)
        assert torch.equal(by_layer[fusion][-1], maps[fusion])  # the command line relies on it
        for layer in (0, 5, 11):
            row = {"mean": attentions[layer].mean(dim=1), "min": attentions[layer].amin(dim=1),
                   "max": attentions[layer].amax(dim=1)}[fusion][:, 0, 1:]
            torch.testing.assert_close(own[fusion][layer], (row / row.amax(dim=1, keepdim=True)).view(B, G, G))


def test_attention_rollout_takes_maps_of_which_only_some_track_gradients():
    # the fast form serves only maps numpy can take, every one; otherwise the plain stages do
    attentions, _ = random_maps(seed=9)
    mixed = [a.clone().requires_grad_(layer == 5) for layer, a in enumerate(attentions)]
    torch.testing.assert_close(attention_rollout(mixed, "max", 0.9).detach(), attention_rollout(attentions, "max", 0.9))


def test_rollouts_accept_maps_straight_from_a_retain_grad_forward(weights, images):
    """Maps that still require grad, as a library user gets them, give explain()'s maps."""
    logits, attentions = forward(weights, images[:1], retain_grad=True)
    logits[0, 87].backward()
    gradients = [a.grad for a in attentions]
    assert all(a.requires_grad for a in attentions)
    _, by_explain = explain(weights, images[:1], head_fusions=("max",), discard_ratio=0.9)
    torch.testing.assert_close(attention_rollout(attentions, "max", 0.9), by_explain["max"], rtol=0, atol=1e-6)
    _, by_explain = explain(weights, images[:1], "gradient", category=87, discard_ratio=0.9)
    torch.testing.assert_close(gradient_rollout(attentions, gradients, "mean", 0.9), by_explain["mean"],
                               rtol=0, atol=1e-6)


def test_explain_by_layer_refuses_a_method_not_built_layer_by_layer(weights, images):
    for name, m in METHODS.items():
        if m.rollout is None:
            with pytest.raises(ValueError, match="does not build its map layer by layer; these do: attention, "
                                                 "gradient, chefer, flow"):
                explain_by_layer(weights, images[:1], name, category=87 if m.uses_gradient else None)
