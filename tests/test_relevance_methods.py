"""The relevance family, each against an independent reference: input x gradient against timm's
own autograd, integrated gradients against captum 0.9, CP-LRP and AttnLRP against lxt 2.1 (run in
a process of its own: tests/lxt_reference.py), transformer attribution against a plain float64
relevance pass written from the authors' code (tests/chefer_reference.py); then what the rules
are: they change no value of the forward, CP-LRP conserves the logit where nothing else can take
relevance, AttnLRP does not; and a batch is explained image by image.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deit_functional import METHODS, explain, load_weights
from deit_functional.drawing import upsample
from deit_functional.model import RULES, forward, gelu, layer_norm, trace
from deit_functional.model_run import Keeps, black_picture, run_model
from deit_functional.pixel_relevance import patch_sums
from chefer_reference import chefer_transformer_attribution
from planted import RED_CLASS, draw_scene, planted_state_dict
from script_runs import GRADIENT, run_here
from test_field_methods import in_float64

CATEGORIES = torch.tensor([87, 3])
RELEVANCE = ("input-gradient", "integrated-gradients", "cp-lrp", "attnlrp", "transformer-attribution")
LXT = Path(__file__).with_name("lxt_reference.py")


def relative(a, b):
    """max |a - b| over max |b|."""
    return float((a - b).abs().max() / b.abs().max())


def input_relevance(weights, images, rules, category=CATEGORIES, steps=0):
    return run_model(weights, images, Keeps(input_rules=rules, input_steps=steps), category).input_relevance


@pytest.fixture(scope="module")
def pair(images):
    return images[:2]


@pytest.fixture(scope="module")
def unbiased_state(timm_model):
    """The random model with every bias zero, and the additive constants too: the class token
    and the position embedding (relevance they would take comes from no pixel)."""
    zero = lambda key: key.endswith(".bias") or key in ("cls_token", "pos_embed")
    return {k: torch.zeros_like(v) if zero(k) else v for k, v in timm_model.state_dict().items()}


def lxt(rules, state, images, category, folder):
    """lxt's input relevance and logits, computed in a fresh process (tests/lxt_reference.py)."""
    import importlib.util
    if importlib.util.find_spec("lxt") is None:
        pytest.fail("lxt, the reference of CP-LRP and AttnLRP, is not installed: pip install --no-deps lxt==2.1")
    paths = [folder / f"{name}.pt" for name in ("state", "images", "category", "out")]
    for path, value in zip(paths, (state, images, category)):
        torch.save(value, path)
    done = subprocess.run([sys.executable, str(LXT), rules, *map(str, paths)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(paths[-1])


# ---- the rules change the backward only ----------------------------------------------------

@pytest.mark.parametrize("rules", RULES)
def test_the_rules_change_no_value_of_the_forward(weights, pair, rules):
    """Under every rule set the logits and every attention map are bitwise the plain forward's
    (test_model: bitwise timm's), and the gradient does reach the input."""
    plain_logits, plain_maps = forward(weights, pair)
    x = pair.clone().requires_grad_(True)
    kept = trace(weights, x, rules=RULES[rules])
    assert torch.equal(kept.logits, plain_logits)
    assert all(torch.equal(a, b) for a, b in zip(kept.attentions, plain_maps))
    kept.logits[:, 87].sum().backward()
    assert x.grad.abs().max() > 0


def test_each_stage_rule_gives_the_gradient_its_paper_names():
    """LayerNorm with σ constant: ∂/∂x = (I - 1/D) w/σ; GELU by the identity rule: gelu(h)/h."""
    torch.manual_seed(0)
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    p = {"weight": torch.randn(8, dtype=torch.float64), "bias": torch.randn(8, dtype=torch.float64)}
    seed = torch.randn(5, 8, dtype=torch.float64)
    layer_norm(x, p, RULES["cp-lrp"]).backward(seed)
    sigma = torch.sqrt(x.detach().var(dim=-1, unbiased=False, keepdim=True) + 1e-6)
    centring = torch.eye(8, dtype=torch.float64) - 1 / 8
    torch.testing.assert_close(x.grad, (seed * p["weight"] / sigma) @ centring)
    h = torch.randn(100, dtype=torch.float64, requires_grad=True)
    gelu(h, RULES["attnlrp"]).backward(torch.ones_like(h))
    torch.testing.assert_close(h.grad, torch.nn.functional.gelu(h.detach()) / h.detach())
    assert torch.allclose(h.grad * h.detach(), torch.nn.functional.gelu(h.detach()))  # relevance passes unchanged


# ---- each method against its reference -----------------------------------------------------

def test_input_gradient_is_timms_autograd(timm_model, weights, pair):
    x = pair.clone().requires_grad_(True)
    timm_model(x).gather(1, CATEGORIES[:, None]).sum().backward()
    ours = input_relevance(weights, pair, "gradient")
    assert relative(ours, (x * x.grad).detach()) < 1e-5
    _, maps = explain(weights, pair, "input-gradient", category=CATEGORIES)
    summed = ours.sum(dim=1)
    torch.testing.assert_close(maps["none"], summed / summed.abs().amax(dim=(1, 2), keepdim=True))


def test_integrated_gradients_equal_captum(timm_model, weights, pair):
    """captum 0.9's IntegratedGradients on the timm model: the same black baseline, its default
    Gauss-Legendre rule, 32 steps."""
    from captum.attr import IntegratedGradients

    baseline = black_picture(pair, weights).expand_as(pair)
    theirs = IntegratedGradients(timm_model).attribute(pair, baselines=baseline, target=CATEGORIES.tolist(),
                                                       n_steps=32, method="gausslegendre")
    ours = input_relevance(weights, pair, "gradient", steps=32)
    assert relative(ours, theirs) < 1e-4
    assert METHODS["integrated-gradients"].steps == 32
    # the baseline is the black picture: 0 in pixels, -mean/std once normalised
    torch.testing.assert_close(black_picture(pair, weights).flatten(), torch.tensor([-0.485 / 0.229, -0.456 / 0.224,
                                                                            -0.406 / 0.225]))


@pytest.mark.parametrize("rules", ["cp-lrp", "attnlrp"])
def test_lrp_equals_lxt(weights, pair, timm_model, rules, tmp_path):
    """lxt 2.1's rules: AttnLRP on a transformers ViT, CP-LRP on torchvision's (lxt's own map for
    it), both carrying the random model's weights. Seen: 5e-7 and 7e-7 of the largest."""
    theirs = lxt(rules, timm_model.state_dict(), pair, CATEGORIES, tmp_path)
    ours = input_relevance(weights, pair, rules)
    torch.testing.assert_close(theirs["logits"], forward(weights, pair)[0], atol=1e-5, rtol=0)
    assert relative(ours, theirs["relevance"]) < 1e-4
    assert relative(ours.sum(dim=1), theirs["relevance"].sum(dim=1)) < 1e-4


def test_cp_lrp_conserves_the_logit_and_attnlrp_keeps_part_back_as_lxt_does(unbiased_state, pair, tmp_path):
    """With every bias, the class token and the position embedding zero, CP-LRP's input relevance
    sums to the explained logit: every stage passes on exactly what it receives. AttnLRP's does
    not even then -- its softmax rule keeps part back -- and its sum is lxt's."""
    weights = load_weights(unbiased_state)
    logits = forward(weights, pair)[0].gather(1, CATEGORIES[:, None])[:, 0]
    conserved = input_relevance(weights, pair, "cp-lrp").sum(dim=(1, 2, 3))
    torch.testing.assert_close(conserved, logits, atol=1e-6, rtol=1e-4)
    attnlrp = input_relevance(weights, pair, "attnlrp").sum(dim=(1, 2, 3))
    share = attnlrp / logits
    assert ((share > 0.2) & (share < 0.9)).all(), share
    theirs = lxt("attnlrp", unbiased_state, pair, CATEGORIES, tmp_path)["relevance"].sum(dim=(1, 2, 3))
    torch.testing.assert_close(attnlrp, theirs, atol=1e-7, rtol=1e-4)


def test_with_biases_cp_lrp_does_not_conserve(weights, pair):
    """The biases (and the class token and position embedding) take relevance of their own, which
    no pixel holds: on the random model the pixels' sum is far from the logit."""
    logits = forward(weights, pair)[0].gather(1, CATEGORIES[:, None])[:, 0]
    summed = input_relevance(weights, pair, "cp-lrp").sum(dim=(1, 2, 3))
    assert ((summed - logits).abs() > 0.5 * logits.abs()).all(), (summed, logits)


def test_transformer_attribution_equals_the_plain_float64_pass(weights, pair):
    """Against tests/chefer_reference.py, per image and per layer in float64, the authors'
    start_layer 0 and no normalisation but ours to max 1. In float64 both: the rules divide by
    sums that cross zero, so float32 runs of either differ by far more than rounding (see
    transformer_attribution.py)."""
    maps = explain(in_float64(weights), pair.double(), "transformer-attribution", category=CATEGORIES)[1]["mean"]
    for image, category, ours in zip(pair, CATEGORIES.tolist(), maps):
        theirs = chefer_transformer_attribution(weights, image, category).reshape(14, 14)
        torch.testing.assert_close(ours, theirs / theirs.max(), atol=1e-6, rtol=0)


# ---- every relevance method ----------------------------------------------------------------

def quick(name):
    """The method, integrated gradients at 4 steps (the steps change nothing here but time)."""
    m = METHODS[name]
    return m.with_steps(4) if m.steps else m


@pytest.mark.parametrize("name", RELEVANCE)
def test_a_batch_is_its_images_alone_and_the_map_follows_the_class(weights, images, name):
    """Three images at once give each the map it gets alone, inside a caller's no_grad too; a
    per-pixel method's map is (224, 224), the others' (G, G)."""
    method = quick(name)
    fusion = method.fusions[0]
    batch = explain(weights, images, method, category=87)[1][fusion]
    with torch.no_grad():
        alone = torch.cat([explain(weights, images[b:b + 1], method, category=87)[1][fusion] for b in range(3)])
    assert batch.shape[1:] == ((224, 224) if method.per_pixel else (14, 14))
    tolerance = 1e-3 if name == "transformer-attribution" else 1e-5  # its float32 conditioning (above)
    torch.testing.assert_close(batch, alone, rtol=0, atol=tolerance)
    other = explain(weights, images, method, category=3)[1][fusion]
    assert ((other - batch).abs().amax(dim=(1, 2)) > 1e-2).all()


def test_a_run_that_could_not_give_what_it_names_is_refused():
    with pytest.raises(ValueError, match="weighted by the attention gradients"):
        Keeps(attention_relevances=True)
    with pytest.raises(ValueError, match="name its input_rules"):
        Keeps(input_steps=8)


def test_patch_sums_add_each_patchs_pixels():
    pixels = torch.arange(224 * 224, dtype=torch.float64).reshape(224, 224)
    sums = patch_sums(pixels, 16)
    assert sums.shape == (14, 14)
    assert sums[2, 5] == pixels[32:48, 80:96].sum() and sums.sum() == pixels.sum()


# ---- from the command line -----------------------------------------------------------------

@pytest.fixture(scope="module")
def planted_scene(tmp_path_factory):
    """A red square whose edges cut through patches, on a 240 x 320 picture, and the planted weights."""
    import imageio.v3 as iio

    folder = tmp_path_factory.mktemp("relevance")
    iio.imwrite(folder / "scene.png", draw_scene(240, 320, [("red", 43, 37, 61), ("blue", 150, 200, 50)]))
    torch.save(planted_state_dict(), folder / "planted.pth")
    return folder


@pytest.mark.parametrize("name", ["cp-lrp", "attnlrp", "input-gradient"])
def test_the_mask_keeps_the_pixels_detail(capsys, planted_scene, name, tmp_path):
    """The mask at the photo's size is the per-pixel map: along a row through the red square it
    rises from ~0 to its top within a pixel or two, where the 14 x 14 grid of its patch sums,
    upsampled, would climb over a whole patch (23 pixels here); outside the squares it is ~0.
    The saved grid is those patch sums, and it peaks in the red square."""
    done = run_here(capsys, GRADIENT, "--image", planted_scene / "scene.png", "--category", RED_CLASS,
                    "--method", name, "--weights", planted_scene / "planted.pth", "--output-dir", tmp_path,
                    "--save-grid")
    assert done.returncode == 0, done.stderr
    [mask] = tmp_path.glob(f"*_{name}_*_mask.npy")
    [grid] = tmp_path.glob(f"*_{name}_*_grid.npy")
    mask, grid = np.load(mask), np.load(grid)
    assert mask.shape == (240, 320) and grid.shape == (14, 14)
    row = mask[70]  # through the red square (columns 37..97), not the blue one
    top = row.max()
    assert top > 0 and row[37:98].max() == top
    assert np.abs(np.concatenate([row[:34], row[101:]])).max() < 0.02 * top
    assert np.abs(np.diff(row)).max() > 0.3 * top
    blurred = upsample(grid / np.abs(grid).max(), mask.shape)[70]
    assert np.abs(np.diff(blurred)).max() < 0.1 * blurred.max()
    red_patch = divmod(int(grid.argmax()), 14)
    assert 43 <= (red_patch[0] + 0.5) * 240 / 14 <= 104 and 37 <= (red_patch[1] + 0.5) * 320 / 14 <= 98


def test_steps_go_to_integrated_gradients_only(capsys, planted_scene, tmp_path):
    """--steps reaches integrated gradients; elsewhere it is refused, saying why, nothing written."""
    common = ["--image", planted_scene / "scene.png", "--category", RED_CLASS, "--weights",
              planted_scene / "planted.pth", "-q"]
    for method, why in (("cp-lrp", "cp-lrp takes no steps"), ("tam", "tam keeps its paper's 20")):
        refused = run_here(capsys, GRADIENT, *common, "--method", method, "--steps", 8, "--output-dir", tmp_path)
        assert refused.returncode == 2 and refused.stderr.strip().endswith(
            f"error: --steps sets integrated-gradients' steps (gradient_rollout.py); {why}")
    assert not any(tmp_path.iterdir())
    masks = {}
    for steps in (2, 4):
        done = run_here(capsys, GRADIENT, *common, "--method", "integrated-gradients", "--steps", steps,
                        "--output-dir", tmp_path / str(steps))
        assert done.returncode == 0, done.stderr
        [masks[steps]] = [np.load(p) for p in (tmp_path / str(steps)).glob("*_mask.npy")]
    assert np.abs(masks[2] - masks[4]).max() > 1e-3  # the steps were taken, not the default 32


def test_integrated_gradients_split_the_pairs_of_an_image_across_passes(weights, images):
    """40 steps for 3 images are 120 (image, step) pairs, two passes of at most 64: the second
    image's steps are split between them. Each image gets what it gets alone (one pass), and
    TAM's integrated gradient likewise."""
    from deit_functional.model_run import INTEGRATION_ROWS, integrated_gradient

    classes = torch.tensor([87, 3, 258])
    assert INTEGRATION_ROWS % 40 != 0 and 3 * 40 > INTEGRATION_ROWS
    together = input_relevance(weights, images, "gradient", category=classes, steps=40)
    alone = torch.cat([input_relevance(weights, images[i:i + 1], "gradient", category=classes[i:i + 1], steps=40)
                       for i in range(3)])
    assert relative(together, alone) < 1e-5
    alphas = tuple(torch.linspace(0, 1, 40).tolist())
    torch.testing.assert_close(integrated_gradient(weights, images, classes, alphas),
                               torch.cat([integrated_gradient(weights, images[i:i + 1], classes[i:i + 1], alphas)
                                          for i in range(3)]), rtol=0, atol=1e-7)
