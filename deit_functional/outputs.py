"""One picture's results: what they hold, the files they are written to, the lines printed.

A result's files are named ``<picture stem>_<tag>[-<n>]<ending>``: the tag carries method, head
fusion, discard ratio and category, so different runs never collide, and a counter n is added
where a name is taken, so nothing existing is ever overwritten.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from .architectures import architecture
from .drawing import Look, curves_figure, layer_figure, result_figure, upsample
from .explorer import explorer_page
from .labels import are_features, class_names, rank, short_name, top, top_classes
from .model import DEFAULT_MODEL
from .methods import METHODS, Method
from .pixel_relevance import patch_maps
from .rollout import HEAD_FUSIONS
from .writing import (discard, publish, stage, write_figure, write_json, write_new, write_npy, write_png,
                      write_text)


@dataclass
class PictureResult:
    """What one picture's explanation produced, as numpy arrays, ready to write."""
    path: Path                    # the picture file, as given
    picture: np.ndarray           # (H, W, 3) uint8, as read
    probabilities: np.ndarray     # (C,)
    maps: dict                    # head fusion -> (G, G) map, max 1; (224, 224) for a per-pixel method, max |value| 1
    # head fusion -> ((L, G, G) rollout through layers 1..l, (L, G, G) each layer's own attention)
    layers: dict = field(default_factory=dict)
    category: int | None = None   # the class explained: a gradient method's, else the top one
    faithfulness: dict | None = None  # head fusion -> perturbation-test scores (evaluate.py)
    method: Method = METHODS["attention"]
    attentions: np.ndarray | None = None  # (L, H, N, N) the model's maps, for the explorer page
    model: str = DEFAULT_MODEL    # timm's name (architectures.py)
    discard_ratio: float = 0.0    # the share of each layer's lowest entries the method discarded

    def __post_init__(self):
        if self.category is None and self.probabilities is not None:
            self.category = int(np.argmax(self.probabilities))  # the top class, as a run sets it

    def not_finite(self):
        """Why this result must not be written, or None: a map holding NaN or infinities draws as
        garbage (weights that overflow float32 on a picture make the logits infinite, then NaN)."""
        if not np.isfinite(self.probabilities).all():
            return "the model's output for it is not finite (NaN or infinite logits): the weights overflow on it"
        maps = [(f, g) for f, g in self.maps.items()] + [(f, a) for f, pair in self.layers.items() for a in pair]
        bad = next((f for f, a in maps if not np.isfinite(a).all()), None)
        which = f" ({bad} fusion)" if self.method.fuses_heads else ""
        return None if bad is None else f"its map{which} holds NaN or infinite values"


def looks_like_a_result(path):
    """Whether ``path`` is named as this tool names the pictures it writes (overlays, per-layer
    figures, plots): a run never explains those, so the output folder can be the input folder
    without a run's results being explained by the next one."""
    methods = "|".join(re.escape(m.file_name) for m in METHODS.values())
    fusion = "(" + "|".join(dict.fromkeys(f for m in METHODS.values() for f in m.fusions)) + ")"
    return re.search(rf"_({methods})_(all|{fusion}(\+{fusion})*)_discard[0-9.e+-]+(_category\d+)?(-\d+)?"
                     rf"(_{fusion})?(_layers|_evaluation)?$", Path(path).stem) is not None


def file_tag(method, head_fusions, discard_ratio, category=None, model=DEFAULT_MODEL):
    """The part of every file name that says how Method ``method`` explained the picture (and by
    which DeiT, where not the default one)."""
    fusions = "all" if tuple(head_fusions) == HEAD_FUSIONS else "+".join(head_fusions)
    parts = [method.file_name, fusions, f"discard{ratio_text(discard_ratio)}"]
    if model != DEFAULT_MODEL:
        parts.insert(0, architecture(model).slug)  # e.g. deit-small
    if category is not None:
        parts.append(f"category{category}")
    return "_".join(parts)


def ratio_text(ratio):
    """A discard ratio as names and headings show it: short (0.9, not 0.900000), yet never one
    text for two ratios (0.9000001 stays whole), and -0 as 0, the same map as 0."""
    ratio = float(ratio) + 0.0  # -0.0 + 0.0 is 0.0
    short = f"{ratio:g}"
    return short if float(short) == ratio else repr(ratio)


