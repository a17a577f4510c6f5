"""Transformer Attribution -- Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
Visualization", CVPR 2021: the LRP relevance of every attention map, weighted by its gradient,
rolled out.

Their LRP is no change of the gradient but a pass of its own, from the class's one-hot down the
blocks, stage by stage: the functions below, one per stage of model.py, each taking the stage's
input and the relevance R of its output (same shape as the output) and giving its input's. As
their code (hila-chefer/Transformer-Explainability, baselines/ViT/ViT_LRP.py and
modules/layers_ours.py):

* linear maps: the α1β0 rule, z = W⁺x⁺ + W⁻x⁻ (bias left out), R_x = x⁺ ⊙ W⁺ᵀ(R/z) + x⁻ ⊙ W⁻ᵀ(R/z);
* LayerNorm, GELU and softmax pass R through unchanged;
* the products q·kᵀ and A·v: the z-rule, each operand's share a ⊙ ∂(a·b)/∂a (R/z), halved;
* a residual addition x + f: the z-rule shares, each branch then rescaled so that the two hold
  R's total in the proportion of their |totals| (per image: their code sums over the batch);
* a copy (the residual branch and the LayerNorm both read x): the two relevances added.

The relevance of block l's map (A·v's share for A) times ∂y_c/∂A_l, clamped at 0 and averaged
over the heads, is each layer's Ā_l, rolled out as Chefer et al.'s rule of 2021 rolls out theirs
(rollout.py, "chefer": R <- R + Ā R from R = I, no renormalisation). Biases take no relevance, so
it is not conserved.

The rules divide by sums that cross zero (z, x + f, a branch's total), so the map is badly
conditioned: on random weights a relative 1e-7 change of the input moves it by up to ~25%, and
float32 and float64 runs of one picture can differ by that much (theirs as ours). Shapes as
model.py; the blocks' inputs and maps come from the model run (model.Trace's tokens and
attentions).
"""
import torch
import torch.nn.functional as F
from einops import rearrange, reduce

from .model import gelu, layer_norm, queries_keys_values, read_out, scaled
from .rollout import ROLLOUTS, rolled_out

EPS = 1e-9  # their safe_divide's


def safe_divide(a, b):
    """a / (b + EPS), the EPS added whatever b's sign, and 0 wherever b is 0: their code's
    division (which also turns a sum of exactly -EPS into EPS: a case left out here)."""
    return torch.where(b == 0, 0.0, a / (b + EPS))


def linear_relevance(x, p, R):
    """α1β0 through F.linear(x, **p): (..., in) input, (..., out) relevance -> (..., in).

    z = W⁺x⁺ + W⁻x⁻ is a sum of products that are all >= 0; where it is 0 each of them is, and
    so is every term R/z meets below: safe_divide's zeroing would change nothing, so R/(z + EPS)."""
    up, down = p["weight"].clamp(min=0), p["weight"].clamp(max=0)
    x_up, x_down = x.clamp(min=0), x.clamp(max=0)
    s = R / (F.linear(x_up, up) + F.linear(x_down, down) + EPS)
    return x_up * (s @ up) + x_down * (s @ down)


def product_relevance(a, b, product, R):
    """The z-rule through ``product`` = a @ b, halved: (.., n, k), (.., k, m), R (.., n, m) -> R_a, R_b."""
    s = safe_divide(R, product)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def sum_relevance(x, f, R):
    """Through x + f, per image: the z-rule shares, each branch rescaled to its part of R's
    total -> R_x, R_f (each (B, N, D))."""
    s = safe_divide(R, x + f)
    shares = x * s, f * s
    totals = [reduce(share, "b n d -> b () ()", "sum") for share in shares]
    whole = reduce(R, "b n d -> b () ()", "sum")
    size = totals[0].abs() + totals[1].abs()
    return tuple(share * safe_divide(safe_divide(total.abs(), size) * whole, total)
                 for share, total in zip(shares, totals))


def copy_relevance(x, R_one, R_other):
    """x read twice: x ⊙ (R_one + R_other)/x, their code's form of R_one + R_other."""
    return x * safe_divide(R_one + R_other, x)


