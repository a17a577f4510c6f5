"""The library's front door: from a batch of images to explanations in one call.

One model run that keeps what the method needs (model_run.py) -- a forward pass, and for a
class-specific method one backward pass from the class's logit -- then the method's map for
every head fusion asked for. Nothing is trained.
"""
import torch

from .methods import METHODS, method_named
from .model_run import run_model
from .rollout import by_layer, fast_form_serves, fuse_heads, layer_maps, rolled_out, to_grid


def run_method(weights, images, method, category):
    """The model run (model_run.ModelRun) ``method`` (a Method) needs, for ``category`` exactly
    when it explains one class."""
    if method.uses_gradient and category is None:
        raise ValueError(f"method {method.name!r} explains one class: pass its category")
    if not method.uses_gradient and category is not None:
        choices = " or ".join(repr(name) for name, m in METHODS.items() if m.uses_gradient)
        raise ValueError(f"method {method.name!r} uses no gradient, so it takes no category; for one "
                         f"class's map choose method={choices}")
    return run_model(weights, images, method.keeps, category)


def fusions_of(method, head_fusions):
    """The head fusions ``method`` runs with: those asked, checked (None: its first)."""
    if head_fusions is None:
        return method.fusions[:1]
    wrong = [f for f in head_fusions if f not in method.fusions]
    if wrong:
        raise ValueError(f"method {method.name!r} offers head fusion {' or '.join(map(repr, method.fusions))}, "
                         f"not {', '.join(map(repr, wrong))}")
    return tuple(head_fusions)


def discard_of(method, discard_ratio):
    """The discard ratio ``method`` runs with, checked: a method that discards nothing takes 0 only."""
    if discard_ratio and not method.discards:
        raise ValueError(f"method {method.name!r} discards nothing: it takes no discard_ratio")
    return discard_ratio


def explain(weights, images, method="attention", *, category=None, head_fusions=None, discard_ratio=0.0):
    """Explain (B, 3, 224, 224) images -> ``(logits (B, C), {head fusion: (B, G, G) map, max 1})``.

    ``method`` is a key of methods.METHODS (or a Method): "attention" (Attention Rollout),
    "flow" (Attention Flow, which needs SciPy) or "raw-attention" explain what the model looks
    at; "gradient" (Gradient Rollout), "chefer", "grad-cam", "grad-sam", "tam",
    "beyond-intuition", "legrad" and the relevance methods "input-gradient",
    "integrated-gradients", "cp-lrp", "attnlrp" and "transformer-attribution" explain the class
    ``category`` (an int, or one per image as a (B,) tensor). A per-pixel method's maps
    (Method.per_pixel) are (B, 224, 224), signed, max |value| 1. ``head_fusions`` are those the
    method offers (Method.fusions; default: its first, "mean" where it fuses heads); one model
    run serves every fusion. Integrated gradients take their steps from the Method:
    ``METHODS["integrated-gradients"].with_steps(64)``.
    """
    m = method_named(method)
    fusions, ratio = fusions_of(m, head_fusions), discard_of(m, discard_ratio)
    run = run_method(weights, images, m, category)
    with torch.no_grad():
        maps = {f: m.map(run, f, ratio) for f in fusions}
    return run.logits, maps


def explain_by_layer(weights, images, method="attention", *, category=None, head_fusions=None,
                     discard_ratio=0.0):
    """As ``explain``, layer by layer -> ``(logits, {fusion: (L, B, G, G)}, {fusion: (L, B, G, G)})``,
    for a method that builds its map layer by layer (a rollout: Method.rollout).

    The first dict holds the method's map through layers 1..l for each l (its last entry is
    ``explain``'s map); the second each layer's own CLS attention, heads fused -- what the layer
    itself looks at, before discard or gradient weighting.
    """
    m = method_named(method)
    fusions, ratio = fusions_of(m, head_fusions), discard_of(m, discard_ratio)
    check_layer_by_layer(m)  # before the model runs
    run = run_method(weights, images, m, category)
    return (run.logits, *maps_by_layer(m, run, fusions, ratio))


def check_layer_by_layer(method):
    """Refuse a method that does not build its map layer by layer (not a rollout)."""
    if method.rollout is None:
        raise ValueError(f"method {method.name!r} does not build its map layer by layer; these do: "
                         + ", ".join(name for name, m in METHODS.items() if m.rollout))


def maps_by_layer(method, run, head_fusions, discard_ratio):
    """explain_by_layer's maps from run_method's run -> ({fusion: (L, B, G, G)}, {fusion: (L, B,
    G, G)}): the method's map through layers 1..l, each layer's own.

    The map through all L layers is explain()'s to the bit: the fast form where one serves
    (Attention Rollout on the CPU), else the combine of the same layer maps, as rolled_out
    would make it; the others come from by_layer."""
    check_layer_by_layer(method)
    spec = method.rollout
    with torch.no_grad():
        through = {}
        for f in head_fusions:
            layers = layer_maps(spec, run.attentions, run.gradients, f, discard_ratio)
            earlier = by_layer(spec.combine, layers[:-1], spec.renormalise, run.prefix)  # through layers 1..l, l < L
            whole = (rolled_out(spec, run.attentions, run.gradients, f, discard_ratio, run.prefix)
                     if fast_form_serves(spec, run.attentions, f) else spec.combine(layers, spec.renormalise, run.prefix))
            through[f] = torch.cat([earlier, whole[None]])
        own = {f: torch.stack([to_grid(fuse_heads(a, f)[:, 0], run.prefix) for a in run.attentions]) for f in head_fusions}
    return through, own
