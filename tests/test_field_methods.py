"""The six methods beyond the rollouts, each against an independent reference: Grad-CAM against
pytorch-grad-cam, Grad-SAM, TAM and Beyond Intuition against txv (the authors' formulas
packaged), LeGrad and raw attention against naive per-image, per-layer float64 loops written
here from timm's modules; then what must hold for every method: the map follows the category,
and a batch is explained image by image.

Every reference normalises its own way (min-max, over the batch, or not at all); each
comparison below cancels exactly that normalisation and nothing more, as its docstring says.
"""
import copy

import numpy as np
import pytest
import torch

from deit_functional import explain
from timm_reference import attention_fused, timm_attention

CATEGORY = 87
OTHER_CATEGORY = 3
CLASS_SPECIFIC = {"grad-cam": "none", "grad-sam": "mean", "tam": "mean", "beyond-intuition": "weighted",
                  "legrad": "mean"}
EVERY = {**CLASS_SPECIFIC, "raw-attention": "mean"}
FUSIONS = ("mean", "min", "max")
BEYOND_INTUITION_START = 4  # 1-indexed: the Beyond Intuition code's default; txv's layer is 0-indexed
LEGRAD_LAST_LAYERS = 2      # LeGrad's code sums the last two layers (layer_index=-2)
ATOL = 1e-5                 # float32 against float32 code that adds up in another order; seen: <= 1.2e-6
ATOL_FLOAT32_VS_64 = 5e-5   # our float32 run against a float64 loop; seen: <= 1.1e-5 (LeGrad, min fusion)
ATOL_FLOAT64 = 1e-12        # our run in float64 against the float64 loop; seen: <= 6e-15


def ours(weights, images, method, category=CATEGORY, fusion=None):
    """explain()'s (B, G, G) map of ``method`` for one fusion (the method's default one)."""
    fusion = fusion or EVERY[method]
    _, maps = explain(weights, images, method, category=None if method == "raw-attention" else category,
                      head_fusions=(fusion,))
    return maps[fusion]


def to_max_one(rows):
    """(B, M) -> each row divided by its max."""
    return rows / rows.amax(dim=-1, keepdim=True)


def in_float64(weights):
    """The package's nested weights dict, every tensor cast to float64."""
    if isinstance(weights, dict):
        return {k: in_float64(v) for k, v in weights.items()}
    if isinstance(weights, list):
        return [in_float64(v) for v in weights]
    return weights.double() if torch.is_tensor(weights) else weights


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread for this module: the references run many batch-1 passes of small ops,
    which a second thread barely speeds up, and which ran 10-100x slower with two threads on two
    cores shared with other work (this file: 28 s on one thread, 350 s on two, on such a host)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pair(images):
    return images[:2]


@pytest.fixture(scope="module")
def txv_model(timm_model):
    """txv's ViT (its own modules: they save attention maps and their gradients) with the timm
    model's weights; its LayerNorms get DeiT's eps, 1e-6 (txv builds them with 1e-5)."""
    import txv.models

    model = txv.models.VisionTransformer(patch_size=16, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
                                         qkv_bias=True).eval()
    model.load_state_dict(timm_model.state_dict(), strict=True)  # the same names, every one
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    return model


def test_txv_model_is_the_timm_model(txv_model, timm_model, pair):
    """Precondition of every txv comparison: the txv model computes timm's logits (its attention
    registers a gradient hook, so it runs with autograd on)."""
    with torch.no_grad():
        expected = timm_model(pair)
    got = txv_model(pair).detach()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got[0], got[1])  # the logits are of the images, not a constant


# --- Grad-CAM: pytorch-grad-cam ---------------------------------------------------------------

