"""ImageNet-1k class names (timm's ImageNetInfo descriptions, kept here so a run need not import
timm; tests/test_labels.py asserts they are equal)."""
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def class_names():
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


def top_classes(probabilities, k=5):
    """(C,) probabilities -> k lines 'rank. probability  index name', most probable first."""
    values, indices = probabilities.topk(k)
    names = class_names()
    return [f"  {rank}. {p:.3f}  {i:3d} {names[i]}"
            for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()), start=1)]
