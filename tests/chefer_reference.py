"""A plain float64 reference for Chefer, Gur & Wolf's "Transformer Attribution" (CVPR 2021).

Written independently of deit_functional (it imports nothing from it) to reproduce what the
authors' code computes -- github.com/hila-chefer/Transformer-Explainability, commit c3e578f --
with ``LRP(model).generate_LRP(image, index=c, method="transformer_attribution",
start_layer=0)``: one image, one class, no normalisation of the returned map.

Which of their code each stage follows (files of that repository):

* forward -- baselines/ViT/ViT_LRP.py, VisionTransformer.forward / Block.forward /
  Attention.forward: pre-norm blocks, LayerNorm eps 1e-6 in the blocks. Their *final* norm is
  ``LayerNorm(embed_dim)`` (torch's default eps 1e-5); timm's DeiT uses 1e-6, which is the
  default here (``final_norm_eps``).
* gradients -- ViT_explanation_generator.py, LRP.generate_LRP: backward of the chosen logit
  (one-hot times the output, summed); each block keeps the gradient of its post-softmax map
  (ViT_LRP.py, Attention.forward's ``attn.register_hook``).
* relevance seed -- generate_LRP passes the bare one-hot vector (not one-hot times logits) to
  ``relprop`` with alpha=1.
* linear layers -- modules/layers_ours.py, Linear.relprop with alpha=1 (so beta=0): the
  alpha1-beta0 rule, biases left out of the denominator, stabiliser of ``safe_divide``.
* LayerNorm, GELU, Softmax, Dropout -- layers_ours.py, RelProp.relprop: relevance passes
  through unchanged.
* CLS pooling -- layers_ours.py, IndexSelect.relprop.
* residual additions -- layers_ours.py, Add.relprop (each branch rescaled to its share).
* the two branches of a residual -- layers_ours.py, Clone.relprop.
* q k^T and A v -- layers_ours.py, einsum (RelPropSimple.relprop), each operand's share then
  halved in ViT_LRP.py, Attention.relprop; the halved share of A is the block's ``attn_cam``.
* the map -- ViT_LRP.py, VisionTransformer.relprop (method "transformer_attribution") and that
  file's compute_rollout_attention (identity added, no row normalisation).

The rules divide by signed quantities that cross zero (x + f, A v, q k^T and a branch's total in
the residual rescaling), so the map is badly conditioned: on seeded random DeiT-tiny weights a
relative 1e-7 change of the input moves it by up to ~25%, and the authors' float32 code is off
from this float64 pass by 1e-3 to 0.7 relative while their code run in float64 agrees with it to
~1e-9. Compare against this reference in float64.
"""
import torch
import torch.nn.functional as F

PATCH = 16
GRID = 14
LN_EPS = 1e-6
EPS = 1e-9  # safe_divide's stabiliser, and the z^B rule's


def safe_div(a, b):
    """layers_ours.safe_divide: a / (b + 1e-9), and 0 wherever b is exactly 0 (the 1e-9 is
    added whatever b's sign; a denominator that lands exactly on 0 becomes 1e-9)."""
    den = b + EPS
    den = torch.where(den == 0, torch.full_like(den, EPS), den)
    return torch.where(b != 0, a / den, torch.zeros_like(a))


