"""Finding the panels of a result figure (drawing.result_figure) in a saved PNG, independently
of how the figure is laid out: the picture's panel is the picture resized, pixel for pixel, and
each map panel sits beside it, a white gap of join()'s width away."""
import numpy as np

from deit_functional.drawing import to_side

GAP = 8  # drawing.join's white gap between panels


def locate(figure, panel):
    """-> (top, left) of the one place ``panel`` appears in ``figure``, pixel for pixel."""
    height, width = panel.shape[:2]
    probe = panel[height // 2]  # a row through the middle
    found = []
    for y in range(height // 2, figure.shape[0] - height + height // 2 + 1):
        row = figure[y]
        for x in np.flatnonzero((row[:figure.shape[1] - width + 1] == probe[0]).all(axis=1)):
            top = y - height // 2
            if np.array_equal(row[x:x + width], probe) and np.array_equal(figure[top:top + height, x:x + width], panel):
                found.append((top, x))
    assert len(found) == 1, found
    return found[0]


def map_panel(figure, picture, k=1):
    """The ``k``-th panel right of the picture's panel (1: the first map), its picture-sized part."""
    small = to_side(picture)
    top, left = locate(figure, small)
    left += k * (small.shape[1] + GAP)
    return figure[top:top + small.shape[0], left:left + small.shape[1]]
