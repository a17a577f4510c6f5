"""DeiT-tiny as plain tensor code: one pure function per stage, no nn.Module, no hooks.

The forward follows timm's ``deit_tiny_patch16_224`` (Touvron et al., "Training data-efficient
image transformers", ICML 2021) op for op, in the same order as timm's *unfused* attention path,
so on CPU float32 it is bitwise equal to timm with ``fused_attn = False``.

Shape legend (used in every einops string below):
    B  batch                       N  tokens = 1 CLS + G*G patches = 197
    D  width = 192                 H  heads = 3
    d  head width = D / H = 64     L  blocks = 12
    G  patch grid side = 14        P  patch side = 16 pixels
    C  classes = 1000
"""
import torch
import torch.nn.functional as F
from einops import rearrange

IMAGE_SIZE, PATCH, WIDTH, HEADS, DEPTH, MLP_WIDTH, CLASSES = 224, 16, 192, 3, 12, 768, 1000
GRID = IMAGE_SIZE // PATCH
TOKENS = 1 + GRID * GRID
LN_EPS = 1e-6  # timm builds DeiT's LayerNorms with eps=1e-6, not torch's default 1e-5


def layer_norm(x, p):
    return F.layer_norm(x, (x.shape[-1],), p["weight"], p["bias"], eps=LN_EPS)


def linear(x, p):
    return F.linear(x, p["weight"], p["bias"])


def embed(w, images):
    """(B, 3, 224, 224) normalised pixels -> (B, N, D) tokens: patches, CLS first, positions."""
    patches = F.conv2d(images, w["patch_embed"]["proj"]["weight"], w["patch_embed"]["proj"]["bias"],
                       stride=PATCH)
    patches = rearrange(patches, "b d gh gw -> b (gh gw) d")
    cls = w["cls_token"].expand(images.shape[0], -1, -1)
    # pos_embed has N rows including CLS: concatenate first, then add (timm/DeiT order).
    return torch.cat([cls, patches], dim=1) + w["pos_embed"]


def attention(p, x):
    """Multi-head self-attention on (B, N, D) -> ((B, N, D), attention map (B, H, N, N)).

    The map is returned, not captured: it is the post-softmax matrix every rollout starts from.
    """
    qkv = rearrange(linear(x, p["qkv"]), "b n (three h d) -> three b h n d", three=3, h=HEADS)
    q, k, v = qkv.unbind(0)
    q = q * (q.shape[-1] ** -0.5)  # scale q before the product, as timm does (same rounding)
    attn = (q @ rearrange(k, "b h n d -> b h d n")).softmax(dim=-1)
    out = rearrange(attn @ v, "b h n d -> b n (h d)")
    return linear(out, p["proj"]), attn


def mlp(p, x):
    return linear(F.gelu(linear(x, p["fc1"])), p["fc2"])  # exact (erf) GELU, as nn.GELU()


def block(p, x):
    """Pre-norm transformer block; the residual stream is the two visible additions."""
    mixed, attn = attention(p["attn"], layer_norm(x, p["norm1"]))
    x = x + mixed
    x = x + mlp(p["mlp"], layer_norm(x, p["norm2"]))
    return x, attn


def head(w, x):
    """Final LayerNorm, then the classifier on the CLS token: (B, N, D) -> (B, C) logits."""
    return linear(layer_norm(x, w["norm"])[:, 0], w["head"])


def forward(weights, images, retain_grad=False):
    """Run DeiT on (B, 3, 224, 224) normalised images.

    Returns ``(logits, attentions)``: logits (B, C) and a list of L post-softmax attention maps,
    each (B, H, N, N), first block first. With ``retain_grad=True`` every map keeps its ``.grad``
    after ``backward()`` from the logits -- the weights are plain tensors that need no gradient,
    so the token stream is made the leaf the graph grows from.
    """
    with torch.set_grad_enabled(retain_grad or torch.is_grad_enabled()):
        x = embed(weights, images)
        if retain_grad and not x.requires_grad:
            x.requires_grad_(True)
        attentions = []
        for p in weights["blocks"]:
            x, attn = block(p, x)
            if retain_grad:
                attn.retain_grad()
            attentions.append(attn)
        return head(weights, x), attentions
