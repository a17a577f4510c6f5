"""METRICS: the one table of what the comparison measures of a map, and ``map_scores``, which
measures it -- for the maps and, at no extra model run, for their inverted maps.

Each metric reads a patch map (a per-pixel method's map summed per patch) for one picture and
one class. The faithfulness curves are evaluate.py's, the localisation scores localisation.py's
(where the user gave boxes) and the randomisation check sanity.py's. The baselines every table
holds: RANDOM_SEEDS uniform random maps per picture (``random_maps``), and each map inverted: its
ranking reversed for the curves (evaluate.inverted), -map for the localisation scores (the same
where no two patches tie).

Shape legend: B pictures, R maps of each, G the patch grid's side.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from . import evaluate, localisation
from .evaluate import FRACTIONS, WHOLE, auc
from .labels import short_name
from .localisation import box_mask
from .model import forward
from .outputs import ratio_text
from .pixel_relevance import patch_maps
from .sanity import randomisation_check
from .weights import architecture_of

RANDOM_SEEDS = 3  # each costs a map's ~47 full forward passes per picture (evaluate.py)


@dataclass(frozen=True)
class Metric:
    """One column of the comparison."""
    name: str       # its key, in comparison.csv
    title: str      # its column heading
    better: str     # "lower" or "higher"
    meaning: str    # what it measures, in a line: the removal, the order, the x-range


METRICS = (
    Metric("patch-positive", "patch removal, most first", "lower",
           "AUC of p(class), x = 0..0.9, as the most relevant patches are set to the mean colour (Chefer et al.)"),
    Metric("patch-negative", "patch removal, least first", "higher",
           "the same, the least relevant patches first"),
    Metric("token-positive", "token removal, most first", "lower",
           "AUC of p(class), x = 0..0.9, as the most relevant patches' tokens are dropped from the sequence"),
    Metric("token-negative", "token removal, least first", "higher", "the same, the least relevant first"),
    Metric("deletion", "deletion", "lower",
           "AUC of p(class), x = 0..1, as the most relevant patches are replaced by a blurred copy's (Petsiuk et al.)"),
    Metric("insertion", "insertion", "higher",
           "AUC of p(class), x = 0..1, from the blurred copy, as the most relevant patches are put back"),
    Metric("pointing", "pointing game", "higher", "share of pictures whose map peaks inside a box of the class"),
    Metric("mass", "relevance in boxes", "higher", "share of the map's positive relevance inside the boxes"),
    Metric("randomisation", "abs. rank corr., random model", "lower",
           "|Spearman correlation| with the map once every block's weights are random (Adebayo et al.): "
           "a map that keeps its ranking, or its reverse, did not need what the model learned"),
)
METRIC = {m.name: m for m in METRICS}


def random_maps(numbers, grid, seeds=RANDOM_SEEDS):
    """The run's picture numbers (B,) -> (B, seeds, G, G) uniform random maps: picture n's
    seed-s map is the same in every run, whatever the batch."""
    return torch.stack([torch.stack([torch.rand(grid, grid, generator=torch.Generator().manual_seed(1_000_003 * s + n))
                                     for s in range(seeds)]) for n in numbers])


def curve_scores(curves):
    """{"patch", "token": (..., 2, S) over FRACTIONS; "blur": (..., 2, S) over WHOLE} -> {metric:
    (...)} the areas of the faithfulness metrics."""
    deletion, insertion = evaluate.deletion_insertion(curves["blur"])
    return {"patch-positive": auc(FRACTIONS, curves["patch"][..., 0, :]),
            "patch-negative": auc(FRACTIONS, curves["patch"][..., 1, :]),
            "token-positive": auc(FRACTIONS, curves["token"][..., 0, :]),
            "token-negative": auc(FRACTIONS, curves["token"][..., 1, :]),
            "deletion": auc(WHOLE, deletion), "insertion": auc(WHOLE, insertion)}


def localisation_scores(grids, masks):
    """(B, R, G, G) maps, [(224, 224) bool or None] a mask per picture -> {"pointing", "mass":
    (B, R)}, NaN for a picture without a box of its class."""
    b, r = grids.shape[:2]
    out = {name: np.full((b, r), np.nan) for name in ("pointing", "mass")}
    boxed = [k for k, mask in enumerate(masks) if mask is not None]
    if boxed:
        mask = torch.stack([masks[k] for k in boxed]).to(grids.device)
        out["pointing"][boxed] = localisation.pointing_game(grids[boxed], mask).cpu().numpy()
        out["mass"][boxed] = localisation.relevance_mass(grids[boxed], mask).cpu().numpy()
    return out


@torch.no_grad()
def map_scores(weights, pictures, grids, categories, masks):
    """(B, 3, 224, 224) normalised pictures, (B, R, G, G) maps, (B,) classes, a box mask or None
    per picture -> (scores, inverted scores, curves): {metric: (B, R)} for the maps and for -map
    (every metric of METRICS but the randomisation check, which needs the method), and the
    maps' curves {"patch", "token", "blur": (B, R, 2, S)}."""
    curves = {"patch": evaluate.removal_curves(weights, pictures, grids, categories),
              "token": evaluate.token_removal_curves(weights, pictures, grids, categories),
              "blur": evaluate.removal_curves(weights, pictures, grids, categories, WHOLE,
                                              baseline=evaluate.blurred(pictures))}
    scores = {**curve_scores(curves), **localisation_scores(grids, masks)}
    inverted = {**curve_scores({k: evaluate.inverted(c) for k, c in curves.items()}),
                **localisation_scores(-grids, masks)}
    return scores, inverted, curves


