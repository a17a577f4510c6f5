"""The package's evaluation scores against Quantus 0.6.0's (Hedström et al., JMLR 2023), called as
the reference on the same model, pictures and maps. Quantus runs with abs=False, normalise=False
and return_aggregate=False, so that it gives its raw per-sample values.

What is compared, and where the two definitions differ:

* Patch removal (``evaluate.removal_curves``) against ``quantus.RegionPerturbation`` (patch_size
  16, baseline 0.0, "morf" and "lerf"). Quantus returns p_0 - p_k, the fall of the class's
  softmax probability after its k-th region, k = 1..K, without the unperturbed point; our
  curve's step s removes round(f_s * 196) patches and its step 0 is the untouched picture. So
  Quantus runs K = round(0.9 * 196) = 176 regions, and its column k - 1 is compared with our
  p_0 - p_s at k = round(f_s * 196). Quantus orders its regions by numpy's unstable argsort,
  ours breaks ties by patch index: the maps here have 196 distinct values, so the orders are
  the same. Quantus sums the map over each region (and over the 3 colour channels it broadcasts
  the map to), which ranks a patch map's upsampled copy as the patch map.
* The cascading randomisation (``sanity.randomisation_check``) against ``quantus.MPRT``
  (top-down, Spearman). Quantus resets, from the last in ``named_modules()`` up, every submodule
  that has a ``reset_parameters`` (torch.manual_seed(seed + 1) first); ours draws each block's
  tensors from a normal with their own mean and standard deviation, seeded per block
  (``sanity.randomised``). The test makes the randomisation the same -- the model handed to
  Quantus has twelve block holders and nothing else with a ``reset_parameters``, and holder
  l's reset puts in block l as ``sanity.randomised`` draws it -- so that what is compared is the
  cascade (which blocks are random at each depth, and in which order) and the correlation.
* ``localisation.pointing_game`` against ``quantus.PointingGame``: both count a hit where any
  pixel of the peak value is in the mask, every tied peak included; and
  ``localisation.relevance_mass`` against ``quantus.RelevanceMassAccuracy``: Quantus's is
  sum(a * s) / sum(a) on the map as it is, ours the share of the map's positive part
  (clipped at 0, Arras et al.'s definition), so they agree on nonnegative maps and differ on
  signed ones (tested both ways).
"""
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

import deit_functional

quantus = pytest.importorskip("quantus", reason="the test extra's Quantus 0.6.0: pip install -e '.[test]'")
from deit_functional import model as deit_model
from deit_functional import sanity
from deit_functional.evaluate import FRACTIONS, removal_curves
from deit_functional.localisation import box_mask, pointing_game, relevance_mass
from deit_functional.methods import METHODS
from test_field_methods import in_float64

RAW = dict(abs=False, normalise=False, return_aggregate=False, disable_warnings=True, display_progressbar=False)


def upsampled(maps):
    """(N, G, G) patch maps (numpy) -> (N, 1, 224, 224): each patch's value on its 16 x 16 pixels."""
    return np.kron(np.asarray(maps), np.ones((16, 16)))[:, None]


class Classifier(nn.Module):
    """The functional model as the nn.Module Quantus calls: inputs (cast to the weights' dtype) ->
    logits. It holds no parameters and no module with a ``reset_parameters``."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def forward(self, x):
        return deit_model.forward(self.weights, x.to(self.weights["cls_token"].dtype))[0]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """torch on one thread for this module: Quantus runs hundreds of small-batch passes, which a
    second thread barely speeds up and which ran >10x slower on two threads of two cores shared
    with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Quantus warns about its settings on every call
        yield


