"""--report: report.html (one self-contained file) and report.md, checked against the run's own
evaluation files and figures."""
import base64
import html
import io
import json
import re
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from deit_functional.methods import METHODS
from deit_functional.report import Entry, finding, summary
from script_runs import ATTENTION, GRADIENT, run_here


def scores(positive, negative):
    return {"positive_auc": positive, "negative_auc": negative}


def entries_of(*fusion_scores, method="gradient"):
    return [Entry(f"{k}.png", f"{k}.png", [], METHODS[method], 87, s, 0.9) for k, s in enumerate(fusion_scores)]


def test_summary_means_and_counts_the_most_faithful_fusion_with_ties_for_each():
    entries = entries_of({"mean": scores(0.1, 0.9), "max": scores(0.2, 0.5)},
                         {"mean": scores(0.4, 0.5), "max": scores(0.1, 0.6)},
                         {"mean": scores(0.3, 0.6), "max": scores(0.2, 0.5)})  # a tie
    got = summary(entries)
    assert list(got) == ["mean", "max"]
    np.testing.assert_allclose(got["mean"][:2], [0.8 / 3, 2.0 / 3])
    np.testing.assert_allclose(got["max"][:2], [0.5 / 3, 1.6 / 3])
    assert (got["mean"][2], got["max"][2]) == (2, 2)


def test_the_finding_names_the_best_fusion_in_the_runs_numbers_and_says_when_they_tie():
    entries = entries_of({"mean": scores(0.1, 0.9), "min": scores(0.3, 0.6), "max": scores(0.2, 0.5)},
                         {"mean": scores(0.2, 0.6), "min": scores(0.3, 0.5), "max": scores(0.1, 0.6)})
    said = finding("Gradient Rollout", entries)
    # margins: mean (0.8 + 0.4) / 2 = 0.6, min 0.25, max 0.4
    assert said == ("Gradient Rollout, over 2 pictures, scored for the class explained: mean fusion scored best, with "
                    "a mean negative minus positive AUC of 0.6000 (positive 0.1500, negative 0.7500) against 0.2500 "
                    "(min), 0.4000 (max); it was the most faithful on 1 of 2.")  # max on the second; too few to judge a lead
    tied = entries_of({"mean": scores(0.1, 0.5), "max": scores(0.2, 0.6)}, method="attention")
    assert finding("Attention Rollout", tied) == ("Attention Rollout, over 1 picture, scored for each picture's top "
                                                  "class: the fusions tied, each with a mean negative minus positive "
                                                  "AUC of 0.4000.")


def test_the_finding_says_whether_the_best_fusion_s_lead_is_beyond_chance():
    """Five pictures: mean leads min on every one, max on three of five (comparison.beyond)."""
    entries = entries_of(*({"mean": scores(0.1, 0.9), "min": scores(0.3, 0.6), "max": scores(0.1 + d, 0.9)}
                           for d in (0.1, -0.05, 0.1, -0.05, 0.1)))
    said = finding("Gradient Rollout", entries)
    assert said.endswith("Its lead over min is clear: the 95% bootstrap interval of the paired differences lies "
                         "above 0; over max, it is not: these pictures cannot separate them.")


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


