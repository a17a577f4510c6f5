"""The comparison (--compare, --method all): each metric against a plain computation in the test,
the planted model's known answer, random weights, and the command line. Quantus as the
reference: test_quantus_agreement.py."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import evaluate
from deit_functional.comparison import chance_line, interval, kinds_of, table
from deit_functional.scores import Scored
from deit_functional.evaluate import FRACTIONS, WHOLE, auc
from deit_functional.localisation import box_mask, read_boxes
from deit_functional.model import G, forward
from deit_functional.sanity import FAILS_ABOVE, randomised, rank_correlation
from planted import RED_CLASS, draw_scene, planted_state_dict
from script_runs import ATTENTION, GRADIENT, run_here


def test_auc_is_chefer_et_al_s_trapezoid_over_0_to_0_9():
    curve = np.random.default_rng(0).random(len(FRACTIONS))
    assert auc(FRACTIONS, curve) == pytest.approx(np.trapezoid(curve, np.arange(0, 1, 0.1)), abs=1e-15)
    with_one = np.trapezoid([*curve, 0.5], np.arange(0, 1.05, 0.1))  # x = 1 appended: another number
    assert auc(FRACTIONS, curve) != pytest.approx(with_one)


def test_token_removal_is_the_model_given_only_the_kept_tokens_by_hand(timm_model, weights, images):
    """timm's own blocks, run by hand on the class token and the kept patches' tokens, each with
    its position embedding, give the curves' probabilities."""
    grids = torch.rand(2, 1, G, G, generator=torch.Generator().manual_seed(3))
    classes = torch.tensor([5, 700])
    curves = evaluate.token_removal_curves(weights, images[:2], grids, classes)
    with torch.no_grad():
        m = timm_model
        tokens = m.pos_embed + torch.cat([m.cls_token.expand(2, -1, -1), m.patch_embed(images[:2])], dim=1)
        for step, fraction in enumerate(FRACTIONS):
            gone = round(fraction * 196)
            for b in range(2):
                order = sorted(range(196), key=lambda i: (-grids[b, 0].flatten()[i].item(), i))  # most relevant first
                for o, removed in enumerate((order[:gone], order[196 - gone:])):
                    kept = [0] + [1 + i for i in range(196) if i not in removed]
                    x = m.blocks(tokens[b:b + 1, kept])
                    p = m.head(m.norm(x)[:, 0]).softmax(-1)[0, classes[b]]
                    assert curves[b, 0, o, step] == pytest.approx(p.item(), abs=2e-6), (step, b, o)


