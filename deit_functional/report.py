"""The report a student hands in (--report): report.html and report.md in the output folder.

First what the run found: for each explanation (method, and class where the method explains
one), each head fusion's mean positive and negative AUC over all pictures and how often it was
the most faithful, and a paragraph that says which fusion scored best, in the run's numbers.
Then each picture, headed by its file name: its top-5 classes, and for each explanation its
result figure, faithfulness table and curves.

report.html is one self-contained file -- the figures embedded (PNG, compressed), the curves as
SVG (curves.py), no script, nothing fetched -- so it can be handed in or printed as it is.
report.md links the figures by relative path, to paste into a report beside the PNGs. An
earlier report is never overwritten: the next free report-2, report-3, ... is taken.

numpy and Pillow only, no torch.
"""
import base64
import datetime
import html
import io
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .architectures import architecture
from .comparison import MIN_PICTURES, beyond
from .curves import curves_svg
from .labels import short_name, top
from .outputs import ratio_text
from .writing import write_new, write_text

RULE = ("Perturbation test (Chefer et al. 2021): the patches of the 14x14 grid are removed (set to the "
        "mean colour) in the map's order, 10%, 20%, ..., 90% of them, and the model's probability for the "
        "class is read after each step. The area under that curve, from 0 to 0.9 removed (the untouched "
        "picture included), is the AUC. Most relevant first (positive): a faithful map makes the "
        "probability fall fast, so lower is better. Least relevant first (negative): it should hold, so "
        "higher is better. A fusion is the most faithful for a picture where negative minus positive AUC "
        "is largest; ties count for each. A lead is clear where the 95% bootstrap interval of its paired "
        "differences over the pictures lies above 0, as in the comparison (--compare).")


@dataclass(frozen=True)
class Entry:
    """What the report says of one picture's explanation."""
    picture: str           # the picture's path, as given
    overlay: str           # the result figure's path
    top5: list             # [(probability, class index, class name)]
    method: object         # a methods.Method
    category: int          # the class explained (a gradient method's), or the top class, which is scored
    faithfulness: dict     # head fusion -> perturbation-test scores (evaluate.py)
    discard_ratio: float


def entry(result, overlay):
    """A PictureResult scored by --evaluate, and its figure's path -> its Entry."""
    return Entry(str(result.path), str(overlay), top(result.probabilities), result.method, result.category,
                 result.faithfulness, result.discard_ratio)


def explanation(e):
    """What an entry explains, as a heading: the method, its class where it explains one, and
    its discard ratio."""
    method = e.method
    return (method.title + (f" for class {e.category}, {short_name(e.category)}" if method.uses_gradient else "")
            + (f" (discard ratio {ratio_text(e.discard_ratio)})" if method.discards else ""))


def explanations(entries):
    """The entries grouped by what they explain, in the run's order -> {heading: [Entry]}."""
    groups = {}
    for e in entries:
        groups.setdefault(explanation(e), []).append(e)
    return groups


def summary(entries):
    """-> {fusion: (mean positive AUC, mean negative AUC, pictures where it was most faithful)}."""
    fusions = list(entries[0].faithfulness)
    margin = np.array([[e.faithfulness[f]["negative_auc"] - e.faithfulness[f]["positive_auc"] for f in fusions]
                       for e in entries])
    wins = (margin == margin.max(axis=1, keepdims=True)).sum(axis=0)
    return {f: (float(np.mean([e.faithfulness[f]["positive_auc"] for e in entries])),
                float(np.mean([e.faithfulness[f]["negative_auc"] for e in entries])), int(wins[k]))
            for k, f in enumerate(fusions)}


