"""Class activation maps on the token stream: a CNN method, read off a ViT's tokens.

Grad-CAM -- Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, as pytorch-grad-cam applies it to a ViT: the
activations are a = norm1(x_(L-1)), what the last block's attention reads (B, N, D), their
patch tokens taken as D channels over the G x G grid; each channel weighs by the mean of
∂y_c/∂a over the patches:
    w_d = mean_n ∂y_c/∂a[n, d],  cam = ReLU(Σ_d w_d a[:, d])  over the patches n = 1 .. G*G.
Why inside the block: the last block's output patch tokens reach the classifier only through
the CLS token, which they no longer feed, so their gradient is 0.

The map is scaled to max 1 (rollout.to_grid); pytorch-grad-cam min-max normalises it. It has no
heads to fuse. Shapes as model.py.
"""
from einops import einsum

from .rollout import patch_grid


def grad_cam(run, head_fusion="none"):
    """ReLU(Σ_d w_d a_d) over the patches, w_d the mean gradient of channel d -> (B, G, G)."""
    activations, gradient = (t[:, run.prefix:] for t in (run.attention_input, run.attention_input_gradient))  # (B, G*G, D)
    weights = gradient.mean(dim=1)  # (B, D)
    return patch_grid(einsum(activations, weights, "b n d, b d -> b n").clamp_min(0))