def test_removal_curves_equal_quantus_region_perturbation(weights, images, quiet):
    """removal_curves' probabilities at every step of FRACTIONS equal Quantus's RegionPerturbation
    (p_0 minus its k-th value, k = round(f * 196)), most relevant first ("morf") and least
    ("lerf"), patches set to 0, for 2 pictures with 2 maps each and a class per picture.

    The model: the seeded random DeiT-tiny cut to its first block (Quantus runs 176 passes per
    order; the curves do not depend on the depth), its head scaled by 100 (the random model's
    logits are nearly flat, std ~0.07, so its probabilities would hardly move), in float64 so
    that the two batchings agree to rounding. Quantus casts its inputs to float32, which the
    float32 pictures survive exactly."""
    shallow = in_float64({**weights, "blocks": weights["blocks"][:1],
                          "head": {k: 100 * v for k, v in weights["head"].items()}})
    pictures = images[:2].double()
    grids = torch.rand(2, 2, 14, 14, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert all(len(torch.unique(g)) == 196 for g in grids.flatten(0, 1))  # no ties: one order for both
    with torch.no_grad():
        probabilities = Classifier(shallow)(pictures).softmax(-1)
    ranked = probabilities.argsort(-1, descending=True)
    categories = torch.stack([ranked[0, 0], ranked[1, 1]])  # picture 0's top class, picture 1's second

    ours = removal_curves(shallow, pictures, grids, categories)  # (B, R, 2, S)
    assert ours.shape == (2, 2, 2, len(FRACTIONS))
    untouched = probabilities.gather(1, categories[:, None]).numpy()  # (B, 1)
    np.testing.assert_allclose(ours[..., 0], np.broadcast_to(untouched[:, :, None], (2, 2, 2)), rtol=0, atol=1e-12)

    counts = [round(f * 196) for f in FRACTIONS]  # 0, 20, 39, 59, 78, 98, 118, 137, 157, 176
    x = pictures.float().repeat_interleave(2, 0).numpy()  # sample 2b + r: picture b, map r
    y = categories.repeat_interleave(2).numpy()
    a = upsampled(grids.flatten(0, 1).numpy())
    for o, order in enumerate(("morf", "lerf")):
        metric = quantus.RegionPerturbation(patch_size=16, order=order, regions_evaluation=counts[-1],
                                            perturb_baseline=0.0, **RAW)
        falls = np.asarray(metric(model=Classifier(shallow).eval(), x_batch=x, y_batch=y, a_batch=a,
                                  softmax=True, device="cpu"))
        assert falls.shape == (4, counts[-1])
        theirs = falls[:, [k - 1 for k in counts[1:]]].reshape(2, 2, -1)
        mine = ours[:, :, o, :1] - ours[:, :, o, 1:]
        assert np.abs(mine).max() > 1e-2  # the curves move: the tolerance below is far under it
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-12, err_msg=order)
    assert np.abs(ours[:, :, 0] - ours[:, :, 1]).max() > 1e-3  # the two orders give different curves


class BlockHolder(nn.Module):
    """Block ``index`` of the weights, as a module Quantus's MPRT randomises: its
    ``reset_parameters`` puts in the block as ``sanity.randomised`` draws it (the same at every
    depth that randomises it)."""

    def __init__(self, weights, index, seed):
        super().__init__()
        self.original, self.index, self.seed = weights, index, seed
        self.block = weights["blocks"][index]

    def reset_parameters(self):
        depth = len(self.original["blocks"]) - self.index  # the depth at which this block is the lowest random one
        self.block = sanity.randomised(self.original, depth, self.seed)["blocks"][self.index]


class HeldBlocks(Classifier):
    """The functional model with its blocks in BlockHolders, named "blocks.0" .. "blocks.11"."""

    def __init__(self, weights, seed):
        super().__init__(weights)
        self.blocks = nn.ModuleList(BlockHolder(weights, index, seed) for index in range(len(weights["blocks"])))

    def current(self):
        return {**self.weights, "blocks": [holder.block for holder in self.blocks]}

    def forward(self, x):
        return deit_model.forward(self.current(), x)[0]


