"""The planted-attention model (tests/planted.py) behaves as constructed, and every explanation
method (methods.METHODS) finds what was planted: squares of random size and position, on
pictures of several shapes, not aligned to the patch grid. The methods come from the table, so
a method added to it is tested here without a line added: a class-specific one must light the
explained class's square and leave the other one dark, a class-agnostic one must peak on the
square, for every head fusion it offers."""
import numpy as np
import pytest
import torch

from deit_functional import METHODS, explain, forward, load_weights, to_input
from deit_functional.model import G as GRID, H, IMAGE_SIZE, P
from deit_functional.pixel_relevance import patch_maps
from deit_functional.model_run import Keeps, run_model
from deit_functional.weights import expected_shapes
from planted import AGAINST, BLUE, BLUE_CLASS, ETA, KAPPA, RED, RED_CLASS, draw_scene, planted_state_dict

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

SIZES = [(224, 224), (240, 320), (300, 200), (320, 240)]  # (height, width)
PER_SIZE = 3
CLASS_OF = {"red": RED_CLASS, "blue": BLUE_CLASS}
CLASS_SPECIFIC = [name for name, m in METHODS.items() if m.uses_gradient]
CLASS_AGNOSTIC = [name for name, m in METHODS.items() if not m.uses_gradient]


# ---- scenes ---------------------------------------------------------------------------------

def random_square(rng, height, width, colour):
    """A square of side 1/5..1/4 of the short side, placed so it does not cover the centre."""
    side = int(rng.uniform(0.2, 0.25) * min(height, width))
    while True:
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        off_centre = (abs(top + side / 2 - height / 2) > side or abs(left + side / 2 - width / 2) > side)
        if off_centre:
            return colour, top, left, side


def apart(a, b, height, width):
    """Whether two squares are separated by at least one patch's width or height."""
    gap_y, gap_x = height / GRID, width / GRID
    (_, ta, la, sa), (_, tb, lb, sb) = a, b
    return (ta + sa + gap_y <= tb or tb + sb + gap_y <= ta
            or la + sa + gap_x <= lb or lb + sb + gap_x <= la)


def random_pair(rng, height, width):
    red = random_square(rng, height, width, "red")
    while True:
        blue = random_square(rng, height, width, "blue")
        if apart(red, blue, height, width):
            return red, blue


def inside(square, height, width):
    """(GRID, GRID) bool: the patches whose centre pixel lies inside ``square``. Patch (i, j)
    covers rows i*H/14..(i+1)*H/14 and columns j*W/14..(j+1)*W/14 of the picture."""
    _, top, left, side = square
    rows = (np.arange(GRID) + 0.5) * height / GRID
    cols = (np.arange(GRID) + 0.5) * width / GRID
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    mask = in_rows[:, None] & in_cols[None, :]
    assert mask.any(), f"test set-up: no patch centre inside {square} on {height}x{width}"
    return torch.from_numpy(mask)


MAP_SHAPE = {False: (GRID, GRID), True: (IMAGE_SIZE, IMAGE_SIZE)}  # a map per patch, per pixel


def argmax_patch(saliency):
    """(GRID, GRID) map -> its argmax as (row, column)."""
    flat = int(saliency.flatten().argmax())
    return divmod(flat, GRID)


def batch(pictures):
    return torch.stack([to_input(p) for p in pictures])


@pytest.fixture(scope="module")
def planted():
    return load_weights(planted_state_dict())


@pytest.fixture(scope="module")
def lone_squares(planted):
    """One red or one blue square per picture: (scenes, logits, attention maps, images), one
    forward for all."""
    rng = np.random.default_rng(2024)
    scenes = []
    for height, width in SIZES:
        for colour in ("red", "blue"):
            for _ in range(PER_SIZE):
                scenes.append((height, width, random_square(rng, height, width, colour)))
    images = batch([draw_scene(h, w, [sq]) for h, w, sq in scenes])
    with torch.no_grad():
        logits, attentions = forward(planted, images)
    return scenes, logits, attentions, images


@pytest.fixture(scope="module")
def square_pairs(planted):
    """A red and a blue square per picture, apart: (scenes, logits, attentions, grads per colour,
    images)."""
    rng = np.random.default_rng(7)
    scenes = [(h, w, *random_pair(rng, h, w)) for h, w in SIZES for _ in range(PER_SIZE)]
    images = batch([draw_scene(h, w, [red, blue]) for h, w, red, blue in scenes])
    grads = {}
    for colour, cls in CLASS_OF.items():  # a fresh forward per class; the maps are the same
        logits, attentions = forward(planted, images, retain_grad=True)
        logits[:, cls].sum().backward()
        grads[colour] = [a.grad for a in attentions]
    attentions = [a.detach() for a in attentions]
    return scenes, logits.detach(), attentions, grads, images