def test_patch_removal_replaces_the_ranked_patches_by_the_baseline(weights, images):
    """removal_curves against a plain loop: copy, paste the baseline's pixels on the removed patches, run."""
    grids = torch.rand(1, 2, G, G, generator=torch.Generator().manual_seed(4))
    baseline = evaluate.blurred(images[:1])
    curves = evaluate.removal_curves(weights, images[:1], grids, torch.tensor([9]), WHOLE, baseline)
    for r in range(2):
        order = torch.argsort(grids[0, r].flatten(), descending=True, stable=True).tolist()
        for step, fraction in enumerate(WHOLE):
            gone = round(fraction * 196)
            for o, removed in enumerate((order[:gone], order[::-1][:gone])):
                x = images[:1].clone()
                for i in removed:
                    rows, cols = slice(i // G * 16, i // G * 16 + 16), slice(i % G * 16, i % G * 16 + 16)
                    x[..., rows, cols] = baseline[..., rows, cols]
                with torch.no_grad():
                    p = forward(weights, x)[0].softmax(-1)[0, 9].item()
                assert curves[0, r, o, step] == pytest.approx(p, abs=2e-6)
    deletion, insertion = evaluate.deletion_insertion(curves)
    assert insertion[0, 0, 0] == pytest.approx(curves[0, 0, 1, -1])  # x = 0 inserts nothing: all blurred
    with torch.no_grad():
        assert insertion[0, 0, -1] == pytest.approx(forward(weights, images[:1])[0].softmax(-1)[0, 9].item(), abs=1e-6)


def test_the_blur_is_torchvision_s_gaussian_blur():
    from torchvision.transforms.functional import gaussian_blur
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(evaluate.blurred(x), gaussian_blur(x, [11, 11], [5.0, 5.0]), atol=1e-6)


def test_the_inverted_map_s_curves_are_the_map_s_with_the_orders_swapped(weights, images):
    grids = torch.rand(2, 1, G, G, generator=torch.Generator().manual_seed(6))
    classes = torch.tensor([1, 2])
    for curves_of in (evaluate.removal_curves, evaluate.token_removal_curves):
        mine, theirs = curves_of(weights, images[:2], grids, classes), curves_of(weights, images[:2], -grids, classes)
        assert np.allclose(evaluate.inverted(mine), theirs, atol=1e-6)


def test_with_ties_the_inverted_map_s_curves_are_still_the_swapped_orders(weights, images):
    """A map with many equal patches (as ReLU leaves): -map removes, most relevant first, exactly
    what the map removes least relevant first."""
    grids = torch.randint(0, 3, (1, 1, G, G), generator=torch.Generator().manual_seed(9)).float()
    classes = torch.tensor([4])
    mine, theirs = (evaluate.token_removal_curves(weights, images[:1], g, classes) for g in (grids, -grids))
    assert np.array_equal(evaluate.inverted(mine), theirs)
    removed = evaluate.removed(grids[0, 0], FRACTIONS, most_relevant_first=False)
    assert torch.equal(removed, evaluate.removed(-grids[0, 0], FRACTIONS))


def test_rank_correlation_is_scipy_s_spearman_with_ties():
    from scipy.stats import spearmanr
    a = torch.randint(0, 6, (5, 196), generator=torch.Generator().manual_seed(7)).double()
    b = torch.randn(5, 196, generator=torch.Generator().manual_seed(8)).double()
    b[0] = a[0] * 2 + 1  # the same ranking
    mine = rank_correlation(a, b)
    assert np.allclose(mine, [spearmanr(a[k], b[k]).statistic for k in range(5)], atol=1e-12)
    assert mine[0] == pytest.approx(1.0)
    flat = torch.zeros(196, dtype=torch.float64)
    assert rank_correlation(flat, flat) == 1 and rank_correlation(flat, b[1]) == 0


def test_randomised_replaces_the_top_blocks_and_keeps_their_scale(weights):
    two, three = randomised(weights, 2), randomised(weights, 3)
    for index, block in enumerate(weights["blocks"]):
        changed = not torch.equal(two["blocks"][index]["attn"]["qkv"]["weight"], block["attn"]["qkv"]["weight"])
        assert changed == (index >= 10)
    top = three["blocks"][11]["mlp"]["fc1"]["weight"]
    assert torch.equal(top, two["blocks"][11]["mlp"]["fc1"]["weight"])  # one more block, the others as they were
    original = weights["blocks"][11]["mlp"]["fc1"]["weight"]
    assert abs(top.std() / original.std() - 1) < 0.02 and abs(top.mean() - original.mean()) < 0.002
    assert torch.equal(two["pos_embed"], weights["pos_embed"]) and torch.equal(two["head"]["weight"], weights["head"]["weight"])


def test_the_bootstrap_interval_is_a_plain_loop_over_resamples():
    values = np.random.default_rng(1).normal(size=20)
    rng = np.random.default_rng(0)
    draws = rng.integers(0, 20, (2000, 20))
    means = [np.mean([values[i] for i in row]) for row in draws]
    assert interval(values) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)))
    assert interval([3.0]) == (3.0, 3.0)


