"""The functional forward equals timm's deit_tiny_patch16_224 (GUIDE §2), and its larger
siblings deit_small and deit_base."""
import re
from pathlib import Path

import pytest
import torch

from deit_functional import forward, load_weights
from deit_functional.architectures import KNOWN
from timm_reference import random_timm_model, timm_attention

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


def test_logits_and_every_attention_map_are_bitwise_timms_unfused(timm_model, weights, images):
    ref_logits, ref_maps, _ = timm_attention(timm_model, images)
    with torch.no_grad():
        logits, maps = forward(weights, images)
    assert logits.shape == (3, 1000) and len(maps) == 12
    assert all(m.shape == (3, 3, 197, 197) for m in maps)
    assert torch.equal(logits, ref_logits)
    for layer, (ours, theirs) in enumerate(zip(maps, ref_maps)):
        assert torch.equal(ours, theirs), f"layer {layer}"


def test_logits_match_timms_default_fused_path(timm_model, weights, images):
    assert all(blk.attn.fused_attn for blk in timm_model.blocks)
    with torch.no_grad():
        ref = timm_model(images)
        logits, _ = forward(weights, images)
    assert (logits - ref).abs().max() <= 1e-5


def test_retained_attention_gradients_equal_timms(timm_model, weights, images):
    category = torch.tensor([87, 258, 3])
    _, _, ref_gradients = timm_attention(timm_model, images, category)
    timm_model.zero_grad(set_to_none=True)

    logits, maps = forward(weights, images, retain_grad=True)
    logits.gather(1, category[:, None]).sum().backward()
    for layer, (ours, theirs) in enumerate(zip(maps, ref_gradients)):
        assert ours.grad is not None, f"layer {layer} kept no gradient"
        assert ours.grad.abs().max() > 0
        torch.testing.assert_close(ours.grad, theirs, rtol=0, atol=1e-7, msg=f"layer {layer}")


def test_retain_grad_works_inside_no_grad(weights, images):
    with torch.no_grad():  # e.g. a caller's inference loop
        logits, maps = forward(weights, images[:1], retain_grad=True)
    logits[0, 5].backward()
    assert all(m.grad is not None for m in maps)


def parameter_count(tree):
    if torch.is_tensor(tree):
        return tree.numel()
    if not isinstance(tree, (dict, list)):  # an attention's number of heads, the Architecture
        return 0
    return sum(parameter_count(t) for t in (tree.values() if isinstance(tree, dict) else tree))


def test_parameter_count_is_deit_tiny(weights):
    assert parameter_count(weights) == 5_717_416


@pytest.mark.parametrize("name, parameters", [("deit_small_patch16_224", 22_050_664),
                                              ("deit_base_patch16_224", 86_567_656)])
def test_the_larger_deits_are_bitwise_timms_unfused(images, name, parameters):
    model = random_timm_model(name=name)
    weights = load_weights(model, model=name)
    assert parameter_count(weights) == parameters == sum(p.numel() for p in model.parameters())
    ref_logits, ref_maps, _ = timm_attention(model, images[:2])
    with torch.no_grad():
        logits, maps = forward(weights, images[:2])
    a = KNOWN[name]
    assert len(maps) == a.L and all(m.shape == (2, a.H, 197, 197) for m in maps)
    assert torch.equal(logits, ref_logits)
    for layer, (ours, theirs) in enumerate(zip(maps, ref_maps)):
        assert torch.equal(ours, theirs), f"layer {layer}"


def test_weights_of_another_size_are_refused_naming_the_model_they_fit():
    small = random_timm_model(name="deit_small_patch16_224").state_dict()
    with pytest.raises(ValueError, match=r"'cls_token' has shape \(1, 1, 384\), expected \(1, 1, 192\); "
                                         r"deit_small_patch16_224 fits: choose that model \(--model"):
        load_weights(small)
    small["pos_embed"] = torch.zeros(1, 577, 384)  # as a ViT-S/16 at 384's
    with pytest.raises(ValueError, match=r"expected \(1, 1, 192\); vit_small_patch16_384 fits"):
        load_weights(small)
    small["pos_embed"] = torch.zeros(1, 578, 384)  # no model fits
    with pytest.raises(ValueError, match=r"expected \(1, 1, 192\)$"):
        load_weights(small)


def test_package_registers_no_hooks():
    package = Path(__file__).resolve().parents[1] / "deit_functional"
    sources = list(package.rglob("*.py"))
    assert len(sources) >= 4
    for path in sources:
        text = path.read_text()
        assert not re.search(r"register\w*hook|\.hooks\b|_forward_hooks|_backward_hooks", text), path
