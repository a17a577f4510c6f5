#!/usr/bin/env python3
"""Regenerate every figure of docs/walkthrough.md into docs/figures/: python docs/make_figures.py

Deterministic and offline. Pretrained DeiT weights are not available on the build machines, so
the figures use the planted-attention model of tests/planted.py, whose right explanation is known
by construction; figure (e) uses seeded random weights, labelled as such, to show what a map from
a model that has learnt nothing looks like. Only deit_functional's public functions and
tests/planted.py are used. Prints each figure's path and size, and the numbers the text quotes.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deit_functional import explain, explain_by_layer, load_image, load_weights, to_input  # noqa: E402
from deit_functional.drawing import (Look, curves_figure, grey, join, labelled, layer_figure,  # noqa: E402
                                     map_panel, overlay, result_figure, signed_overlay, to_height, to_side,
                                     upsample)
from deit_functional.evaluate import perturbation_test  # noqa: E402
from deit_functional.outputs import PictureResult, title  # noqa: E402
from deit_functional.methods import METHODS  # noqa: E402
from deit_functional.rollout import HEAD_FUSIONS  # noqa: E402
from deit_functional.writing import write_atomically  # noqa: E402
from deit_functional.weights import expected_shapes  # noqa: E402
from planted import BLUE_CLASS, RED_CLASS, draw_scene, planted_state_dict  # noqa: E402

FIGURES = ROOT / "docs" / "figures"
# One scene for every planted figure: 210 x 280 pixels (not square, so the whole-picture resize
# to 224 x 224 and the stretch back in drawing.upsample are exercised), a red square of side 70 at
# (top 30, left 40) and a smaller blue square of side 50 at (top 110, left 170), neither aligned
# to the 15 x 20-pixel patches. The red square is the larger, so the model's top class is RED_CLASS.
HEIGHT, WIDTH = 210, 280
SQUARES = [("red", 30, 40, 70), ("blue", 110, 170, 50)]
DISCARD = 0.0  # the library default; the command line's is 0.9 (0 with --method chefer)


def panels(picture, grids, labels, backdrop=None):
    """The picture, then each (G, G) map drawn at the picture's size over ``backdrop``
    (default: the picture itself), each under its label."""
    backdrop = picture if backdrop is None else backdrop
    drawn = [picture] + [overlay(backdrop, upsample(g, picture.shape[:2])) for g in grids]
    return [labelled(panel, label) for panel, label in zip(drawn, labels, strict=True)]


def figure_a(weights, picture, x):
    """Attention Rollout with the three head fusions: mean, min, max."""
    logits, maps = explain(weights, x[None], "attention", head_fusions=HEAD_FUSIONS, discard_ratio=DISCARD)
    grids = [maps[f][0] for f in HEAD_FUSIONS]
    labels = ["the planted scene"] + [f"{f} fusion" for f in HEAD_FUSIONS]
    save("a_attention_rollout_fusions.png", join(panels(picture, grids, labels, grey(picture))))
    spread = max(float((maps[f] - maps["mean"]).abs().max()) for f in HEAD_FUSIONS)
    probability = logits.softmax(dim=-1)[0]
    print(f"  top class {int(logits[0].argmax())}; p(red class {RED_CLASS}) = {probability[RED_CLASS]:.3f}, "
          f"p(blue class {BLUE_CLASS}) = {probability[BLUE_CLASS]:.2g}; "
          f"largest difference between the fusions' maps: {spread:.1e}")


def figure_b(weights, picture, x):
    """Top row: Gradient Rollout for RED_CLASS and for BLUE_CLASS. Bottom row: Chefer's rule."""
    rows = []
    for method in ("gradient", "chefer"):
        grids = [explain(weights, x[None], method, category=category, discard_ratio=DISCARD)[1]["mean"][0]
                 for category in (RED_CLASS, BLUE_CLASS)]
        title = METHODS[method].title
        labels = ["the planted scene", f"{title}, class {RED_CLASS} (red)", f"{title}, class {BLUE_CLASS} (blue)"]
        rows.append(join(panels(picture, grids, labels, grey(picture))))
    save("b_gradient_red_vs_blue.png", join(rows, axis=0))


