"""The explanation methods: how each layer's attention becomes a map, and how the maps roll out.

Attention Rollout -- Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020:
    per layer l, fuse the heads of the post-softmax map:      A_l = fuse_h(attn_l)     (B, N, N)
    optionally zero the lowest `discard_ratio` share of each image's A_l (never column 0)
    add the identity for the skip connection and renormalise the rows:
        Ã_l = (A_l + I) / rowsum(A_l + I)
    R_0 = I, R_l = Ã_l R_(l-1); the explanation is R_L's CLS row over the G*G patches, max 1.
  Why renormalise: without discard, mean fusion keeps rows summing to 1 (then renormalising
  only halves, as Abnar's 0.5*A + 0.5*I), but discard and min or max fusion do not, and
  without it those rows would grow or shrink layer after layer. Why column 0 is never
  discarded: entry (i, 0) is how much token i reads the CLS token, and in the product those
  entries carry relevance back through the earlier layers' CLS token. They are often small, so
  one threshold over the whole map would zero them first and cut that route, where discarding
  is meant to drop noise among the patch entries.

Gradient Rollout -- the same product, with each layer's map weighted by the gradient of one
class's logit y_c (Gildenblat's vit-explain; cf. Chefer et al. 2021):
    A_l = max(fuse_h(∂y_c/∂attn_l ⊙ attn_l), 0)

Chefer et al., "Generic Attention-model Explainability for Interpreting Bi-Modal and
Encoder-Decoder Transformers", ICCV 2021:
    A_l = fuse_h(max(∂y_c/∂attn_l ⊙ attn_l, 0)),  Ã_l = A_l + I (rows not renormalised),
    which is the paper's R_l = R_(l-1) + A_l R_(l-1); the paper fuses by mean.

Attention Flow -- Abnar & Zuidema's second method: the same Ã_l as Attention Rollout, read
as the capacities of a layered graph; a patch's value is the maximum flow from the CLS token at
the top to that patch at the bottom (max_flow.py). Rollout multiplies along paths and sums;
flow is held to each path's narrowest edge.

ROLLOUTS below describes these four for methods.METHODS, the one table of every method. The
fast forms of the formulas live in fast_forms.py.

Shapes: B batch, H heads, N tokens (CLS first), G patch grid side, L layers (model.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange

from . import max_flow
from .fast_forms import (attention_rollout_cls_row, cls_row_of_product, keep_above_kth_smallest, mean_over_heads,
                         numpy_takes)

HEAD_FUSIONS = ("mean", "min", "max")


def fuse_heads(maps, head_fusion="mean"):
    """(B, H, N, N) -> (B, N, N): the mean, min or max over the heads."""
    if head_fusion == "mean":
        return mean_over_heads(maps)
    if head_fusion == "min":
        return maps.amin(dim=1)
    if head_fusion == "max":
        return maps.amax(dim=1)
    raise ValueError(f"unknown head fusion {head_fusion!r}; choose one of {', '.join(HEAD_FUSIONS)}")


def discard_lowest(fused, discard_ratio):
    """(B, N, N) -> (B, N, N): per image, the lowest ``discard_ratio`` share of the entries
    outside column 0 set to 0 -- with k that many, every entry up to the image's k-th smallest,
    ties at the threshold too; column 0 (attention to CLS) kept whole. A new tensor, or the
    input itself when nothing is to go."""
    k = discard_count(fused.shape[-1], discard_ratio)
    return fused if k == 0 else keep_above_kth_smallest(fused, k)


def discard_count(N, discard_ratio):
    """How many of an image's N * (N - 1) entries outside column 0 the ratio discards."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    return int(N * (N - 1) * discard_ratio)


def attention_layer(attention, gradient, head_fusion):
    """Attention Rollout: A_l = fuse_h(attn_l). (B, H, N, N) -> (B, N, N); no gradient used."""
    return fuse_heads(attention, head_fusion)


def gradient_layer(attention, gradient, head_fusion):
    """Gradient Rollout: A_l = max(fuse_h(∂y_c/∂attn_l ⊙ attn_l), 0) -- fuse, then clamp.
    (B, H, N, N) twice -> (B, N, N)."""
    return fuse_heads(gradient * attention, head_fusion).clamp_min(0)


def chefer_layer(attention, gradient, head_fusion):
    """Chefer et al.: A_l = fuse_h(max(∂y_c/∂attn_l ⊙ attn_l, 0)) -- clamp each head, then fuse.
    (B, H, N, N) twice -> (B, N, N)."""
    return fuse_heads((gradient * attention).clamp_min(0), head_fusion)


def add_skip(layer, renormalise=True):
    """A_l (B, N, N) -> Ã_l = A_l + I for the skip connection, rows divided by their sums if
    ``renormalise``."""
    with_identity = layer + torch.eye(layer.shape[-1], dtype=layer.dtype, device=layer.device)
    return with_identity / with_identity.sum(dim=-1, keepdim=True) if renormalise else with_identity


def to_grid(relevance, prefix=1):
    """(B, N) CLS row -> (B, G, G) map over the patches, each scaled to max 1 (all-zero stays 0).
    ``prefix``: the tokens before the patches (the class token, and a distillation or register
    tokens where the model has them: model.prefix_count), which no map shows."""
    return patch_grid(relevance[:, prefix:])


def patch_grid(patches):
    """(B, G*G) values of the patches, row by row -> (B, G, G), each image's scaled to max 1."""
    peak = patches.amax(dim=1, keepdim=True).clamp_min(torch.finfo(patches.dtype).tiny)
    G = int(round(patches.shape[1] ** 0.5))
    return rearrange(patches / peak, "b (gh gw) -> b gh gw", gh=G, gw=G)