# ---- the weights ----------------------------------------------------------------------------

def test_state_dict_is_deit_tiny_shaped_float32_and_deterministic():
    state, again = planted_state_dict(), planted_state_dict()
    shapes = expected_shapes()
    assert set(state) == set(shapes)
    for key, shape in shapes.items():
        assert tuple(state[key].shape) == shape and state[key].dtype == torch.float32, key
        assert torch.isfinite(state[key]).all(), key
        assert torch.equal(state[key], again[key]), key
    assert RED_CLASS != BLUE_CLASS and 0 <= min(RED_CLASS, BLUE_CLASS) and max(RED_CLASS, BLUE_CLASS) < 1000


def test_loads_into_timm_strictly_and_timm_computes_the_same_logits(planted):
    import timm

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    model.load_state_dict(planted_state_dict(), strict=True)
    rng = np.random.default_rng(0)
    images = batch([draw_scene(224, 224, [random_square(rng, 224, 224, "red")]),
                    draw_scene(240, 320, list(random_pair(rng, 240, 320)))])
    with torch.no_grad():
        ours, _ = forward(planted, images)
        theirs = model(images)
    assert ours[:, RED_CLASS].min() > 1  # a real signal to compare, not zeros against zeros
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-3)


def test_draw_scene_paints_exact_colours_and_clips_at_the_border():
    picture = draw_scene(30, 40, [("red", 2, 3, 5), ("blue", 25, 36, 10)], background=(10, 20, 30))
    assert picture.shape == (30, 40, 3) and picture.dtype == np.uint8
    assert (picture[2:7, 3:8] == (255, 0, 0)).all()
    assert (picture[25:, 36:] == (0, 0, 255)).all()
    painted = np.zeros((30, 40), bool)
    painted[2:7, 3:8] = painted[25:, 36:] = True
    assert (picture[~painted] == (10, 20, 30)).all()
    assert (draw_scene(8, 9, []) == 128).all()


# ---- the construction -----------------------------------------------------------------------

def test_attention_is_as_planted_in_every_block(lone_squares):
    scenes, _, attentions, _ = lone_squares
    coloured = torch.stack([inside(sq, h, w).flatten() for h, w, sq in scenes])  # (B, 196)
    for attn in attentions:
        assert torch.isfinite(attn).all()
        # all three heads identical, so mean, min and max head fusion agree
        assert torch.equal(attn[:, 0], attn[:, 1]) and torch.equal(attn[:, 0], attn[:, 2])
        # each patch attends to itself
        assert attn[:, 0, 1:, 1:].diagonal(dim1=-2, dim2=-1).min() > 0.99
        # CLS attends to the square: most of its attention, and its strongest entry there
        cls_row = attn[:, 0, 0, 1:]
        assert (cls_row * coloured).sum(dim=1).min() > 0.8
        assert coloured.gather(1, cls_row.argmax(dim=1, keepdim=True)).all()


def test_plain_picture_gives_uniform_cls_attention_and_zero_logits(planted):
    with torch.no_grad():
        logits, attentions = forward(planted, batch([draw_scene(224, 224, []),
                                                     draw_scene(200, 300, [], background=(40, 40, 40))]))
    assert logits.abs().max() < 1e-3
    for attn in attentions:
        torch.testing.assert_close(attn[:, :, 0], torch.full_like(attn[:, :, 0], 1 / 197))


# ---- what every method must find -----------------------------------------------------------

# Attention Flow solves a maximum-flow problem per picture and patch, seconds a map of a batch
# on 2 cores: it runs at these fusions and ratios only, where the others run every fusion at
# every ratio. Its min fusion would make the max fusion's map again: the planted heads are
# identical bit for bit (test_attention_is_as_planted_in_every_block), so their min is their max.
ONLY = {"flow": [("mean", 0.9), ("max", 0.0)]}


def discard_ratios(name):
    """The discard ratios method ``name`` is tried at: 0, and 0.9 where it discards."""
    return (0.0, 0.9) if METHODS[name].discards else (0.0,)


