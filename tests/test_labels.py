"""The class names kept in the package are timm's, in timm's order."""
import torch

from deit_functional.labels import class_names, top_classes


def test_class_names_equal_timms_imagenet_info():
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    assert class_names() == [info.index_to_description(i) for i in range(1000)]


def test_top_classes_lists_the_most_probable_first():
    p = torch.zeros(1000)
    p[[87, 258, 3, 999, 0]] = torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05])
    lines = top_classes(p)
    assert [int(line.split()[2]) for line in lines] == [258, 3, 999, 87, 0]
    assert "Samoyed" in lines[0] and lines[0].split()[1] == "0.500"