def test_table_marks_the_best_row_what_is_worse_and_what_beats_chance():
    rng = np.random.default_rng(2)
    entries = []
    for p in range(12):
        for row, kind, value in (("good", "method", 0.9), ("close", "method", 0.895), ("bad", "method", 0.5),
                                 ("random map", "random", 0.5)):
            noise = rng.normal(0, 0.01) if kind != "random" else rng.normal(0, 0.05)
            entries.append(Scored(f"p{p}", "class 1", row, kind, {"insertion": value + noise}))
    cells = table(entries)
    assert cells["good"]["insertion"].best and not cells["close"]["insertion"].best
    assert cells["bad"]["insertion"].worse and not cells["bad"]["insertion"].beats_random
    assert cells["good"]["insertion"].beats_random and cells["close"]["insertion"].beats_random
    mean = np.mean([e.scores["insertion"] for e in entries if e.row == "good"])
    assert cells["good"]["insertion"].mean == pytest.approx(mean)
    assert "insertion: 2 of 3." in chance_line(cells, kinds_of(entries))
    chance = rng.normal(0.5, 0.05, 12)  # two maps that score, picture by picture, as the random map does
    noise = [Scored(f"p{p}", "class 1", row, kind, {"deletion": chance[p]}) for p in range(12)
             for row, kind in (("copy a", "method"), ("copy b", "method"), ("random map", "random"))]
    said = chance_line(table(noise), kinds_of(noise))
    assert said.endswith("deletion: 0 of 2 (no method separable from chance).")


def test_boxes_files_read_and_map_onto_the_model_s_input(tmp_path):
    (tmp_path / "b.csv").write_text("picture,class,x0,y0,x1,y1\ndir/cat.png,281,0,0,50,100\ncat.png,tabby,50,0,100,100\n")
    (tmp_path / "b.json").write_text(json.dumps([{"picture": "cat.png", "class": 281, "box": [0, 0, 50, 100]}]))
    boxes = read_boxes(tmp_path / "b.csv")
    assert boxes == {"cat.png": [(281, (0.0, 0.0, 50.0, 100.0)), (281, (50.0, 0.0, 100.0, 100.0))]}
    assert read_boxes(tmp_path / "b.json") == {"cat.png": boxes["cat.png"][:1]}
    mask = box_mask(boxes["cat.png"][:1], 281, 100, 200)  # a 200 x 100 picture: the box is its left quarter
    assert mask[:, :56].all() and not mask[:, 56:].any()
    assert box_mask(boxes["cat.png"], 1, 100, 200) is None  # no box of that class


@pytest.mark.parametrize("text, says", [
    ("picture,class,x0,y0,x1,y1\na.png,1,5,5,2,9\n", "a box needs 0 <= x0 < x1"),
    ("picture,class,x0,y0,x1,y1\na.png,no such class,0,0,2,2\n", "line 2"),
    ("name,x\n", "starts with the header line"),
])
def test_a_bad_boxes_file_is_refused_in_one_line_before_any_work(tmp_path, capsys, text, says):
    (tmp_path / "boxes.csv").write_text(text)
    Image.fromarray(draw_scene(32, 32, [])).save(tmp_path / "a.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path / "a.png", "--compare", "--boxes", tmp_path / "boxes.csv",
                      "--weights", tmp_path / "none.pth", "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", [["--boxes", "b.csv"], ["--sanity-pictures", "3"]])