def linear_relevance(R, x, weight):
    """alpha1-beta0 through y = x W^T + b, bias ignored: with z = x+ W+^T + x- W-^T
    (positive part of W on the positive inputs, negative part on the negative ones),
    R_x = x+ * ((R/z) W+) + x- * ((R/z) W-)."""
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = safe_div(R, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def product_relevance(R, left, right):
    """z = left @ right (batched): each operand's z-rule share, R_left = left * ((R/z) right^T),
    R_right = right * (left^T (R/z)); not yet halved."""
    s = safe_div(R, left @ right)
    return left * (s @ right.transpose(-1, -2)), right * (left.transpose(-1, -2) @ s)


def sum_relevance(R, x, f):
    """x + f: the z-rule shares x * R/z and f * R/z, then each rescaled so that its total is
    its share |sum a| / (|sum a| + |sum b|) of sum R (sums over the whole tensor). A branch
    whose z-rule total is negative is thereby multiplied by a negative factor: its signs flip."""
    s = safe_div(R, x + f)
    a, b = x * s, f * s
    total = R.sum()
    a_abs, b_abs = a.sum().abs(), b.sum().abs()
    a_target = safe_div(a_abs, a_abs + b_abs) * total
    b_target = safe_div(b_abs, a_abs + b_abs) * total
    return a * safe_div(a_target, a.sum()), b * safe_div(b_target, b.sum())


def copy_relevance(R1, R2, x):
    """Clone: x * (R1/x + R2/x), i.e. R1 + R2 up to the stabiliser, 0 where x == 0."""
    return x * (safe_div(R1, x) + safe_div(R2, x))


def _cast(tree, dtype):
    if isinstance(tree, dict):
        return {k: _cast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cast(v, dtype) for v in tree]
    return tree.detach().to(dtype) if torch.is_tensor(tree) else tree


def _forward(w, image, final_norm_eps):
    """float64 forward of one image (3, 224, 224); every activation a relevance rule reads is kept.
    -> (logits (C,), per-block dicts, final-norm output (N, D), token stream before position)."""
    ln = lambda x, p, eps=LN_EPS: F.layer_norm(x, x.shape[-1:], p["weight"], p["bias"], eps)
    lin = lambda x, p: x @ p["weight"].T + p["bias"]
    pe = w["patch_embed"]["proj"]
    patches = F.conv2d(image[None], pe["weight"], pe["bias"], stride=PATCH)[0]  # (D, G, G)
    tokens = torch.cat([w["cls_token"][0], patches.flatten(1).T])  # (N, D), CLS first
    x = tokens + w["pos_embed"][0]
    blocks = []
    for p in w["blocks"]:
        heads = p["attn"]["heads"]
        n, width = x.shape
        a = {"x": x, "heads": heads}
        a["n1"] = ln(x, p["norm1"])
        q, k, v = lin(a["n1"], p["attn"]["qkv"]).reshape(n, 3, heads, width // heads).permute(1, 2, 0, 3)
        a["q"], a["k"], a["v"] = q, k, v  # (H, N, d)
        a["A"] = torch.softmax((q @ k.transpose(-1, -2)) * (width // heads) ** -0.5, dim=-1)  # (H, N, N)
        a["o"] = (a["A"] @ v).permute(1, 0, 2).reshape(n, width)  # heads side by side
        a["attn_out"] = lin(a["o"], p["attn"]["proj"])
        a["h"] = x + a["attn_out"]
        a["n2"] = ln(a["h"], p["norm2"])
        a["g"] = F.gelu(lin(a["n2"], p["mlp"]["fc1"]))
        a["mlp_out"] = lin(a["g"], p["mlp"]["fc2"])
        x = a["h"] + a["mlp_out"]
        blocks.append(a)
    final = ln(x, w["norm"], final_norm_eps)
    logits = lin(final[0], w["head"])
    return logits, blocks, final, tokens


def _relevance(w, blocks, final, category, logits):
    """The relevance pass from the head down to block 0's input; fills each block's ``attn_cam``
    (the halved relevance of its post-softmax map, (H, N, N)). -> relevance at block 0's input."""
    seed = torch.zeros_like(logits)
    seed[category] = 1.0  # the bare one-hot
    R_cls = linear_relevance(seed, final[0], w["head"]["weight"])  # (D,)
    R = torch.zeros_like(final)
    R[0] = final[0] * safe_div(R_cls, final[0])  # IndexSelect; the final LayerNorm passes it on
    for p, a in zip(reversed(w["blocks"]), reversed(blocks)):
        heads = a["heads"]
        n, width = a["x"].shape
        # second residual: h + mlp(norm2(h))
        R_skip, R_mlp = sum_relevance(R, a["h"], a["mlp_out"])
        R_mlp = linear_relevance(R_mlp, a["g"], p["mlp"]["fc2"]["weight"])  # GELU passes it on
        R_mlp = linear_relevance(R_mlp, a["n2"], p["mlp"]["fc1"]["weight"])  # and norm2
        R = copy_relevance(R_skip, R_mlp, a["h"])
        # first residual: x + attn(norm1(x))
        R_skip, R_att = sum_relevance(R, a["x"], a["attn_out"])
        R_o = linear_relevance(R_att, a["o"], p["attn"]["proj"]["weight"])
        R_o = R_o.reshape(n, heads, width // heads).permute(1, 0, 2)  # (H, N, d)
        R_A, R_v = product_relevance(R_o, a["A"], a["v"])
        R_A, R_v = R_A / 2, R_v / 2
        a["attn_cam"] = R_A  # softmax passes it on to the scores q k^T (scale not included)
        R_q, R_k = product_relevance(R_A, a["q"], a["k"].transpose(-1, -2))
        R_q, R_k = R_q / 2, R_k.transpose(-1, -2) / 2
        R_qkv = torch.stack([R_q, R_k, R_v]).permute(2, 0, 1, 3).reshape(n, 3 * width)  # qkv's order
        R_att = linear_relevance(R_qkv, a["n1"], p["attn"]["qkv"]["weight"])  # norm1 passes it on
        R = copy_relevance(R_skip, R_att, a["x"])
    return R


def _run(w, image, category, final_norm_eps, dtype=torch.float64):
    """Forward, gradients and relevance pass; ``dtype`` is float64 but for diagnostics."""
    w = _cast(w, dtype)
    image = image.detach().to(dtype).requires_grad_(True)  # a leaf, so the maps get a graph
    with torch.enable_grad():
        logits, blocks, final, tokens = _forward(w, image, final_norm_eps)
        grads = torch.autograd.grad(logits[category], [a["A"] for a in blocks])
    logits, final, tokens = logits.detach(), final.detach(), tokens.detach()
    for a, g in zip(blocks, grads):
        for key, value in a.items():
            if torch.is_tensor(value):
                a[key] = value.detach()
        a["grad"] = g
    R = _relevance(w, blocks, final, category, logits)
    return w, image.detach(), logits, blocks, tokens, R


def chefer_transformer_attribution(w, image, category, start_layer=0, final_norm_eps=LN_EPS):
    """Transformer attribution of one image for one class, as the authors' generate_LRP(...,
    method="transformer_attribution", start_layer) returns it, but in float64.

    ``w``: the nested weights dict of deit_functional.weights.load_weights (any float dtype);
    ``image``: (3, 224, 224) normalised pixels; ``category``: the class index.
    Per block l: cam_l = mean over heads of clamp(dy_c/dA_l * attn_cam_l, min=0), (N, N);
    then J = (cam_L + I) ... (cam_(start+1) + I)(cam_start + I), no row normalisation.
    -> (G*G,) float64: J's CLS row over the patch columns, un-normalised (row-major patches).
    ``final_norm_eps=1e-5`` reproduces their final LayerNorm's eps (timm's DeiT: 1e-6).
    """
    _, _, _, blocks, _, _ = _run(w, image, category, final_norm_eps)
    return rollout_from_cams([block_cam(a["grad"], a["attn_cam"]) for a in blocks], start_layer)[0, 1:]


def block_cam(grad, attn_cam):
    """(H, N, N) gradient and relevance of one block's map -> (N, N): mean over heads of the
    positive part of their product."""
    return (grad * attn_cam).clamp(min=0).mean(dim=0)


def rollout_from_cams(cams, start_layer=0):
    """ViT_LRP.compute_rollout_attention: identity added to every (N, N) matrix, no
    renormalisation, multiplied from start_layer up (later layers on the left)."""
    eye = torch.eye(cams[0].shape[-1], dtype=cams[0].dtype)
    joint = cams[start_layer] + eye
    for cam in cams[start_layer + 1:]:
        joint = (cam + eye) @ joint
    return joint
