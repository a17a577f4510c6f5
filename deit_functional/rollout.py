"""Attention Rollout and Gradient Rollout, vectorised over the batch.

Attention Rollout -- Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020:
    per layer l, fuse the heads of the post-softmax map, A_l = fuse_h(attn_l)      (B, N, N)
    optionally zero the lowest `discard_ratio` share of each image's A_l (never column 0)
    add the identity for the skip connection and renormalise the rows:
        Ã_l = (A_l + I) / rowsum(A_l + I)
    R_0 = I, R_l = Ã_l R_{l-1}; the explanation is R_L's CLS row over the G*G patches.
  Why renormalise: without discard, mean fusion keeps rows summing to 1 (then renormalising
  only halves, as Abnar's 0.5*A + 0.5*I), but discard and min or max fusion do not, and
  without it those rows would grow or shrink layer after layer. Why column 0 is never
  discarded: entry (i, 0) is how much token i reads the CLS token, and in the product those
  entries carry relevance back through the earlier layers' CLS token. They are often small, so
  one threshold over the whole map would zero them first and cut that route, where discarding
  is meant to drop noise among the patch entries.

Gradient Rollout -- the same product, with each layer's map weighted by the gradient of one
class's logit (Gildenblat's vit-explain; cf. Chefer et al. 2021):
    A_l = max(fuse_h(dy_c/dattn_l ⊙ attn_l), 0)

Chefer et al., "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021 (``chefer_rollout``):
    Ā_l = mean_h((dy_c/dattn_l ⊙ attn_l)^+),  R_0 = I,  R_l = R_{l-1} + Ā_l R_{l-1}
  -- no renormalisation; other head fusions are offered for comparison.

Only R_L's CLS row is needed, so instead of L matrix products (B x L x N^3) the code carries one
row vector down the layers, e_0^T Ã_L Ã_{L-1} ... Ã_1: L vector-matrix products, the same
numbers. Ã is never built: with s = rowsum(A), v Ã = (v / (s + 1)) A + v / (s + 1).

Shapes: B batch, H heads, N tokens (CLS first), G patch grid side (N = 1 + G*G).
"""
import numpy as np
import torch
from einops import einsum, rearrange

HEAD_FUSIONS = ("mean", "min", "max")


def fuse_heads(maps, head_fusion="mean"):
    """(B, H, N, N) -> (B, N, N): the mean, min or max over heads.

    The mean adds the head maps one after another, then divides: the same numbers as
    ``maps.mean(dim=1)`` (tests/), in half the time here (0.17 against 0.38 ms per picture for
    12 layers at batch 32), as a reduction across a middle dimension is slow.
    """
    if head_fusion == "mean":
        return sum(maps[:, 1:].unbind(dim=1), maps[:, 0]) / maps.shape[1]
    if head_fusion == "min":
        return maps.amin(dim=1)
    if head_fusion == "max":
        return maps.amax(dim=1)
    raise ValueError(f"unknown head fusion {head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")


def discard_lowest(fused, discard_ratio):
    """Zero, per image, the lowest ``discard_ratio`` share of the entries outside column 0.

    (B, N, N) -> (B, N, N), a new tensor (the input itself when nothing is to go). Entries equal
    to the threshold go too (ties). Column 0 (attention to CLS) is kept whole: see the module
    docstring.
    """
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    patches = rearrange(fused[:, :, 1:], "b n m -> b (n m)")
    k = int(patches.shape[1] * discard_ratio)
    if k == 0:
        return fused
    keep = fused > rearrange(kth_smallest(patches, k), "b -> b 1 1")
    keep[:, :, 0] = True
    return fused * keep


def kth_smallest(values, k):
    """(B, n) -> (B,): each row's k-th smallest value (k from 1), as ``values.kthvalue(k)``.

    On the CPU numpy's partition is used: its SIMD selection is ~5x faster than torch.kthvalue
    there (bench/), and this threshold is the costliest step of the whole rollout.
    """
    if values.device.type == "cpu":  # a threshold needs no gradient: detach for numpy
        return torch.from_numpy(np.partition(values.detach().numpy(), k - 1, axis=1)[:, k - 1])
    return values.kthvalue(k, dim=1).values


