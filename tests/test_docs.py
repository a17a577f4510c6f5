"""The docs tell the truth: their figures are what the code draws now, and the numbers the text
quotes are the numbers the code computes."""
import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deit_functional import METHODS

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "figures"
# each text with its line breaks and runs of spaces made single spaces
WALKTHROUGH = " ".join((ROOT / "docs" / "walkthrough.md").read_text().split())
README = " ".join((ROOT / "README.md").read_text().split())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("figures")
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "make_figures.py"), "--output-dir", folder],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return folder, result.stdout


def test_every_committed_figure_is_regenerated_and_no_other(regenerated):
    folder, _ = regenerated
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(p.name for p in COMMITTED.glob("*.png"))


@pytest.mark.parametrize("name", ["a_attention_rollout_fusions.png", "b_gradient_red_vs_blue.png",
                                  "c_per_layer.png", "e_random_weights_cat.png", "f_rollout_vs_flow.png",
                                  "g_result_figure.png", "h_every_method.png", "i_relevance_family.png"])
def test_figures_drawn_by_the_package_are_the_committed_ones(regenerated, name):
    """Pixel for pixel, but for float rounding on other CPUs moving a rare pixel by a level or two."""
    folder, _ = regenerated
    ours = np.asarray(Image.open(folder / name), dtype=np.int16)
    committed = np.asarray(Image.open(COMMITTED / name), dtype=np.int16)
    assert ours.shape == committed.shape
    difference = np.abs(ours - committed)
    assert difference.max() <= 3 and (difference > 0).mean() < 1e-3


def test_the_perturbation_plot_has_the_committed_size(regenerated):
    """Drawn by matplotlib, whose anti-aliasing varies between versions: its size is checked
    here, the numbers on it below."""
    folder, _ = regenerated
    name = "d_perturbation_test.png"
    assert Image.open(folder / name).size == Image.open(COMMITTED / name).size


def test_numbers_quoted_by_the_docs_are_the_computed_ones(regenerated):
    _, printed = regenerated
    p_red, p_blue = re.search(r"p\(red class 87\) = ([\d.]+), p\(blue class 258\) = ([\d.e-]+)", printed).groups()
    assert f"p(87) = {p_red} and p(258) = {p_blue}" in WALKTHROUGH
    aucs = {name.strip(): float(value) for name, value in
            re.findall(r"^  (\S[^\n]*?)\s+positive \[[^\]]*\]\s+AUC ([\d.]+)", printed, re.M)}
    negative = [float(v) for v in re.findall(r"negative \[[^\]]*\]\s+AUC ([\d.]+)", printed)]
    true, random, inverted = ((aucs[name], auc) for name, auc in
                              zip(["Gradient Rollout (red)", "random map (seed 0)", "inverted map"], negative))
    for row, (positive, negative) in (("Gradient Rollout (class 87)", true), ("random (seed 0)", random),
                                      ("inverted", inverted)):
        assert f"| {row} | {positive:.3f} | {negative:.3f} |" in WALKTHROUGH
    flat = re.search(r"discard 0 -> ([\d.]+)", printed).group(1)
    assert f"its smallest patch is still {flat}" in WALKTHROUGH
    rollout, flow = (re.search(rf"^  {method}: .*median patch ([\d.]+)$", printed, re.M).group(1)
                     for method in ("attention", "flow"))
    assert f"its median patch is {flow} of the peak, rollout's {rollout}" in WALKTHROUGH


def markdown_table(text, heading):
    """The first Markdown table after ``heading`` -> (its header cells, [its rows' cells])."""
    lines = text[text.index(heading):].splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith("|"))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in
            itertools.takewhile(lambda line: line.startswith("|"), lines[start:])]
    return rows[0], rows[2:]


def test_readme_s_comparison_rows_are_those_of_docs_comparison():
    """README's excerpt of docs/comparison.md (docs/make_comparison.py): each of its numbers is the
    mean of the whole table's cell, under the metrics its column names."""
    from deit_functional.scores import METRICS
    header, rows = markdown_table((ROOT / "README.md").read_text(), "## Which method, which fusion?")
    whole_header, whole_rows = markdown_table((ROOT / "docs" / "comparison.md").read_text(), "## class 87")
    column = {h.split(" (")[0]: k for k, h in enumerate(whole_header)}  # a metric's title -> its column
    whole = {row[0]: row for row in whole_rows}
    titles = {m.title for m in METRICS}
    assert len(rows) >= 5
    for row in rows:
        for heading, cell in zip(header[1:], row[1:]):
            names = [t.strip() for t in heading.split(" / ")]
            if heading.startswith("token removal"):
                names = ["token removal, most first", "token removal, least first"]
            assert all(n in titles for n in names), heading
            for name, value in zip(names, cell.split(" / "), strict=True):
                assert whole[row[0]][column[name]].split(" ")[0] == value, (row[0], name)


def test_the_walkthrough_quotes_docs_comparison_s_numbers():
    header, rows = markdown_table((ROOT / "docs" / "comparison.md").read_text(), "## class 87")
    column = {h.split(" (")[0]: k for k, h in enumerate(header)}
    whole = {row[0]: row for row in rows}
    mean = lambda row, metric: whole[row][column[metric]].split(" ")[0]
    quoted = re.search(r"Gradient Rollout's deletion ([\d.]+) against the random map's ([\d.]+), where token "
                       r"removal gives ([\d.]+) against ([\d.]+)", WALKTHROUGH).groups()
    true, random = "Gradient Rollout, mean, discard 0.9", "random map (3 seeds)"
    assert quoted == (mean(true, "deletion"), mean(random, "deletion"), mean(true, "token removal, most first"),
                      mean(random, "token removal, most first"))


def test_the_docs_describe_the_methods_as_their_one_table_does():
    """The walkthrough's tables, row by row, against METHODS and the rollouts' rows, and the
    names README gives the methods."""
    yes = {True: "yes", False: "no"}
    rollouts = {match[0]: match[1:] for match in re.findall(
        r'\| `"(\w+)"` \| `(\w+)`: [^|]* \| `(\w+)`[^|]* \| (yes|no) \| (yes|no) \| `(\w+)`[^|]* \| `([\w-]+)` \|',
        WALKTHROUGH)}
    assert set(rollouts) == {name for name, m in METHODS.items() if m.rollout}
    for name, spec in ((name, m.rollout) for name, m in METHODS.items() if m.rollout):
        assert rollouts[name] == (spec.layer.__name__, spec.combine.__name__, yes[spec.renormalise],
                                  yes[spec.uses_gradient], METHODS[name].option, METHODS[name].file_name)
    table = {match[0]: match[1:] for match in re.findall(
        r'\| `"([\w-]+)"` \| [^|]+ \| `(\w+)` \| ((?:mean|min|max|none|weighted)(?:, \w+)*) \| (yes|no) \| '
        r'([^|]+?) \|', WALKTHROUGH)}
    assert set(table) == set(METHODS)
    for name, method in METHODS.items():
        assert table[name] == (method.map.__wrapped__.__name__, ", ".join(method.fusions), yes[method.discards],
                               method.paper)
        assert f"`{method.file_name}`" in README and method.paper in README


def test_readme_stays_a_two_minute_read():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000
