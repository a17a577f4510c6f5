"""A planted-attention DeiT-tiny: weights set by hand so the right explanation is known.

The model sees red and blue squares on a grey background. Its CLS token attends, in every block
and every head, to the coloured patches (in proportion to how much of the patch is coloured),
each patch token attends to itself, and the classifier reads how much red and how much blue the
CLS token has gathered through those attention values. So, by construction:

* Attention Rollout's CLS row peaks on the patch that is most covered by a coloured square;
* the RED_CLASS logit rises with attention on red patches and falls with attention on blue
  ones, so Gradient Rollout and Chefer's rollout for RED_CLASS, which keep only positive
  evidence, light the red square and leave the blue one dark, and vice versa;
* the RED_CLASS logit is zero on a plain picture, grows with red content and drops with blue.

Nothing is trained: ``planted_state_dict()`` is a deterministic construction in timm's key names
and shapes, so it loads with ``deit_functional.load_weights`` and into
``timm.create_model("deit_tiny_patch16_224")`` with ``strict=True``.

The residual stream (width 192). Every feature lives in a "primary" dim k < 96 and, negated, in
its twin k + 96, so every token has mean exactly 0 and LayerNorm never subtracts anything:

    dim  name   CLS token           patch token (grid row gy, column gx, centred: -6.5..6.5)
    0    RED    0                   share of the patch's pixels that are red   (patch_embed)
    1    BLUE   0                   share of the patch's pixels that are blue  (patch_embed)
    2    ACC_R  red gathered        (its own RED, gathered by attending to itself; unused)
    3    ACC_B  blue gathered       (likewise)
    4    CLSF   1                   0          "I am the CLS token"            (pos_embed)
    5    PATF   0                   1          "I am a patch token"            (pos_embed)
    6    GY     0                   gy                                         (pos_embed)
    7    GX     0                   gx                                         (pos_embed)
    8    GSQ    0                   (gy^2 + gx^2) / 10                         (pos_embed)
    9    FILL   pads the static part (dims 4-9) of every token to the same norm
    10   BAL    ballast: a large constant that dominates every token's norm

LayerNorm as identity. The static part (pos_embed + cls_token: dims 4-10 and twins) has the
same norm for every token, and the ballast makes it huge next to the dynamic features (RED,
BLUE, ACC_*: at most a few units), so every token's standard deviation is the same constant
SIGMA to ~1e-5. Every LayerNorm scale is SIGMA and every bias 0, so LayerNorm(x) = x to that
precision, and the weights below can be written in residual-stream coordinates.

Attention (all 12 blocks and all 3 heads identical, so mean/min/max head fusion agree). In each
head's 64 dims, queries and keys use five dims (the 1/sqrt(64) scale is folded into W_q):

    head dim   query                 key              score contribution
    0          LAMBDA * CLSF         RED + BLUE       CLS -> patch: LAMBDA * coloured share
    1, 2       2 BETA * (GY, GX)     (GY, GX)         patch -> patch: 2 BETA g_q . g_k
    3          -10 BETA * PATF       GSQ              patch -> patch: -BETA |g_k|^2
    4          -TO_CLS * PATF        CLSF             patch -> CLS: -TO_CLS

  A patch query scores key patch k as -BETA |g_q - g_k|^2 + (terms constant in k): it attends to
  itself, a neighbour getting exp(-BETA) as much; it scores CLS far lower. The CLS query scores a
  patch LAMBDA times its coloured share and itself 0, like a grey patch -- so its attention is a
  softmax over coloured-ness, and its argmax is the most covered patch.
  Values are (RED, BLUE); the output projection adds ETA * value to (ACC_R, ACC_B). Queries and
  keys never read ACC_*, so what tokens gather never changes where they look: every block
  attends as the first one does.

MLPs are all zero (they add nothing). The classifier reads the final CLS token: each colour
is evidence for its class and, at half the weight, against the other one,
    RED_CLASS logit  = KAPPA * (ACC_R - AGAINST * ACC_B),
    BLUE_CLASS logit = KAPPA * (ACC_B - AGAINST * ACC_R),    every other logit 0.
Hence d logit_red / d attn[cls, j] = KAPPA * ETA / 3 * (RED_j - AGAINST * BLUE_j): positive on
red patches, negative on blue ones (which Gradient Rollout's clamp must remove), 0 on grey ones
and on CLS, and ~0 (orders of magnitude below the CLS row) for every patch row.

The colour detectors (patch_embed) are linear in the normalised pixels, chosen so that pure
red gives RED = 1, while blue and every grey (black through white) give RED = 0, and likewise
for BLUE; a patch therefore reads the share of its area each colour covers.
"""
import numpy as np
import torch

