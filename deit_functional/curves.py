"""The perturbation test's curves (evaluate.py) as SVG, for the pages: the report and the explorer.

Two small plots side by side: the class's probability as the most relevant patches are removed
first (positive; a faithful map makes it fall fast) and as the least relevant are (negative; it
should hold), one line per map, each labelled with its area under the curve. Plain text, so a
page holds it as it is and a browser draws it without a script.
"""
import html

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#ff7f0e")
WIDTH, HEIGHT = 260, 150  # the plot area, in SVG units: x = share removed * WIDTH, y from the top


def curves_svg(evaluation, class_name):
    """{map name: scores} (evaluate.perturbation_test) -> two <svg> elements, classes "positive"
    and "negative", their y axes both from 0 to the largest probability of either."""
    top = max(v for s in evaluation.values() for v in s["positive"] + s["negative"]) or 1.0
    plots = []
    for order, title in (("positive", "most relevant removed first: lower AUC is better"),
                         ("negative", "least relevant removed first: higher AUC is better")):
        lines = []
        for k, (name, scores) in enumerate(evaluation.items()):
            points = " ".join(f"{x * WIDTH:.1f},{HEIGHT - y / top * HEIGHT:.1f}"
                              for x, y in zip(scores["fractions"], scores[order]))
            colour = COLOURS[k % len(COLOURS)]
            lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
                         f'<text x="{WIDTH + 10}" y="{14 + 16 * k}" fill="{colour}">{html.escape(name)}: AUC '
                         f'{scores[order + "_auc"]:.3f}</text>')
        last = max(scores["fractions"][-1] for scores in evaluation.values())
        height = max(HEIGHT + 60, 24 + 16 * len(evaluation))  # room for every line's label,
        width = WIDTH + max(210, 60 + 7 * (max(map(len, evaluation)) + len(": AUC 0.000")))  # ~7 units a letter
        plots.append(
            f'<svg class="{order}" width="{width}" height="{height}" '
            f'viewBox="-50 -24 {width} {height}" font-size="12" role="img" '
            f'aria-label="p({html.escape(class_name)}), {order} perturbation">'
            f'<text x="0" y="-10">{title}</text>'
            f'<path d="M0,0 V{HEIGHT} H{WIDTH}" fill="none" stroke="#888"/>'
            f'<text x="0" y="{HEIGHT + 16}">0</text>'
            f'<text x="{last * WIDTH}" y="{HEIGHT + 16}" text-anchor="middle">{last:g}</text>'
            f'<text x="{WIDTH / 2}" y="{HEIGHT + 32}" text-anchor="middle">share of patches removed</text>'
            f'<text x="-4" y="4" text-anchor="end">{top:.2g}</text>'
            f'<text x="-4" y="{HEIGHT}" text-anchor="end">0</text>'
            f'<text x="-30" y="{HEIGHT / 2}" text-anchor="middle" transform="rotate(-90 -30 {HEIGHT / 2})">'
            f'p({html.escape(class_name)})</text>{"".join(lines)}</svg>')
    return "".join(plots)