def cases(names):
    """(method, head fusion, discard ratio): every fusion each method offers, at every ratio it
    is tried at (ONLY aside)."""
    return [(name, fusion, ratio) for name in names
            for fusion, ratio in ONLY.get(name, [(f, r) for r in discard_ratios(name) for f in METHODS[name].fusions])]


def params(cases):
    return [pytest.param(*case, id="-".join(map(str, case))) for case in cases]


AGNOSTIC_CASES, SPECIFIC_CASES = cases(CLASS_AGNOSTIC), cases(CLASS_SPECIFIC)


def explained_once(planted, batch_for, cases):
    """(method, discard ratio) -> explain()'s {fusion: (B, G, G) map} of the pictures
    ``batch_for(method)`` gives, with their categories: one call each, on first demand, with
    every fusion ``cases`` asks of it, kept for the module."""
    made = {}

    def maps(name, discard_ratio):
        if (name, discard_ratio) not in made:
            images, category = batch_for(name)
            fusions = [f for n, f, r in cases if (n, r) == (name, discard_ratio)]
            made[name, discard_ratio] = explain(planted, images, name, category=category, head_fusions=fusions,
                                                discard_ratio=discard_ratio)[1]
        return made[name, discard_ratio]
    return maps


def integrates(name):
    """Whether method ``name`` integrates a gradient: a forward pass a picture for each step."""
    return bool(METHODS[name].keeps.integrated or METHODS[name].steps)


def scenes_for(name, scenes):
    """The square pairs method ``name`` explains: all, or for a method that integrates a
    gradient (20 or 32 forward passes a picture) three, of three picture sizes -- with both classes,
    six pictures, two or three of model_run's passes of 64 (image, step) pairs."""
    return scenes[::PER_SIZE][:3] if integrates(name) else scenes


@pytest.fixture(scope="module")
def lone_square_maps(planted, lone_squares):
    images = lone_squares[-1]
    return explained_once(planted, lambda name: (images, None), AGNOSTIC_CASES)


@pytest.fixture(scope="module")
def pair_maps(planted, square_pairs):
    """Each class-specific method's maps of the square pairs (scenes_for), every picture explained
    for RED_CLASS and for BLUE_CLASS in the same call: the first half of the batch for red."""
    images = square_pairs[-1]

    def both_classes(name):
        chosen = scenes_for(name, images)
        return torch.cat([chosen, chosen]), torch.tensor([RED_CLASS] * len(chosen) + [BLUE_CLASS] * len(chosen))
    return explained_once(planted, both_classes, SPECIFIC_CASES)


def test_every_method_is_tried_at_every_fusion_it_offers():
    """The cases below come from METHODS: a new method, or a new fusion of one, is tried at once."""
    assert set(CLASS_AGNOSTIC) | set(CLASS_SPECIFIC) == set(METHODS) and CLASS_AGNOSTIC and CLASS_SPECIFIC
    for name, m in METHODS.items():
        tried = {(f, r) for n, f, r in AGNOSTIC_CASES + SPECIFIC_CASES if n == name}
        assert tried <= {(f, r) for f in m.fusions for r in discard_ratios(name)}, name
        if name not in ONLY:
            assert {f for f, _ in tried} == set(m.fusions) and {r for _, r in tried} == set(discard_ratios(name))


@pytest.mark.parametrize("name, head_fusion, discard_ratio", params(AGNOSTIC_CASES))
def test_class_agnostic_methods_peak_inside_the_lone_square(lone_squares, lone_square_maps, name, head_fusion,
                                                           discard_ratio):
    scenes = lone_squares[0]
    maps = lone_square_maps(name, discard_ratio)[head_fusion]
    assert maps.shape == (len(scenes), GRID, GRID) and torch.isfinite(maps).all()
    for saliency, (h, w, square) in zip(maps, scenes):
        assert inside(square, h, w)[argmax_patch(saliency)], (h, w, square)
        # and the peak is no fluke: every patch whose centre is outside the square stays dark
        assert saliency[~inside(square, h, w)].max() < 0.1, (h, w, square)