def figure_c(weights, picture, x):
    """Per layer, Attention Rollout: rollout after layers 1..12 (top), each layer's raw CLS attention."""
    _, by_layer, own = explain_by_layer(weights, x[None], "attention", discard_ratio=DISCARD)
    by_layer, own = by_layer["mean"][:, 0], own["mean"][:, 0]
    save("c_per_layer.png", layer_figure(grey(picture), by_layer, own, "Attention Rollout, mean fusion, discard 0",
                                         height=84, gap=4))
    change = float((by_layer - by_layer[-1]).abs().max())
    print(f"  largest difference between any layer's rollout and the last one: {change:.1e}")


def figure_d(weights, x):
    """Perturbation test for RED_CLASS: the Gradient Rollout map, a random map, the inverted map."""
    true = explain(weights, x[None], "gradient", category=RED_CLASS, discard_ratio=DISCARD)[1]["mean"][0]
    random = torch.rand(true.shape, generator=torch.Generator().manual_seed(0))
    # The test only uses the ranking; -true reverses it exactly. (1 - true would tie every
    # patch whose value is below float32's resolution next to 1 at exactly 1.)
    grids = {"Gradient Rollout (red)": true, "random map (seed 0)": random, "inverted map": -true}
    scores = perturbation_test(weights, x, grids, RED_CLASS)
    figure = curves_figure(scores, f"class {RED_CLASS}")  # the plot --evaluate writes
    path = FIGURES / "d_perturbation_test.png"
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=80, metadata={"Software": None}))
    report(path)
    for name, s in scores.items():
        print(f"  {name:24} positive {np.round(s['positive'], 3).tolist()}  AUC {s['positive_auc']:.4f}")
        print(f"  {'':24} negative {np.round(s['negative'], 3).tolist()}  AUC {s['negative_auc']:.4f}")


def figure_f(weights, picture, x):
    """Attention Rollout against Attention Flow (mean, discard 0), over a grey copy of the scene."""
    grids = {method: explain(weights, x[None], method, discard_ratio=DISCARD)[1]["mean"][0]
             for method in ("attention", "flow")}
    labels = ["the planted scene", "Attention Rollout", "Attention Flow"]
    save("f_rollout_vs_flow.png", join(panels(picture, grids.values(), labels, grey(picture))))
    for method, grid in grids.items():  # patch rows 7-10 and columns 8-11 hold the blue square
        print(f"  {method}: blue square's top patch {float(grid[7:11, 8:12].max()):.3f}, "
              f"median patch {float(grid.median()):.4f}")


def figure_g(weights, picture, x):
    """What gradient_rollout.py --category 258 writes for the planted scene: the homework's
    dog-and-parrot case, the class whose square is blue."""
    logits, maps = explain(weights, x[None], "gradient", category=BLUE_CLASS, discard_ratio=0.9)
    result = PictureResult("scene.png", picture, logits.softmax(dim=-1)[0].numpy(), {"mean": maps["mean"][0].numpy()},
                           category=BLUE_CLASS, method=METHODS["gradient"], discard_ratio=0.9)
    save("g_result_figure.png", result_figure(picture, {"mean fusion, red = most relevant": result.maps["mean"]},
                                              title(result)))