from deit_functional.images import MEAN, STD
from deit_functional.model import D, G, H, L, N, P, d
from deit_functional.weights import expected_shapes

RED_CLASS = 87    # ImageNet "African grey, African gray, Psittacus erithacus": the parrot
BLUE_CLASS = 258  # ImageNet "Samoyed, Samoyede"
COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}

# Residual-stream dims (see the module docstring); TWIN + k holds -x[k].
RED, BLUE, ACC_R, ACC_B, CLSF, PATF, GY, GX, GSQ, FILL, BAL = range(11)
TWIN = D // 2

STATIC_NORM = 20.0  # norm of dims CLSF..FILL of every token (the largest patch needs ~12.5)
BALLAST = 1000.0    # makes dynamic features (a few units) move a token's std by ~1e-5
SIGMA = float(np.sqrt(2 * (STATIC_NORM ** 2 + BALLAST ** 2) / D))  # every token's std

LAMBDA = 8.0    # CLS attention: a fully coloured patch scores e^8 against a grey one
BETA = 8.0      # patch attention: a neighbour gets e^-8 of a patch's self-attention
TO_CLS = 20.0   # patch attention: CLS gets at most e^-20 of a patch's self-attention
ETA = 0.25      # value path: per block, the CLS token gathers 0.25 * (coloured share)
KAPPA = 4.0     # classifier gain on the gathered colour
AGAINST = 0.5   # how strongly each colour counts against the other colour's class


def planted_state_dict():
    """The planted model as a flat float32 state dict in timm's key names and shapes."""
    state = {key: torch.zeros(shape) for key, shape in expected_shapes().items()}
    state["patch_embed.proj.weight"], state["patch_embed.proj.bias"] = _colour_detectors()
    state["pos_embed"][0] = _position_codes()  # cls_token stays 0: pos_embed row 0 marks CLS
    qkv_weight, proj_weight = _attention()
    for i in range(L):
        for norm in ("norm1", "norm2"):
            state[f"blocks.{i}.{norm}.weight"].fill_(SIGMA)  # LayerNorm(x) = x, see docstring
        state[f"blocks.{i}.attn.qkv.weight"] = qkv_weight.clone()
        state[f"blocks.{i}.attn.proj.weight"] = proj_weight.clone()
    state["norm.weight"].fill_(SIGMA)
    state["head.weight"][RED_CLASS, ACC_R] = state["head.weight"][BLUE_CLASS, ACC_B] = KAPPA
    state["head.weight"][RED_CLASS, ACC_B] = state["head.weight"][BLUE_CLASS, ACC_R] = -AGAINST * KAPPA
    return state


def draw_scene(height, width, squares, background=(128, 128, 128)):
    """An (height, width, 3) uint8 picture: ``background`` with ``squares`` painted in order.

    ``squares`` is a list of ``(colour, top, left, side)``, colour "red" or "blue", in pixels of
    this picture; a square reaching past the border is cut off.
    """
    picture = np.empty((height, width, 3), dtype=np.uint8)
    picture[...] = background
    for colour, top, left, side in squares:
        picture[max(top, 0):max(top + side, 0), max(left, 0):max(left + side, 0)] = COLOURS[colour]
    return picture


def _put(tensor, dim, value):
    """Write ``value`` into residual dim ``dim`` and its negation into the twin (along dim 0)."""
    tensor[dim] = value
    tensor[TWIN + dim] = -value


