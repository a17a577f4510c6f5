"""What each ViT is made of, as timm describes it: sizes, prefix tokens, switches, preprocessing.

Every fact here is timm's: ``from_timm`` reads it off timm's own model (built on the meta
device, so no memory and no download) and its ``pretrained_cfg``. The checkpoints this project
checks are recorded in KNOWN so that a run need not import timm (about 2 s at start-up);
tests/test_family.py asserts that each record equals what ``from_timm`` reads. Any other
timm ViT name is read from timm when it is asked for, and refused in one line where it uses a
part the functional forward does not have (``unsupported``).

The switches, each beside the stage it changes in model.py:
  * prefix tokens: the class token, then a distillation token (distilled DeiT, Touvron et al.
    2021) or register tokens (Darcet et al., "Vision Transformers Need Registers", ICLR 2024),
    then the patches; maps are over the patches alone;
  * the position embedding covers the prefix tokens (DeiT, ViT, DINO), or the patches only,
    added before the prefix tokens are prepended (timm's ``no_embed_class``: DeiT III, DINOv2);
  * LayerScale (Touvron et al., "Going deeper with image transformers", 2021): each branch
    scaled by a learnt vector before its residual addition (DeiT III, DINOv2);
  * the read-out: one head on the class token; two (class and distillation token) averaged;
    or none (DINO, DINOv2: the normalised class token is the output, its D features).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # mean, std
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ArchitectureError(ValueError):
    """A model name that timm does not know, or a ViT with a part this forward does not have."""


@dataclass(frozen=True)
class Architecture:
    """One ViT, as timm builds it (letters as in model.py's legend)."""
    title: str           # how the docs and file names call it, e.g. "DeiT-tiny"
    D: int               # width of the token stream
    H: int               # attention heads
    L: int               # blocks
    P: int               # patch side, pixels
    image_size: int      # the input's side, pixels (square)
    classes: int         # the classifier's outputs; 0: none, the model's output is its D features
    registers: int = 0   # register tokens after the class token
    distilled: bool = False     # a distillation token after the class token, with its own head
    patch_positions_only: bool = False  # the position embedding has a row per patch only (no_embed_class)
    layer_scale: bool = False   # LayerScale on both branches of every block
    mean: tuple = IMAGENET[0]   # preprocessing, from the checkpoint's pretrained_cfg
    std: tuple = IMAGENET[1]
    interpolation: str = "bicubic"
    crop_pct: float = 0.9       # what timm's eval transform crops; read, not applied (images.py says why)
    hub: str = ""               # timm's Hugging Face hub repo of the pretrained weights

    @property
    def slug(self):
        """The title in file names: e.g. deit-small, vit-b-16, dinov2-s-14-registers."""
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    @property
    def M(self):
        return 4 * self.D  # MLP hidden width

    @property
    def G(self):
        return self.image_size // self.P  # patch grid side

    @property
    def prefix(self):
        """Tokens before the patches: the class token, then the distillation or register tokens."""
        return 1 + self.distilled + self.registers

    @property
    def N(self):
        return self.prefix + self.G * self.G

    @property
    def prefix_positions(self):
        """The position embedding's rows before the patches': one per prefix token, or none where
        it has a row per patch only (patch_positions_only)."""
        return 0 if self.patch_positions_only else self.prefix

    @property
    def map_bytes(self):
        """One picture's L attention maps (H, N, N) in float32: what a run keeps of each picture."""
        return 4 * self.L * self.H * self.N * self.N

    @property
    def token_names(self):
        """The prefix tokens' names, in order."""
        return ("CLS",) + ("DIST",) * self.distilled + tuple(f"REG{i + 1}" for i in range(self.registers))


def at_size(a, size):
    """Architecture ``a`` taking size x size inputs (its grid and tokens follow); an
    ArchitectureError unless size is a positive multiple of its patch side."""
    if size <= 0 or size % a.P:
        raise ArchitectureError(f"an input size for {a.title} is a positive multiple of its {a.P}-pixel patch, "
                                f"not {size}")
    return replace(a, image_size=size)


def _deit(title, D, H, P=16, image_size=224, classes=1000, **more):
    return Architecture(title, D=D, H=H, L=12, P=P, image_size=image_size, classes=classes, **more)


def _vit(title, D, H, **more):
    return _deit(title, D, H, mean=HALF[0], std=HALF[1], **more)


def _hub(name, tag):
    return f"timm/{name}.{tag}"


KNOWN = {  # timm's names, as a user types them; each record tested against timm
    "deit_tiny_patch16_224": _deit("DeiT-tiny", 192, 3, hub=_hub("deit_tiny_patch16_224", "fb_in1k")),
    "deit_small_patch16_224": _deit("DeiT-small", 384, 6, hub=_hub("deit_small_patch16_224", "fb_in1k")),
    "deit_base_patch16_224": _deit("DeiT-base", 768, 12, hub=_hub("deit_base_patch16_224", "fb_in1k")),
    "deit_tiny_distilled_patch16_224": _deit("DeiT-tiny distilled", 192, 3, distilled=True,
                                             hub=_hub("deit_tiny_distilled_patch16_224", "fb_in1k")),
    "deit_small_distilled_patch16_224": _deit("DeiT-small distilled", 384, 6, distilled=True,
                                              hub=_hub("deit_small_distilled_patch16_224", "fb_in1k")),
    "deit_base_distilled_patch16_224": _deit("DeiT-base distilled", 768, 12, distilled=True,
                                             hub=_hub("deit_base_distilled_patch16_224", "fb_in1k")),
    "deit3_small_patch16_224": _deit("DeiT III-small", 384, 6, patch_positions_only=True, layer_scale=True,
                                     hub=_hub("deit3_small_patch16_224", "fb_in1k")),
    "deit3_base_patch16_224": _deit("DeiT III-base", 768, 12, patch_positions_only=True, layer_scale=True,
                                    hub=_hub("deit3_base_patch16_224", "fb_in1k")),
    "vit_tiny_patch16_224": _vit("ViT-Ti/16", 192, 3, hub=_hub("vit_tiny_patch16_224", "augreg_in21k_ft_in1k")),
    "vit_small_patch16_224": _vit("ViT-S/16", 384, 6, hub=_hub("vit_small_patch16_224", "augreg_in21k_ft_in1k")),
    "vit_base_patch16_224": _vit("ViT-B/16", 768, 12, hub=_hub("vit_base_patch16_224", "augreg2_in21k_ft_in1k")),
    "vit_base_patch16_224.orig_in21k_ft_in1k": _vit("ViT-B/16 (original)", 768, 12,
                                                    hub=_hub("vit_base_patch16_224", "orig_in21k_ft_in1k")),
    "vit_small_patch32_224": _vit("ViT-S/32", 384, 6, P=32, hub=_hub("vit_small_patch32_224", "augreg_in21k_ft_in1k")),
    "vit_base_patch32_224": _vit("ViT-B/32", 768, 12, P=32, hub=_hub("vit_base_patch32_224", "augreg_in21k_ft_in1k")),
    "vit_tiny_patch16_384": _vit("ViT-Ti/16 384", 192, 3, image_size=384, crop_pct=1.0,
                                 hub=_hub("vit_tiny_patch16_384", "augreg_in21k_ft_in1k")),
    "vit_small_patch16_384": _vit("ViT-S/16 384", 384, 6, image_size=384, crop_pct=1.0,
                                  hub=_hub("vit_small_patch16_384", "augreg_in21k_ft_in1k")),
    "vit_base_patch16_384": _vit("ViT-B/16 384", 768, 12, image_size=384, crop_pct=1.0,
                                 hub=_hub("vit_base_patch16_384", "augreg_in21k_ft_in1k")),
    "vit_small_patch16_224.dino": _deit("DINO ViT-S/16", 384, 6, classes=0, hub="timm/vit_small_patch16_224.dino"),
    "vit_small_patch8_224.dino": _deit("DINO ViT-S/8", 384, 6, classes=0, P=8, hub="timm/vit_small_patch8_224.dino"),
    "vit_base_patch16_224.dino": _deit("DINO ViT-B/16", 768, 12, classes=0, hub="timm/vit_base_patch16_224.dino"),
    "vit_base_patch8_224.dino": _deit("DINO ViT-B/8", 768, 12, classes=0, P=8, hub="timm/vit_base_patch8_224.dino"),
    "vit_small_patch14_reg4_dinov2": _deit("DINOv2-S/14 registers", 384, 6, classes=0, P=14, image_size=518,
                                           registers=4, patch_positions_only=True, layer_scale=True, crop_pct=1.0,
                                           hub=_hub("vit_small_patch14_reg4_dinov2", "lvd142m")),
    "vit_base_patch14_reg4_dinov2": _deit("DINOv2-B/14 registers", 768, 12, classes=0, P=14, image_size=518,
                                          registers=4, patch_positions_only=True, layer_scale=True, crop_pct=1.0,
                                          hub=_hub("vit_base_patch14_reg4_dinov2", "lvd142m")),
}


def architecture(name):
    """timm's model ``name`` -> its Architecture: the record in KNOWN, else read from timm."""
    if isinstance(name, Architecture):
        return name
    return KNOWN[name] if name in KNOWN else from_timm(name)


@lru_cache(maxsize=None)
def from_timm(name):
    """Read ``name``'s Architecture from timm's model (built on the meta device: no memory, no
    download) and its pretrained_cfg. Raises ArchitectureError in one line where timm does not
    know the name or the model has a part the functional forward does not have."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except Exception as error:  # timm raises RuntimeError for an unknown name
        raise ArchitectureError(f"timm cannot build a model {name!r} ({str(error).splitlines()[0]}); "
                                f"the checked ones: {', '.join(KNOWN)}") from None
    why = unsupported(model)
    if why:
        raise ArchitectureError(f"{name} is not a ViT this forward runs: {why}")
    config, block, known = model.pretrained_cfg, model.blocks[0], KNOWN.get(name)
    return Architecture(
        title=known.title if known else name, D=model.embed_dim, H=block.attn.num_heads, L=len(model.blocks),
        P=model.patch_embed.patch_size[0], image_size=model.patch_embed.img_size[0], classes=model.num_classes,
        registers=getattr(model, "num_reg_tokens", 0), distilled=hasattr(model, "dist_token"),
        patch_positions_only=model.no_embed_class, layer_scale=type(block.ls1).__name__ == "LayerScale",
        mean=tuple(config.get("mean", IMAGENET[0])), std=tuple(config.get("std", IMAGENET[1])),
        interpolation=config.get("interpolation", "bicubic"), crop_pct=config.get("crop_pct", 0.9),
        hub=config.get("hf_hub_id") or "")


def unsupported(model):
    """What in timm's ``model`` the functional forward does not have, in a few words; '' if
    nothing. The checks run in order, each only once those before it passed, so that a model
    of another make is refused by its make, not by a part it lacks."""
    block = lambda: model.blocks[0]
    checks = [
        (lambda: type(model).__name__ not in ("VisionTransformer", "VisionTransformerDistilled")
         or not hasattr(model, "blocks"), lambda: f"it is a {type(model).__name__}, not a plain ViT"),
        (lambda: type(block()).__name__ != "Block", lambda: f"it has {type(block()).__name__} blocks"),
        (lambda: not model.has_class_token, lambda: "it has no class token"),
        (lambda: model.global_pool != "token", lambda: f"it pools by {model.global_pool!r}, not the class token"),
        (lambda: type(model.fc_norm).__name__ != "Identity", lambda: "it has a norm after pooling (fc_norm)"),
        (lambda: type(model.norm_pre).__name__ != "Identity", lambda: "it has a norm before the blocks (norm_pre)"),
        (lambda: getattr(model, "dynamic_img_size", False), lambda: "it takes dynamic input sizes"),
        (lambda: getattr(model, "attn_pool", None) is not None, lambda: "it has attention pooling"),
        (lambda: type(block().attn).__name__ != "Attention", lambda: f"it has {type(block().attn).__name__} attention"),
        (lambda: type(block().attn.q_norm).__name__ != "Identity", lambda: "it has query-key normalisation"),
        (lambda: block().attn.qkv.bias is None, lambda: "it has no bias in qkv"),
        (lambda: type(block().mlp).__name__ != "Mlp" or type(block().mlp.act).__name__ != "GELU",
         lambda: "it has an MLP other than fc-GELU-fc"),
        (lambda: block().mlp.fc1.out_features != 4 * model.embed_dim, lambda: "its MLP is not 4 times the width"),
        (lambda: type(block().norm1).__name__ != "LayerNorm" or block().norm1.eps != 1e-6,
         lambda: "it has a norm other than LayerNorm(eps=1e-6)"),
        (lambda: model.patch_embed.patch_size[0] != model.patch_embed.patch_size[1]
         or model.patch_embed.img_size[0] != model.patch_embed.img_size[1], lambda: "its patch or input is not square"),
    ]
    return next((why() for failed, why in checks if failed()), "")