def file_endings(result, save_grid=False, per_layer=False):
    """{kind: file-name ending} of the files ``result`` is written to."""
    named = lambda fusion, ending: f"_{fusion}{ending}" if len(result.maps) > 1 else ending
    endings = {"overlay": ".png"}
    for fusion in result.maps:
        endings[f"mask {fusion}"] = named(fusion, "_mask.npy")
        if save_grid:
            endings[f"grid {fusion}"] = named(fusion, "_grid.npy")
        if per_layer and fusion in result.layers:
            endings[f"layers {fusion}"] = named(fusion, "_layers.png")
    if result.faithfulness is not None:
        endings["evaluation"] = "_evaluation.json"
        endings["plot"] = "_evaluation.png"
    if result.attentions is not None:
        endings["explorer"] = "_explorer.html"
    return endings


class Names:
    """Output paths in ``folder`` that collide with no existing file and none given out before.
    Safe to share between threads.

    A picture's name is shortened where the longest of its files' names, or the temporary name
    it is staged under (writing.py), would pass the file system's limit on a name (255 bytes on
    most): its start is kept, then ``~`` and 8 hex digits of a hash of the whole name, so that
    pictures whose names start alike still get names of their own."""

    def __init__(self, folder, tag):
        self.folder, self.tag, self.taken, self.lock = Path(folder), tag, set(), threading.Lock()

    def claim(self, picture_path, endings):
        """{kind: ending} -> {kind: path}, all with one free stem."""
        stem = f"{self.short_name(Path(picture_path).stem, endings)}_{self.tag}"
        with self.lock:
            for n in range(1, 10_000):
                base = stem if n == 1 else f"{stem}-{n}"
                paths = {kind: self.folder / f"{base}{ending}" for kind, ending in endings.items()}
                if not any(p in self.taken or p.exists() or p.is_symlink() for p in paths.values()):
                    self.taken.update(paths.values())
                    return paths
        raise RuntimeError(f"no free output name for {stem}")

    def short_name(self, name, endings):
        """The picture's ``name`` (its stem), or its start, ``~`` and a hash, where a file name
        <name>_<tag>-<n><ending>, staged as .<...>.<8 hex> + suffix, would be too long."""
        size = lambda text: len(os.fsencode(text))
        room = (name_limit(self.folder) - len(".." + "0" * 8) - len("-9999") - size(f"_{self.tag}")
                - max(map(size, endings.values())))
        if size(name) <= room:
            return name
        mark = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
        start = name
        while start and size(start + mark) > room:
            start = start[:-1]
        return start + mark


def name_limit(folder):
    """The longest file name, in bytes, the file system holding ``folder`` (or its nearest
    existing parent) allows; 255 where it does not say."""
    existing = next((p for p in [Path(folder), *Path(folder).absolute().parents] if p.exists()), Path("/"))
    try:
        return os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # AttributeError: no pathconf (Windows)
        return 255


def write(result, endings, names, targets, look=Look()):
    """Write ``result``'s files {kind: ending} (file_endings) under ``targets`` {kind: path}
    (claimed from ``names``), maps drawn in ``look`` -> (the paths they were written to, {kind:
    path}; notes on files that could not be made).

    All files are staged first and published together (writing.py): a failure, a full disk
    included, leaves none of them. Where another run took one of the names meanwhile, the next
    free names are claimed from ``names``.
    """
    files, notes = savers(result, endings, look)
    names.folder.mkdir(parents=True, exist_ok=True)
    staged = {}
    try:
        for kind, save in files.items():
            staged[kind] = stage(names.folder, targets[kind].name, save)
        while True:
            try:
                publish(staged, {kind: targets[kind] for kind in staged})
                break
            except FileExistsError:
                targets = names.claim(result.path, {kind: endings[kind] for kind in staged})
    finally:
        discard(staged)
    return {kind: targets[kind] for kind in files}, notes


def savers(result, endings, look=Look()):
    """-> ({kind: save(file)} for each file of ``endings`` that can be made, notes on the rest):
    the drawing is done here, the writing by each save."""
    method = result.method
    fused = lambda f: f"{f} fusion" if method.fuses_heads else "the map"
    red = "red for the class, blue against it" if method.per_pixel else "red = most relevant"
    grids = {(fused(f) if len(result.maps) > 1 else f"{fused(f)}, {red}"): g for f, g in result.maps.items()}
    files = {"overlay": partial(write_png, picture=result_figure(result.picture, grids, title(result), look,
                                                                 signed=method.per_pixel))}
    for fusion, grid in result.maps.items():
        files[f"mask {fusion}"] = partial(write_npy, array=upsample(grid, result.picture.shape[:2]))
        if f"grid {fusion}" in endings:
            patches = patch_maps(result.method, grid, architecture(result.model).P)
            files[f"grid {fusion}"] = partial(write_npy, array=np.asarray(patches, np.float32))
        if f"layers {fusion}" in endings:
            files[f"layers {fusion}"] = partial(write_png, picture=layer_figure(
                result.picture, *result.layers[fusion], title=title(result, fusion), look=look))
    if "explorer" in endings:
        files["explorer"] = partial(write_text, text=explorer_page(result))
    notes = []
    if result.faithfulness is not None:
        files["evaluation"] = partial(write_json, data={"picture": str(result.path), "category": result.category,
                                                        "fusions": result.faithfulness})
        figure = curves_figure(result.faithfulness, short_name(result.category))
        if figure is None:
            notes.append("  (no curves plot: matplotlib is not installed; pip install matplotlib)")
        else:
            files["plot"] = partial(write_figure, figure=figure)
    return files, notes


