"""timm itself as the reference, for the tests and for bench/.

Seeded random timm models; timm's own attention maps and their gradients, captured with hooks
on its unfused attention path; and the hook-based rollout that users copy today. Hooks are fine
here -- the package itself has none.
"""
from contextlib import contextmanager

import torch


def random_timm_model(seed=0, device="cpu", name="deit_tiny_patch16_224", **sizes):
    """timm's ``name`` (deit_tiny_patch16_224) in eval mode with seeded random weights, every parameter
    drawn from N(0, 0.05^2): timm zero-inits biases and ones LayerNorm scales, and perturbing
    them all means nothing in a comparison is trivially 0 or 1. ``sizes`` go to timm (depth=2)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **sizes).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.to(device)


def timm_state(weights, prefix=""):
    """Our nested weights -> timm's flat state dict: the tensors alone, by their timm names."""
    state = {}
    for key, value in (weights.items() if isinstance(weights, dict) else enumerate(weights)):
        if torch.is_tensor(value):
            state[f"{prefix}{key}"] = value
        elif isinstance(value, (dict, list)):
            state.update(timm_state(value, f"{prefix}{key}."))
    return state


@contextmanager
def attention_fused(model, fused):
    """Run ``model`` with timm's fused attention on or off; restores the previous setting."""
    before = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    try:
        yield model
    finally:
        for blk, setting in zip(model.blocks, before):
            blk.attn.fused_attn = setting


@contextmanager
def captured_attention(model):
    """Fused attention off, and each block's post-softmax map appended to the yielded list,
    first block first, by a forward hook on its attn_drop."""
    maps = []
    handles = [blk.attn.attn_drop.register_forward_hook(lambda module, inputs, output: maps.append(output))
               for blk in model.blocks]
    try:
        with attention_fused(model, False):
            yield maps
    finally:
        for handle in handles:
            handle.remove()


def timm_attention(model, images, category=None):
    """timm's own forward on (B, 3, 224, 224) -> (logits, L maps (B, H, N, N), gradients).

    With a ``category`` (int or (B,) tensor), ``gradients`` are those of that class's logit with
    respect to each block's map, taken by autograd.grad and so paired by block, not by the order
    hooks fire in; otherwise None.
    """
    with captured_attention(model) as maps, torch.set_grad_enabled(category is not None):
        logits = model(images.clone().requires_grad_(category is not None))
        gradients = None
        if category is not None:
            category = torch.as_tensor(category).expand(images.shape[0])
            gradients = [g.detach() for g in torch.autograd.grad(logits.gather(1, category[:, None]).sum(), maps)]
    return logits.detach(), [m.detach() for m in maps], gradients


def hook_based_rollout(model, images, discard_ratio=0.9):
    """Attention rollout (max fusion) the way users copy it today (cf. vit-explain): fused
    attention off, maps collected by forward hooks, then a per-layer loop of full N x N matrix
    products. -> (B, N - 1) CLS row, max 1. Discard here is per image, fixing the copied code's
    image-0-only bug, and counted over all N x N entries; the CLS column is restored after."""
    with captured_attention(model) as maps, torch.no_grad():
        model(images)
        B, _, N, _ = maps[0].shape
        eye = torch.eye(N, device=images.device)
        result = eye.expand(B, N, N)
        for attention in maps:
            fused = attention.amax(dim=1)
            cls_column = fused[:, :, 0].clone()
            flat = fused.view(B, -1)
            _, lowest = flat.topk(int(flat.shape[-1] * discard_ratio), dim=-1, largest=False)
            flat.scatter_(1, lowest, 0)
            fused[:, :, 0] = cls_column  # the CLS column is never discarded
            a = (fused + eye) / 2
            a = a / a.sum(dim=-1, keepdim=True)
            result = a @ result
        mask = result[:, 0, 1:]
        return mask / mask.amax(dim=-1, keepdim=True)