@dataclass(frozen=True)
class Scored:
    """What one map of one picture scored: an entry of the comparison (comparison.py)."""
    picture: str       # the picture's path, as given
    target: str        # the class the table is for: "predicted class" or "class 87 (African grey)"
    row: str           # what was scored: e.g. "Attention Rollout, mean, discard 0.9"
    kind: str          # "method", "random" (one entry per seed) or "inverted"
    scores: dict       # metric name -> value (NaN: not measured, e.g. no box)
    curves: dict = field(default_factory=dict)  # "patch", "token" over FRACTIONS, "blur" over WHOLE: (2, S)
    correlations: tuple = ()  # the randomisation check's rank correlations, 1..L blocks random
    seed: int | None = None   # a random map's seed


def predicted_classes(weights, inputs):
    """(B, 3, 224, 224) -> (B,) each picture's top class."""
    with torch.no_grad():
        return forward(weights, inputs)[0].argmax(dim=-1)


def row_name(method, fusion, ratio):
    """What a comparison row scores: the method, its fusion and discard ratio where it has them."""
    return (method.title + (f", {fusion}" if method.fuses_heads else "")
            + (f", discard {ratio_text(ratio)}" if method.discards else ""))


def target_name(category):
    """The class a comparison table is for: None, each picture's predicted one."""
    return "predicted class" if category is None else f"class {category} ({short_name(category)})"


def score_batch(weights, batch, numbers, job, device, by_explanation):
    """A batch's results of every explanation [[PictureResult]] -> [Scored]: for each
    class the comparison is for (each --category, or each picture's predicted one), every map,
    its inverted map and the random maps, scored by every metric, and each method's
    randomisation check (on the run's first job.sanity_pictures pictures)."""
    inputs = torch.stack([model_input for _, _, model_input in batch]).to(device)
    entries, checked, a = [], {}, architecture_of(weights)
    sane = [b for b, number in enumerate(numbers) if number < job.sanity_pictures]  # the pictures checked
    for category in job.categories or (None,):
        classes = torch.tensor([r.category for r in by_explanation[0]] if category is None else [category] * len(batch),
                               device=device)  # (B,) the class each picture is scored for
        masks = [box_mask(job.boxes.get(path.name, []), int(c), *picture.shape[:2], inputs.shape[-1]) if job.boxes else None
                 for (path, picture, _), c in zip(batch, classes.tolist())]
        target = target_name(category)
        scored = [(results, results[0].method) for results in by_explanation
                  if not results[0].method.uses_gradient or not job.categories or results[0].category == category]
        for results, method in scored:
            fusions = list(results[0].maps)
            grids = torch.stack([torch.stack([torch.as_tensor(patch_maps(method, r.maps[f], a.P)) for f in fusions])
                                 for r in results]).to(device)  # (B, R, G, G)
            scores, inverted, curves = map_scores(weights, inputs, grids, classes, masks)
            key = (method, None if not method.uses_gradient else category)
            if key not in checked and sane:
                check = randomisation_check(weights, inputs[sane], method, classes[sane] if method.uses_gradient else None,
                                            fusions, job.ratio(method), original=grids[sane].flatten(-2))
                checked[key] = dict(zip(sane, check.cpu().numpy().transpose(1, 0, 2)))  # {b: (L, R)}
            for b, r in np.ndindex(grids.shape[:2]):
                row = row_name(method, fusions[r], job.ratio(method))
                rhos = tuple(checked[key][b][:, r].tolist()) if b in checked.get(key, {}) else ()
                picture = str(batch[b][0])
                entries.append(Scored(picture, target, row, "method",
                                      {**{m: float(v[b, r]) for m, v in scores.items()},
                                       "randomisation": abs(rhos[-1]) if rhos else np.nan},
                                      {k: c[b, r] for k, c in curves.items()}, rhos))
                entries.append(Scored(picture, target, f"inverted: {row}", "inverted",
                                      {m: float(v[b, r]) for m, v in inverted.items()}))
        randoms = random_maps(numbers, a.G).to(device)  # (B, seeds, G, G)
        scores, _, curves = map_scores(weights, inputs, randoms, classes, masks)
        entries += [Scored(str(batch[b][0]), target, f"random map ({RANDOM_SEEDS} seeds)", "random",
                           {m: float(v[b, s]) for m, v in scores.items()}, {k: c[b, s] for k, c in curves.items()},
                           seed=s) for b, s in np.ndindex(randoms.shape[:2])]
    return entries