@pytest.mark.parametrize("explained", ["red", "blue"])
@pytest.mark.parametrize("name, head_fusion, discard_ratio", params(SPECIFIC_CASES))
def test_class_specific_methods_light_the_explained_colour_only(square_pairs, pair_maps, name, head_fusion,
                                                               discard_ratio, explained):
    """For every class-specific method, fusion and ratio. Nothing in the planted model had to
    change for the methods that read more than the attention maps and their gradients:
    test_what_grad_cam_legrad_and_the_integrated_gradient_read_is_as_planted shows what they
    read in it, and why it has a right answer. Beyond Intuition's rollout from layer 4 sees what
    a whole one sees, as every planted block attends alike."""
    scenes = scenes_for(name, square_pairs[0])
    both = pair_maps(name, discard_ratio)[head_fusion]
    assert both.shape == (2 * len(scenes), *MAP_SHAPE[METHODS[name].per_pixel]) and torch.isfinite(both).all()
    both = patch_maps(METHODS[name], both, P)  # a per-pixel method's patch sums
    maps = both[:len(scenes)] if explained == "red" else both[len(scenes):]
    for saliency, (h, w, red, blue) in zip(maps, scenes):
        target, other = (red, blue) if explained == "red" else (blue, red)
        assert inside(target, h, w)[argmax_patch(saliency)], (h, w, red, blue)
        # the other square stays dark: its brightest patch, not only its mean, is under 0.2
        assert saliency[inside(other, h, w)].max() < 0.2 * saliency.max(), (h, w, red, blue)


@pytest.mark.parametrize("name", [name for name in CLASS_AGNOSTIC if name not in ONLY])
def test_class_agnostic_methods_cannot_tell_the_two_colours_apart(planted, square_pairs, name):
    """Negative control for the test above: a class-blind map (its first fusion, nothing
    discarded) lights both squares, so the class-specific methods' choice of one square comes
    from the class. (Attention Flow, in ONLY for its time, is left out: two class-blind maps
    make the point.)"""
    scenes, images = square_pairs[0], square_pairs[-1]
    _, maps = explain(planted, images, name)
    for saliency, (h, w, red, blue) in zip(maps[METHODS[name].fusions[0]], scenes):
        for square in (red, blue):
            assert saliency[inside(square, h, w)].max() > 0.2, (h, w, red, blue)


def test_gradients_are_finite_and_signed_as_planted(square_pairs):
    """d logit / d attn, times attn: positive from CLS to the explained colour, negative from CLS
    to the other colour (the clamp in the rollouts must drop it), ~0 on every patch row."""
    scenes, logits, attentions, grads, _ = square_pairs
    assert torch.isfinite(logits).all()
    for colour in CLASS_OF:
        for attn, grad in zip(attentions, grads[colour]):
            assert torch.isfinite(grad).all()
            evidence = (grad * attn).mean(dim=1)  # (B, N, N), heads fused
            cls_row = evidence[:, 0, 1:]
            assert evidence[:, 1:].abs().amax() < 1e-3 * cls_row.amax()
            for row, (h, w, red, blue) in zip(cls_row, scenes):
                target, other = (red, blue) if colour == "red" else (blue, red)
                assert row[inside(target, h, w).flatten()].min() > 0
                assert row[inside(other, h, w).flatten()].max() < 0