@pytest.mark.parametrize("method", ["attention", "gradient"])
def test_randomisation_check_equals_quantus_mprt(weights, images, method, quiet):
    """randomisation_check's (L, B, R) rank correlations equal Quantus MPRT's per-layer values,
    top-down: depth d (blocks L-d..L-1 random) is Quantus's entry for holder "blocks.{L-d}",
    for each head fusion r, for Attention Rollout (class-agnostic) and Gradient Rollout (one
    class per picture), discard ratio 0.9.

    explain_func hands Quantus each map upsampled to (N, 1, 224, 224), as Quantus's maps are
    per pixel, while ours correlates the 14 x 14 patch maps. The two Spearman coefficients are
    the same number: in the upsampled map each patch value appears 256 times, so its average
    ranks are 256 r - 127.5, r the patch map's own average ranks (ties included) -- an affine
    function of them -- and repeating every pair 256 times leaves Pearson's correlation of the
    ranks unchanged (test_spearman_of_upsampled_maps_is_that_of_the_patch_maps checks it).
    """
    m, seed, fusions = METHODS[method], 3, ("mean", "max")
    pictures = images[:2]
    categories = torch.tensor([3, 7]) if m.uses_gradient else None
    labels = np.array([3, 7])
    ours = sanity.randomisation_check(weights, pictures, m, categories, fusions, 0.9, seed=seed)
    blocks = len(weights["blocks"])
    assert ours.shape == (blocks, 2, len(fusions))
    assert ours.std() > 0.05  # the maps do change as blocks go random

    for r, fusion in enumerate(fusions):
        def explain_func(model, inputs, targets, **kwargs):
            category = torch.as_tensor(targets) if m.uses_gradient else None
            _, maps = deit_functional.explain(model.current(), torch.as_tensor(inputs), method, category=category,
                                              head_fusions=(fusion,), discard_ratio=0.9)
            return upsampled(maps[fusion].numpy())

        metric = quantus.MPRT(layer_order="top_down", seed=11, **RAW)
        theirs = metric(model=HeldBlocks(weights, seed).eval(), x_batch=pictures.numpy(), y_batch=labels,
                        a_batch=None, explain_func=explain_func, device="cpu")
        assert list(theirs) == ["original"] + [f"blocks.{i}" for i in reversed(range(blocks))]
        np.testing.assert_allclose(theirs["original"], 1.0, rtol=0, atol=1e-12)  # the map is deterministic
        for depth in range(1, blocks + 1):
            np.testing.assert_allclose(ours[depth - 1, :, r].numpy(), theirs[f"blocks.{blocks - depth}"],
                                       rtol=0, atol=1e-9, err_msg=f"{fusion}, depth {depth}")


def test_spearman_of_upsampled_maps_is_that_of_the_patch_maps():
    """What the MPRT comparison rests on: Spearman's coefficient of two nearest-upsampled patch
    maps is that of the patch maps, ties included (maps of a few levels, so that many tie);
    and sanity.rank_correlation gives the same on the patch maps."""
    generator = torch.Generator().manual_seed(5)
    small = torch.randint(0, 6, (4, 2, 14, 14), generator=generator).double()
    for a, b in small:
        on_pixels = scipy.stats.spearmanr(upsampled(a[None].numpy()).ravel(), upsampled(b[None].numpy()).ravel())[0]
        on_patches = scipy.stats.spearmanr(a.flatten().numpy(), b.flatten().numpy())[0]
        assert on_pixels == pytest.approx(on_patches, abs=1e-12)
        assert sanity.rank_correlation(a.flatten(), b.flatten()).item() == pytest.approx(on_patches, abs=1e-12)


def box_masks(count, generator):
    """``count`` (224, 224) masks, each of 2-3 random boxes on a 300 x 400 picture (box_mask)."""
    masks = []
    for _ in range(count):
        boxes = []
        for _ in range(int(torch.randint(2, 4, (), generator=generator))):
            x0, y0 = (float(v) for v in torch.rand(2, generator=generator) * torch.tensor([300.0, 200.0]))
            w, h = (float(v) for v in 20 + torch.rand(2, generator=generator) * 80)
            boxes.append((0, (x0, y0, x0 + w, y0 + h)))
        masks.append(box_mask(boxes, 0, 300, 400))
    return torch.stack(masks)


