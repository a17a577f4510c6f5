"""How faithful is a map? Curves of the class's probability as the patches go in the map's order.

Rank the G*G patches (DeiT-tiny's 196) by the map (ties by patch index). Removing the most
relevant patches first (positive, or "most relevant first") should make the model's probability for the class fall
fast; removing the least relevant first (negative) should leave it. The area under each curve,
by the trapezoid rule over the fractions removed, with the untouched picture at x = 0,
summarises it. Three ways to remove a patch, each with its known weakness (walkthrough §11):

* **Patch removal** (Chefer et al., "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021; ``removal_curves``): the patch's 16x16 pixels in the normalised
  input are set to 0, the ImageNet mean colour; x = 0, 0.1, ..., 0.9, as their tables. The
  grey squares are inputs the model never saw, and their shape can itself carry a class.
* **Token removal** (``token_removal_curves``): the patch's token is dropped from the sequence;
  the others keep their position embeddings (model.embed's ``kept``). No out-of-distribution
  pixels, and the shorter sequences cost less.
* **Deletion and insertion** (Petsiuk et al., "RISE", BMVC 2018): the patch is replaced by
  the same patch of a blurred copy (``blurred``: 11x11 Gaussian, sigma 5, as TIS), x = 0, 0.1,
  ..., 1. Deletion is removal against the blur, most relevant first; insertion starts from the
  blurred picture and puts the most relevant patches back first -- which is the blur removal of
  the least relevant first, read backwards (``deletion_insertion``).

The inverted map (-map) removes, most relevant first, what the map removes least relevant first,
and the other way round: its curves are the map's with the orders swapped, no extra model run
(``inverted``). Ties go by patch index in every order; insertion, read off the least-relevant-
first curve, breaks them the other way.

Shape legend: B pictures, R maps of each, S steps, G the patch grid's side.
"""
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .model import G, forward
from .pixel_relevance import patch_pixels

FRACTIONS = tuple(i / 10 for i in range(10))   # 0 (nothing removed), 0.1, ..., 0.9: Chefer's x-range
WHOLE = tuple(i / 10 for i in range(11))       # 0, 0.1, ..., 1: deletion's and insertion's
CHUNK = 64  # inputs per forward pass: on 2 CPU cores 8 to 64 cost alike per input (27-43 ms), more holds more memory
BLUR_SIZE, BLUR_SIGMA = 11, 5.0


