"""The class names kept in the package are timm's, in timm's order; the top-5 lines."""
import numpy as np
import pytest

from deit_functional.labels import class_names, top_classes

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


def test_class_names_equal_timms_imagenet_info():
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    assert class_names() == [info.index_to_description(i) for i in range(1000)]


def test_top_classes_lists_the_most_probable_first():
    p = np.zeros(1000, np.float32)
    p[[87, 258, 3, 999, 0]] = [0.1, 0.5, 0.2, 0.15, 0.05]
    lines = top_classes(p)
    assert [int(line.split()[2]) for line in lines] == [258, 3, 999, 87, 0]
    assert "Samoyed" in lines[0] and lines[0].split()[1] == "0.500"


def test_top_classes_breaks_ties_in_class_order():
    p = np.full(1000, 0.001, np.float32)
    p[[500, 7]] = 0.3
    assert [int(line.split()[2]) for line in top_classes(p)] == [7, 500, 0, 1, 2]