def finding(heading, entries):
    """The paragraph that says, in the run's numbers, which fusion scored best for one explanation."""
    scores = summary(entries)
    count = pictures(len(entries))
    scored = "the class explained" if entries[0].method.uses_gradient else "each picture's top class"
    if len(scores) == 1:
        [(fusion, (positive, negative, _))] = scores.items()
        fused = f", {fusion} fusion" if entries[0].method.fuses_heads else ""
        return (f"{heading}{fused}, over {count}, scored for {scored}: mean positive AUC "
                f"{positive:.3f}, mean negative AUC {negative:.3f}.")
    margin = {f: round(n - p, 4) for f, (p, n, _) in scores.items()}  # as the tables show them
    best = [f for f in scores if margin[f] == max(margin.values())]
    if len(best) == len(scores):
        return (f"{heading}, over {count}, scored for {scored}: the fusions tied, each with a mean negative "
                f"minus positive AUC of {margin[best[0]]:.4f}.")
    others = ", ".join(f"{margin[f]:.4f} ({f})" for f in scores if f not in best)
    positive, negative, wins = scores[best[0]]
    winner = f"{best[0]} fusion scored" if len(best) == 1 else f"{' and '.join(best)} fusion tied,"
    return (f"{heading}, over {count}, scored for {scored}: {winner} best, with a mean negative minus "
            f"positive AUC of {margin[best[0]]:.4f} (positive {positive:.4f}, negative {negative:.4f}) against "
            f"{others}; it was the most faithful on {wins} of {len(entries)}." + lead(entries, best[0]))


def lead(entries, best):
    """Whether the best fusion's lead over each other one is larger than chance over these
    pictures, as the comparison judges a difference (comparison.beyond: the 95% bootstrap interval
    of the paired, picture by picture, differences of negative minus positive AUC leaves out 0);
    '' below comparison.MIN_PICTURES pictures."""
    if len(entries) < MIN_PICTURES:
        return ""
    margins = lambda f: np.array([e.faithfulness[f]["negative_auc"] - e.faithfulness[f]["positive_auc"]
                                  for e in entries])
    others = [f for f in entries[0].faithfulness if f != best]
    clear = [f for f in others if beyond(margins(best) - margins(f), +1)]
    unclear = [f for f in others if f not in clear]
    parts = [f"Its lead over {' and '.join(clear)} is clear: the 95% bootstrap interval of the paired "
             "differences lies above 0"] if clear else []
    if unclear:
        parts.append((f"over {' and '.join(unclear)}, it is not" if clear else
                      f"Its lead over {' and '.join(unclear)} is not clear") + ": these pictures cannot separate them")
    return " " + "; ".join(parts) + "."


def pictures(count):
    return f"{count} picture{'s' * (count != 1)}"


def title(job):
    return f"Which parts of the pictures {architecture(job.model).title} looks at"


def heading(job, entries):
    what = "; ".join(explanations(entries))
    fusions = dict.fromkeys(f for e in entries if e.method.fuses_heads for f in e.faithfulness)
    return (f"{what}. " + (f"Head fusions {', '.join(fusions)}; " if fusions else "")
            + f"{architecture(job.model).title}; {pictures(len(by_picture(entries)))}; "
            f"{datetime.date.today():%Y-%m-%d}.")


def by_picture(entries):
    """-> [(picture, [Entry])]: the entries of each picture together, in the run's order."""
    pictures = {}
    for e in entries:
        pictures.setdefault(e.picture, []).append(e)
    return list(pictures.items())


def link(path):
    """A file in the output folder as a relative URL: its name's bytes percent-encoded, so any
    name the file system holds (spaces, a Latin-1 name's raw bytes) links to the file."""
    return quote(os.fsencode(Path(path).name))