def auc(fractions, values):
    """Area under a curve by the trapezoid rule, x = fractions (x = 0 included); ``values`` (..., S)
    -> a float for one curve, else (...) areas."""
    x, y = np.asarray(fractions, np.float64), np.asarray(values, np.float64)
    area = np.sum((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2, axis=-1)
    return float(area) if area.ndim == 0 else area


def ranks(grids):
    """(..., G, G) maps -> (..., G*G) each patch's rank, 0 the most relevant; ties by patch index."""
    flat = grids.flatten(-2)
    order = torch.argsort(flat, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(flat.shape[-1], device=flat.device).expand_as(order))
    return rank


def removed_counts(fractions, patches=G * G):
    """How many patches step s removes: round(fractions[s] * patches)."""
    return [round(f * patches) for f in fractions]


def removed(grids, fractions, most_relevant_first=True):
    """(..., G, G) maps -> (..., S, G*G) bool: the patches removed at each step. The least relevant
    first are the most relevant of -map (Chefer et al.'s negative perturbation), ties by patch
    index in both orders."""
    rank = ranks(grids if most_relevant_first else -grids)
    counts = torch.tensor(removed_counts(fractions, rank.shape[-1]), device=grids.device)
    return rank[..., None, :] < counts[:, None]


def in_chunks(probabilities_of, count):
    """probabilities_of(rows: slice) -> numpy, called for CHUNK rows at a time -> (count,) numpy."""
    return np.concatenate([probabilities_of(slice(start, start + CHUNK)) for start in range(0, count, CHUNK)])


@torch.no_grad()
def class_probability(weights, inputs, categories, kept=None):
    """(R, 3, 224, 224) inputs and (R,) classes -> (R,) numpy: each input's probability for its
    class. ``kept`` (R, K): only those patches' tokens go in (model.embed)."""
    logits, _ = forward(weights, inputs, kept=kept)
    return logits.softmax(dim=-1).gather(1, categories[:, None])[:, 0].cpu().numpy()


def with_untouched(weights, pictures, categories, later):
    """(B, R, 2, S - 1) the later steps' probabilities -> (B, R, 2, S), step 0 the untouched
    picture's, run once for all its maps and both orders."""
    untouched = in_chunks(lambda rows: class_probability(weights, pictures[rows], categories[rows]), len(pictures))
    return np.concatenate([repeat(untouched, "b -> b r o 1", r=later.shape[1], o=2), later], axis=-1)


def removal_curves(weights, pictures, grids, categories, fractions=FRACTIONS, baseline=None):
    """(B, 3, 224, 224) normalised pictures, (B, R, G, G) maps of each, (B,) classes -> (B, R, 2, S)
    numpy: the class's probability as each map's patches are replaced by ``baseline``'s (B, 3,
    224, 224; None: 0, the mean colour), most relevant first ([:, :, 0]) and least ([:, :, 1]).
    The later steps of every map, order and picture go through the model together."""
    b, r = grids.shape[:2]
    baseline = torch.zeros_like(pictures) if baseline is None else baseline
    gone = torch.stack([removed(grids, fractions[1:], first) for first in (True, False)], dim=2)  # (B, R, 2, S-1, G*G)
    gone = rearrange(gone, "b r o s n -> (b r o s) n").to(pictures.dtype)
    picture = repeat(torch.arange(b, device=pictures.device), "b -> (b r o s)", r=r, o=2, s=len(fractions) - 1)

    def probabilities(rows):
        which = picture[rows]
        mask = patch_pixels(rearrange(gone[rows], "k (gh gw) -> k 1 gh gw", gh=grids.shape[-1]), pictures.shape[-1])
        inputs = pictures[which] + mask * (baseline[which] - pictures[which])
        return class_probability(weights, inputs, categories[which])

    later = rearrange(in_chunks(probabilities, len(gone)), "(b r o s) -> b r o s", b=b, r=r, o=2)
    return with_untouched(weights, pictures, categories, later)


def token_removal_curves(weights, pictures, grids, categories, fractions=FRACTIONS):
    """As removal_curves, with each removed patch's token dropped from the sequence instead:
    step s runs on the G*G - round(fractions[s] * G*G) kept tokens (in patch order), each with its
    position embedding, and the class token. The inputs of one step are one length, so every
    map and order of a step go through the model together."""
    b, r = grids.shape[:2]
    picture = repeat(torch.arange(b, device=pictures.device), "b -> (b r o)", r=r, o=2)
    steps = []
    for fraction in fractions[1:]:
        gone = torch.stack([removed(grids, (fraction,), first)[..., 0, :] for first in (True, False)], dim=2)
        gone = rearrange(gone, "b r o n -> (b r o) n")
        count = gone.shape[-1] - removed_counts((fraction,), gone.shape[-1])[0]
        kept = torch.argsort(gone.to(torch.uint8), dim=-1, stable=True)[:, :count]  # the kept, in patch order
        steps.append(in_chunks(lambda rows: class_probability(  # called here, so this step's kept
            weights, pictures[picture[rows]], categories[picture[rows]], kept[rows]), len(kept)))
    later = rearrange(np.stack(steps, axis=-1), "(b r o) s -> b r o s", b=b, r=r, o=2)
    return with_untouched(weights, pictures, categories, later)


def blurred(pictures):
    """(B, 3, h, w) -> the same, each channel blurred by an 11x11 Gaussian, sigma 5 (reflected at
    the borders, so a flat picture stays flat). Normalising is affine per channel and the kernel
    sums to 1, so blurring the normalised picture is normalising the blurred one."""
    x = torch.arange(BLUR_SIZE, dtype=pictures.dtype, device=pictures.device) - BLUR_SIZE // 2
    kernel = torch.exp(-x ** 2 / (2 * BLUR_SIGMA ** 2))
    kernel = kernel / kernel.sum()
    padded = F.pad(pictures, [BLUR_SIZE // 2] * 4, mode="reflect")
    channels = pictures.shape[1]
    rows = F.conv2d(padded, repeat(kernel, "k -> c 1 1 k", c=channels), groups=channels)
    return F.conv2d(rows, repeat(kernel, "k -> c 1 k 1", c=channels), groups=channels)


def deletion_insertion(curves):
    """(..., 2, S) blur-removal curves over WHOLE (most, least relevant first) -> (deletion,
    insertion), each (..., S): insertion at x puts back the most relevant x, which leaves the
    least relevant 1 - x blurred (round(x * 196) + round((1 - x) * 196) = 196 at each step of
    WHOLE; where patches tie across that cut, the later ones in patch order go back first)."""
    return curves[..., 0, :], curves[..., 1, ::-1]


def inverted(curves):
    """The curves (..., 2, S) of a map -> those of its inverted map: the two orders swapped."""
    return curves[..., ::-1, :]


@torch.no_grad()
def perturbation_test(weights, image, grids, category, fractions=FRACTIONS):
    """One (3, 224, 224) input and maps {name: (G, G)} -> {name: {"fractions": [...],
    "positive": [...], "negative": [...], "positive_auc": a, "negative_auc": b}}: patch removal's
    curves (removal_curves) and the areas under them."""
    names = list(grids)
    stacked = torch.stack([grids[n].to(image.device) for n in names])[None]  # (1, R, G, G)
    curves = removal_curves(weights, image[None], stacked, torch.tensor([category], device=image.device), fractions)
    return {name: {"fractions": list(fractions), "positive": positive.tolist(), "negative": negative.tolist(),
                   "positive_auc": auc(fractions, positive), "negative_auc": auc(fractions, negative)}
            for name, (positive, negative) in zip(names, curves[0])}