def _normalised(rgb):
    """An RGB colour (0..255) as the model sees it after to_input's normalisation."""
    return (torch.tensor(rgb, dtype=torch.float64) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def _detector(target, other):
    """Per-pixel weights w and bias c with w.x + c = 1 on ``target``, 0 on ``other`` and on every
    grey (greys lie on one line through mid grey and white in normalised space)."""
    grey, white = _normalised((128,) * 3), _normalised((255,) * 3)
    directions = torch.stack([_normalised(target) - grey, _normalised(other) - grey, white - grey])
    w = torch.linalg.solve(directions, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    return w, -(w @ grey)


def _colour_detectors():
    """patch_embed: RED and BLUE = mean over the patch's 256 pixels of the per-pixel detector."""
    weight, bias = torch.zeros(D, 3, P, P), torch.zeros(D)
    for dim, target, other in ((RED, "red", "blue"), (BLUE, "blue", "red")):
        w, c = _detector(COLOURS[target], COLOURS[other])
        _put(weight, dim, (w / P ** 2).float().view(3, 1, 1).expand(3, P, P))
        _put(bias, dim, float(c))
    return weight, bias


def _position_codes():
    """(N, D): the static part of every token; row 0 is CLS, then patches row-major."""
    codes = torch.zeros(N, D, dtype=torch.float64)
    centred = torch.arange(G, dtype=torch.float64) - (G - 1) / 2
    for token in range(N):
        code = codes[token]
        if token == 0:
            _put(code, CLSF, 1.0)
        else:
            gy, gx = centred[(token - 1) // G], centred[(token - 1) % G]
            for dim, value in ((PATF, 1.0), (GY, gy), (GX, gx), (GSQ, (gy ** 2 + gx ** 2) / 10)):
                _put(code, dim, value)
        used = code[CLSF:FILL].pow(2).sum()  # primary dims only; the twins mirror them
        _put(code, FILL, torch.sqrt(STATIC_NORM ** 2 - used))
        _put(code, BAL, BALLAST)
    return codes.float()


def _attention():
    """qkv.weight (3*D, D) and proj.weight (D, D), the same for every block."""
    qkv = torch.zeros(3, H, d, D)  # (q/k/v, head, head dim, residual dim)
    proj = torch.zeros(D, H, d)    # (residual dim, head, head dim)
    q, k, v = qkv
    unscale = d ** 0.5  # the model multiplies q by d ** -0.5
    for h in range(H):
        # head dim 0: CLS looks for coloured patches.
        q[h, 0, CLSF] = LAMBDA * unscale
        k[h, 0, RED] = k[h, 0, BLUE] = 1.0
        # head dims 1-3: a patch looks at itself: 2 BETA g_q.g_k - BETA |g_k|^2.
        q[h, 1, GY] = q[h, 2, GX] = 2 * BETA * unscale
        k[h, 1, GY] = k[h, 2, GX] = 1.0
        q[h, 3, PATF] = -10 * BETA * unscale
        k[h, 3, GSQ] = 1.0
        # head dim 4: and away from CLS.
        q[h, 4, PATF] = -TO_CLS * unscale
        k[h, 4, CLSF] = 1.0
        # values: the colour shares, gathered into ACC_R / ACC_B (the heads share ETA).
        v[h, 0, RED] = v[h, 1, BLUE] = 1.0
        _put(proj[:, h, 0], ACC_R, ETA / H)
        _put(proj[:, h, 1], ACC_B, ETA / H)
    return qkv.reshape(3 * D, D), proj.reshape(D, D)


def register_code():
    """(D,) the static part of a register token: a patch's code at the grid's centre (gy = gx =
    0), so the class token scores it as a grey patch and patches as a patch at the centre."""
    code = torch.zeros(D, dtype=torch.float64)
    _put(code, PATF, 1.0)
    _put(code, FILL, torch.sqrt(torch.tensor(STATIC_NORM ** 2 - 1.0, dtype=torch.float64)))
    _put(code, BAL, BALLAST)
    return code.float()


def planted_with_registers(registers=4):
    """The planted model rebuilt as a DINOv2-style ViT (architectures.py's switches): ``registers``
    register tokens, the position embedding on the patches only (the class token's added into the
    class token, as timm converts DINOv2) and LayerScale, 0.5 on the attention branch with the
    output projection doubled and 2 on the (zero) MLP: the same function, another forward path.
    -> (state dict in timm's names, its Architecture)."""
    from dataclasses import replace
    from deit_functional.architectures import KNOWN

    architecture = replace(KNOWN["deit_tiny_patch16_224"], title="planted DeiT-tiny with registers",
                           registers=registers, patch_positions_only=True, layer_scale=True)
    state = planted_state_dict()
    codes = state.pop("pos_embed")[0]  # (N, D), row 0 the class token's
    state["cls_token"] = state["cls_token"] + codes[None, :1]
    state["pos_embed"] = codes[None, 1:].clone()
    state["reg_token"] = register_code().expand(1, registers, D).clone()
    for i in range(L):
        state[f"blocks.{i}.attn.proj.weight"] = state[f"blocks.{i}.attn.proj.weight"] * 2
        state[f"blocks.{i}.ls1.gamma"] = torch.full((D,), 0.5)
        state[f"blocks.{i}.ls2.gamma"] = torch.full((D,), 2.0)
    return state, architecture
