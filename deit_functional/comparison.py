"""Which explanation to trust: every map of a run scored by every metric (scores.METRICS), over
the pictures, written as comparison.md, comparison.html and comparison.csv (--compare).

A table per class explained (each picture's predicted class, or each --category): a row per
method and head fusion, the random map (scores.RANDOM_SEEDS seeds) and each map inverted as
baselines; a column per metric, its mean over the pictures with a 95% bootstrap interval.
A difference from the best row counts where the interval of the paired difference (the same
pictures resampled for both rows) leaves out 0; so does a row's difference from the random map.

numpy only, no torch: the scores come in as scores.Scored entries (scores.score_batch).
"""
import csv
import html
import io
from dataclasses import dataclass
from functools import partial

import numpy as np

from .curves import curves_svg
from .evaluate import FRACTIONS, auc
from .scores import METRIC, METRICS
from .sanity import FAILS_ABOVE
from .writing import write_new, write_text

RESAMPLES = 2000   # bootstrap resamples of the pictures
LEVEL = 0.95
MIN_PICTURES = 5   # fewer, and a difference is never judged: with n pictures that all differ one way, the
#                    interval leaves out 0, which chance alone does with probability 2 / 2**n (n = 4: 12%)


@dataclass(frozen=True)
class Cell:
    """One row's score on one metric over the pictures."""
    mean: float
    low: float           # the 95% bootstrap interval of the mean
    high: float
    count: int           # pictures measured
    spread: float | None = None  # a random row's: the standard deviation over the seeds of each seed's mean
    best: bool = False   # the best row's (among the methods)
    worse: bool = False  # the paired difference from the best row is larger than its interval
    beats_random: bool = False  # better than the random map, beyond the paired difference's interval


