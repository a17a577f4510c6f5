"""--report: report.md and report.html, checked against the run's own evaluation files."""
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from deit_functional.report import Entry, summary
from script_runs import ATTENTION, GRADIENT, run


def scores(positive, negative):
    return {"positive_auc": positive, "negative_auc": negative}


def test_summary_means_and_counts_the_most_faithful_fusion_with_ties_for_each():
    entries = [Entry("a.png", "a.png", [], 1, {"mean": scores(0.1, 0.9), "max": scores(0.2, 0.5)}),
               Entry("b.png", "b.png", [], 1, {"mean": scores(0.4, 0.5), "max": scores(0.1, 0.6)}),
               Entry("c.png", "c.png", [], 1, {"mean": scores(0.3, 0.6), "max": scores(0.2, 0.5)})]  # a tie
    got = summary(entries)
    assert list(got) == ["mean", "max"]
    np.testing.assert_allclose(got["mean"][:2], [0.8 / 3, 2.0 / 3])
    np.testing.assert_allclose(got["max"][:2], [0.5 / 3, 1.6 / 3])
    assert (got["mean"][2], got["max"][2]) == (2, 2)


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    from planted import draw_scene, planted_state_dict
    from safetensors.torch import save_file
    folder = tmp_path_factory.mktemp("report")
    save_file(planted_state_dict(), folder / "planted.safetensors")
    pictures = folder / "my pictures"
    pictures.mkdir()
    for i, (top, left, side) in enumerate([(20, 30, 60), (100, 150, 70), (40, 200, 50)]):
        Image.fromarray(draw_scene(210, 280, [("red", top, left, side), ("blue", 150, 20, 40)])).save(
            pictures / f"scene {i}.png")
    return folder


def test_a_report_over_a_folder_says_what_the_evaluation_files_say(planted_folder):
    out = planted_folder / "out"
    arguments = ["--image", planted_folder / "my pictures", "--weights", planted_folder / "planted.safetensors",
                 "--category", "87", "--report", "--output-dir", out]
    result = run(GRADIENT, *arguments, cwd=planted_folder)
    assert result.returncode == 0, result.stderr
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert result.stdout.splitlines()[-2:] == [str(out / "report.md"), str(out / "report.html")]
    evaluations = sorted(out.glob("*_evaluation.json"))
    assert len(evaluations) == 3  # --report implies --evaluate ...
    margins = []
    for path in evaluations:
        data = json.loads(path.read_text())
        assert list(data["fusions"]) == ["mean", "min", "max"]  # ... and every fusion
        assert data["category"] == 87 and f"Faithfulness for class 87, African grey" in markdown
        for fusion, s in data["fusions"].items():
            assert f"| {fusion} | {s['positive_auc']:.4f} | {s['negative_auc']:.4f} |" in markdown
        margins.append([s["negative_auc"] - s["positive_auc"] for s in data["fusions"].values()])
    margins = np.array(margins)
    wins = (margins == margins.max(axis=1, keepdims=True)).sum(axis=0)
    for k, fusion in enumerate(["mean", "min", "max"]):
        positive = np.mean([json.loads(p.read_text())["fusions"][fusion]["positive_auc"] for p in evaluations])
        negative = np.mean([json.loads(p.read_text())["fusions"][fusion]["negative_auc"] for p in evaluations])
        row = f"| {fusion} | {positive:.4f} | {negative:.4f} | {wins[k]} of 3 |"
        assert row in markdown
    # every picture's section links its labelled overlay by a relative path that resolves
    links = [unquote(s) for s in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)]  # percent-encoded
    sources = [unquote(s) for s in re.findall(r"<img src='([^']+)'", page)]
    assert len(links) == 3 and links == sources
    for link in links:
        overlay = np.asarray(Image.open(out / link))
        assert overlay.shape[1] == 3 * 280 + 2 * 8 and overlay.shape[0] > 210  # three panels, labels above
    assert [Path(l).name.split("_")[0] for l in links] == ["scene 0", "scene 1", "scene 2"]
    # a second run never overwrites the first report
    again = run(GRADIENT, *arguments, cwd=planted_folder)
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").read_text() == markdown and (out / "report-2.md").exists()
    assert (out / "report-2.html").exists() and (out / "report.html").read_text() == page


def test_report_takes_the_fusion_asked_for(planted_folder, tmp_path):
    result = run(ATTENTION, "--image", planted_folder / "my pictures" / "scene 0.png", "--weights",
                 planted_folder / "planted.safetensors", "--report", "--head-fusion", "max",
                 "--output-dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report.md").read_text()
    assert "| max | " in markdown and "| mean | " not in markdown and "1 of 1 |" in markdown