def cls_relevance(layers, renormalise=True):
    """Row 0 of R_L for per-layer (B, N, N) maps given first layer first -> (B, N).

    ``renormalise=True``: Ã_l = (A_l + I) row-normalised (Abnar & Zuidema), so the row keeps
    summing to 1; ``renormalise=False``: Ã_l = A_l + I (Chefer et al.).
    """
    B, N, _ = layers[0].shape
    v = torch.zeros(B, N, dtype=layers[0].dtype, device=layers[0].device)
    v[:, 0] = 1  # e_0: the CLS row of R_0 = I
    for a in reversed(layers):  # row 0 of Ã_L ... Ã_1 is e_0^T Ã_L, then times Ã_{L-1}, ...
        u = v / (a.sum(dim=-1) + 1) if renormalise else v
        v = einsum(u, a, "b i, b i j -> b j") + u
    return v


def to_grid(relevance):
    """(B, N) CLS row -> (B, G, G) map over the patches, each scaled to max 1 (all-zero stays 0)."""
    patches = relevance[:, 1:]
    peak = patches.amax(dim=1, keepdim=True).clamp_min(torch.finfo(patches.dtype).tiny)
    G = int(round(patches.shape[1] ** 0.5))
    return rearrange(patches / peak, "b (gh gw) -> b gh gw", gh=G, gw=G)


def rollout(layers, renormalise=True):
    """Per-layer (B, N, N) maps, first layer first -> the CLS row's (B, G, G) map, max 1."""
    return to_grid(cls_relevance(layers, renormalise))


def rollout_by_layer(layers, renormalise=True):
    """(L, B, G, G): the rolled-out map after each of the L layers, to watch it spread."""
    return torch.stack([rollout(layers[:depth], renormalise) for depth in range(1, len(layers) + 1)])


def attention_layers(attentions, head_fusion="mean", discard_ratio=0.0):
    """Attention Rollout's per-layer maps: heads fused, lowest entries discarded."""
    return [discard_lowest(fuse_heads(a, head_fusion), discard_ratio) for a in attentions]


def gradient_layers(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """Gradient Rollout's per-layer maps: grad ⊙ attn, fused, then negatives clamped."""
    _check_pairs(attentions, gradients)
    return [discard_lowest(fuse_heads(g * a, head_fusion).clamp_min(0), discard_ratio)
            for a, g in zip(attentions, gradients)]


def chefer_layers(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """Chefer et al.'s per-layer maps: (grad ⊙ attn)^+ per head, then fused (the paper: mean)."""
    _check_pairs(attentions, gradients)
    return [discard_lowest(fuse_heads((g * a).clamp_min(0), head_fusion), discard_ratio)
            for a, g in zip(attentions, gradients)]


def attention_rollout(attentions, head_fusion="mean", discard_ratio=0.0):
    """L maps (B, H, N, N) -> (B, G, G) Attention Rollout, each map scaled to max 1."""
    return rollout(attention_layers(attentions, head_fusion, discard_ratio))


def gradient_rollout(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """L maps and their gradients (B, H, N, N), layer i with gradient i -> (B, G, G).

    ``gradients[i]`` is d(logit of the explained class)/d(attentions[i]).
    """
    return rollout(gradient_layers(attentions, gradients, head_fusion, discard_ratio))


def chefer_rollout(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """Chefer et al. (ICCV 2021): R <- R + fuse_h((grad ⊙ attn)^+) R, from R_0 = I -> (B, G, G).

    The paper fuses by mean and discards nothing; the options are kept for comparison.
    """
    return rollout(chefer_layers(attentions, gradients, head_fusion, discard_ratio), renormalise=False)


def _check_pairs(attentions, gradients):
    if len(attentions) != len(gradients) or any(g is None or g.shape != a.shape
                                                for a, g in zip(attentions, gradients)):
        raise ValueError("need one gradient per attention map, of the same shape "
                         "(run forward(..., retain_grad=True) and backward from a logit)")
