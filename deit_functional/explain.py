"""From a batch of images to explanations in one call: forward, one manual backward, rollout."""
import torch

from .model import forward
from .rollout import attention_rollout, chefer_rollout, gradient_rollout

GRADIENT_RULES = {"rollout": gradient_rollout, "chefer": chefer_rollout}


def explain(weights, images, head_fusions=("mean",), discard_ratio=0.0, category=None, rule="rollout"):
    """Explain (B, 3, 224, 224) images -> ``(logits (B, C), {fusion: (B, G, G) map})``.

    ``category=None``: Attention Rollout, no gradient. ``category`` an int or a (B,) tensor of
    class indices: the gradient of that class's logit is taken by one backward pass at inference
    (nothing is trained) and combined by ``rule``: "rollout" (Gradient Rollout) or "chefer"
    (Chefer et al. 2021). One forward serves every fusion in ``head_fusions``.
    """
    if category is None:
        with torch.no_grad():
            logits, attentions = forward(weights, images)
        return logits, {f: attention_rollout(attentions, f, discard_ratio) for f in head_fusions}

    combine = GRADIENT_RULES[rule]
    logits, attentions = forward(weights, images, retain_grad=True)
    category = torch.as_tensor(category, device=logits.device).expand(logits.shape[0])
    # The images of a batch do not interact, so the summed logits give each image its own gradient.
    logits.gather(1, category[:, None]).sum().backward()
    with torch.no_grad():
        gradients = [a.grad for a in attentions]
        maps = {f: combine(attentions, gradients, f, discard_ratio) for f in head_fusions}
    return logits.detach(), maps