def interval(values, seed=0):
    """(P,) per-picture values -> (low, high): the percentile bootstrap's 95% interval of their
    mean, RESAMPLES resamples of the pictures (one picture: the value itself)."""
    values = np.asarray(values, np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), (RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def beyond(differences, sign):
    """Whether the paired differences' mean is ``sign`` (+1 or -1) beyond its interval: the whole
    95% interval lies on that side of 0 (never with fewer than MIN_PICTURES pictures)."""
    if len(differences) < MIN_PICTURES:
        return False
    low, high = interval(differences)
    return low > 0 if sign > 0 else high < 0


def per_picture(entries, metric):
    """Entries of one row -> {picture: value}, the seeds of a random row averaged, NaN left out."""
    values = {}
    for e in entries:
        if not np.isnan(e.scores.get(metric, np.nan)):
            values.setdefault(e.picture, []).append(e.scores[metric])
    return {p: float(np.mean(v)) for p, v in values.items()}


def rows_of(entries):
    """Entries of one target -> {row: [Scored]} in the run's order, methods first, then the
    random map, then the inverted maps."""
    rows = {}
    for kind in ("method", "random", "inverted"):
        for e in entries:
            if e.kind == kind:
                rows.setdefault(e.row, []).append(e)
    return rows


def table(entries):
    """Entries of one target -> {row: {metric: Cell}}: only the metrics some row measured."""
    rows = rows_of(entries)
    random = next((r for r, es in rows.items() if es[0].kind == "random"), None)
    cells = {row: {} for row in rows}
    for metric in METRICS:
        values = {row: per_picture(es, metric.name) for row, es in rows.items()}
        if not any(values.values()):
            continue
        sign = 1 if metric.better == "higher" else -1
        methods = [r for r in rows if rows[r][0].kind == "method" and values[r]]
        best = max(methods, key=lambda r: sign * np.mean(list(values[r].values()))) if methods else None
        for row, by_picture in values.items():
            if not by_picture:
                continue
            mean = float(np.mean(list(by_picture.values())))
            paired = lambda other: np.array([by_picture[p] - values[other][p] for p in by_picture if p in values[other]])
            cells[row][metric.name] = Cell(
                mean, *interval(list(by_picture.values())), len(by_picture), seed_spread(rows[row], metric.name),
                best=row == best,
                worse=row != best and best is not None and beyond(paired(best), -sign),
                beats_random=random is not None and row != random and beyond(paired(random), sign))
    return cells


def seed_spread(entries, metric):
    """A random row's entries -> the standard deviation over its seeds of each seed's mean over the
    pictures; None for a row of one map per picture."""
    seeds = sorted({e.seed for e in entries if e.seed is not None})
    if len(seeds) < 2:
        return None
    means = [np.nanmean([e.scores.get(metric, np.nan) for e in entries if e.seed == s]) for s in seeds]
    return float(np.std(means, ddof=1)) if np.isfinite(means).all() else None


def depth_table(entries):
    """Entries of one target -> {row: (L,) mean rank correlation with 1..L blocks random}, the
    methods' rows that ran the randomisation check."""
    rows = {}
    for e in entries:
        if e.kind == "method" and e.correlations:
            rows.setdefault(e.row, []).append(e.correlations)
    return {row: np.mean(np.array(c, np.float64), axis=0) for row, c in rows.items()}


def verdict(cells):
    """A row's sanity verdict from its randomisation cell: '' where not run."""
    cell = cells.get("randomisation")
    if cell is None:
        return ""
    return "fails: barely changes" if cell.mean > FAILS_ABOVE else "passes"


def chance_line(cells, kinds):
    """The sentence that says, per metric, which methods are separable from the random map."""
    counts = [c.count for row in cells.values() for c in row.values()]
    if max(counts, default=0) < MIN_PICTURES:
        return (f"{max(counts, default=0)} picture(s): too few to judge any difference (it takes {MIN_PICTURES}); "
                "read the means only.")
    parts = []
    for metric in METRICS:
        if metric.name == "randomisation":
            continue
        measured = [row for row, c in cells.items() if metric.name in c and kinds[row] == "method"]
        if not measured:
            continue
        beat = [row for row in measured if cells[row][metric.name].beats_random]
        parts.append(f"{metric.title}: {len(beat)} of {len(measured)}"
                     + ("" if beat else " (no method separable from chance)"))
    return "Methods better than the random map beyond the interval, per metric: " + "; ".join(parts) + "."


def kinds_of(entries):
    """-> {row: its kind}."""
    return {e.row: e.kind for e in entries}


def cell_text(cell):
    if cell is None:
        return "—"
    mark = " (best)" if cell.best else " *" if cell.worse else ""
    spread = f" ±{cell.spread:.3f}" if cell.spread is not None else ""
    return f"{cell.mean:.3f} [{cell.low:.3f}, {cell.high:.3f}]{spread}{mark}"


def mean_curves(entries, curve):
    """A row's entries -> curves_svg's scores: the mean over its pictures of ``curve``'s two orders."""
    stacked = np.mean([np.asarray(e.curves[curve]) for e in entries if curve in e.curves], axis=0)
    positive, negative = stacked
    return {"fractions": list(FRACTIONS), "positive": positive.tolist(), "negative": negative.tolist(),
            "positive_auc": auc(FRACTIONS, positive), "negative_auc": auc(FRACTIONS, negative)}


HOW = ("Each cell: the mean over the pictures and its 95% bootstrap interval ({resamples} resamples). "
       "(best): the best method on that metric; *: worse than the best by more than the interval of the "
       "paired difference (judged from {least} pictures on). The random map is the mean of {seeds} seeds per "
       "picture, ± the standard deviation of the seeds' means; the inverted map is -map. Patch and token "
       "removal run x = 0..0.9 with the untouched picture at 0 (Chefer et al.'s range); deletion and "
       "insertion x = 0..1. The sanity check fails a method whose mean rank correlation (its absolute "
       "value) with its map stays above {threshold} once every block is random.")


def columns(cells):
    """The metrics some row of ``cells`` measured, in METRICS' order."""
    measured = {m for row in cells.values() for m in row}
    return [m for m in METRICS if m.name in measured]


def markdown(by_target, title):
    lines = [f"# {title}", "", how(by_target), ""]
    for target, entries in by_target.items():
        cells = table(entries)
        shown = columns(cells)
        lines += [f"## {target}", "", chance_line(cells, kinds_of(entries)), "",
                  "| map | " + " | ".join(f"{m.title} ({m.better} is better)" for m in shown) + " | sanity |",
                  "|:---|" + "---:|" * len(shown) + ":---|",
                  *(f"| {row} | " + " | ".join(cell_text(c.get(m.name)) for m in shown) + f" | {verdict(c)} |"
                    for row, c in cells.items()), ""]
        depths = depth_table(entries)
        if depths:
            count = len(next(iter(depths.values())))
            lines += ["Rank correlation with the original map as blocks are randomised from the top:", "",
                      "| map | " + " | ".join(f"{d} random" for d in range(1, count + 1)) + " |",
                      "|:---|" + "---:|" * count,
                      *(f"| {row} | " + " | ".join(f"{v:.2f}" for v in rhos) + " |" for row, rhos in depths.items()), ""]
    lines += ["## The metrics", "", *(f"- **{m.title}** ({m.better} is better): {m.meaning}." for m in METRICS), ""]
    return "\n".join(lines)


def how(by_target):
    """The paragraph that says how to read the tables."""
    return HOW.format(resamples=RESAMPLES, seeds=seeds(by_target), threshold=FAILS_ABOVE, least=MIN_PICTURES)


def seeds(by_target):
    counts = [sum(1 for e in es if e.kind == "random" and e.picture == es[0].picture) for es in by_target.values()]
    return max(counts, default=0)


def html_page(by_target, title):
    e_ = html.escape
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
             f"<title>{e_(title)}</title><style>body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}"
             "td,th{padding:.2em .6em;border-bottom:1px solid #ddd}td.n{text-align:right;"
             "font-variant-numeric:tabular-nums;white-space:nowrap}table{border-collapse:collapse}"
             "td.best{font-weight:bold}td.worse{color:#999}td:first-child{min-width:16em}"
             ".curves{display:flex;flex-wrap:wrap;gap:1em}</style>"
             "</head><body>", f"<h1>{e_(title)}</h1>",
             f"<p>{e_(how(by_target))}</p>"]
    for target, entries in by_target.items():
        cells = table(entries)
        shown = columns(cells)
        klass = lambda c: "n best" if c and c.best else "n worse" if c and c.worse else "n"
        parts += [f"<h2>{e_(target)}</h2>", f"<p>{e_(chance_line(cells, kinds_of(entries)))}</p>", "<table><tr><th>map</th>",
                  *(f"<th title='{e_(m.meaning)}'>{e_(m.title)}<br>({m.better} is better)</th>" for m in shown),
                  "<th>sanity</th></tr>",
                  *("<tr><td>" + e_(row) + "</td>" + "".join(f"<td class='{klass(c.get(m.name))}'>"
                                                              f"{e_(cell_text(c.get(m.name)))}</td>" for m in shown)
                    + f"<td>{e_(verdict(c))}</td></tr>" for row, c in cells.items()), "</table>"]
        rows = {row: es for row, es in rows_of(entries).items() if es[0].kind != "inverted" and es[0].curves}
        for curve, what in (("patch", "patch removal"), ("token", "token removal")):
            parts.append(f"<h3>Mean curves, {what}</h3><div class='curves'>"
                         + curves_svg({row: mean_curves(es, curve) for row, es in rows.items()}, "class") + "</div>")
    parts += ["<h2>The metrics</h2><ul>", *(f"<li><b>{e_(m.title)}</b> ({m.better} is better): {e_(m.meaning)}.</li>"
                                             for m in METRICS), "</ul></body></html>", ""]
    return "\n".join(parts)