def test_one_report_over_a_folder_two_classes_and_two_methods_says_what_the_evaluation_files_say(planted_folder,
                                                                                                 capsys):
    out = planted_folder / "out"
    arguments = ["--image", planted_folder / "my pictures", "--weights", planted_folder / "planted.safetensors",
                 "--category", "87", "samoyed", "--method", "rollout,chefer", "--report", "--output-dir", out]
    result = run_here(capsys, GRADIENT, *arguments)
    assert result.returncode == 0, result.stderr
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert result.stdout.splitlines()[-4:-2] == [str(out / "report.html"), str(out / "report.md")]
    evaluations = sorted(out.glob("*_evaluation.json"))
    assert len(evaluations) == 3 * 2 * 2  # --report implies --evaluate: every picture, method and class ...
    groups = {}
    for path in evaluations:
        data = json.loads(path.read_text())
        assert list(data["fusions"]) == ["mean", "min", "max"]  # ... and every fusion
        method = "Chefer et al.'s rule" if "_chefer_" in path.name else "Gradient Rollout"
        ratio = "0" if "_chefer_" in path.name else "0.9"
        name = {87: "African grey", 258: "Samoyed"}[data["category"]]
        groups.setdefault(f"{method} for class {data['category']}, {name} (discard ratio {ratio})", []).append(data)
    assert len(groups) == 4
    for heading, group in groups.items():  # each explanation's summary: the means of its files, its wins
        assert markdown.count(f"### {heading}") == 3 and page.count(f"<h3>{html.escape(heading)}</h3>") == 3
        margins = np.array([[s["negative_auc"] - s["positive_auc"] for s in d["fusions"].values()] for d in group])
        wins = (margins == margins.max(axis=1, keepdims=True)).sum(axis=0)
        section = markdown.split(heading + ", over 3 pictures")[1].split("\n\n", 2)[1]
        for k, fusion in enumerate(["mean", "min", "max"]):
            positive = np.mean([d["fusions"][fusion]["positive_auc"] for d in group])
            negative = np.mean([d["fusions"][fusion]["negative_auc"] for d in group])
            assert f"| {fusion} | {positive:.4f} | {negative:.4f} | {wins[k]} of 3 |" in section
    # headed by file name, the pictures in the run's order, the names left-aligned
    assert re.findall(r"^## (scene \d\.png)$", markdown, re.M) == ["scene 0.png", "scene 1.png", "scene 2.png"]
    assert "td.n,th.n{text-align:right" in page and "text-align:left" in page and "<td>African grey" in page
    # markdown links each figure by a relative path that resolves
    links = [unquote(s) for s in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown)]
    assert len(links) == 12 and all((out / link).is_file() for link in links)
    # the page is self-contained: every picture inside it, the very figures the run wrote; nothing fetched
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) == 12 and all(s.startswith("data:image/png;base64,") for s in sources)
    for source, link in zip(sources, links):
        embedded = np.asarray(Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))))
        np.testing.assert_array_equal(embedded, np.asarray(Image.open(out / link)))
    assert not re.search(r"(src|href)=['\"](?!data:)", page) and "default-src 'none'" in page
    # the curves: for each figure, both orders, a line per fusion through the file's points
    first = json.loads(next(p for p in evaluations if p.name.startswith("scene 0_gradient-rollout")
                            and "category87" in p.name).read_text())
    svg = page.split("<h3>Gradient Rollout for class 87")[1].split("</div>")[0]
    top = max(v for s in first["fusions"].values() for v in s["positive"] + s["negative"])
    for order in ("positive", "negative"):
        plot = svg.split(f'<svg class="{order}"')[1].split("</svg>")[0]
        lines = re.findall(r'points="([^"]+)"', plot)
        assert len(lines) == 3
        for points, fusion in zip(lines, ["mean", "min", "max"]):
            ys = [float(p.split(",")[1]) for p in points.split()]
            np.testing.assert_allclose(ys, [150 - v / top * 150 for v in first["fusions"][fusion][order]], atol=0.051)
    # a second run never overwrites the first report
    again = run_here(capsys, GRADIENT, "--image", planted_folder / "my pictures" / "scene 0.png", *arguments[2:])
    assert again.returncode == 0, again.stderr
    assert (out / "report.md").read_text() == markdown and (out / "report-2.md").exists()
    assert (out / "report-2.html").exists() and (out / "report.html").read_text() == page


def test_report_takes_the_fusion_asked_for(planted_folder, tmp_path, capsys):
    result = run_here(capsys, ATTENTION, "--image", planted_folder / "my pictures" / "scene 0.png", "--weights",
                      planted_folder / "planted.safetensors", "--report", "--head-fusion", "max",
                      "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    markdown = (tmp_path / "report.md").read_text()
    assert "| max | " in markdown and "| mean | " not in markdown and "1 of 1 |" in markdown
    assert "over 1 picture," in markdown and "1 pictures" not in markdown


def test_a_report_of_methods_that_fuse_no_heads_and_one_that_does(planted_folder, tmp_path, capsys):
    """grad-cam (no heads) and legrad (mean, min, max, as --report implies) from gradient_rollout.py:
    their files named by the table's words, each evaluated with its own fusions, the report's
    heading and findings naming fusions only where the method has them."""
    result = run_here(capsys, GRADIENT, "--image", planted_folder / "my pictures" / "scene 0.png", "--weights",
                      planted_folder / "planted.safetensors", "--category", "87", "--method", "grad-cam,legrad",
                      "--report", "--output-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    cam = json.loads((tmp_path / "scene 0_grad-cam_none_discard0_category87_evaluation.json").read_text())
    lens = json.loads((tmp_path / "scene 0_legrad_all_discard0_category87_evaluation.json").read_text())
    assert list(cam["fusions"]) == ["none"] and list(lens["fusions"]) == ["mean", "min", "max"]
    assert (tmp_path / "scene 0_grad-cam_none_discard0_category87.png").is_file()
    markdown = (tmp_path / "report.md").read_text()
    scores = cam["fusions"]["none"]
    assert (f"Grad-CAM for class 87, African grey, over 1 picture, scored for the class explained: mean positive "
            f"AUC {scores['positive_auc']:.3f}, mean negative AUC {scores['negative_auc']:.3f}.") in markdown
    assert "none fusion" not in markdown and "discard ratio" not in markdown
    assert "Head fusions mean, min, max;" in markdown  # legrad's, the only method here that fuses heads
    assert "### LeGrad for class 87, African grey" in markdown
