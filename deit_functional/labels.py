"""ImageNet-1k class names (timm's ImageNetInfo descriptions, kept here so a run need not import
timm; tests/test_labels.py asserts they are equal)."""
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def class_names():
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


def short_name(index):
    """A class's first name, e.g. 'tabby' of 'tabby, tabby cat'."""
    return class_names()[index].split(",")[0]


def top(probabilities, k=5):
    """(C,) probabilities (an array) -> the k most probable classes as (probability, index, name),
    most probable first; equal probabilities in class order."""
    probabilities, names = np.asarray(probabilities), class_names()
    return [(float(probabilities[i]), int(i), names[i]) for i in np.argsort(-probabilities, kind="stable")[:k]]


def top_classes(probabilities, k=5):
    """(C,) probabilities (an array) -> k lines 'rank. probability  index name' (``top``)."""
    return [f"  {rank}. {p:.3f}  {i:3d} {name}" for rank, (p, i, name) in enumerate(top(probabilities, k), start=1)]