def vit_reshape(tokens):
    """(B, N, D) tokens -> (B, D, G, G) patch channels: CLS dropped, as pytorch-grad-cam's ViT example."""
    patches = tokens[:, 1:]
    G = int(round(patches.shape[1] ** 0.5))
    return patches.reshape(patches.shape[0], G, G, patches.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("fused", [True, False], ids=["timm-fused", "timm-unfused"])
def test_grad_cam_equals_pytorch_grad_cam(timm_model, weights, pair, fused):
    """pytorch-grad-cam's GradCAM on timm's last block's norm1, with either of timm's attention
    paths: ours min-max normalised equals its map at the 14 x 14 grid. It min-max normalises
    (ours is scaled to max 1; min-max of both cancels that exactly) and resizes with cv2 to the
    size get_target_width_height gives, here the grid itself (the identity)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with attention_fused(timm_model, fused), GradCAM(
            model=timm_model, target_layers=[timm_model.blocks[-1].norm1], reshape_transform=vit_reshape) as cam:
        cam.get_target_width_height = lambda input_tensor: (14, 14)
        # one target per image: GradCAM zips targets with the batch's outputs
        reference = cam(input_tensor=pair, targets=[ClassifierOutputTarget(CATEGORY)] * len(pair))
    timm_model.zero_grad(set_to_none=True)

    got = ours(weights, pair, "grad-cam")
    low, high = got.amin(dim=(1, 2), keepdim=True), got.amax(dim=(1, 2), keepdim=True)
    assert (high > low).all()
    np.testing.assert_allclose(((got - low) / (high - low)).numpy(), reference, rtol=0, atol=ATOL)
    assert ((reference > 0.01).mean(axis=(1, 2)) > 0.05).all()  # something to compare, per image


# --- Grad-SAM, TAM, Beyond Intuition: txv ---------------------------------------------------------

def affine_fit(reference, ours_row):
    """Least squares reference ~ a * ours + b over one image's patches -> (a, b, max |residual|)."""
    x, y = ours_row.double().numpy(), reference.double().numpy()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
    return a, b, np.abs(design @ np.array([a, b]) - y).max()


def test_grad_sam_is_txv_up_to_its_min_max(txv_model, weights, pair):
    """txv's GradSAM, one image at a time (it min-max normalises the (B, N, N) map over the whole
    batch, then takes the CLS row): its row is a positive affine function of ours -- the
    min-max's unknown constants -- to float32 rounding."""
    from txv.exp import GradSAM

    got = ours(weights, pair, "grad-sam").flatten(1)
    for b in range(len(pair)):
        reference = GradSAM(txv_model).explain(pair[b:b + 1], index=CATEGORY)[0].detach()
        a, _, residual = affine_fit(reference, got[b])
        assert a > 0 and residual < ATOL, (b, a, residual)
        assert reference.max() - reference.min() > 0.1  # the fit is over a map that varies


def test_txv_grad_sam_mixes_the_batch_and_ours_does_not(txv_model, weights, images):
    """txv's bug: its GradSAM map of an image depends on the other images in its batch, as it
    min-max normalises the batch as one; ours does not. With a partner of higher contrast (4x
    image 0), image 1's txv map alone and in the pair differ in scale (the partner's max), and
    still after scaling both to max 1 (the partner's lower min, an offset) -- though the pair's
    is still an affine function of ours, so it is the normalisation alone that mixes."""
    from txv.exp import GradSAM

    image, partner = images[1:2], 4 * images[:1]
    together = torch.cat([image, partner])
    alone = GradSAM(txv_model).explain(image, index=CATEGORY).detach()[0]
    in_pair = GradSAM(txv_model).explain(together, index=CATEGORY).detach()[0]
    assert (alone - in_pair).abs().max() > 1e-2 * alone.abs().max()  # seen: 6%
    txv_shift = (to_max_one(alone[None]) - to_max_one(in_pair[None])).abs().max()

    ours_alone, ours_in_pair = ours(weights, image, "grad-sam")[0], ours(weights, together, "grad-sam")[0]
    ours_shift = (ours_alone - ours_in_pair).abs().max()
    assert ours_shift <= 1e-6  # seen: 6e-8
    assert txv_shift > 1e-5 and txv_shift > 100 * ours_shift, (txv_shift, ours_shift)  # seen: 3e-5
    _, _, residual = affine_fit(in_pair, ours_in_pair.flatten())
    assert residual < ATOL


def test_tam_equals_txv(txv_model, weights, pair):
    """txv's TAM (20 steps, α = linspace(0, 1, 20); one image at a time, as it takes no batch):
    its CLS row scaled to max 1 equals ours, made for the pair in one batch."""
    from txv.exp import TAM

    got = ours(weights, pair, "tam").flatten(1)
    for b in range(len(pair)):
        reference = TAM(txv_model).explain(pair[b:b + 1], index=CATEGORY).detach()
        torch.testing.assert_close(got[b:b + 1], to_max_one(reference), rtol=0, atol=ATOL)
        assert reference.std() > 0.05 * reference.max()


def test_last_layer_map_gradient_is_zero_off_the_cls_row(timm_model, pair):
    """Why txv's Beyond Intuition min-max of the clamped integrated gradient is a pure scale:
    only the last block's CLS output reaches the logits, so d y_c / d A_L is exactly 0 in every
    row but the CLS token's, at any input -- its min after the clamp is 0."""
    for alpha in (0.05, 1.0):
        _, _, gradients = timm_attention(timm_model, alpha * pair, CATEGORY)
        assert torch.count_nonzero(gradients[-1][:, :, 1:]) == 0
        assert (gradients[-1][:, :, 0] > 0).any() and (gradients[-1][:, :, 0] < 0).any()


def test_beyond_intuition_equals_txv(txv_model, weights, pair):
    """txv's BeyondIntuition, head-wise, from 0-indexed layer 3 (our layer 4), α in 20 steps to 1,
    one image at a time (it runs no batch, and normalises head importances over the batch and
    heads together): its CLS row scaled to max 1 equals ours, made for the pair in one batch."""
    from txv.exp import BeyondIntuition

    got = ours(weights, pair, "beyond-intuition").flatten(1)
    for b in range(len(pair)):
        reference = BeyondIntuition(txv_model).explain(pair[b:b + 1], method="head", index=CATEGORY,
                                                       layer=BEYOND_INTUITION_START - 1).detach()
        torch.testing.assert_close(got[b:b + 1], to_max_one(reference), rtol=0, atol=ATOL)
        assert reference.std() > 0.05 * reference.max()


# --- LeGrad and raw attention: naive float64 loops ------------------------------------------------

FUSE = {"mean": lambda maps: maps.mean(dim=0), "min": lambda maps: maps.amin(dim=0),
        "max": lambda maps: maps.amax(dim=0)}


@pytest.fixture(scope="module")
def timm64(timm_model):
    """The timm model in float64, a copy."""
    return copy.deepcopy(timm_model).double()


def embedded(model, image):
    """(3, 224, 224) -> (1, N, D) tokens, through timm's own embedding modules."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(image[None].double()))))


def block_by_hand(block, x):
    """timm ``block`` on (1, N, D) tokens with its attention written out -> (output, attention map
    (1, H, N, N) in the graph). Its norms, linear layers and MLP are timm's modules."""
    attn = block.attn
    B, N, D = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(B, N, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    x = x + block.ls1(attn.proj((a @ v).transpose(1, 2).reshape(B, N, D)))
    return x + block.ls2(block.mlp(block.norm2(x))), a


def naive_legrad(model, image, category, fusion):
    """LeGrad per its definition, one image: for each of the last two layers l, s_l = head(norm(x_l))
    of the CLS token, its gradient with respect to block l's map, clamped, heads fused, mean over
    the query rows; summed over the layers, patch columns, max 1 -> ((G, G), logits)."""
    x = embedded(model, image)
    total = 0
    depth = len(model.blocks)
    for layer, block in enumerate(model.blocks):
        x, a = block_by_hand(block, x)
        if layer >= depth - LEGRAD_LAST_LAYERS:
            score = model.head(model.norm(x)[:, 0])[0, category]
            (gradient,) = torch.autograd.grad(score, a, retain_graph=True)
            total = total + FUSE[fusion](gradient[0].clamp_min(0)).mean(dim=0)
    columns = total[1:]
    if columns.max() > 0:
        columns = columns / columns.max()
    return columns.reshape(14, 14).detach(), model.head(model.norm(x)[:, 0]).detach()


def naive_raw_attention(model, image, fusion):
    """The last layer's map by hand, CLS row, heads fused, patch columns, max 1 -> (G, G)."""
    with torch.no_grad():
        x = embedded(model, image)
        for block in model.blocks[:-1]:
            x = block(x)
        _, a = block_by_hand(model.blocks[-1], x)
    row = FUSE[fusion](a[0])[0, 1:]
    return (row / row.max()).reshape(14, 14)


@pytest.fixture(scope="module")
def legrad_reference(timm64, timm_model, pair):
    """{fusion: (2, G, G)} of naive_legrad, after checking the hand-written blocks give timm's logits."""
    maps = {}
    for fusion in FUSIONS:
        per_image = [naive_legrad(timm64, image, CATEGORY, fusion) for image in pair]
        maps[fusion] = torch.stack([m for m, _ in per_image])
    with torch.no_grad():
        expected = timm_model(pair).double()
    torch.testing.assert_close(torch.cat([logits for _, logits in per_image]), expected, rtol=0, atol=1e-5)
    return maps


@pytest.mark.parametrize("fusion", FUSIONS)
def test_legrad_equals_naive_float64_loop(weights, pair, legrad_reference, fusion):
    """Our LeGrad (one backward pass for every layer's score) equals the loop of one autograd.grad
    per layer and image: in float32 to its rounding, and run in float64 to float64's."""
    expected = legrad_reference[fusion]
    assert expected.amax() == 1  # not all zero: min fusion zeroes most patches
    _, maps = explain(weights, pair, "legrad", category=CATEGORY, head_fusions=(fusion,))
    torch.testing.assert_close(maps[fusion].double(), expected, rtol=0, atol=ATOL_FLOAT32_VS_64)
    _, maps64 = explain(in_float64(weights), pair.double(), "legrad", category=CATEGORY, head_fusions=(fusion,))
    torch.testing.assert_close(maps64[fusion], expected, rtol=0, atol=ATOL_FLOAT64)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_raw_attention_equals_naive_float64_map(timm64, weights, pair, fusion):
    """Raw attention is the last layer's CLS row, heads fused, max 1: in float32 to its rounding,
    and run in float64 to float64's."""
    expected = torch.stack([naive_raw_attention(timm64, image, fusion) for image in pair])
    got = ours(weights, pair, "raw-attention", fusion=fusion)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=ATOL_FLOAT32_VS_64)
    got64 = ours(in_float64(weights), pair.double(), "raw-attention", fusion=fusion)
    torch.testing.assert_close(got64, expected, rtol=0, atol=ATOL_FLOAT64)


# --- every method -----------------------------------------------------------------------------

@pytest.mark.parametrize("method", EVERY)
def test_map_follows_the_category_and_a_batch_is_its_images_alone(weights, images, method):
    """A class-specific method's map changes with the class explained; and for every method, a
    batch of three gives each image the map it gets alone."""
    batch = ours(weights, images, method)
    alone = torch.cat([ours(weights, images[b:b + 1], method) for b in range(len(images))])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)  # the images' maps differ
    if method in CLASS_SPECIFIC:
        other = ours(weights, images, method, category=OTHER_CATEGORY)
        assert ((other - batch).abs().amax(dim=(1, 2)) > 1e-2).all()


