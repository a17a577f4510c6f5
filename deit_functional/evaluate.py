"""How faithful is a map? The perturbation test of Chefer et al., "Transformer Interpretability
Beyond Attention Visualization", CVPR 2021.

Rank the 196 patches by the map. Positive perturbation removes the most relevant 10%, 20%, ...,
90% first; negative perturbation the least relevant first. At each step the model's probability
for the class is recorded; the area under each curve (x = 0, 0.1, ..., 0.9, trapezoid rule)
summarises it. A faithful map makes the probability fall fast when its top patches go (low
positive AUC) and hold when its bottom patches go (high negative AUC).

How a patch is removed: its 16x16 pixels in the normalised input are set to 0, which is the
ImageNet mean colour -- the "nothing here" value the network saw most in training.
"""
import numpy as np
import torch
from einops import rearrange, repeat

from .model import G, P, forward

FRACTIONS = tuple(i / 10 for i in range(10))  # 0 (nothing removed), 0.1, ..., 0.9


def auc(fractions, values):
    """Area under a curve by the trapezoid rule, x = fractions (x = 0 included)."""
    x, y = np.asarray(fractions, np.float64), np.asarray(values, np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def removal_masks(grid, fractions=FRACTIONS, most_relevant_first=True):
    """(G, G) map -> (S, 224, 224) keep-masks: 0 on the removed patches, 1 elsewhere.

    Step s removes round(fractions[s] * G*G) patches; ties are ranked by patch index.
    """
    order = torch.argsort(grid.flatten(), descending=most_relevant_first, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.tensor([round(f * order.numel()) for f in fractions], device=grid.device)
    keep = (rank[None, :] >= counts[:, None]).float()  # (S, G*G)
    keep = rearrange(keep, "s (gh gw) -> s gh gw", gh=G)
    return repeat(keep, "s gh gw -> s (gh ph) (gw pw)", ph=P, pw=P)


@torch.no_grad()
def perturbation_test(weights, image, grids, category, fractions=FRACTIONS):
    """One (3, 224, 224) input and maps {name: (G, G)} -> {name: {"fractions": [...],
    "positive": [...], "negative": [...], "positive_auc": a, "negative_auc": b}}: the class's
    probability after each step, and the areas under the two curves.

    Every step of every map and both orders go through the model as one batch.
    """
    names = list(grids)
    masks = torch.cat([removal_masks(grids[n].to(image.device), fractions, first)
                       for n in names for first in (True, False)])
    logits, _ = forward(weights, image[None] * masks[:, None])
    probability = logits.softmax(dim=-1)[:, category].cpu().numpy()
    curves = rearrange(probability, "(n order s) -> n order s", n=len(names), order=2)
    result = {}
    for name, (positive, negative) in zip(names, curves):
        result[name] = {"fractions": list(fractions),
                        "positive": positive.tolist(), "negative": negative.tolist(),
                        "positive_auc": auc(fractions, positive), "negative_auc": auc(fractions, negative)}
    return result
