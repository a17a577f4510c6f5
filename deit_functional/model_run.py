"""What a method needs from the model, and the one run that keeps exactly that.

Every method (methods.METHODS) names, in ``Keeps``, what the model run must keep for it beyond
the logits and the L attention maps; ``run_model`` does the least that gives it: one forward
pass, and for a class-specific method one backward pass from the class's logit (the images of a
batch do not interact, so the sum of their logits gives each image its own gradient). Nothing
is trained: the weights need no gradient, and ``model.trace`` makes the token stream the leaf
the graph grows from. Each backward pass names the tensors whose gradients are kept (its
``inputs``), so autograd goes no further down than they are: below layer 1's map (its softmax,
qkv and the embedding) nothing is computed, and below each map, for LeGrad, nothing at all.

The relevance methods backward to the input pixels, under the rules of model.RULES, and keep
the input times its gradient. Integrated gradients (and the integrated gradient of TAM and Beyond
Intuition) need more passes: the images on a path for every step α, stacked into batches. For
TAM and Beyond Intuition the blocks before the last run without autograd there, and each
backward pass goes through the last block and the head alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .images import normalised
from .model import GRADIENT, RULES, head, prefix_count, trace
from .transformer_attribution import attention_relevances
from .weights import architecture_of

INTEGRATION_ROWS = 64  # (image, step) pairs per forward pass of an integrated gradient


@dataclass(frozen=True)
class Keeps:
    """What a method needs the model run to keep, beyond the logits and the attention maps."""
    attention_gradients: bool = False       # ∂y_c/∂A_l for every layer l
    attention_input_gradient: bool = False  # a = norm1(x_(L-1)), the last attention's input, and ∂y_c/∂a
    read_out_layers: int = 0                # the last this many layers' ∂s_l/∂A_l, s_l = head(x_l)[c]
    integrated: tuple = ()                  # the steps α: the mean of ∂y_c/∂A_L over the images α·x
    attention_relevances: bool = False      # Chefer et al.'s LRP relevance of every layer's map (with attention_gradients)
    input_rules: str | None = None          # a key of model.RULES: the input's relevance x ⊙ ∂y_c/∂x under them
    input_steps: int = 0                    # that gradient integrated from a black picture in this many steps

    def __post_init__(self):
        if self.attention_relevances and not self.attention_gradients:
            raise ValueError("Keeps: attention_relevances are weighted by the attention gradients: keep those too")
        if self.input_rules not in (None, *RULES):
            raise ValueError(f"Keeps: input_rules is one of {', '.join(RULES)}, not {self.input_rules!r}")
        if self.input_steps and self.input_rules is None:
            raise ValueError("Keeps: input_steps integrate the input's gradient: name its input_rules")

    @property
    def explains_class(self):
        """Whether the run takes a gradient, of one class's logit."""
        return (self.attention_gradients or self.attention_input_gradient or self.read_out_layers > 0
                or bool(self.integrated) or self.input_rules is not None)


@dataclass(frozen=True)
class ModelRun:
    """What the model run kept (Keeps), detached: (B, ...) tensors, lists over the L layers."""
    logits: torch.Tensor                                   # (B, C)
    attentions: list                                       # L (B, H, N, N)
    gradients: list | None = None                          # L (B, H, N, N): ∂y_c/∂A_l
    attention_input: torch.Tensor | None = None            # (B, N, D): norm1(x_(L-1))
    attention_input_gradient: torch.Tensor | None = None   # (B, N, D): ∂y_c/∂ it
    read_out_gradients: list | None = None                 # Keeps.read_out_layers (B, H, N, N): ∂s_l/∂A_l
    integrated_gradient: torch.Tensor | None = None        # (B, H, N, N): mean_α ∂y_c/∂A_L at α·x
    attention_relevances: list | None = None               # L (B, H, N, N): R^A_l, transformer_attribution.py
    input_relevance: torch.Tensor | None = None            # (B, 3, 224, 224): (x - x̄) ⊙ ∂y_c/∂x (x̄ = 0 but when integrated)
    prefix: int = 1                                        # tokens before the patches (model.prefix_count)


def class_logit(logits, category):
    """(B, C) logits, one class per image -> the sum of those logits, to backward from."""
    return logits.gather(1, category[:, None]).sum()


def run_model(weights, images, keeps=Keeps(), category=None):
    """(B, 3, 224, 224) images -> ModelRun with what ``keeps`` asks, for class ``category`` (an
    int, or a (B,) tensor of class indices; None where nothing is asked but the maps)."""
    if not keeps.explains_class:
        with torch.no_grad():
            kept = trace(weights, images)
        return ModelRun(kept.logits, kept.attentions, prefix=prefix_count(weights))
    if category is None:
        raise ValueError("this method explains one class: pass its category")
    category = torch.as_tensor(category, device=images.device).expand(images.shape[0])
    with torch.enable_grad():  # the backward passes work inside a caller's torch.no_grad() too
        return _class_run(weights, images, keeps, category)