def csv_text(by_target):
    """One line per target, row and metric: mean, interval, pictures, and the marks."""
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(["target", "map", "kind", "metric", "better", "mean", "low", "high", "pictures", "best",
                  "worse_than_best", "beats_random", "sanity"])
    for target, entries in by_target.items():
        kinds, depths = kinds_of(entries), depth_table(entries)
        for row, cells in table(entries).items():
            for name, c in cells.items():
                out.writerow([target, row, kinds[row], name, METRIC[name].better, f"{c.mean:.6f}", f"{c.low:.6f}",
                              f"{c.high:.6f}", c.count, int(c.best), int(c.worse), int(c.beats_random),
                              verdict(cells) if name == "randomisation" else ""])
            for depth, rho in enumerate(depths.get(row, ()), start=1):  # the check, block by block (mean only)
                out.writerow([target, row, kinds[row], f"rank-correlation-{depth}-random", "", f"{rho:.6f}",
                              "", "", "", "", "", "", ""])
    return buffer.getvalue()


def by_target(entries):
    groups = {}
    for e in entries:
        groups.setdefault(e.target, []).append(e)
    return groups


def write_comparison(entries, output_dir, title):
    """comparison.md, .html and .csv (or the next free comparison-n) in ``output_dir`` -> their paths."""
    groups = by_target(entries)
    return write_new(output_dir, "comparison", {".md": partial(write_text, text=markdown(groups, title)),
                                                ".html": partial(write_text, text=html_page(groups, title)),
                                                ".csv": partial(write_text, text=csv_text(groups))})