def rollout(layers, renormalise=True, prefix=1):
    """Per-layer maps A_1..A_L, each (B, N, N) -> (B, G, G): R_L's CLS row, max 1."""
    return to_grid(cls_row_of_product(layers, renormalise), prefix)


def flow(layers, renormalise=True, prefix=1):
    """Per-layer maps A_1..A_L, each (B, N, N) -> (B, G, G): the maximum flow from the CLS token
    of layer L through the capacities Ã_l to each patch of layer 0, max 1 (max_flow.py)."""
    if not renormalise:
        raise ValueError("attention flow needs renormalised rows: its capacities must stay in [0, 1]")
    capacities = torch.stack([add_skip(a.double()) for a in layers], dim=1)  # (B, L, N, N)
    scaled = (capacities * max_flow.SCALE).round().to(torch.int32).cpu().numpy()
    flows = torch.from_numpy(max_flow.token_flows(scaled)) / max_flow.SCALE
    return to_grid(flows.to(layers[0].dtype), prefix).to(layers[0].device)


@dataclass(frozen=True)
class Rollout:
    """A method that builds its map layer by layer: each layer's map A_l, then their combine."""
    layer: Callable           # (attention, gradient or None, head_fusion) -> A_l (B, N, N)
    combine: Callable         # (A_1..A_L, renormalise) -> (B, G, G): rollout or flow
    renormalise: bool         # Ã_l = (A_l + I) / rowsum, or A_l + I
    uses_gradient: bool       # A_l reads ∂y_c/∂attn_l
    # the same CLS row of the product in one pass, where numpy takes the maps (fast_forms):
    # (attentions, head_fusion, entries to discard per image) -> (B, N)
    fast_cls_row: Callable | None = None


ROLLOUTS = {  # methods.METHODS holds them under the same names
    "attention": Rollout(attention_layer, rollout, renormalise=True, uses_gradient=False,
                         fast_cls_row=attention_rollout_cls_row),
    "gradient": Rollout(gradient_layer, rollout, renormalise=True, uses_gradient=True),
    "chefer": Rollout(chefer_layer, rollout, renormalise=False, uses_gradient=True),
    "flow": Rollout(attention_layer, flow, renormalise=True, uses_gradient=False),
}


def layer_maps(spec, attentions, gradients=None, head_fusion="mean", discard_ratio=0.0):
    """L maps (B, H, N, N), and their gradients for a Rollout ``spec`` that uses them -> the L maps
    A_l (B, N, N) that it rolls out, the lowest ``discard_ratio`` of each discarded."""
    if spec.uses_gradient:
        if gradients is None or len(gradients) != len(attentions) or any(
                g is None or g.shape != a.shape for a, g in zip(attentions, gradients)):
            raise ValueError("this method needs one gradient per attention map, of the same shape (run "
                             "forward(..., retain_grad=True) and backward from a logit)")
    else:
        gradients = [None] * len(attentions)
    return [discard_lowest(spec.layer(a, g, head_fusion), discard_ratio) for a, g in zip(attentions, gradients)]


def by_layer(combine, layers, renormalise=True, prefix=1):
    """(L, B, G, G): ``combine`` (rollout or flow) through layers 1..l, for each l, to watch the
    map build up."""
    return torch.stack([combine(layers[:depth], renormalise, prefix) for depth in range(1, len(layers) + 1)])


def rolled_out(spec, attentions, gradients=None, head_fusion="mean", discard_ratio=0.0, prefix=1):
    """L maps (B, H, N, N) [and their gradients] -> (B, G, G): Rollout ``spec``'s map, max 1;
    ``prefix`` tokens (to_grid) before the patches."""
    if fast_form_serves(spec, attentions, head_fusion):
        # The same map as below, fused, discarded and rolled out a few images at a time.
        k = discard_count(attentions[0].shape[-1], discard_ratio)
        return to_grid(spec.fast_cls_row(attentions, head_fusion, k), prefix)
    return spec.combine(layer_maps(spec, attentions, gradients, head_fusion, discard_ratio), spec.renormalise, prefix)


def fast_form_serves(spec, attentions, head_fusion):
    """Whether Rollout ``spec``'s fast_cls_row makes its map of these L maps: it has one, the
    fusion is one it knows, and numpy takes every map (fast_forms.numpy_takes)."""
    return spec.fast_cls_row is not None and head_fusion in HEAD_FUSIONS and all(numpy_takes(a) for a in attentions)


def attention_rollout(attentions, head_fusion="mean", discard_ratio=0.0):
    """L maps (B, H, N, N) -> (B, G, G) Attention Rollout, each map scaled to max 1."""
    return rolled_out(ROLLOUTS["attention"], attentions, None, head_fusion, discard_ratio)


def gradient_rollout(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """L maps and their gradients (B, H, N, N), layer i with gradient i -> (B, G, G).

    ``gradients[i]`` is d(logit of the explained class)/d(attentions[i]).
    """
    return rolled_out(ROLLOUTS["gradient"], attentions, gradients, head_fusion, discard_ratio)


def chefer_rollout(attentions, gradients, head_fusion="mean", discard_ratio=0.0):
    """L maps and their gradients (B, H, N, N) -> (B, G, G), Chefer et al.'s rule.

    The paper fuses by mean and discards nothing; the options are kept for comparison.
    """
    return rolled_out(ROLLOUTS["chefer"], attentions, gradients, head_fusion, discard_ratio)


def attention_flow(attentions, head_fusion="mean", discard_ratio=0.0):
    """L maps (B, H, N, N) -> (B, G, G) Attention Flow, each map scaled to max 1. Needs SciPy;
    the pictures' flows are solved in worker processes, one per core (max_flow.py)."""
    return rolled_out(ROLLOUTS["flow"], attentions, None, head_fusion, discard_ratio)