def test_one_backward_pass_gives_every_layers_own_read_out_gradient(weights, pair):
    """model_run's LeGrad run (blocks apart, one backward pass) gives, for every layer l, the
    gradient of that layer's own logit-lens score s_l w.r.t. A_l -- bitwise what a backward pass
    per layer (torch.autograd.grad of s_l alone) gives -- for all L layers, not only LeGrad's two."""
    from deit_functional.model import head, trace
    from deit_functional.model_run import Keeps, run_model

    L = len(weights["blocks"])
    one_pass = run_model(weights, pair, Keeps(read_out_layers=L), CATEGORY).read_out_gradients
    kept = trace(weights, pair, keep=("tokens",), keep_grad=("attentions",))
    for l, (ours_l, attention, tokens) in enumerate(zip(one_pass, kept.attentions, kept.tokens[1:])):
        score = head(tokens, weights)[:, CATEGORY].sum()
        alone = torch.autograd.grad(score, attention, retain_graph=True)[0]
        assert torch.equal(ours_l, alone), f"layer {l + 1}"
        assert alone.abs().max() > 0


def test_a_batch_of_mixed_classes_spanning_integration_passes_is_its_images_alone(weights, images):
    """The integrated gradient's (image, step) pairs go INTEGRATION_ROWS at a time: a batch of 4
    with a class each (80 pairs: passes of 64 and 16, the fourth image's steps split between
    them) equals each image alone."""
    from deit_functional.model_run import INTEGRATION_ROWS
    from deit_functional.methods import STEPS

    four = torch.cat([images, images[:1].flip(-1)])
    classes = torch.tensor([87, 3, 258, 5])
    assert INTEGRATION_ROWS < len(four) * STEPS and INTEGRATION_ROWS % STEPS  # two passes, an image split
    together = ours(weights, four, "tam", category=classes)
    alone = torch.cat([ours(weights, four[i:i + 1], "tam", category=int(classes[i])) for i in range(4)])
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)
    assert (together[3] - together[0]).abs().max() > 1e-3


@pytest.mark.parametrize("method", CLASS_SPECIFIC)
def test_class_specific_methods_run_inside_no_grad(weights, pair, method):
    """A caller's torch.no_grad() does not stop the backward passes a method needs."""
    with torch.no_grad():
        inside = ours(weights, pair, method)
    torch.testing.assert_close(inside, ours(weights, pair, method), atol=0, rtol=0)