def figure_h(weights, picture, x):
    """Every method of METHODS on the planted scene, each as the command line runs it by default
    (its first fusion, its discard ratio): the class-specific ones for RED_CLASS; the per-pixel
    ones red for the class, blue against it."""
    small = to_height(picture, 105)
    drawn = [labelled(small, "the planted scene", size=12)]
    for name, method in METHODS.items():
        category = RED_CLASS if method.uses_gradient else None
        grid = explain(weights, x[None], name, category=category, discard_ratio=method.cli_discard_ratio or 0.0)[1]
        label = method.title + (f", class {RED_CLASS}" if category is not None else "")
        mask = upsample(next(iter(grid.values()))[0], small.shape[:2])  # max 1 (max |value| 1 where signed)
        drawn.append(labelled((signed_overlay if method.per_pixel else overlay)(grey(small), mask), label, size=12))
    height = max(panel.shape[0] for panel in drawn)
    drawn = [np.concatenate([np.full((height - p.shape[0], *p.shape[1:]), 255, np.uint8), p]) for p in drawn]
    drawn += [np.full_like(drawn[0], 255)] * (-len(drawn) % 4)
    save("h_every_method.png", join([join(drawn[i:i + 4]) for i in range(0, len(drawn), 4)], axis=0))


def figure_i(weights, picture, x):
    """The relevance family at pixel resolution, for RED_CLASS: each map over the grey scene
    with its colour bar, as the result figure draws it (signed: blue speaks against the class)."""
    back = grey(to_side(picture, 280))
    drawn = []
    for name in ("input-gradient", "integrated-gradients", "cp-lrp", "attnlrp", "transformer-attribution"):
        maps = explain(weights, x[None], name, category=RED_CLASS)[1]
        drawn.append(map_panel(back, next(iter(maps.values()))[0], METHODS[name].title, Look(), size=13,
                               signed=METHODS[name].per_pixel))
    drawn.append(np.full_like(drawn[0], 255))
    save("i_relevance_family.png", join([join(drawn[:3]), join(drawn[3:])], axis=0))


def random_state_dict(seed=0):
    """Seeded random DeiT-tiny weights: N(0, 0.02^2) matrices and embeddings, zero biases,
    LayerNorms at scale 1 -- a model that has learnt nothing."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in expected_shapes().items():
        if key.endswith(".bias"):
            state[key] = torch.zeros(shape)
        elif "norm" in key:
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state


def figure_e():
    """RANDOM weights on images/cat.jpg: Attention Rollout (mean) with discard 0 and with 0.9."""
    weights = load_weights(random_state_dict())
    x, picture = load_image(ROOT / "images" / "cat.jpg")
    small = to_height(picture, 128)
    grids = [explain(weights, x[None], "attention", discard_ratio=ratio)[1]["mean"][0] for ratio in (0.0, 0.9)]
    save("e_random_weights_cat.png", join(panels(small, grids, ["cat.jpg", "random weights, discard 0",
                                                               "random weights, discard 0.9"])))
    print(f"  random weights: smallest patch value of the max-1 map: discard 0 -> {grids[0].min():.3f}, "
          f"discard 0.9 -> {grids[1].min():.3f}")


def save(name, picture):
    """Write a PNG at full zlib compression (writing.save_png favours speed over size)."""
    import imageio.v3 as iio

    path = FIGURES / name
    write_atomically(path, lambda file: iio.imwrite(file, picture, extension=".png", compress_level=9))
    report(path)


def report(path):
    size = path.stat().st_size
    print(f"{path}  {size / 1024:.0f} KB")
    if size > 150 * 1024:
        raise SystemExit(f"{path} is over 150 KB")


def main():
    global FIGURES
    parser = argparse.ArgumentParser(description="Regenerate the walkthrough's figures.")
    parser.add_argument("--output-dir", type=Path, default=FIGURES, help="default: docs/figures")
    FIGURES = parser.parse_args().output_dir
    start = time.perf_counter()
    torch.manual_seed(0)
    FIGURES.mkdir(parents=True, exist_ok=True)
    weights = load_weights(planted_state_dict())
    picture = draw_scene(HEIGHT, WIDTH, SQUARES)
    x = to_input(picture)
    figure_a(weights, picture, x)
    figure_b(weights, picture, x)
    figure_c(weights, picture, x)
    figure_d(weights, x)
    figure_e()
    figure_f(weights, picture, x)
    figure_g(weights, picture, x)
    figure_i(weights, picture, x)
    figure_h(weights, picture, x)
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
