"""Does a map depend on what the model learned? The cascading model-parameter randomisation of
Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018.

The blocks' weights are replaced by random ones from the top block down, one more block at a
time (``randomised``), and the method explains the same pictures, for the same class, again.
The Spearman rank correlation of each new map with the original (``rank_correlation``) says
how much of the map was the model's: a method whose map keeps its ranking once every block is
random shows the picture, not the model, and fails the check (``FAILS_ABOVE``).

A random tensor keeps its original's mean and standard deviation (per tensor), so the model's
scale -- and with it the softmax's sharpness -- stays what it was; only what was learned goes.
"""
import torch

from .explanations import explain
from .pixel_relevance import patch_maps
from .weights import architecture_of

FAILS_ABOVE = 0.5  # a mean rank correlation above this with every block random: the map did not change
PICTURES = 8  # the check runs on a run's first 8 pictures: L more runs of each method (12 x 32 steps
#               for integrated gradients)


def random_like(tensor, generator):
    """A tensor of ``tensor``'s shape, normal with its mean and standard deviation."""
    noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
    values = tensor.double()
    std = values.std() if values.numel() > 1 else values.new_zeros(())
    return (values.mean() + std * noise).to(tensor.dtype).to(tensor.device)


def randomised(weights, depth, seed=0):
    """The weights with their top ``depth`` blocks' tensors random (random_like); the embedding,
    the other blocks and the head as they are. Block l's tensors are the same at every depth
    that randomises it, so depth d + 1 only adds a block to depth d's."""
    def random_tree(tree, generator):
        return {k: random_tree(v, generator) if isinstance(v, dict) else
                random_like(v, generator) if torch.is_tensor(v) else v for k, v in tree.items()}
    blocks = list(weights["blocks"])
    for index in range(len(blocks) - depth, len(blocks)):
        blocks[index] = random_tree(blocks[index], torch.Generator().manual_seed(seed * 1000 + index))
    return {**weights, "blocks": blocks}


def average_ranks(values):
    """(..., n) -> (..., n) float64 ranks 1..n, tied values sharing their mean rank (as
    scipy.stats.rankdata): #{j: v_j < v_i} + (#{j: v_j = v_i} + 1) / 2."""
    below = (values[..., None, :] < values[..., :, None]).sum(-1)
    equal = (values[..., None, :] == values[..., :, None]).sum(-1)
    return below.double() + (equal.double() + 1) / 2


def rank_correlation(a, b):
    """(..., n), (..., n) -> (...) Spearman's rank correlation: Pearson's of the average ranks. A
    constant map ranks nothing: 1 with another constant map, 0 with any other."""
    ra, rb = (average_ranks(x) for x in (a, b))
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    spread = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    rho = (ra * rb).sum(-1) / spread.clamp_min(1e-300)
    both_constant = (ra.abs().sum(-1) == 0) & (rb.abs().sum(-1) == 0)
    return torch.where(both_constant, torch.ones_like(rho), rho)


def randomisation_check(weights, pictures, method, categories, head_fusions, discard_ratio, seed=0,
                        original=None):
    """(B, 3, 224, 224) pictures, Method ``method``, (B,) classes (None: a method that explains
    none) -> (L, B, R) rank correlations of each fusion's patch map (per-pixel maps summed per
    patch) with every block from the top down to block L - d random, d = 1..L, against the
    original weights' map: ``original`` (B, R, G*G) where the caller has it, else made here."""
    def maps(w):
        _, by_fusion = explain(w, pictures, method, category=categories, head_fusions=head_fusions,
                               discard_ratio=discard_ratio)
        grids = patch_maps(method, by_fusion, architecture_of(w).P)
        return torch.stack([grids[f] for f in head_fusions], dim=1).flatten(-2)  # (B, R, G*G)
    original = maps(weights) if original is None else original
    return torch.stack([rank_correlation(maps(randomised(weights, depth, seed)), original)
                        for depth in range(1, len(weights["blocks"]) + 1)])
