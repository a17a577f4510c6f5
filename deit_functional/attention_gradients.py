"""The attention-gradient family: maps from the attention maps A_l and their gradients, each the
CLS token's row over the patches. Raw attention, the family's baseline, reads no gradient.

Notation: A_l (B, H, N, N) layer l's post-softmax map, ∇A_l = ∂y_c/∂A_l for the explained
class's logit y_c, fuse_h the head fusion (rollout.fuse_heads; the papers' mean unless said).

Raw attention (Chefer et al. 2021's baseline "attention, last layer"):
    fuse_h(A_L), CLS row.
Grad-SAM -- Barkan et al., "Grad-SAM: Explaining Transformers via Gradient Self-Attention
Maps", CIKM 2021:
    mean_l fuse_h(A_l ⊙ ReLU(∇A_l)), CLS row.
TAM -- Yuan et al., "Explaining Information Flow Inside Vision Transformers Using Markov
Chain", XAI4Debugging 2021: the CLS row of the last layer, carried down the layers as a Markov
chain's state, weighted by the integrated gradient of the last layer's map:
    s = mean_h A_L[0];  s <- s mean_h A_l + s  for l = L-1 .. 1
    W = mean_h ReLU(IG_L)[0],  IG_L = the mean of ∇A_L at the images α·x, α in 20 steps from 0 to 1
    R = W ⊙ s.
Beyond Intuition, head-wise ("Ours-H") -- Chen et al., "Beyond Intuition: Rethinking Token
Attributions inside Transformers", TMLR 2023:
    I_h = mean_ij |A_hᵀ ∇A_h| per image, normalised over the heads;  Ā_l = Σ_h I_h A_h
    R = (I + Ā_L) ... (I + Ā_s), from layer s = 4;  W = mean_h ReLU(IG_L), α = 1/20 .. 1
    the map is (W ⊙ R)[0] over the patches.
LeGrad -- Bousselham et al., "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity", ICCV 2025. Each layer l >= s (the last two, as its code's
default) has its own score, the logit its CLS token would give if the network ended there:
s_l = head(norm(x_l))[c] (the logit lens; s_L is y_c itself). The paper scores CLIP's image
embedding against a text prompt; for a classifier the class logit takes that place.
    E_l = mean over the N query rows of fuse_h(ReLU(∂s_l/∂A_l)),  E = Σ_(l >= s) E_l,
    the patch columns of E.
  Every ∂s_l/∂A_l comes from one backward pass: each block reads a detached copy of its input
  (model.trace's blocks_apart), so s_l reaches A_l and no earlier map (model_run.py).

Every map is scaled to max 1 (rollout.to_grid), where the TAM and LeGrad codes min-max
normalise: a picture's colours then differ by an offset the colour bar shows.

Each function takes the model run (model_run.ModelRun) and a head fusion, -> (B, G, G).
Shapes: B batch, H heads, N tokens (CLS first), G patch grid side, L layers (model.py).
"""
import torch
from einops import einsum

from .fast_forms import cls_row_of_product
from .rollout import fuse_heads, to_grid

BEYOND_INTUITION_START = 4  # the first layer (1 = the first block) Beyond Intuition rolls out, as its code
LEGRAD_LAYERS = 2           # LeGrad sums the last two layers' maps, as its code (layer_index=-2)


def raw_attention(run, head_fusion="mean"):
    """fuse_h(A_L), CLS row -> (B, G, G)."""
    return to_grid(fuse_heads(run.attentions[-1][:, :, 0], head_fusion), run.prefix)


def grad_sam(run, head_fusion="mean"):
    """mean_l fuse_h(A_l ⊙ ReLU(∇A_l)), CLS row -> (B, G, G)."""
    rows = [fuse_heads(a[:, :, 0] * g[:, :, 0].clamp_min(0), head_fusion)  # (B, N) each
            for a, g in zip(run.attentions, run.gradients)]
    return to_grid(torch.stack(rows).mean(dim=0), run.prefix)


def tam(run, head_fusion="mean"):
    """Transition Attention Maps: the last layer's CLS row carried down the layers' mean maps,
    weighted by the integrated gradient of the last layer's map -> (B, G, G). Heads by mean."""
    state = run.attentions[-1].mean(dim=1)[:, 0]  # (B, N)
    for a in reversed(run.attentions[:-1]):
        state = einsum(state, a.mean(dim=1), "b i, b i j -> b j") + state
    return to_grid(integrated_weight(run) * state, run.prefix)


def integrated_weight(run):
    """W = mean_h ReLU(IG_L)[0] (B, N): the CLS row of the last map's integrated gradient,
    positive part, heads by mean -- TAM's and Beyond Intuition's weighting."""
    return run.integrated_gradient.clamp_min(0).mean(dim=1)[:, 0]


def head_importance(attention, gradient):
    """(B, H, N, N) twice -> (B, H): I_h = mean_ij |A_hᵀ ∇A_h|, divided by its sum over the heads
    (all 0 where the gradient is)."""
    importance = (attention.transpose(-1, -2) @ gradient).abs().mean(dim=(-1, -2))
    return importance / importance.sum(dim=1, keepdim=True).clamp_min(torch.finfo(importance.dtype).tiny)


def beyond_intuition(run, head_fusion="weighted"):
    """Beyond Intuition's head-wise map: R = Π (I + Σ_h I_h A_h) from layer 4, its CLS row
    weighted by the integrated gradient of the last layer's map -> (B, G, G)."""
    if len(run.attentions) < BEYOND_INTUITION_START:
        raise ValueError(f"Beyond Intuition rolls out from layer {BEYOND_INTUITION_START}; this model has "
                         f"{len(run.attentions)} blocks")
    layers = [einsum(head_importance(a, g), a, "b h, b h i j -> b i j")
              for a, g in list(zip(run.attentions, run.gradients))[BEYOND_INTUITION_START - 1:]]
    row = cls_row_of_product(layers, renormalise=False)  # row 0 of (I + Ā_L) ... (I + Ā_s), (B, N)
    return to_grid(integrated_weight(run) * row, run.prefix)


def legrad(run, head_fusion="mean"):
    """Σ over the layers the run read out (the last LEGRAD_LAYERS) of mean_rows fuse_h(ReLU(∂s_l/∂A_l)) -> (B, G, G)."""
    columns = [fuse_heads(g.clamp_min(0), head_fusion).mean(dim=1)  # (B, N): each column's mean over the rows
               for g in run.read_out_gradients]
    return to_grid(torch.stack(columns).sum(dim=0), run.prefix)