def test_the_comparison_s_options_without_compare_are_refused(tmp_path, capsys, option):
    Image.fromarray(draw_scene(32, 32, [])).save(tmp_path / "a.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path / "a.png", *option, "--output-dir", tmp_path / "out")
    assert result.returncode == 2 and f"{option[0]} " in result.stderr and "add --compare" in result.stderr
    assert not (tmp_path / "out").exists()


SCENES = [(30, 120, 56), (130, 40, 60), (60, 30, 48), (100, 170, 52), (10, 20, 50)]  # the red square's top, left, side


@pytest.fixture(scope="module")
def planted_comparison(tmp_path_factory):
    """gradient_rollout.py --compare on five planted scenes (a red square, and a blue one against
    the class), with the red squares' boxes; then a second, smaller comparison in the same folder."""
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("comparison")
    save_file(planted_state_dict(), folder / "planted.safetensors")
    (folder / "pictures").mkdir()
    lines = ["picture,class,x0,y0,x1,y1"]
    for k, (top, left, side) in enumerate(SCENES):
        scene = [("red", top, left, side), ("blue", 200 - top - 50, 260 - left - 50, 44)]
        Image.fromarray(draw_scene(200, 260, scene)).save(folder / "pictures" / f"s{k}.png")
        lines.append(f"s{k}.png,{RED_CLASS},{left},{top},{left + side},{top + side}")
    (folder / "boxes.csv").write_text("\n".join(lines) + "\n")
    args = ["--image", folder / "pictures", "--category", RED_CLASS, "--method", "rollout,grad-cam,input-gradient",
            "--compare", "--boxes", folder / "boxes.csv", "--weights", folder / "planted.safetensors",
            "--output-dir", folder / "out", "-qq"]
    from script_runs import run
    first = run(GRADIENT, *args, cwd=folder)
    written = {p.name: p.read_bytes() for p in (folder / "out").glob("comparison.*")}
    second = run(GRADIENT, "--image", folder / "pictures" / "s0.png", "--category", RED_CLASS, "--method", "grad-cam",
                 "--compare", "--weights", folder / "planted.safetensors", "--output-dir", folder / "out", cwd=folder)
    return folder, first, second, written


def cells_of(path):
    """comparison.csv -> {(map, metric): row}."""
    with open(path, newline="") as f:
        return {(r["map"], r["metric"]): r for r in csv.DictReader(f)}


def test_planted_true_maps_beat_chance_and_their_inverted_maps_score_worst(planted_comparison):
    folder, first, *_ = planted_comparison
    assert first.returncode == 0, first.stderr
    cells = cells_of(folder / "out" / "comparison.csv")
    methods = ["Gradient Rollout, mean, discard 0.9", "Grad-CAM", "Input x gradient"]
    random = "random map (3 seeds)"
    metrics = ["patch-positive", "patch-negative", "token-positive", "token-negative", "deletion", "insertion",
               "pointing", "mass"]
    for method in methods:
        for metric in metrics:
            cell, chance, inverted = (cells[name, metric] for name in (method, random, f"inverted: {method}"))
            sign = 1 if cell["better"] == "higher" else -1
            assert sign * float(cell["mean"]) > sign * float(chance["mean"]) > sign * float(inverted["mean"]), \
                (method, metric)
            assert cell["beats_random"] == "1", (method, metric)
        rho = float(cells[method, "randomisation"]["mean"])
        assert rho < FAILS_ABOVE, method  # every block random: the map changed
    assert all(cells[m, "pointing"]["mean"] == "1.000000" for m in methods)


def test_the_comparison_files_say_what_they_hold_and_are_never_overwritten(planted_comparison):
    folder, first, second, written = planted_comparison
    assert second.returncode == 0, second.stderr
    out = folder / "out"
    assert {p.name: p.read_bytes() for p in out.glob("comparison.*")} == written  # left as the first run wrote them
    assert sorted(written) == ["comparison.csv", "comparison.html", "comparison.md"]
    assert all((out / f"comparison-2{suffix}").stat().st_size for suffix in (".md", ".html", ".csv"))
    assert str(out / "comparison-2.md") in second.stdout  # and said where they went
    markdown = (out / "comparison.md").read_text()
    assert "x = 0..0.9" in markdown and "x = 0..1" in markdown and "class 87" in markdown
    assert "| Grad-CAM |" in markdown and "passes" in markdown and "12 random |" in markdown
    page = (out / "comparison.html").read_text()
    assert "<svg" in page and "http" not in page.replace("http-equiv", "")  # self-contained: nothing fetched


def test_on_random_weights_the_comparison_says_where_maps_are_not_separable_from_chance(tmp_path, capsys, images):
    """Random weights give p(class) near 1/1000 that moves by about 1e-6 as patches go; whether a
    map beats chance there is the paired test's call, and the line must say what the table marks."""
    from safetensors.torch import save_file
    from timm_reference import random_timm_model
    save_file(random_timm_model(seed=3).state_dict(), tmp_path / "random.safetensors")
    for k in range(5):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"n{k}.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path, "--method", "raw-attention", "--compare",
                      "--weights", tmp_path / "random.safetensors", "--output-dir", tmp_path / "out", "-qq")
    assert result.returncode == 0, result.stderr
    cells = cells_of(tmp_path / "out" / "comparison.csv")
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    for metric in ("patch-positive", "token-positive", "deletion", "insertion"):
        beats = cells["Raw attention, mean", metric]["beats_random"] == "1"
        title = {"patch-positive": "patch removal, most first", "token-positive": "token removal, most first",
                 "deletion": "deletion", "insertion": "insertion"}[metric]
        assert (f"{title}: 0 of 1 (no method separable from chance)" in markdown) == (not beats)