def attention_parts(x, p, attn):
    """What model.attention computes from x (norm1's output), its map ``attn`` given (the run's):
    q, k, v (B, H, N, d), the heads' mix attn·v (B, H, N, d), that mix merged (B, N, D), the
    output (B, N, D)."""
    q, k, v = queries_keys_values(x, p)
    heads = attn @ v
    merged = rearrange(heads, "b h n d -> b n (h d)")
    return q, k, v, heads, merged, F.linear(merged, **p["proj"])


def attention_relevance(x, p, attn, parts, R):
    """Through model.attention (x = norm1's output, ``attn`` its map, ``parts`` attention_parts'):
    R of the output (B, N, D) -> (R_x, R_A (B, H, N, N))."""
    q, k, v, heads, merged, _ = parts
    R_heads = rearrange(linear_relevance(merged, p["proj"], R), "b n (h d) -> b h n d", h=p["heads"])
    R_attn, R_v = product_relevance(attn, v, heads, R_heads)
    # softmax passes R_attn to the scores; their rule reads the product q·kᵀ, before its scale
    k_t = k.transpose(-1, -2)
    R_q, R_k = product_relevance(q, k_t, q @ k_t, R_attn)
    R_qkv = rearrange([R_q, R_k.transpose(-1, -2), R_v], "three b h n d -> b n (three h d)")
    return linear_relevance(x, p["qkv"], R_qkv), R_attn


def block_relevance(x, p, attn, R):
    """Through model.block, recomputed from its input x and map ``attn``: R (B, N, D) -> (R_x, R_A)."""
    normed = layer_norm(x, p["norm1"])
    parts = attention_parts(normed, p["attn"], attn)
    # LayerScale (DeiT III, DINOv2), where the block has it, scales each branch element by
    # element: a product with a constant, whose z-rule passes the relevance on as it is
    mixed = scaled(parts[-1], p, "ls1")
    middle = x + mixed
    normed_2 = layer_norm(middle, p["norm2"])
    activated = gelu(F.linear(normed_2, **p["mlp"]["fc1"]))
    R_middle, R_mlp = sum_relevance(middle, scaled(F.linear(activated, **p["mlp"]["fc2"]), p, "ls2"), R)
    R_hidden = linear_relevance(activated, p["mlp"]["fc2"], R_mlp)  # LayerScale and GELU pass it on
    R_middle = copy_relevance(middle, R_middle, linear_relevance(normed_2, p["mlp"]["fc1"], R_hidden))
    R_x, R_mixed = sum_relevance(x, mixed, R_middle)
    R_normed, R_attn = attention_relevance(normed, p["attn"], attn, parts, R_mixed)
    return copy_relevance(x, R_x, R_normed), R_attn


def head_relevance(x, w, category):
    """From the one-hot of ``category`` (B,) through model.head: -> R of its input x (B, N, D),
    all on the CLS token (a distilled DeiT's mean of two heads: half on each head's token; a
    model without a classifier: on feature ``category`` of the CLS token)."""
    normed = layer_norm(x, w["norm"])
    R = torch.zeros_like(x)
    if "head" not in w:
        R[:, 0] = F.one_hot(category, x.shape[-1]).to(x.dtype)
        return R
    heads = read_out(w)
    for token, name in heads:
        read = normed[:, token]
        start = F.one_hot(category, w[name]["weight"].shape[0]).to(x.dtype) / len(heads)
        # reading the token's row (their IndexSelect); the LayerNorm passes it
        R[:, token] = read * safe_divide(linear_relevance(read, w[name], start), read)
    return R


@torch.no_grad()
def attention_relevances(weights, tokens, attentions, category):
    """Every block's attention relevance, from the model run's tokens x_0 .. x_L and maps A_1 ..
    A_L -> L (B, H, N, N), first block first."""
    R = head_relevance(tokens[-1], weights, category)
    found = []
    for x, attn, p in zip(tokens[-2::-1], attentions[::-1], weights["blocks"][::-1]):
        R, R_attn = block_relevance(x, p, attn, R)
        found.append(R_attn)
    return found[::-1]


def transformer_attribution(run, head_fusion="mean"):
    """The rolled-out mean_h (∂y_c/∂A ⊙ R^A)⁺ of every layer -> (B, G, G), max 1."""
    return rolled_out(ROLLOUTS["chefer"], run.attention_relevances, run.gradients, head_fusion, prefix=run.prefix)
