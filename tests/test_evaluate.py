"""The perturbation test (Chefer et al. 2021), and the --evaluate / --per-layer options through
the real scripts."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import explain, load_weights, to_input
from deit_functional.evaluate import FRACTIONS, auc, perturbation_test, removed
from deit_functional.pixel_relevance import patch_pixels
from script_runs import GRADIENT, run


def test_auc_of_known_curves_is_exact():
    assert auc([0, 1], [1, 1]) == 1.0
    assert auc([0, 0.5, 1], [1, 1, 0]) == 0.75
    assert auc(FRACTIONS, [1 - x for x in FRACTIONS]) == pytest.approx(0.9 - 0.9 ** 2 / 2, abs=1e-15)


def test_removal_takes_the_most_or_least_relevant_patches_first():
    grid = torch.arange(196, dtype=torch.float32).view(14, 14)  # patch i has relevance i
    first, last = (removed(grid, FRACTIONS, most_relevant_first=o) for o in (True, False))  # (S, 196)
    for step, fraction in enumerate(FRACTIONS):
        count = round(fraction * 196)
        assert first[step].sum() == count and first[step][196 - count:].all() and not first[step][:196 - count].any()
        assert last[step][:count].all() and not last[step][count:].any()
    masks = patch_pixels(first.float().view(-1, 14, 14), 224)  # each patch's value on its 16 x 16 pixels
    assert masks.shape == (10, 224, 224) and torch.equal(masks[:, ::16, ::16], first.float().view(-1, 14, 14))
    assert torch.equal(masks, masks[:, ::16, ::16].repeat_interleave(16, 1).repeat_interleave(16, 2))


def test_planted_true_map_is_more_faithful_than_random_and_inverted_maps():
    from planted import RED_CLASS, draw_scene, planted_state_dict
    weights = load_weights(planted_state_dict())
    picture = draw_scene(224, 224, [("red", 40, 120, 64)])
    x = to_input(picture)
    _, maps = explain(weights, x[None], "gradient", category=RED_CLASS)
    true = maps["mean"][0]
    grids = {"true": true, "inverted": -true,  # (1 - true would tie the many near-zero patches)
             "random": torch.rand(14, 14, generator=torch.Generator().manual_seed(0))}
    scores = perturbation_test(weights, x, grids, RED_CLASS)
    assert set(scores) == set(grids)
    assert all(len(s["positive"]) == len(FRACTIONS) for s in scores.values())
    for other in ("inverted", "random"):
        assert scores["true"]["positive_auc"] < scores[other]["positive_auc"]
        assert scores["true"]["negative_auc"] > scores[other]["negative_auc"]
    assert scores["true"]["positive"][0] == scores["true"]["negative"][0]  # x = 0: nothing removed


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    from planted import RED_CLASS, draw_scene, planted_state_dict
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("evaluate")
    save_file(planted_state_dict(), folder / "planted.safetensors")
    Image.fromarray(draw_scene(200, 260, [("red", 30, 40, 50), ("blue", 110, 170, 50)])).save(folder / "two.png")
    result = run(GRADIENT, "--image", folder / "two.png", "--category", RED_CLASS,
                        "--weights", folder / "planted.safetensors", "--head-fusion", "all",
                        "--evaluate", "--per-layer", "--output-dir", folder / "out", cwd=folder)
    return folder, result


def test_evaluate_and_per_layer_write_their_files(planted_run):
    folder, result = planted_run
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.splitlines() if line.startswith(str(folder))]
    layers = [f for f in files if "layer" in f.name]
    # title (16-px text: 24), per row: its title (21), the layers' two-line headings (21 + 17),
    # 112-px panels; a gap (8) between; then the colour key: its line (21) and a 10-px strip
    rows = 21 + 21 + 17 + 112
    assert len(layers) == 3 and all(np.asarray(Image.open(f)).shape == (24 + rows + 8 + rows + 8 + 21 + 10,
                                                                        12 * 146 + 11 * 8, 3) for f in layers)
    report = json.loads(next(f for f in files if f.suffix == ".json").read_text())
    assert set(report["fusions"]) == {"mean", "min", "max"} and report["category"] == 87
    for scores in report["fusions"].values():
        assert scores["positive_auc"] == pytest.approx(auc(scores["fractions"], scores["positive"]))
        assert scores["positive_auc"] < scores["negative_auc"]
    plot = next(f for f in files if f.name.endswith("_evaluation.png"))
    assert Image.open(plot).size == (900, 420)  # what is drawn on it: tests/test_drawing.py
    assert "positive AUC" in result.stdout and result.stdout.count("\n    m") == 3  # the table rows


def test_without_matplotlib_the_evaluation_still_runs_and_says_why_no_plot(tmp_path, monkeypatch, capsys):
    from planted import draw_scene, planted_state_dict
    from safetensors.torch import save_file
    from deit_functional.cli import main
    save_file(planted_state_dict(), tmp_path / "planted.safetensors")
    Image.fromarray(draw_scene(64, 64, [("red", 10, 10, 20)])).save(tmp_path / "one.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed,
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # even if an earlier test imported it
    status = main(False, argv=["--image", str(tmp_path / "one.png"), "--evaluate",
                                        "--weights", str(tmp_path / "planted.safetensors"),
                                        "--output-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert status == 0 and "no curves plot: matplotlib is not installed" in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert any(n.endswith("_evaluation.json") for n in names)
    assert not any(n.endswith("_evaluation.png") for n in names)
