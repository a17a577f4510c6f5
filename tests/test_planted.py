"""The planted-attention model (tests/planted.py) behaves as constructed, and the rollouts find
what was planted: squares of random size and position, on pictures of several shapes, not
aligned to the patch grid."""
import numpy as np
import pytest
import torch

from deit_functional import forward, load_weights, to_input
from deit_functional.model import G as GRID
from deit_functional.rollout import HEAD_FUSIONS, attention_flow, attention_rollout, chefer_rollout, gradient_rollout
from deit_functional.weights import expected_shapes
from planted import BLUE_CLASS, RED_CLASS, draw_scene, planted_state_dict

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

SIZES = [(224, 224), (240, 320), (300, 200), (320, 240)]  # (height, width)
PER_SIZE = 3
CLASS_OF = {"red": RED_CLASS, "blue": BLUE_CLASS}


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
    """One red or one blue square per picture: (scenes, attention maps), one forward for all."""
    rng = np.random.default_rng(2024)
    scenes = []
    for height, width in SIZES:
        for colour in ("red", "blue"):
            for _ in range(PER_SIZE):
                scenes.append((height, width, random_square(rng, height, width, colour)))
    pictures = [draw_scene(h, w, [sq]) for h, w, sq in scenes]
    with torch.no_grad():
        logits, attentions = forward(planted, batch(pictures))
    return scenes, logits, attentions


@pytest.fixture(scope="module")
def square_pairs(planted):
    """A red and a blue square per picture, apart: (scenes, attentions, grads per colour)."""
    rng = np.random.default_rng(7)
    scenes = [(h, w, *random_pair(rng, h, w)) for h, w in SIZES for _ in range(PER_SIZE)]
    images = batch([draw_scene(h, w, [red, blue]) for h, w, red, blue in scenes])
    grads = {}
    for colour, cls in CLASS_OF.items():  # a fresh forward per class; the maps are the same
        logits, attentions = forward(planted, images, retain_grad=True)
        logits[:, cls].sum().backward()
        grads[colour] = [a.grad for a in attentions]
    attentions = [a.detach() for a in attentions]
    return scenes, logits.detach(), attentions, grads


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
    scenes, _, attentions = lone_squares
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


# ---- what the rollouts must find ------------------------------------------------------------

@pytest.mark.parametrize("discard_ratio", [0.0, 0.9])
@pytest.mark.parametrize("head_fusion", HEAD_FUSIONS)
def test_attention_rollout_peaks_inside_the_lone_square(lone_squares, head_fusion, discard_ratio):
    scenes, _, attentions = lone_squares
    maps = attention_rollout(attentions, head_fusion, discard_ratio)
    assert torch.isfinite(maps).all()
    for saliency, (h, w, square) in zip(maps, scenes):
        assert inside(square, h, w)[argmax_patch(saliency)], (h, w, square)
        # and the peak is no fluke: every patch whose centre is outside the square stays dark
        assert saliency[~inside(square, h, w)].max() < 0.1, (h, w, square)


EXPLAINERS = {
    "gradient mean": lambda a, g: gradient_rollout(a, g),
    "gradient min 0.9": lambda a, g: gradient_rollout(a, g, "min", 0.9),
    "gradient max": lambda a, g: gradient_rollout(a, g, "max"),
    "chefer": lambda a, g: chefer_rollout(a, g),
}


@pytest.mark.parametrize("explained", ["red", "blue"])
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_gradient_rollouts_light_the_explained_colour_only(square_pairs, method, explained):
    scenes, _, attentions, grads = square_pairs
    maps = EXPLAINERS[method](attentions, grads[explained])
    assert torch.isfinite(maps).all()
    for saliency, (h, w, red, blue) in zip(maps, scenes):
        target, other = (red, blue) if explained == "red" else (blue, red)
        assert inside(target, h, w)[argmax_patch(saliency)], (h, w, red, blue)
        # the other square stays dark: its brightest patch, not only its mean, is under 0.2
        assert saliency[inside(other, h, w)].max() < 0.2 * saliency.max(), (h, w, red, blue)


def test_attention_rollout_alone_cannot_tell_the_two_colours_apart(square_pairs):
    """Negative control for the test above: the class-blind rollout lights both squares, so the
    gradient rollouts' choice of one square comes from the class gradient."""
    scenes, _, attentions, _ = square_pairs
    maps = attention_rollout(attentions)
    for saliency, (h, w, red, blue) in zip(maps, scenes):
        for square in (red, blue):
            assert saliency[inside(square, h, w)].max() > 0.2, (h, w, red, blue)


def test_gradients_are_finite_and_signed_as_planted(square_pairs):
    """d logit / d attn, times attn: positive from CLS to the explained colour, negative from CLS
    to the other colour (the clamp in the rollouts must drop it), ~0 on every patch row."""
    scenes, logits, attentions, grads = square_pairs
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


@pytest.mark.parametrize("head_fusion, discard_ratio", [("mean", 0.9), ("max", 0.0)])
def test_attention_flow_peaks_inside_the_lone_square(lone_squares, head_fusion, discard_ratio):
    scenes, _, attentions = lone_squares
    maps = attention_flow(attentions, head_fusion, discard_ratio)
    for saliency, (h, w, square) in zip(maps, scenes):
        assert inside(square, h, w)[argmax_patch(saliency)], (h, w, square)