def markdown(entries, job):
    """The report as Markdown: what the run found, then each picture, the figures linked."""
    auc_table = lambda rows: ["| fusion | positive AUC | negative AUC |", "|:---|---:|---:|", *rows, ""]
    lines = [f"# {title(job)}", "", heading(job, entries), "", "## What the run found", "", RULE, ""]
    for name, group in explanations(entries).items():
        lines += [finding(name, group), "", "| fusion | mean positive AUC | mean negative AUC | most faithful for |",
                  "|:---|---:|---:|---:|",
                  *(f"| {f} | {p:.4f} | {n:.4f} | {w} of {len(group)} |" for f, (p, n, w) in summary(group).items()), ""]
    for picture, group in by_picture(entries):
        lines += [f"## {Path(picture).name}", "", *([f"`{picture}`", ""] if Path(picture).name != picture else []),
                  "| p | class | name |", "|---:|---:|:---|",
                  *(f"| {p:.3f} | {i} | {n} |" for p, i, n in group[0].top5), ""]
        for e in group:
            lines += [f"### {explanation(e)}", "", f"![{Path(picture).name}: {explanation(e)}]({link(e.overlay)})", "",
                      *auc_table([f"| {f} | {s['positive_auc']:.4f} | {s['negative_auc']:.4f} |"
                                  for f, s in e.faithfulness.items()])]
    return "\n".join(lines)


def embedded(path):
    """A PNG result figure as a data: URL, recompressed (the run writes its PNGs uncompressed,
    for speed; here size matters more)."""
    from PIL import Image
    buffer = io.BytesIO()
    with Image.open(path) as figure:
        figure.save(buffer, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


STYLE = ("body{font:15px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em}"
         "img{max-width:100%;height:auto}td,th{padding:.15em .7em;border-bottom:1px solid #ddd;text-align:left}"
         "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}table{border-collapse:collapse;margin:.5em 0}"
         "h2{margin-top:2em;border-top:1px solid #ccc;padding-top:.6em}.path{color:#666;font-size:.85em}"
         ".curves{display:flex;flex-wrap:wrap;gap:1em}.rule{color:#444;font-size:.92em}")


def html_page(entries, job):
    """The report as one self-contained HTML page."""
    e_ = html.escape

    def table(head, rows, numeric):
        cell = lambda tag, k, text: f"<{tag}{' class=n' if numeric[k] else ''}>{e_(str(text))}</{tag}>"
        return ("<table><tr>" + "".join(cell("th", k, h) for k, h in enumerate(head)) + "</tr>"
                + "".join("<tr>" + "".join(cell("td", k, c) for k, c in enumerate(row)) + "</tr>" for row in rows)
                + "</table>")

    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
             "style-src 'unsafe-inline'\">",
             f"<title>{e_(title(job))}</title><style>{STYLE}</style></head><body>",
             f"<h1>{e_(title(job))}</h1>", f"<p>{e_(heading(job, entries))}</p>", "<h2>What the run found</h2>"]
    for name, group in explanations(entries).items():
        parts += [f"<p>{e_(finding(name, group))}</p>",
                  table(["fusion", "mean positive AUC", "mean negative AUC", "most faithful for"],
                        [(f, f"{p:.4f}", f"{n:.4f}", f"{w} of {len(group)}") for f, (p, n, w) in summary(group).items()],
                        (False, True, True, True))]
    parts.append(f"<p class='rule'>{e_(RULE)}</p>")
    for picture, group in by_picture(entries):
        parts += [f"<h2>{e_(Path(picture).name)}</h2>",
                  *([f"<p class='path'>{e_(picture)}</p>"] if Path(picture).name != picture else []),
                  table(["p", "class", "name"], [(f"{p:.3f}", i, n) for p, i, n in group[0].top5], (True, True, False))]
        for e in group:
            parts += [f"<h3>{e_(explanation(e))}</h3>",
                      f"<img src='{embedded(e.overlay)}' alt='{e_(Path(picture).name)}: {e_(explanation(e))}'>",
                      table(["fusion", "positive AUC", "negative AUC"],
                            [(f, f"{s['positive_auc']:.4f}", f"{s['negative_auc']:.4f}") for f, s in e.faithfulness.items()],
                            (False, True, True)),
                      f"<div class='curves'>{curves_svg(e.faithfulness, short_name(e.category))}</div>"]
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def write_report(entries, job):
    """Write report.html and report.md (or the next free report-n pair) in job.output_dir ->
    their paths. Both appear together, and never in place of an existing file."""
    return write_new(job.output_dir, "report", {".html": partial(write_text, text=html_page(entries, job)),
                                                ".md": partial(write_text, text=markdown(entries, job))})
