"""From a batch of images to explanations in one call: forward, one manual backward, rollout."""
import torch

from .model import forward
from .rollout import (attention_layers, chefer_layers, fuse_heads, gradient_layers, rollout,
                      rollout_by_layer, to_grid)

GRADIENT_RULES = ("rollout", "chefer")


def run_model(weights, images, category=None):
    """-> (logits, attention maps, their gradients or None).

    With a ``category`` (an int, or a (B,) tensor of class indices) the gradient of that class's
    logit is taken by one backward pass at inference; nothing is trained.
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


def layer_maps(attentions, gradients, head_fusion, discard_ratio, rule="rollout"):
    """-> (per-layer (B, N, N) maps, whether rows are renormalised) for the chosen method."""
    if gradients is None:
        return attention_layers(attentions, head_fusion, discard_ratio), True
    if rule == "rollout":
        return gradient_layers(attentions, gradients, head_fusion, discard_ratio), True
    if rule == "chefer":
        return chefer_layers(attentions, gradients, head_fusion, discard_ratio), False
    raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(GRADIENT_RULES)}")


@torch.no_grad()
def rollouts(attentions, gradients, head_fusions=("mean",), discard_ratio=0.0, rule="rollout"):
    """The maps of one model run: {fusion: (B, G, G)}, each scaled to max 1."""
    return {f: rollout(*layer_maps(attentions, gradients, f, discard_ratio, rule)) for f in head_fusions}


@torch.no_grad()
def rollouts_by_layer(attentions, gradients, head_fusion="mean", discard_ratio=0.0, rule="rollout"):
    """-> ((L, B, G, G) the rollout after each layer, (L, B, G, G) each layer's raw CLS attention,
    heads fused -- what the layer itself looks at, before discard or gradient weighting)."""
    layers, renormalise = layer_maps(attentions, gradients, head_fusion, discard_ratio, rule)
    raw = torch.stack([to_grid(fuse_heads(a, head_fusion)[:, 0]) for a in attentions])
    return rollout_by_layer(layers, renormalise), raw


def explain(weights, images, head_fusions=("mean",), discard_ratio=0.0, category=None, rule="rollout"):
    """Explain (B, 3, 224, 224) images -> ``(logits (B, C), {fusion: (B, G, G) map})``.

    ``category=None``: Attention Rollout. Otherwise the class's gradient is combined by
    ``rule``: "rollout" (Gradient Rollout) or "chefer" (Chefer et al. 2021). One forward (and
    backward) serves every fusion in ``head_fusions``.
    """
    logits, attentions, gradients = run_model(weights, images, category)
    return logits, rollouts(attentions, gradients, head_fusions, discard_ratio, rule)


def explain_by_layer(weights, images, head_fusion="mean", discard_ratio=0.0, category=None, rule="rollout"):
    """-> (logits, (L, B, G, G) rollout after each layer, (L, B, G, G) each layer's raw CLS attention)."""
    logits, attentions, gradients = run_model(weights, images, category)
    return (logits, *rollouts_by_layer(attentions, gradients, head_fusion, discard_ratio, rule))
