"""Class names: ImageNet-1k's (timm's ImageNetInfo descriptions, kept here so a run need not
import timm; tests/test_labels.py asserts they are equal), or a fine-tuned head's own (``--labels
FILE``, one name per line), or a model without a classifier's features ("feature 0", ...).

A run names its classes once, where it starts (``named``); every function below reads them."""
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

_NAMES = []  # (names, features) a run set (named), innermost last; empty: ImageNet's classes


@lru_cache(maxsize=1)
def imagenet_names():
    return (Path(__file__).with_name("imagenet_classes.txt")).read_text().splitlines()


def class_names():
    return _NAMES[-1][0] if _NAMES else imagenet_names()


def feature_names(count):
    """The outputs of a model without a classifier: its class token's ``count`` features."""
    return [f"feature {i}" for i in range(count)]


def read_labels(path):
    """A --labels file: one class name per line (blank lines at the end ignored) -> the names.
    ValueError naming the problem."""
    try:
        names = Path(path).read_text(encoding="utf-8").rstrip("\n").split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--labels {path}: cannot read it ({error})") from None
    names = [name.strip() for name in names]
    if not any(names):
        raise ValueError(f"--labels {path}: no class names in it (one per line)")
    empty = next((i for i, name in enumerate(names, start=1) if not name), None)
    if empty:
        raise ValueError(f"--labels {path}: line {empty} is empty (each line names one class)")
    return names


def _imagenet():
    """Whether the classes are ImageNet's."""
    return class_names() is imagenet_names()


def are_features():
    """Whether the outputs are a model's features (it has no classifier): not probabilities."""
    return bool(_NAMES) and _NAMES[-1][1]


@contextmanager
def named(names, features=False):
    """Within it, the outputs are called ``names`` (a list; None: ImageNet's), and are a model's
    ``features`` (it has no classifier) rather than classes."""
    _NAMES.append((list(names) if names is not None else imagenet_names(), features))
    try:
        yield
    finally:
        _NAMES.pop()


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


def rank(probabilities, index):
    """Where class ``index`` stands among (C,) probabilities: 1 for the most probable; equal
    probabilities in class order, as in ``top``."""
    probabilities = np.asarray(probabilities)
    p = probabilities[index]
    return int((probabilities > p).sum() + (probabilities[:index] == p).sum()) + 1


def class_index(text):
    """A class by its index ("258") or its name ("samoyed", "African grey"): case-insensitive,
    any of the names a class is listed under, or the start of only one class's names -> its
    index. ValueError where no class, or several, fit, naming them."""
    text = " ".join(str(text).replace("_", " ").split())
    if text.lstrip("+-").isdigit():
        index = int(text)
        if not 0 <= index < len(class_names()):
            which = "an ImageNet class index" if _imagenet() else "a class index of this model"
            raise ValueError(f"{text} is not {which} (0..{len(class_names()) - 1})")
        return index
    key = text.lower()
    names = [[name.strip() for name in line.split(",")] for line in class_names()]
    exact = [(i, name) for i, listed in enumerate(names) for name in listed if name.lower() == key]
    fitting = exact or [(i, name) for i, listed in enumerate(names) for name in listed if name.lower().startswith(key)]
    classes = list(dict.fromkeys(i for i, _ in fitting))  # each class once, the first name that fits
    if len(classes) == 1:
        return classes[0]
    if not classes:
        raise ValueError(f"no {'ImageNet class' if _imagenet() else 'class of this model'} is called {text!r} "
                         "or has a name starting so")
    named = {i: name for i, name in reversed(fitting)}
    shown = "; ".join(f"{i} {short_name(i)}" + (f" ({named[i]})" if named[i] != short_name(i) else "")
                      for i in classes[:6])
    more = f"; and {len(classes) - 6} more" if len(classes) > 6 else ""
    raise ValueError(f"{text!r} fits {len(classes)} classes: {shown}{more} (give the index, or more of the name)")