def test_what_grad_cam_legrad_and_the_integrated_gradient_read_is_as_planted(planted, square_pairs):
    """What Grad-CAM, LeGrad, TAM and Beyond Intuition read beyond the maps and their gradients,
    and why the planted model, built for the rollouts, gives each a right answer as it is:

    * Grad-CAM reads norm1's output in the last block: the residual stream itself, LayerNorm
      being the identity here. Of its patch channels only RED and BLUE reach the logit (as the
      keys the CLS query reads and as values), so theirs are the only channel weights: the
      explained colour's positive, the other's -AGAINST times it. The map is ReLU of the
      explained colour's share minus AGAINST times the other's.
    * LeGrad's logit lens s_l = head(norm(x_l)): the CLS token has gathered colour at every
      layer, so every layer has a score; each layer adds the same ETA-weighted attention, so each
      ∂s_l/∂A_l is the same as the logit's own ∂y/∂A_l, the row KAPPA*ETA/H*(own - AGAINST *
      other colour share) from CLS (every patch row 0). Had a later layer's score reached an
      earlier layer's map too, that map's gradient would be a multiple of ∂y/∂A_l.
      LeGrad's map is then ReLU of that row, as Grad-CAM's, averaged over the N rows.
    * The integrated gradient over α·x: the colour detectors are affine in the normalised pixels,
      and ∂y/∂A_L is affine in what they read, so its mean over the steps is ᾱ G(x) + (1 - ᾱ)
      G(0), ᾱ the mean step, G(0) the gradient at α = 0: the picture of ImageNet's mean colour,
      which the detectors read as 0.029 red and -0.05 blue (not grey), small beside a square's 1.
      So the weight stays positive on the explained square and negative on the other.
    """
    scenes, _, _, grads, images = square_pairs
    h, w, red, blue = scenes[0]
    pictures = torch.cat([images[:1]] * 2)  # the first scene, explained for red, then for blue
    category = torch.tensor([RED_CLASS, BLUE_CLASS])
    squares = [(red, blue), (blue, red)]  # (explained, other) per picture
    whole = [torch.cat([grads["red"][layer][:1], grads["blue"][layer][:1]]) for layer in range(len(grads["red"]))]

    run = run_model(planted, pictures, METHODS["grad-cam"].keeps, category)
    for weights, own in zip(run.attention_input_gradient[:, 1:].mean(dim=1), [RED, BLUE]):  # Grad-CAM's w_d
        other = BLUE if own == RED else RED
        assert weights[own] > 0
        torch.testing.assert_close(weights[other], -AGAINST * weights[own], rtol=1e-3, atol=0)
        rest = torch.ones_like(weights, dtype=torch.bool)
        rest[[own, other]] = False
        assert weights[rest].abs().max() < 1e-4 * weights[own]

    lenses = run_model(planted, pictures, METHODS["legrad"].keeps, category).read_out_gradients
    assert lenses  # the layers LeGrad reads out, the last ones
    for lens, logit in zip(lenses, whole[-len(lenses):]):  # ∂s_l/∂A_l beside ∂y/∂A_l
        assert (lens[:, :, 1:] == 0).all()
        torch.testing.assert_close(lens[:, :, 0], logit[:, :, 0], rtol=1e-3, atol=1e-4 * logit.abs().max())
    assert whole[-1][:, :, 0, 1:].amax() == pytest.approx(KAPPA * ETA / H, rel=1e-3)  # a fully coloured patch's

    zero = torch.zeros_like(pictures)  # normalised 0: ImageNet's mean colour
    logits, attentions = forward(planted, zero, retain_grad=True)
    logits.gather(1, category[:, None]).sum().backward()
    at_zero = attentions[-1].grad
    for steps in {m.keeps.integrated for m in METHODS.values() if m.keeps.integrated}:
        mean_step = sum(steps) / len(steps)
        integrated = run_model(planted, pictures, Keeps(integrated=steps), category).integrated_gradient
        torch.testing.assert_close(integrated, mean_step * whole[-1] + (1 - mean_step) * at_zero,
                                   rtol=1e-3, atol=1e-4 * whole[-1].abs().max())
        for row, (target, other) in zip(integrated.mean(dim=1)[:, 0, 1:], squares):
            assert row[inside(target, h, w).flatten()].min() > 0
            assert row[inside(other, h, w).flatten()].max() < 0


# ---- the logits -----------------------------------------------------------------------------

def test_each_colour_raises_its_own_logit(planted):
    rng = np.random.default_rng(11)
    rows = []
    for height, width in SIZES:
        red, blue = random_pair(rng, height, width)
        rows.append([draw_scene(height, width, squares) for squares in ([], [red], [blue], [red, blue])])
    with torch.no_grad():
        logits, _ = forward(planted, batch([p for row in rows for p in row]))
    assert torch.isfinite(logits).all()
    plain, red_only, blue_only, both = logits.view(len(SIZES), 4, -1).unbind(1)
    assert plain.abs().max() < 1e-3
    # adding a square of a colour raises that colour's logit, with or without the other square
    assert (red_only[:, RED_CLASS] > plain[:, RED_CLASS] + 1).all()
    assert (both[:, RED_CLASS] > blue_only[:, RED_CLASS] + 1).all()
    assert (blue_only[:, BLUE_CLASS] > plain[:, BLUE_CLASS] + 1).all()
    assert (both[:, BLUE_CLASS] > red_only[:, BLUE_CLASS] + 1).all()
    # ... and counts against the other colour's class; a lone colour makes its class the top one
    assert (red_only[:, BLUE_CLASS] < plain[:, BLUE_CLASS]).all()
    assert (blue_only[:, RED_CLASS] < plain[:, RED_CLASS]).all()
    assert (red_only.argmax(dim=1) == RED_CLASS).all() and (blue_only.argmax(dim=1) == BLUE_CLASS).all()
    others = torch.ones(logits.shape[1], dtype=torch.bool)
    others[[RED_CLASS, BLUE_CLASS]] = False
    assert logits[:, others].abs().max() < 1e-3
