"""The library's front door: from a batch of images to explanations in one call.

One forward pass (and, for a method that uses the gradient, one backward pass from the class's
logit), then the method's rollout for every head fusion asked for. Nothing is trained.
"""
import torch

from .model import forward
from .rollout import (METHODS, by_layer, fast_form_serves, fuse_heads, layer_maps, method_map, method_named,
                      to_grid)


def run_model(weights, images, category=None):
    """-> (logits (B, C), L attention maps (B, H, N, N), their gradients or None).

    With a ``category`` (an int, or a (B,) tensor of class indices) the gradient of that class's
    logit is taken by one backward pass at inference.
    """
    if category is None:
        with torch.no_grad():
            logits, attentions = forward(weights, images)
        return logits, attentions, None
    logits, attentions = forward(weights, images, retain_grad=True)
    category = torch.as_tensor(category, device=logits.device).expand(logits.shape[0])
    # The images of a batch do not interact, so the summed logits give each image its own gradient.
    logits.gather(1, category[:, None]).sum().backward()
    return logits.detach(), [a.detach() for a in attentions], [a.grad for a in attentions]


def run_method(weights, images, method, category):
    """run_model for ``method``: with the gradient of ``category`` exactly when the method uses it."""
    uses_gradient = method_named(method).uses_gradient
    if uses_gradient and category is None:
        raise ValueError(f"method {method!r} explains one class: pass its category")
    if not uses_gradient and category is not None:
        choices = " or ".join(repr(name) for name, m in METHODS.items() if m.uses_gradient)
        raise ValueError(f"method {method!r} uses no gradient, so it takes no category; for one "
                         f"class's map choose method={choices}")
    return run_model(weights, images, category)


def explain(weights, images, method="attention", *, category=None, head_fusions=("mean",), discard_ratio=0.0):
    """Explain (B, 3, 224, 224) images -> ``(logits (B, C), {head fusion: (B, G, G) map, max 1})``.

    ``method`` is a key of rollout.METHODS: "attention" (Attention Rollout) or "flow" (Attention
    Flow, which needs SciPy), or "gradient" (Gradient Rollout) or "chefer" (Chefer et al. 2021),
    which explain the class ``category`` (an int, or one per image as a (B,) tensor). One model
    run serves every fusion.
    """
    logits, attentions, gradients = run_method(weights, images, method, category)
    with torch.no_grad():
        maps = {f: method_map(method, attentions, gradients, f, discard_ratio) for f in head_fusions}
    return logits, maps


def explain_by_layer(weights, images, method="attention", *, category=None, head_fusions=("mean",),
                     discard_ratio=0.0):
    """As ``explain``, layer by layer -> ``(logits, {fusion: (L, B, G, G)}, {fusion: (L, B, G, G)})``.

    The first dict holds the method's map through layers 1..l for each l (its last entry is
    ``explain``'s map); the second each layer's own CLS attention, heads fused -- what the layer
    itself looks at, before discard or gradient weighting.
    """
    logits, attentions, gradients = run_method(weights, images, method, category)
    return (logits, *maps_by_layer(method, attentions, gradients, head_fusions, discard_ratio))


def maps_by_layer(method, attentions, gradients, head_fusions, discard_ratio):
    """explain_by_layer's maps from run_method's attentions and gradients -> ({fusion: (L, B, G,
    G)}, {fusion: (L, B, G, G)}): the method's map through layers 1..l, each layer's own.

    The map through all L layers is explain()'s to the bit: method_map's fast form where one
    serves (Attention Rollout on the CPU), else the method's combine of the same layer maps, as
    method_map would make it; the others come from by_layer."""
    m = method_named(method)
    with torch.no_grad():
        through = {}
        for f in head_fusions:
            layers = layer_maps(method, attentions, gradients, f, discard_ratio)
            earlier = by_layer(m.combine, layers[:-1], m.renormalise)  # through layers 1..l, l < L
            whole = (method_map(method, attentions, gradients, f, discard_ratio) if fast_form_serves(m, attentions, f)
                     else m.combine(layers, m.renormalise))
            through[f] = torch.cat([earlier, whole[None]])
        own = {f: torch.stack([to_grid(fuse_heads(a, f)[:, 0]) for a in attentions]) for f in head_fusions}
    return through, own
