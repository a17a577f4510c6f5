"""The pictures a student hands in and a grader reads (issue #23): red means relevance and nothing
else, every figure says what it shows and the range its colours span, flat maps say they are
flat; classes by name; the printout, the predictions file and the quiet modes."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional.drawing import (Look, backdrop, colour_bar, grey, number_pair, overlay, stretched,
                                     to_side, upsample, value_range)
from deit_functional.methods import METHODS
from deit_functional.labels import class_index, class_names, rank, top
from deit_functional.outputs import PictureResult, title
from figure_panels import GAP, locate, map_panel
from planted import BLUE_CLASS, RED_CLASS, draw_scene, planted_state_dict
from script_runs import ATTENTION, GRADIENT, run, run_here


@pytest.fixture(scope="module")
def planted_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("planted") / "planted.safetensors"
    save_file(planted_state_dict(), path)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory, timm_model):
    path = tmp_path_factory.mktemp("random") / "random.pth"
    torch.save(timm_model.state_dict(), path)
    return path


def written(stdout, suffix=(".png", ".npy")):
    return [line for line in stdout.splitlines() if line.endswith(suffix)]


def red_share(region):
    """How much of a region looks red: the share of its pixels whose red exceeds both green and
    blue by 40 levels."""
    r, g, b = np.moveaxis(region.astype(int), -1, 0)
    return float(((r > g + 40) & (r > b + 40)).mean())


def square_in(panel, square, shape):
    """The part of a panel (the picture resized to it) that a square of the picture covers,
    a few pixels inside its edges."""
    _, top, left, side = square
    sy, sx = panel.shape[0] / shape[0], panel.shape[1] / shape[1]
    return panel[int(top * sy) + 3:int((top + side) * sy) - 3, int(left * sx) + 3:int((left + side) * sx) - 3]


SCENE = (240, 320, [("red", 40, 30, 70), ("blue", 120, 200, 60)])


@pytest.mark.quick
@pytest.mark.parametrize("category, own, other", [(RED_CLASS, 0, 1), (BLUE_CLASS, 1, 0)])
@pytest.mark.parametrize("method", ["rollout", "chefer"])
def test_in_the_saved_figure_the_explained_class_square_is_the_redder(capsys, tmp_path, planted_checkpoint,
                                                                      category, own, other, method):
    """The homework's grader reads the PNG: for each class, its own square is the red one --
    also for class 258, whose square is blue in the photo. Over the photo in colour (the old
    default, --overlay colour) the blue square's relevance turned purple and the irrelevant red
    square stayed deep red: the figure said the opposite of the map."""
    height, width, squares = SCENE
    picture = draw_scene(height, width, squares)
    Image.fromarray(picture).save(tmp_path / "scene.png")
    redder = {}
    for look in ("grey", "colour"):
        result = run_here(capsys, GRADIENT, "--image", tmp_path / "scene.png", "--category", category,
                          "--method", method, "--weights", planted_checkpoint, "--overlay", look,
                          "--output-dir", tmp_path / look)
        assert result.returncode == 0, result.stderr
        panel = map_panel(np.asarray(Image.open(written(result.stdout)[0])), picture)  # beside the picture
        regions = [square_in(panel, square, (height, width)) for square in squares]
        redder[look] = red_share(regions[own]) > 0.2 and red_share(regions[other]) < 0.02
        mask = np.load(written(result.stdout)[1])[..., None]  # the map itself is right either way
        assert square_in(mask, squares[own], (height, width)).mean() > \
            5 * square_in(mask, squares[other], (height, width)).mean()
    assert redder["grey"]
    if category == BLUE_CLASS:
        assert not redder["colour"]  # the defect the grey backdrop ends


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp", "input-gradient"])
def test_a_signed_relevance_map_is_red_for_the_class_blue_against_and_leaves_zero_uncoloured(
        capsys, tmp_path, planted_checkpoint, method):
    """A per-pixel relevance has a sign: for class 87 its red square speaks for the class (red in
    the figure), the blue one against it (blue), and where the relevance is 0 the grey copy of
    the photo shows untouched -- a JET colour scale would tint it, 0 lying mid-scale."""
    height, width, squares = SCENE
    picture = draw_scene(height, width, squares)
    Image.fromarray(picture).save(tmp_path / "scene.png")
    result = run_here(capsys, GRADIENT, "--image", tmp_path / "scene.png", "--category", RED_CLASS,
                      "--method", method, "--weights", planted_checkpoint, "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    panel = map_panel(np.asarray(Image.open(written(result.stdout)[0])), picture)
    red, blue = (square_in(panel, square, (height, width)) for square in squares)
    # (the planted class token reads the fully coloured patches: those a square's edge cuts hold ~0)
    assert red_share(red) > 0.4 and red_share(blue) == 0
    r, g, b = np.moveaxis(blue.astype(int), -1, 0)
    assert ((b > r + 40) & (b > g + 40)).mean() > 0.4
    untouched = grey(to_side(picture))[5:35, 150:250].astype(int)  # a patch of background, far from both
    assert np.abs(panel[5:35, 150:250].astype(int) - untouched).max() <= 2


def test_the_figure_holds_the_picture_the_map_over_its_grey_copy_and_the_maps_range(capsys, tmp_path,
                                                                                     random_checkpoint):
    """Pixel for pixel: the picture as given, then the saved 14x14 map drawn over a grey copy,
    stretched from its lowest to its highest value, over the colour bar of that range."""
    picture = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    for look in (Look(), Look("colour", 0.7)):
        out = tmp_path / look.backdrop
        result = run_here(capsys, ATTENTION, "--image", tmp_path / "photo.png", "--weights", random_checkpoint,
                          "--save-grid", "--overlay", look.backdrop, "--alpha", look.alpha, "--output-dir", out)
        assert result.returncode == 0, result.stderr
        figure = np.asarray(Image.open(written(result.stdout)[0]))
        grid = np.load(next(p for p in written(result.stdout) if p.endswith("_grid.npy")))
        small = to_side(picture)
        top, left = locate(figure, small)
        low, high = value_range(grid)
        expected = overlay(backdrop(small, look), stretched(upsample(grid, small.shape[:2]), low, high), look.alpha)
        map_left = left + small.shape[1] + GAP
        np.testing.assert_array_equal(figure[top:top + small.shape[0], map_left:map_left + small.shape[1]], expected)
        bar = colour_bar(small.shape[1], low, high, 16)
        below = top + small.shape[0]
        np.testing.assert_array_equal(figure[below:below + bar.shape[0], map_left:map_left + small.shape[1]], bar)
        assert top > 30 and (figure[:top - 22].min(axis=2) < 100).any()  # a title above the panel labels
        assert figure.shape[0] == below + bar.shape[0]  # nothing below the bar


def test_stretched_maps_keep_max_scaled_maps_and_show_the_contrast_of_flat_ones():
    ordinary = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(stretched(ordinary, *value_range(ordinary)), ordinary)
    flat = np.array([[0.96, 0.97], [0.99, 1.0]], np.float32)
    np.testing.assert_allclose(stretched(flat, *value_range(flat)), [[0, 0.25], [0.75, 1]], atol=1e-5)
    assert not stretched(np.full((2, 2), 0.5, np.float32), 0.5, 0.5).any()  # constant: all one colour
    assert number_pair(0.0, 1.0) == ("0.00", "1.00") and number_pair(0.9985, 1.0) == ("0.9985", "1.0000")
    assert number_pair(0.96, 1.0) == ("0.960", "1.000")
    assert number_pair(0.5, 0.5) == ("0.50", "0.50")


def test_a_nearly_flat_map_is_drawn_with_its_contrast_and_its_bar_says_so(capsys, tmp_path, random_checkpoint):
    """Attention Flow without discard on random weights: values within a few thousandths of 1.
    The saved mask keeps them; the figure spans blue to red and its bar reads "nearly flat"."""
    pytest.importorskip("scipy")
    picture = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path / "photo.png", "--method", "flow", "--discard-ratio", "0",
                 "--weights", random_checkpoint, "--save-grid", "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    grid = np.load(next(p for p in written(result.stdout) if p.endswith("_grid.npy")))
    low, high = value_range(grid)
    assert high == 1 and 0.9 < low < 1  # flat, as the saved map is
    figure = np.asarray(Image.open(written(result.stdout)[0]))
    small = to_side(picture)
    top, left = locate(figure, small)
    panel = map_panel(figure, picture)
    tint = panel.astype(int) - grey(small) // 2  # the map's half of each pixel
    blue, red = (tint[..., 2] > tint[..., 0] + 30).mean(), (tint[..., 0] > tint[..., 2] + 30).mean()
    assert blue > 0.01 and red > 0.05  # both ends of the colours (scaled to the maximum: all dark red)
    bar = figure[top + small.shape[0]:, left + small.shape[1] + GAP:left + 2 * small.shape[1] + GAP]
    np.testing.assert_array_equal(bar, colour_bar(small.shape[1], low, high, 16))
    assert not np.array_equal(bar, colour_bar(small.shape[1], 0.0, high, 16))  # its own range, "nearly flat"


def test_the_title_says_method_fusion_discard_class_probability_and_rank():
    probabilities = np.full(1000, 0.5 / 998)
    probabilities[[3, 258]] = 0.3, 0.2
    result = PictureResult("p.png", None, probabilities, {"max": None}, category=258, method=METHODS["chefer"],
                           discard_ratio=0.25)
    assert title(result) == ("Chefer et al.'s rule, max fusion, discard ratio 0.25: class 258 Samoyed "
                             "(p 0.200, rank 2 of 1000); DeiT-tiny")
    agnostic = PictureResult("p.png", None, probabilities, {"mean": None, "min": None}, category=3,
                             method=METHODS["attention"], discard_ratio=0.9, model="deit_small_patch16_224")
    assert title(agnostic) == ("Attention Rollout, mean | min fusion, discard ratio 0.9: top class 3 tiger shark "
                               "(p 0.300, rank 1 of 1000); DeiT-small")


# ---- classes by name ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, index", [("258", 258), ("samoyed", 258), ("SAMOYEDE", 258), ("African grey", 87),
                                         ("african_gray", 87), ("golden ret", 207), ("  Tabby  ", 281)])
def test_a_class_is_found_by_index_or_by_any_unique_start_of_its_names(text, index):
    assert class_index(text) == index


def test_a_name_that_fits_several_classes_or_none_says_which():
    with pytest.raises(ValueError, match=r"'crane' fits 2 classes: 134 crane; 517 crane"):
        class_index("crane")
    with pytest.raises(ValueError, match=r"'cat' fits 5 classes: 286 cougar \(catamount\);"):
        class_index("cat")
    with pytest.raises(ValueError, match="no ImageNet class is called 'parrot'"):
        class_index("parrot")
    with pytest.raises(ValueError, match=r"1000 is not an ImageNet class index \(0..999\)"):
        class_index("1000")
    # a reference: a plain scan of every name
    names = [[n.strip().lower() for n in line.split(",")] for line in class_names()]
    for i in (0, 87, 258, 999):
        for name in names[i]:
            fitting = {j for j, listed in enumerate(names) if name in listed} or {i}
            if len(fitting) == 1:
                assert class_index(name) == i


def test_rank_counts_the_classes_above_with_ties_in_class_order():
    p = np.array([0.1, 0.4, 0.1, 0.4])
    assert [rank(p, i) for i in range(4)] == [3, 1, 4, 2]
    assert [i for _, i, _ in top(p, 4)] == sorted(range(4), key=lambda i: rank(p, i))


def test_the_scripts_take_several_classes_by_name_and_print_each_ones_probability_and_rank(capsys, tmp_path,
                                                                                          planted_checkpoint):
    height, width, squares = SCENE
    Image.fromarray(draw_scene(height, width, squares)).save(tmp_path / "scene.png")
    result = run_here(capsys, GRADIENT, "--image", tmp_path / "scene.png", "--category", "african grey",
                      "samoyed,tench", "--weights", planted_checkpoint, "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'scene.png'}:" and sum(line.endswith(":") for line in lines) == 1  # one heading
    explained = [line for line in lines if line.startswith("  Gradient Rollout, class")]
    top5 = [line for line in lines if line.startswith("  ") and ". " in line[:6]]
    probability = {int(line.split()[2]): float(line.split()[1]) for line in top5}
    assert [line.split(",")[1].split()[1] for line in explained] == ["87", "258", "0"]
    for line in explained:
        index = int(line.split("class ")[1].split()[0])
        p, position = line.split("(p ")[1].split(", rank ")
        assert index not in probability or abs(float(p) - probability[index]) <= 5e-4  # shown to 3 decimals there
        assert int(position.split()[0]) == [l.split()[2] for l in top5].index(str(index)) + 1 \
            if index in probability else int(position.split()[0]) > 5
    assert [f.split("_category")[1].split("_")[0].split(".")[0] for f in written(result.stdout, ".png")] == \
        ["87", "258", "0"]


@pytest.mark.parametrize("category, words", [("crane", "'crane' fits 2 classes"), ("parrot", "no ImageNet class"),
                                             ("87,", "an empty item")])
def test_a_class_name_that_does_not_fit_one_class_is_a_usage_error(capsys, tmp_path, planted_checkpoint, category,
                                                                   words):
    Image.fromarray(draw_scene(*SCENE)).save(tmp_path / "scene.png")
    result = run_here(capsys, GRADIENT, "--image", tmp_path / "scene.png", "--category", category,
                      "--weights", planted_checkpoint, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and words in result.stderr.splitlines()[-1]
    assert not (tmp_path / "out").exists()


# ---- folders: quiet, predictions ----------------------------------------------------------------

def test_a_folder_run_writes_predictions_and_quiet_runs_say_less(capsys, tmp_path, random_checkpoint):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    arguments = ["--image", folder, "--weights", random_checkpoint, "--category", "3", "258", "--output-dir"]
    loud = run_here(capsys, GRADIENT, *arguments, tmp_path / "loud")
    quiet = run_here(capsys, GRADIENT, *arguments, tmp_path / "quiet", "-q")
    silent = run_here(capsys, GRADIENT, *arguments, tmp_path / "silent", "-qq")
    assert loud.returncode == quiet.returncode == silent.returncode == 0
    summary = "3 of 3 pictures explained (2 explanations each); results in "
    assert loud.stdout.splitlines()[-1] == summary + str(tmp_path / "loud")
    assert silent.stdout.splitlines() == [summary + str(tmp_path / "silent")]
    lines = quiet.stdout.splitlines()
    assert len(lines) == 3 * 2 + 2 and lines[-2] == str(tmp_path / "quiet" / "predictions.csv")
    assert all(line.startswith(str(folder)) and " rollout class " in line and line.endswith(".png")
               for line in lines[:6])
    # predictions.csv: a row per picture and class, the probabilities the loud printout shows
    with open(tmp_path / "loud" / "predictions.csv") as file:
        rows = list(csv.DictReader(file))
    assert [(r["picture"], r["explained_class"]) for r in rows] == [(str(folder / f"{i}.png"), c)
                                                                     for i in range(3) for c in ("3", "258")]
    blocks = loud.stdout.split(f"{folder}/")[1:]
    for row in rows[::2]:
        block = next(b for b in blocks if b.startswith(os.path.basename(row["picture"]) + ":"))
        first = block.splitlines()[1].split()
        assert (first[2], first[1]) == (row["top1_class"], f"{float(row['top1_probability']):.3f}")
    for name in ("quiet", "silent"):
        assert (tmp_path / name / "predictions.csv").read_text() == (tmp_path / "loud" / "predictions.csv").read_text()
    assert not any(p.name == "predictions.csv" for p in tmp_path.rglob("*") if "one" in p.parts)


def test_a_single_picture_writes_no_predictions_file(capsys, tmp_path, random_checkpoint):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "one.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path / "one.png", "--weights", random_checkpoint,
                 "--output-dir", tmp_path / "out")
    assert result.returncode == 0 and sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".npy", ".png"]


# ---- weights: where they come from ----------------------------------------------------------------

def test_the_weights_variable_names_a_file_for_every_run_and_weights_still_wins(capsys, monkeypatch, tmp_path,
                                                                              random_checkpoint, planted_checkpoint):
    Image.fromarray(draw_scene(*SCENE)).save(tmp_path / "scene.png")
    monkeypatch.setenv("DEIT_EXPLAIN_WEIGHTS", str(planted_checkpoint))
    named = run_here(capsys, ATTENTION, "--image", tmp_path / "scene.png", "--output-dir", tmp_path / "a")
    given = run_here(capsys, ATTENTION, "--image", tmp_path / "scene.png", "--weights", random_checkpoint,
                     "--output-dir", tmp_path / "b")
    assert named.returncode == given.returncode == 0, named.stderr + given.stderr
    assert "  1. " in named.stdout and named.stdout.splitlines()[1].split()[2] == str(RED_CLASS)  # the planted model
    assert named.stdout.splitlines()[1] != given.stdout.splitlines()[1]  # --weights won
    monkeypatch.setenv("DEIT_EXPLAIN_WEIGHTS", str(tmp_path / "gone.pth"))
    missing = run_here(capsys, ATTENTION, "--image", tmp_path / "scene.png", "--output-dir", tmp_path / "c")
    assert missing.returncode == 2 and missing.stderr.splitlines()[-1].endswith(
        f"weights file not found: {tmp_path / 'gone.pth'} (the file $DEIT_EXPLAIN_WEIGHTS names)")


def test_without_weights_the_message_gives_the_addresses_and_the_command(tmp_path):
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "one.png")
    env = {k: v for k, v in os.environ.items() if k != "DEIT_EXPLAIN_WEIGHTS"}
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), HF_HUB_OFFLINE="1")
    result = run(ATTENTION, "--image", tmp_path / "one.png", cwd=tmp_path, env=env)
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]
    assert "curl -LO https://dl.fbaipublicfiles.com/deit/deit_tiny_patch16_224-a1311bcf.pth" in error
    assert "https://huggingface.co/timm/deit_tiny_patch16_224.fb_in1k" in error
    assert "https://huggingface.co/facebook/deit-tiny-patch16-224" in error
    assert "--weights" in error and "DEIT_EXPLAIN_WEIGHTS" in error


def test_a_signed_maps_colours_are_full_where_captums_visualisation_clips_them():
    """Heavy-tailed maps, as pixel relevance is: the colours reach full strength at the |value|
    below which 98% of the map's total |value| lies -- captum's threshold for drawing
    attributions (outlier_perc=2) -- and beyond it stay full."""
    from captum.attr._utils.visualization import _cumulative_sum_threshold
    from deit_functional.drawing import signed_overlay, signed_reach

    rng = np.random.default_rng(0)
    for _ in range(3):
        relevance = rng.standard_t(2, (224, 224)).astype(np.float32)
        reach = signed_reach(relevance)
        assert reach == pytest.approx(float(_cumulative_sum_threshold(np.abs(relevance), 98.0)), rel=1e-6)
        assert reach < 0.5 * np.abs(relevance).max()  # scaling to the max would have greyed nearly all
    grey_picture = np.full((1, 4, 3), 100, np.uint8)
    drawn = signed_overlay(grey_picture, np.array([[-1.0, 0.0, 0.5, 1.0]], np.float32), alpha=0.5)
    assert drawn[0, 1].tolist() == [100, 100, 100]  # 0: the picture untouched
    assert drawn[0, 3].tolist() == [178, 50, 50] and drawn[0, 0].tolist() == [50, 50, 178]
    assert drawn[0, 2].tolist() == [139, 75, 75]  # half the weight at half the reach


def test_map_panel_draws_a_signed_map_full_from_its_reach_and_clipped_beyond():
    """At the model input's size (upsampling is the identity there) the panel is exactly the
    signed overlay of the map over signed_reach, clipped to [-1, 1]: most pixels at 0.01, a few
    at +-1 far past the reach; and an all-zero map leaves the picture as it is."""
    from deit_functional.drawing import labelled, map_panel, signed_overlay, signed_reach

    rng = np.random.default_rng(1)
    relevance = np.full((224, 224), 0.01, np.float32)
    relevance[rng.integers(0, 224, 5), rng.integers(0, 224, 5)] = rng.choice([-1.0, 1.0], 5)  # 1% of the mass
    back = np.full((224, 224, 3), 120, np.uint8)
    reach = signed_reach(relevance)
    assert reach == pytest.approx(0.01)  # the spikes are past it: drawn full, not setting the scale
    panel = map_panel(back, relevance, "label", Look(), size=14, signed=True)
    expected = labelled(signed_overlay(back, np.clip(relevance / reach, -1, 1), 0.5), "label", 14)
    assert np.abs(panel[:expected.shape[0]].astype(int) - expected).max() <= 1
    flat = map_panel(back, np.zeros((224, 224), np.float32), "label", Look(), size=14, signed=True)
    assert (flat[expected.shape[0] - 224:expected.shape[0]] == 120).all()