def title(result, fusion=None):
    """What ``result`` explains, in a line: method, head fusion (``fusion``, or all the
    result's), discard ratio, the class with its probability and rank, and the DeiT."""
    method = result.method
    how = [f"{fusion or ' | '.join(result.maps)} fusion"] if method.fuses_heads else []
    how += [f"discard ratio {ratio_text(result.discard_ratio)}"] if method.discards else []
    how += [f"{method.steps} steps from black"] if method.steps else []
    which = noun() if method.uses_gradient else f"top {noun()}"
    return (", ".join([method.title, *how]) + f": {which} {class_line(result.probabilities, result.category)}; "
            f"{architecture(result.model).title}")


def noun():
    """What the model's outputs are: classes, or (a model without a classifier) features."""
    return "feature" if are_features() else "class"


def class_line(probabilities, category):
    """'258 Samoyed (p 0.021, rank 7 of 1000)': a class, its probability and its rank."""
    p = float(probabilities[category])
    shown = f"{p:.3f}" if abs(p) >= 0.001 else f"{p:.1e}"  # a small probability keeps its digits
    if are_features():  # a model without a classifier gives its features: "feature 5" is all their name
        return f"{category} (value {shown}, rank {rank(probabilities, category)} of {len(probabilities)})"
    return f"{category} {short_name(category)} (p {shown}, rank {rank(probabilities, category)} of {len(probabilities)})"


def printed(result, files, notes, quiet=0, first=True):
    """The lines printed about ``result`` once its ``files`` {kind: path} are written: with
    ``quiet`` 0, for the picture's ``first`` explanation the picture and its top-5 classes, then
    the class explained (a gradient method's), the faithfulness table, notes and every file;
    with 1, one line: the picture, what was explained and the figure; with 2, none."""
    method = result.method
    if quiet >= 2:
        return []
    if quiet == 1:
        what = f"{method.option} " + (noun() if method.uses_gradient else f"top {noun()}")
        return [f"{result.path}: {what} {class_line(result.probabilities, result.category)} -> {files['overlay']}"]
    top5 = (["  no classifier: the class token's largest features"] if are_features() else []) + \
        top_classes(result.probabilities)
    lines = [f"{result.path}:", *top5] if first else []
    if method.uses_gradient:
        lines.append(f"  {method.title}, {noun()} {class_line(result.probabilities, result.category)}")
    if result.faithfulness is not None:
        which = "" if method.uses_gradient else ", the predicted class"
        lines += [f"  faithfulness for class {result.category} {class_names()[result.category]}{which} (perturbation "
                  "test, AUC over x = 0..0.9 removed, the untouched picture included; positive AUC: lower is "
                  "better, negative AUC: higher is better)",
                  "    fusion    positive AUC  negative AUC"]
        lines += [f"    {fusion:8}  {s['positive_auc']:12.4f}  {s['negative_auc']:12.4f}"
                  for fusion, s in result.faithfulness.items()]
    return lines + notes + [str(path) for path in files.values()]


def write_predictions(results, job):
    """predictions.csv in the output folder (or the next free predictions-n.csv) -> its path: a
    row per picture and class explained (a gradient method's class, else the top one), with that
    class's probability and rank, then the picture's top-5."""
    header = ["picture", "explained_class", "explained_name", "explained_probability", "explained_rank"]
    header += [f"top{k}_{field}" for k in range(1, 6) for field in ("class", "name", "probability")]
    rows = []
    for r in results:
        top5 = [value for p, i, _ in top(r.probabilities) for value in (i, short_name(i), f"{p:.6f}")]
        rows.append([str(r.path), r.category, short_name(r.category), f"{r.probabilities[r.category]:.6f}",
                     rank(r.probabilities, r.category), *top5])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    [path] = write_new(job.output_dir, "predictions", {".csv": partial(write_text, text=buffer.getvalue())})
    return path
