"""lxt 2.1 (Achtibat et al.'s LRP-eXplains-Transformers) run on our weights, as a reference.

Run as a script, in a process of its own: lxt patches torch's and transformers' classes for the
whole process (nn.LayerNorm among them), which no other test must see.

    python tests/lxt_reference.py RULES STATE IMAGES CATEGORIES OUT

RULES "attnlrp": a Hugging Face transformers ViTForImageClassification carrying the timm state
dict STATE (a .pth, renamed as deit_functional.weights maps its names), patched with lxt's
AttnLRP functions as lxt patches its other transformers models (GPT-2's map: LayerNorm by
``layer_norm_forward``, the activation by the identity rule, the attention by
``wrap_attention_forward``); lxt ships no map for transformers' ViT. RULES "cp-lrp": torchvision's
VisionTransformer with the same weights, patched with lxt's own map for it (``vit_torch.cp_LRP``).
Writes to OUT the input relevance x * dy_c/dx of the normalised IMAGES (B, 3, 224, 224) for the
CATEGORIES (B,), and the logits, as a dict of tensors.

lxt 2.1's package __init__ files import a BERT module that transformers 5 removed, so its
``patches``, ``rules`` and ``vit_torch`` modules are loaded without them (lxt_module).
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deit_functional.weights import transformers_names  # noqa: E402

D, H, L, M = 192, 3, 12, 768


def lxt_module(name):
    """lxt.efficient.<name>, its parent packages made empty so that their __init__ does not run."""
    root = Path(importlib.util.find_spec("lxt").origin).parent
    for package, folder in (("lxt", root), ("lxt.efficient", root / "efficient"),
                            ("lxt.efficient.models", root / "efficient" / "models")):
        if package not in sys.modules:
            module = types.ModuleType(package)
            module.__path__ = [str(folder)]
            sys.modules[package] = module
    return importlib.import_module(f"lxt.efficient.{name}")


def transformers_vit(state):
    """ViTForImageClassification with DeiT-tiny's sizes and timm's LayerNorm epsilon, loaded from
    the timm ``state`` through a checkpoint folder in transformers' names (from_pretrained maps
    them to the names its modules use inside)."""
    import tempfile
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTForImageClassification
    config = ViTConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=M,
                       num_labels=1000, layer_norm_eps=1e-6)
    renamed = {}
    for key, tensor in state.items():
        names = transformers_names(key)
        renamed.update((name, part.contiguous()) for name, part in zip(names, tensor.chunk(len(names))))
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        save_file(renamed, f"{folder}/model.safetensors")
        return ViTForImageClassification.from_pretrained(folder, attn_implementation="eager").eval()


def torchvision_vit(state):
    """torchvision's VisionTransformer with DeiT-tiny's sizes (LayerNorm eps 1e-6 as timm), loaded
    from the timm ``state``."""
    from torchvision.models.vision_transformer import VisionTransformer
    model = VisionTransformer(image_size=224, patch_size=16, num_layers=L, num_heads=H, hidden_dim=D,
                              mlp_dim=M).eval()
    ours = {"conv_proj.weight": state["patch_embed.proj.weight"], "conv_proj.bias": state["patch_embed.proj.bias"],
            "class_token": state["cls_token"], "encoder.pos_embedding": state["pos_embed"],
            "encoder.ln.weight": state["norm.weight"], "encoder.ln.bias": state["norm.bias"],
            "heads.head.weight": state["head.weight"], "heads.head.bias": state["head.bias"]}
    parts = {"ln_1": "norm1", "self_attention.in_proj_": "attn.qkv.", "self_attention.out_proj": "attn.proj",
             "ln_2": "norm2", "mlp.0": "mlp.fc1", "mlp.3": "mlp.fc2"}
    for i in range(L):
        for theirs, timm in parts.items():
            for kind in ("weight", "bias"):
                separator = "" if theirs.endswith("_") else "."
                ours[f"encoder.layers.encoder_layer_{i}.{theirs}{separator}{kind}"] = \
                    state[f"blocks.{i}.{timm}{'' if timm.endswith('.') else '.'}{kind}"]
    model.load_state_dict(ours, strict=True)
    return model


def patched(rules, state):
    """The model lxt explains with ``rules``, its classes patched."""
    if rules == "attnlrp":
        from transformers.activations import GELUActivation
        from transformers.models.vit import modeling_vit
        patches = lxt_module("patches")
        patches.patch_method(patches.layer_norm_forward, torch.nn.LayerNorm)
        patches.patch_method(patches.non_linear_forward, GELUActivation, keep_original=True)
        modeling_vit.eager_attention_forward = patches.wrap_attention_forward(modeling_vit.eager_attention_forward)
        model = transformers_vit(state)
        return lambda x: model(pixel_values=x).logits
    if rules == "cp-lrp":
        vit_torch = lxt_module("models.vit_torch")
        for target, patch in vit_torch.cp_LRP.items():
            assert patch(target), target
        model = torchvision_vit(state)
        return model
    raise ValueError(rules)


def main(rules, state_path, images_path, categories_path, out_path):
    state = torch.load(state_path)
    model = patched(rules, state)
    images = torch.load(images_path).requires_grad_(True)
    logits = model(images)
    logits.gather(1, torch.load(categories_path)[:, None]).sum().backward()
    torch.save({"relevance": (images * images.grad).detach(), "logits": logits.detach()}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
