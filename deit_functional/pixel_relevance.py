"""Relevance per input pixel: gradient × input, integrated gradients and the LRP rules' maps.

Each of these methods gives the model run's input relevance (model_run.ModelRun.input_relevance,
(B, 3, 224, 224)): the input times the gradient of the class's logit, which the rules of
model.RULES turn into layer-wise relevance propagation. What the map shows is its sum over the
colour channels, one value per pixel of the model's input; signed, as relevance is (negative:
speaks against the class). Where a patch grid is needed (the perturbation test, the saved grid),
``patch_sums`` adds up each patch's pixels.
"""
from einops import reduce, repeat


def pixel_relevance(run, head_fusion="none"):
    """Σ over the colour channels of the input relevance -> (B, 224, 224), scaled so that the
    largest |value| is 1 (an all-zero map stays 0); it has no heads to fuse."""
    relevance = run.input_relevance.sum(dim=1)
    peak = reduce(relevance.abs(), "b h w -> b () ()", "max")
    return relevance / peak.where(peak > 0, 1)


def patch_sums(pixels, patch):
    """(..., 224, 224) a value per pixel -> (..., G, G) the sum over each P x P patch, P = ``patch``."""
    return reduce(pixels, "... (gh ph) (gw pw) -> ... gh gw", "sum", ph=patch, pw=patch)


def patch_pixels(grids, size):
    """(..., G, G) a value per patch -> (..., size, size): each patch's value on its P x P pixels
    (patch_sums' other way), P = size / G."""
    patch = size // grids.shape[-1]
    return repeat(grids, "... gh gw -> ... (gh ph) (gw pw)", ph=patch, pw=patch)


def patch_maps(method, maps, patch):
    """A map, or a dict of maps, of Method ``method`` -> the same on the (G, G) patch grid: a
    per-pixel map's sums over its ``patch`` x ``patch`` pixels, a patch map as it is."""
    if isinstance(maps, dict):
        return {key: patch_maps(method, m, patch) for key, m in maps.items()}
    return patch_sums(maps, patch) if method.per_pixel else maps
