"""ImageNet-1k class names (timm's ImageNetInfo descriptions, kept here so a run need not import
timm; tests/test_labels.py asserts they are equal)."""
from functools import lru_cache
from pathlib import Path

import numpy as np


@lru_cache(maxsize=1)
def class_names():
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


def top_indices(probabilities, k=5):
    """(C,) probabilities (an array) -> the k most probable class indices, most probable first;
    equal probabilities in class order."""
    return np.argsort(-np.asarray(probabilities), kind="stable")[:k]


def top_classes(probabilities, k=5):
    """(C,) probabilities (an array) -> k lines 'rank. probability  index name' (top_indices)."""
    probabilities = np.asarray(probabilities)
    names = class_names()
    return [f"  {rank}. {probabilities[i]:.3f}  {i:3d} {names[i]}"
            for rank, i in enumerate(top_indices(probabilities, k), start=1)]