def _class_run(weights, images, keeps, category):
    """run_model's class-specific part, with autograd on; ``category`` (B,)."""
    found = {}
    kept = None
    if keeps.attention_gradients or keeps.attention_input_gradient:
        # Grad-CAM alone wants a gradient at the last block only: the graph starts there
        start = 0 if keeps.attention_gradients else len(weights["blocks"]) - 1
        kept = trace(weights, images, keep=("tokens",) * keeps.attention_relevances,
                     keep_grad=("attentions",) * keeps.attention_gradients
                     + ("attention_inputs",) * keeps.attention_input_gradient, graph_from=start)
        wanted = (kept.attentions if keeps.attention_gradients else []) + \
            (kept.attention_inputs[-1:] if keeps.attention_input_gradient else [])
        class_logit(kept.logits, category).backward(inputs=wanted)
        if keeps.attention_gradients:
            found["gradients"] = [a.grad for a in kept.attentions]
        if keeps.attention_input_gradient:
            found["attention_input"] = kept.attention_inputs[-1].detach()
            found["attention_input_gradient"] = kept.attention_inputs[-1].grad
        if keeps.attention_relevances:
            found["attention_relevances"] = attention_relevances(
                weights, [x.detach() for x in kept.tokens], [a.detach() for a in kept.attentions], category)
    if keeps.read_out_layers:
        count = keeps.read_out_layers
        # block l reads a detached x_(l-1), so each s_l's gradient stops at its own layer's map:
        # one backward pass gives every ∂s_l/∂A_l, through the last ``count`` blocks only
        apart = trace(weights, images, keep=("tokens",), keep_grad=("attentions",),
                      graph_from=len(weights["blocks"]) - count, blocks_apart=True)
        sum(class_logit(head(x, weights), category) for x in apart.tokens[-count:]).backward(
            inputs=apart.attentions[-count:])
        found["read_out_gradients"] = [a.grad for a in apart.attentions[-count:]]
        kept = kept or apart
    if keeps.integrated:
        found["integrated_gradient"] = integrated_gradient(weights, images, category, keeps.integrated)
    if keeps.input_rules is not None and keeps.input_steps:
        found["input_relevance"] = integrated_gradients(weights, images, category, keeps.input_steps,
                                                        RULES[keeps.input_rules])
    elif keeps.input_rules is not None:
        kept, found["input_relevance"] = input_relevance(weights, images, category, RULES[keeps.input_rules])
    if kept is None:
        with torch.no_grad():
            kept = trace(weights, images)
    return ModelRun(kept.logits.detach(), [a.detach() for a in kept.attentions], **found, prefix=prefix_count(weights))


def input_relevance(weights, images, category, rules):
    """x ⊙ ∂y_c/∂x, the gradient taken under ``rules`` (model.Rules) -> (the model.Trace, (B, 3,
    224, 224) relevance): gradient × input, which the LRP rules make a relevance."""
    x = images.detach().requires_grad_(True)
    kept = trace(weights, x, rules=rules)
    class_logit(kept.logits, category).backward(inputs=[x])
    return kept, x.detach() * x.grad


def black_picture(images, weights):
    """The model input of an all-black picture, shaped (1, 3, 1, 1) on ``images``' device, as
    the weights' checkpoint normalises it."""
    return normalised(images.new_zeros(1, 3, 1, 1), architecture_of(weights))


def gauss_legendre(count):
    """``count`` Gauss-Legendre points α on [0, 1] and their weights (which sum to 1), captum's
    default rule for integrated gradients: exact for polynomials up to degree 2·count - 1."""
    nodes, weights = np.polynomial.legendre.leggauss(count)
    return tuple((nodes + 1) / 2), tuple(weights / 2)


def integrated_gradients(weights, images, category, count, rules=GRADIENT):
    """Integrated gradients (Sundararajan et al., ICML 2017) from the black picture x̄:
    (x - x̄) ⊙ Σ_k w_k ∂y_c/∂x at x̄ + α_k (x - x̄), Gauss-Legendre's α_k and w_k -> (B, 3, 224, 224);
    the gradients taken under ``rules`` (model.Rules: the plain gradient by default)."""
    alphas, step_weights = gauss_legendre(count)
    step_weights = torch.tensor(step_weights, dtype=images.dtype, device=images.device)
    baseline = black_picture(images, weights)
    sums = torch.zeros_like(images)
    for pictures, steps, path in along_path(images, alphas, baseline):
        x = path.requires_grad_(True)
        class_logit(trace(weights, x, rules=rules).logits, category[pictures]).backward(inputs=[x])
        sums.index_add_(0, pictures, x.grad * step_weights[steps, None, None, None])
    return (images - baseline) * sums


def along_path(images, alphas, baseline=0.0):
    """Yield (pictures, steps, inputs), INTEGRATION_ROWS (image, step) pairs at a time, the pairs
    image by image: each pair's image and step index (R,) and its input x̄ + α(x - x̄) (R, 3, 224, 224)."""
    S = len(alphas)
    steps = torch.tensor(alphas, dtype=images.dtype, device=images.device)
    for start in range(0, images.shape[0] * S, INTEGRATION_ROWS):
        pairs = torch.arange(start, min(start + INTEGRATION_ROWS, images.shape[0] * S), device=images.device)
        pictures, step = pairs // S, pairs % S
        yield pictures, step, baseline + steps[step, None, None, None] * (images[pictures] - baseline)


def integrated_gradient(weights, images, category, alphas):
    """The mean over the steps ``alphas`` of ∂y_c/∂A_L at the images α·x -> (B, H, N, N).

    The (image, step) pairs go through the model INTEGRATION_ROWS at a time; the blocks before
    the last run without autograd, as the gradient is wanted at the last map only."""
    sums = None
    for pictures, _, scaled in along_path(images, alphas):
        kept = trace(weights, scaled, keep_grad=("attentions",), graph_from=len(weights["blocks"]) - 1)
        class_logit(kept.logits, category[pictures]).backward(inputs=kept.attentions[-1:])
        gradient = kept.attentions[-1].grad
        if sums is None:
            sums = gradient.new_zeros((images.shape[0], *gradient.shape[1:]))
        sums.index_add_(0, pictures, gradient)
    return sums / len(alphas)
