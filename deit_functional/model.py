"""A ViT as plain tensor code: one pure function per stage, no nn.Module, no hooks.

The forward follows timm's ``deit_tiny_patch16_224`` (Touvron et al., "Training data-efficient
image transformers", ICML 2021) op for op, in the same order as timm's *unfused* attention path,
so on CPU float32 it is bitwise equal to timm with ``fused_attn = False``. The same code runs
every ViT of architectures.KNOWN -- DeiT, distilled DeiT, DeiT III, ViT, DINO, DINOv2 with
registers -- each stage reading its sizes from its inputs and its switches from the weights it
is given (architectures.py lists them; each is a visible line below, where it acts):

  * embed:  prefix tokens (the class token, then a distillation or register tokens), and where
            the position embedding is added (to every token, or to the patches only);
  * block:  LayerScale, a learnt per-channel scale on each branch before its residual addition;
  * head:   one classifier, two averaged (distilled), or none (the model's output is its features).

Every stage takes the token stream ``x`` first and its own weights ``p`` second: the subtree of
the nested weights dict (weights.py) whose names mirror timm's, so ``p["qkv"]`` holds
``{"weight", "bias"}`` and unpacks straight into ``F.linear``.

The stages that LRP's rules change (layer_norm, gelu, attention, and those that call them) take
``rules`` (Rules), GRADIENT by default: each rule is a few lines in its stage, named for its
paper, that change what the backward pass computes and never a value of the forward.

Shape legend: the constants below, and B for the batch. Every einops string and shape line
uses these letters (lower case in einops strings). They are given for DeiT-tiny, the homework's
model; architectures.Architecture holds them for every model.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from .architectures import KNOWN

DEFAULT_MODEL = "deit_tiny_patch16_224"
_TINY = KNOWN[DEFAULT_MODEL]

P = _TINY.P     # patch side, pixels = 16
G = _TINY.G     # patch grid side: a 224 x 224 picture is G x G patches = 14
N = _TINY.N     # tokens: the prefix tokens (DeiT-tiny: CLS alone) first, then the patches row by row = 197
C = _TINY.classes   # ImageNet classes = 1000
IMAGE_SIZE = _TINY.image_size  # 224
D = _TINY.D     # width of the token stream = 192
H = _TINY.H     # attention heads = 3
d = D // H      # head width = 64
L = _TINY.L     # blocks = 12
M = _TINY.M     # MLP hidden width = 768
LN_EPS = 1e-6   # timm builds these ViTs' LayerNorms with eps=1e-6, not torch's default 1e-5
PREFIX_TOKENS = ("cls_token", "dist_token", "reg_token")  # the weights' prefix tokens, in timm's order
# A distilled DeiT's prediction, by w["read_out"]: the classifiers it reads as (token, head), averaged
READ_OUTS = {"mean": ((0, "head"), (1, "head_dist")), "cls": ((0, "head"),), "dist": ((1, "head_dist"),)}


@dataclass(frozen=True)
class Rules:
    """How the stages pass the gradient back. A rule never changes a value of the forward pass
    (they stay bitwise timm's); it changes what the backward pass computes, so that the input
    times its gradient is a relevance that layer-wise relevance propagation (LRP) defines. Off,
    every stage gives autograd's own gradient."""
    constant_std: bool = False        # LayerNorm divides by a constant σ
    gelu_identity: bool = False       # GELU passes relevance as the identity would
    constant_attention: bool = False  # the attention probabilities are constants
    uniform_products: bool = False    # q·kᵀ and A·v share relevance evenly between their operands


GRADIENT = Rules()  # autograd's gradient: the plain forward
RULES = {
    "gradient": GRADIENT,
    # Ali et al., "XAI for Transformers: Better Explanations through Conservative Propagation", ICML 2022
    "cp-lrp": Rules(constant_std=True, gelu_identity=True, constant_attention=True),
    # Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024
    "attnlrp": Rules(constant_std=True, gelu_identity=True, uniform_products=True),
}


class _WithBackward(torch.autograd.Function):
    """with_backward's autograd node: the value as it is; the gradient as the rule gives it."""

    @staticmethod
    def forward(ctx, x, value, backward):
        ctx.backward = backward
        return value.view_as(value)

    @staticmethod
    def backward(ctx, gradient):
        return ctx.backward(gradient), None, None


def with_backward(x, value, backward):
    """``value``, which a stage computed from ``x``, exactly as it is; in the backward pass the
    gradient reaches ``x`` as ``backward(gradient)`` says, instead of through the stage: an LRP
    rule, written as the formula of the gradient it passes back."""
    return _WithBackward.apply(x, value.detach(), backward)  # detached: no path back through the stage's graph


def layer_norm(x, p, rules=GRADIENT):
    """(..., D) -> (..., D), normalised over the width with p's weight and bias."""
    normed = F.layer_norm(x, x.shape[-1:], **p, eps=LN_EPS)
    if rules.constant_std:
        # σ held constant (Ali et al.'s rule; AttnLRP's identity rule on the normalisation): the
        # gradient of (x - mean(x)) · w/σ, linear in x, so its relevance is conserved.
        centred = lambda t: t - t.mean(dim=-1, keepdim=True)
        std = torch.sqrt(centred(x.detach()).square().mean(dim=-1, keepdim=True) + LN_EPS)  # (..., 1)
        normed = with_backward(x, normed, lambda gradient: centred(gradient * p["weight"]) / std)
    return normed


def gelu(h, rules=GRADIENT):
    """Exact (erf) GELU, as nn.GELU(), elementwise."""
    activated = F.gelu(h)
    if rules.gelu_identity:
        # AttnLRP's identity rule (their eq. 9): each element's relevance passes unchanged, which
        # as a gradient is gelu(h)/h (lxt adds 1e-10 to h, as here).
        slope = activated.detach() / (h.detach() + 1e-10)
        activated = with_backward(h, activated, lambda gradient: gradient * slope)
    return activated


def prefix_count(w):
    """How many prefix tokens come before the patches: the class token, then a distillation
    token or register tokens, where the weights have them."""
    return sum(w[name].shape[1] for name in PREFIX_TOKENS if name in w)


def embed(images, w, kept=None):
    """(B, 3, IMAGE_SIZE, IMAGE_SIZE) normalised pixels -> (B, N, D) tokens: patches, prefix tokens first, positions.

    ``kept`` (B, K) patch indices, where given, keeps only those patches' tokens, each with its
    own position embedding, in that order: (B, prefix + K, D). A ViT takes any number of tokens,
    so this is how a patch is removed without an input the model never saw (evaluate.py).
    """
    patch = w["patch_embed"]["proj"]["weight"].shape[-1]
    patches = F.conv2d(images, **w["patch_embed"]["proj"], stride=patch)  # (B, D, G, G)
    patches = rearrange(patches, "b d gh gw -> b (gh gw) d")
    prefix = [w[name].expand(images.shape[0], -1, -1) for name in PREFIX_TOKENS if name in w]  # (B, 1, D), ...
    if w["pos_embed"].shape[1] == patches.shape[1]:
        # DeiT III, DINOv2 (timm's no_embed_class): positions for the patches only, added first
        tokens = torch.cat([*prefix, patches + w["pos_embed"]], dim=1)
    else:
        # DeiT, ViT, DINO: pos_embed has N rows including the prefix: concatenate first, then add
        tokens = torch.cat([*prefix, patches], dim=1) + w["pos_embed"]
    if kept is None:
        return tokens
    first = tokens.shape[1] - patches.shape[1]  # the prefix tokens
    rows = torch.cat([torch.arange(first, device=kept.device).expand(kept.shape[0], -1), kept + first], dim=1)
    return tokens.gather(1, rows[..., None].expand(-1, -1, tokens.shape[-1]))


def queries_keys_values(x, p):
    """(B, N, D) -> q, k, v, each (B, H, N, d): one linear map, split into the three and the heads."""
    qkv = rearrange(F.linear(x, **p["qkv"]), "b n (three h d) -> three b h n d", three=3, h=p["heads"])
    return qkv.unbind(0)


def attention(x, p, rules=GRADIENT):
    """Multi-head self-attention: (B, N, D) -> ((B, N, D), attention map (B, H, N, N)).

    The map is returned, not captured: it is the post-softmax matrix every rollout starts from.
    ``p["heads"]`` is H, the one size the weights' shapes cannot tell (weights.py sets it).
    """
    q, k, v = queries_keys_values(x, p)
    if rules.uniform_products:
        # AttnLRP's uniform rule (their eq. 7): a product's two operands share its relevance
        # evenly. A·v gives half to v and half to A, whose half q·kᵀ splits again (the softmax
        # between keeps its own gradient: that is AttnLRP's softmax rule).
        quarter, half = (lambda gradient: gradient / 4), (lambda gradient: gradient / 2)
        q, k, v = with_backward(q, q, quarter), with_backward(k, k, quarter), with_backward(v, v, half)
    q = q * q.shape[-1] ** -0.5  # scale q by d^-1/2 before the product, as timm does (same rounding)
    attn = (q @ rearrange(k, "b h n d -> b h d n")).softmax(dim=-1)
    # CP-LRP: the attention probabilities are constants, so relevance flows through the values alone
    mixing = attn.detach() if rules.constant_attention else attn
    out = rearrange(mixing @ v, "b h n d -> b n (h d)")
    return F.linear(out, **p["proj"]), attn


def mlp(x, p, rules=GRADIENT):
    """(B, N, D) -> (B, N, M) -> (B, N, D), each token on its own."""
    return F.linear(gelu(F.linear(x, **p["fc1"]), rules), **p["fc2"])


def block(x, p, rules=GRADIENT):
    """Pre-norm transformer block: (B, N, D) -> ((B, N, D), attention map (B, H, N, N), the
    attention's input norm1(x) (B, N, D)).

    The residual stream is the two visible additions.
    """
    normed = layer_norm(x, p["norm1"], rules)
    mixed, attn = attention(normed, p["attn"], rules)
    x = x + scaled(mixed, p, "ls1")
    x = x + scaled(mlp(layer_norm(x, p["norm2"], rules), p["mlp"], rules), p, "ls2")
    return x, attn, normed


def scaled(branch, p, name):
    """LayerScale (Touvron et al., "Going deeper with image transformers", ICCV 2021; DeiT III,
    DINOv2): a branch times its learnt per-channel ``gamma`` (D,) before the residual addition,
    where the block has one; else the branch as it is."""
    return branch * p[name]["gamma"] if name in p else branch


def head(x, w, rules=GRADIENT):
    """(B, N, D) -> (B, C) logits: the final LayerNorm, then the classifier on the CLS token.

    A distilled DeiT has a second classifier on its distillation token (token 1); its prediction
    is the two heads' mean, as timm's, or one of them where ``w["read_out"]`` (READ_OUTS) says.
    A model without a classifier (DINO, DINOv2) gives the normalised CLS token itself: (B, D)
    features, as timm's forward does with num_classes=0.
    """
    normed = layer_norm(x, w["norm"], rules)
    if "head" not in w:
        return normed[:, 0]
    if "head_dist" not in w:
        return F.linear(normed[:, 0], **w["head"])
    logits = [F.linear(normed[:, token], **w[name]) for token, name in read_out(w)]
    return (logits[0] + logits[1]) / 2 if len(logits) == 2 else logits[0]


def read_out(w):
    """The classifiers model.head reads, as (token, name of its weights) (READ_OUTS): the one on
    the class token, or a distilled DeiT's two or one of them, as ``w["read_out"]`` says."""
    return READ_OUTS[w.get("read_out", "mean")] if "head_dist" in w else READ_OUTS["cls"]


@dataclass(frozen=True)
class Trace:
    """What one forward pass went through, for the methods that read more than the maps."""
    logits: torch.Tensor    # (B, C)
    attentions: list        # L post-softmax maps (B, H, N, N), first block first
    attention_inputs: list | None  # L (B, N, D): norm1(x_(l-1)), what block l's attention reads
    tokens: list | None            # L + 1 (B, N, D): x_0 the embedding, then each block's output x_l


STATES = ("attention_inputs", "tokens")  # the Trace fields kept only when asked (each (B, N, D) per layer)


def trace(weights, images, keep=(), keep_grad=(), graph_from=0, blocks_apart=False, rules=GRADIENT, kept=None):
    """(B, 3, IMAGE_SIZE, IMAGE_SIZE) normalised images -> Trace, the same numbers as ``forward``.

    ``keep`` names the STATES to keep besides the logits and maps (the others are None: no
    memory held for them). ``keep_grad`` names Trace fields whose tensors keep their ``.grad``
    after ``backward()``; they are kept too. The weights are plain tensors that need no
    gradient, so the token stream is made the leaf the graph grows from: the input of block
    ``graph_from`` (the blocks before it run without autograd, for a gradient wanted only
    further on). With ``blocks_apart`` every block reads a detached copy of its input, so a
    gradient from the tokens x_l reaches block l's map and no earlier one -- each layer's own
    gradient, all in one backward pass. ``rules`` (Rules) say how each stage passes the
    gradient back; the values are the same under any. ``kept`` (B, K) patch indices runs the
    model on those patches' tokens alone (embed).
    """
    wanted = set(keep) | set(keep_grad)
    unknown = wanted - {"attentions", *STATES}
    if unknown:
        raise ValueError(f"trace keeps {', '.join(STATES)} (and the attentions), not {', '.join(sorted(unknown))}")
    graded = bool(keep_grad) or torch.is_grad_enabled()
    attentions = []
    inputs = [] if "attention_inputs" in wanted else None
    tokens = [] if "tokens" in wanted else None
    with torch.set_grad_enabled(graded and graph_from == 0):
        x = embed(images, weights, kept)
    for index, p in enumerate(weights["blocks"]):
        if tokens is not None:
            tokens.append(x)
        with torch.set_grad_enabled(graded and index >= graph_from):
            if keep_grad and (blocks_apart or (index == graph_from and not x.requires_grad)):
                x = x.detach().requires_grad_(True)  # a leaf: the gradient stops here
            x, attn, normed = block(x, p, rules)
        attentions.append(attn)
        if inputs is not None:
            inputs.append(normed)
    if tokens is not None:
        tokens.append(x)
    with torch.set_grad_enabled(graded):
        logits = head(x, weights, rules)
    result = Trace(logits, attentions, inputs, tokens)
    for name in keep_grad:
        for tensor in getattr(result, name):
            if tensor.requires_grad:
                tensor.retain_grad()
    return result


def forward(weights, images, retain_grad=False, kept=None):
    """(B, 3, IMAGE_SIZE, IMAGE_SIZE) normalised images -> ``(logits, attentions)``.

    logits are (B, C); attentions a list of L post-softmax maps, each (B, H, N, N), first block
    first. With ``retain_grad=True`` every map keeps its ``.grad`` after ``backward()`` from the
    logits (``trace`` keeps more). ``kept`` (B, K) patch indices: only those patches' tokens go
    in (embed), and the maps are (B, H, prefix + K, prefix + K).
    """
    run = trace(weights, images, keep_grad=("attentions",) if retain_grad else (), kept=kept)
    return run.logits, run.attentions
