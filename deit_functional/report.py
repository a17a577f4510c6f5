"""The report a student hands in (--report): report.md and report.html in the output folder.

Per picture: its overlay (every fusion side by side, labelled), its top-5 classes and its
faithfulness table; then, over all pictures, each fusion's mean positive and negative AUC and
how often it was the most faithful. The files link the overlays by relative path, so the
Markdown pastes into a report as it is, beside the PNGs. An earlier report is never
overwritten: the next free report-2, report-3, ... is taken.

numpy only: it runs beside the writer threads, without torch.
"""
import datetime
import html
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .labels import class_names, short_name, top
from .model import ARCHITECTURES
from .outputs import ratio_text
from .rollout import METHODS
from .writing import discard, publish, stage, write_text

RULE = ("Perturbation test (Chefer et al. 2021): the most relevant patches removed first should make "
        "the class's probability fall fast (lower positive AUC is better), the least relevant first "
        "should keep it (higher negative AUC is better). A fusion is the most faithful for a picture "
        "where negative AUC - positive AUC is largest; ties count for each.")


@dataclass(frozen=True)
class Entry:
    """What the report says of one picture."""
    picture: str           # the picture's path, as given
    overlay: str           # the overlay's file name, in the output folder
    top5: list             # [(probability, class index, class name)]
    category: int          # the class the faithfulness is scored for
    faithfulness: dict     # head fusion -> perturbation-test scores (evaluate.py)


def entry(result, overlay):
    """A PictureResult scored by --evaluate, and its overlay's path -> its Entry."""
    return Entry(str(result.path), Path(overlay).name, top(result.probabilities), result.category,
                 result.faithfulness)


def summary(entries):
    """-> {fusion: (mean positive AUC, mean negative AUC, pictures where it was most faithful)}."""
    fusions = list(entries[0].faithfulness)
    margin = np.array([[e.faithfulness[f]["negative_auc"] - e.faithfulness[f]["positive_auc"] for f in fusions]
                       for e in entries])
    wins = (margin == margin.max(axis=1, keepdims=True)).sum(axis=0)
    return {f: (float(np.mean([e.faithfulness[f]["positive_auc"] for e in entries])),
                float(np.mean([e.faithfulness[f]["negative_auc"] for e in entries])), int(wins[k]))
            for k, f in enumerate(fusions)}


def link(name):
    """A file name in the output folder as a relative URL: its bytes percent-encoded, so any
    name the file system holds (spaces, a Latin-1 name's raw bytes) links to the file."""
    return quote(os.fsencode(name))


def title(job):
    return f"Which parts of the pictures {ARCHITECTURES[job.model].title} looks at"


def heading(job):
    method = METHODS[job.method]
    what = method.title + (f" for class {job.category}, {class_names()[job.category]}" if method.uses_gradient else "")
    return (f"{what}; head fusions {', '.join(job.head_fusions)}; discard ratio {ratio_text(job.discard_ratio)}; "
            f"{ARCHITECTURES[job.model].title}; {datetime.date.today():%Y-%m-%d}")


def markdown(entries, job):
    """The report as Markdown: each picture, then the summary."""
    lines = [f"# {title(job)}", "", heading(job), ""]
    for e in entries:
        lines += [f"## {e.picture}", "", f"![{Path(e.picture).name}: {' | '.join(e.faithfulness)}]({link(e.overlay)})", "",
                  "| p | class | name |", "|---:|---:|---|",
                  *(f"| {p:.3f} | {i} | {n} |" for p, i, n in e.top5), "",
                  f"Faithfulness for class {e.category}, {short_name(e.category)}:", "",
                  "| fusion | positive AUC | negative AUC |", "|---|---:|---:|",
                  *(f"| {f} | {s['positive_auc']:.4f} | {s['negative_auc']:.4f} |" for f, s in e.faithfulness.items()), ""]
    lines += [f"## Which fusion is the most faithful? All {len(entries)} pictures", "", RULE, "",
              "| fusion | mean positive AUC | mean negative AUC | most faithful for |", "|---|---:|---:|---:|",
              *(f"| {f} | {p:.4f} | {n:.4f} | {w} of {len(entries)} |" for f, (p, n, w) in summary(entries).items()), ""]
    return "\n".join(lines)


def html_page(entries, job):
    """The report as an HTML page, the overlays linked by relative path."""
    e_ = html.escape
    table = lambda head, rows: ("<table><tr>" + "".join(f"<th>{e_(h)}</th>" for h in head) + "</tr>"
                                + "".join("<tr>" + "".join(f"<td>{e_(str(c))}</td>" for c in row) + "</tr>"
                                          for row in rows) + "</table>")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>deit-explain report</title>",
             "<style>body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;max-width:1100px}img{max-width:100%}"
             "td,th{padding:.15em .7em;border-bottom:1px solid #ddd;text-align:right}"
             "table{border-collapse:collapse;margin:.5em 0}</style></head><body>",
             f"<h1>{title(job)}</h1>", f"<p>{e_(heading(job))}</p>"]
    for e in entries:
        parts += [f"<h2>{e_(e.picture)}</h2>", f"<img src='{link(e.overlay)}' alt='{e_(Path(e.picture).name)}'>",
                  table(["p", "class", "name"], [(f"{p:.3f}", i, n) for p, i, n in e.top5]),
                  f"<p>Faithfulness for class {e.category}, {e_(short_name(e.category))}:</p>",
                  table(["fusion", "positive AUC", "negative AUC"],
                        [(f, f"{s['positive_auc']:.4f}", f"{s['negative_auc']:.4f}") for f, s in e.faithfulness.items()])]
    parts += [f"<h2>Which fusion is the most faithful? All {len(entries)} pictures</h2>", f"<p>{e_(RULE)}</p>",
              table(["fusion", "mean positive AUC", "mean negative AUC", "most faithful for"],
                    [(f, f"{p:.4f}", f"{n:.4f}", f"{w} of {len(entries)}") for f, (p, n, w) in summary(entries).items()]),
              "</body></html>", ""]
    return "\n".join(parts)


def write_report(entries, job):
    """Write report.md and report.html (or the next free report-n pair) in job.output_dir ->
    their paths. Both appear together, and never in place of an existing file."""
    folder = Path(job.output_dir)
    texts = {".md": markdown(entries, job), ".html": html_page(entries, job)}
    staged = {}
    try:
        for suffix, text in texts.items():
            staged[suffix] = stage(folder, f"report{suffix}", lambda file, t=text: write_text(file, t))
        for n in range(1, 10_000):
            targets = {suffix: folder / f"report{'' if n == 1 else f'-{n}'}{suffix}" for suffix in texts}
            try:
                publish(staged, targets)
                return list(targets.values())
            except FileExistsError:
                continue
        raise RuntimeError(f"{folder}: no free report name")
    finally:
        discard(staged)