def quantus_scores(metric, grids, masks):
    """Quantus's per-sample scores for (B, R, G, G) maps and (B, 224, 224) masks -> (B, R)."""
    b, r = grids.shape[:2]
    a = upsampled(grids.flatten(0, 1).numpy())
    s = masks.repeat_interleave(r, 0)[:, None].numpy()
    x = np.zeros((b * r, 3, 224, 224), np.float32)
    scores = metric(model=None, x_batch=x, y_batch=np.zeros(b * r, int), a_batch=a, s_batch=s)
    return np.asarray(scores, dtype=np.float64).reshape(b, r)


def test_pointing_game_equals_quantus(quiet):
    """pointing_game equals Quantus's PointingGame on nonnegative maps of a few levels (so peaks
    tie) and masks of several boxes; among the cases, a hit that only a tied peak other than the
    first makes, and misses."""
    generator = torch.Generator().manual_seed(11)
    masks = box_masks(3, generator)
    grids = torch.randint(0, 40, (3, 6, 14, 14), generator=generator).double()
    patch_in_box = masks[:, 8::16, 8::16]  # each patch's centre pixel
    inside, outside = patch_in_box[0].flatten().nonzero()[0, 0], (~patch_in_box[0]).flatten().nonzero()[0, 0]
    assert outside < inside
    grids[0, 0] = 0
    grids[0, 0].view(-1)[torch.stack([outside, inside])] = 40  # two tied peaks: the first outside, the other in a box
    ours = pointing_game(grids, masks)
    theirs = quantus_scores(quantus.PointingGame(**RAW), grids, masks)
    np.testing.assert_array_equal(ours.numpy(), theirs)
    assert theirs[0, 0] == 1 and 0 < theirs.mean() < 1  # the tied hit is among the cases, and hits and misses


def test_relevance_mass_equals_quantus_on_nonnegative_maps(quiet):
    """relevance_mass equals Quantus's RelevanceMassAccuracy, sum(a * s) / sum(a), on nonnegative
    maps -- continuous ones and ones of a few levels with zeros -- and masks of several boxes."""
    generator = torch.Generator().manual_seed(12)
    masks = box_masks(3, generator)
    grids = torch.cat([torch.rand(3, 3, 14, 14, generator=generator, dtype=torch.float64),
                       torch.randint(0, 3, (3, 3, 14, 14), generator=generator).double()], dim=1)
    ours = relevance_mass(grids, masks).numpy()
    theirs = quantus_scores(quantus.RelevanceMassAccuracy(**RAW), grids, masks)
    assert ours.std() > 0.01  # the masses differ from map to map
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


def test_relevance_mass_clips_negative_relevance_where_quantus_does_not(quiet):
    """On signed maps the definitions part: Quantus's value is sum(a * s) / sum(a) of the map as it
    is, ours that of its positive part, max(a, 0) -- and the two differ on every map here."""
    generator = torch.Generator().manual_seed(13)
    masks = box_masks(3, generator)
    grids = torch.randn(3, 4, 14, 14, generator=generator, dtype=torch.float64) + 0.2
    a = upsampled(grids.flatten(0, 1).numpy()).reshape(3, 4, -1)
    s = masks.flatten(1).numpy()[:, None].astype(np.float64)
    positive = np.clip(a, 0, None)
    ours = relevance_mass(grids, masks).numpy()
    theirs = quantus_scores(quantus.RelevanceMassAccuracy(**RAW), grids, masks)
    np.testing.assert_allclose(theirs, (a * s).sum(-1) / a.sum(-1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours, (positive * s).sum(-1) / positive.sum(-1), rtol=1e-12, atol=0)
    assert np.all(np.abs(ours - theirs) > 1e-3)