@pytest.mark.slow
def test_method_all_compares_every_method_for_the_predicted_class(tmp_path, capsys):
    """attention_rollout.py --method all: the class-specific methods explain each picture's top
    class, and every method of the table has its row (the randomisation check, tested above on
    five methods, left out: for TAM and Beyond Intuition alone it is 480 more passes)."""
    from deit_functional.methods import METHODS
    from deit_functional.scores import row_name
    from safetensors.torch import save_file
    save_file(planted_state_dict(), tmp_path / "planted.safetensors")
    Image.fromarray(draw_scene(224, 224, [("red", 40, 100, 56)])).save(tmp_path / "one.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path / "one.png", "--method", "all", "--steps", "2",
                      "--sanity-pictures", "0",
                      "--weights", tmp_path / "planted.safetensors", "--output-dir", tmp_path / "out", "-qq")
    assert result.returncode == 0, result.stderr
    cells = cells_of(tmp_path / "out" / "comparison.csv")
    for method in METHODS.values():
        ratio = method.cli_discard_ratio or 0.0
        row = row_name(method, method.fusions[0], ratio)
        assert (row, "token-positive") in cells and (row, "insertion") in cells and (row, "randomisation") not in cells
        assert cells[row, "token-positive"]["target"] == "predicted class"
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert any("_grad-cam_" in n and "category" not in n for n in names)  # explained, for the top class


def test_a_map_that_is_not_finite_is_not_scored(tmp_path, capsys, timm_model):
    """Weights that overflow on every picture: each is skipped as without --compare, and no
    comparison is written of maps that were never drawn."""
    huge = dict(timm_model.state_dict())
    huge["blocks.0.attn.qkv.weight"] = huge["blocks.0.attn.qkv.weight"] * 1e30
    torch.save(huge, tmp_path / "huge.pth")
    for k in range(2):
        Image.fromarray(draw_scene(32, 32, [("red", 4 * k, 4, 12)])).save(tmp_path / f"{k}.png")
    result = run_here(capsys, ATTENTION, "--image", tmp_path, "--method", "raw-attention", "--compare",
                      "--weights", tmp_path / "huge.pth", "--output-dir", tmp_path / "out")
    assert result.returncode == 1 and "not finite" in result.stderr
    out = tmp_path / "out"
    assert not out.exists() or not list(out.glob("comparison*"))


def test_several_categories_make_a_table_each(tmp_path, capsys):
    from safetensors.torch import save_file
    from planted import BLUE_CLASS
    save_file(planted_state_dict(), tmp_path / "planted.safetensors")
    Image.fromarray(draw_scene(100, 100, [("red", 10, 10, 30), ("blue", 60, 60, 30)])).save(tmp_path / "a.png")
    result = run_here(capsys, GRADIENT, "--image", tmp_path / "a.png", "--category", RED_CLASS, BLUE_CLASS,
                      "--method", "grad-cam", "--compare", "--weights", tmp_path / "planted.safetensors",
                      "--output-dir", tmp_path / "out", "-qq")
    assert result.returncode == 0, result.stderr
    cells = cells_of(tmp_path / "out" / "comparison.csv")
    with open(tmp_path / "out" / "comparison.csv", newline="") as f:
        targets = {r["target"] for r in csv.DictReader(f)}
    assert targets == {f"class {RED_CLASS} (African grey)", f"class {BLUE_CLASS} (Samoyed)"}
    assert ("Grad-CAM", "randomisation") in cells
    markdown = (tmp_path / "out" / "comparison.md").read_text()
    assert markdown.count("| Grad-CAM |") == 4  # each table, and each depth table
