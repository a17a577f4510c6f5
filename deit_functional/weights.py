"""DeiT-tiny's parameters as plain tensors, loaded strictly.

The weights are a nested dict that mirrors timm's state-dict names, so
``blocks.3.attn.qkv.weight`` is ``weights["blocks"][3]["attn"]["qkv"]["weight"]`` and each
layer's dict unpacks straight into a torch call. Loading checks every expected key is present
exactly once and has the right shape, so a wrong checkpoint fails here, naming the key, not
deep inside the forward.
"""
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

import torch

from .model import C, D, L, M, N, P

HUB_REPO = "timm/deit_tiny_patch16_224.fb_in1k"
HUB_FILE = "model.safetensors"
# The official DeiT release file, as older timm versions cached it under torch.hub's dir.
RELEASE_FILE = "deit_tiny_patch16_224-a1311bcf.pth"
PROBE_SECONDS = 5.0


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit DeiT-tiny; the message says which and why."""


def expected_shapes():
    """Every state-dict key of deit_tiny_patch16_224 with its shape (5,717,416 parameters)."""
    layer = {"norm1": (D,), "attn.qkv": (3 * D, D), "attn.proj": (D, D),
             "norm2": (D,), "mlp.fc1": (M, D), "mlp.fc2": (D, M)}
    shapes = {"cls_token": (1, 1, D), "pos_embed": (1, N, D),
              "patch_embed.proj.weight": (D, 3, P, P), "patch_embed.proj.bias": (D,),
              "norm.weight": (D,), "norm.bias": (D,),
              "head.weight": (C, D), "head.bias": (C,)}
    for i in range(L):
        for name, shape in layer.items():
            shapes[f"blocks.{i}.{name}.weight"] = shape
            shapes[f"blocks.{i}.{name}.bias"] = (shape[0],)
    return shapes


def load_weights(source=None, device="cpu"):
    """Return DeiT-tiny's weights as a nested dict of float32 tensors on ``device``.

    ``source`` may be a timm model (its parameters are copied), a state dict, a path to a local
    checkpoint (the official DeiT release ``{"model": state_dict}`` .pth, a plain state dict in
    .pth/.bin, or .safetensors), or None for timm's pretrained weights from the Hugging Face
    cache, downloaded if absent. Raises WeightsError naming the problem.
    """
    if source is None:
        state = _read_file(_pretrained_file())
    elif isinstance(source, (str, os.PathLike)):
        state = _read_file(Path(source))
    elif isinstance(source, torch.nn.Module):
        state = source.state_dict()
    elif isinstance(source, dict):
        state = source
    else:
        raise WeightsError(f"cannot load weights from a {type(source).__name__}")
    return _nest(_checked(state), device)


def _read_file(path):
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        pickled = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))  # in torch's 1000-character refusal
        if pickled:
            raise WeightsError(f"weights file {path} holds more than tensors (a pickled {pickled.group(1)}, "
                               "which could run code), so it is not loaded, for safety") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"cannot read weights file {path}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the official DeiT release wraps the state dict
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _checked(state):
    shapes = expected_shapes()
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        parts = [f"missing key {k!r}" for k in missing[:3]] + [f"unexpected key {k!r}" for k in extra[:3]]
        more = len(missing) + len(extra) - len(parts)
        raise WeightsError("not DeiT-tiny weights: " + ", ".join(parts) + (f" and {more} more" if more else ""))
    for key, shape in shapes.items():
        value = state[key]
        if not torch.is_tensor(value) or tuple(value.shape) != shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise WeightsError(f"not DeiT-tiny weights: key {key!r} has shape {got}, expected {shape}")
    return state


def _nest(state, device):
    """Flat ``a.b.c`` keys -> nested dicts; ``blocks`` becomes a list in block order."""
    tree = {}
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value.detach().to(device=device, dtype=torch.float32, copy=True)
    tree["blocks"] = [tree["blocks"][str(i)] for i in range(L)]
    return tree


def _pretrained_file():
    """The pretrained checkpoint from a local cache, or downloaded -- failing within seconds
    where there is no network, instead of the hub client's ~50 s of retries."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache  # with timm

    release = Path(torch.hub.get_dir()) / "checkpoints" / RELEASE_FILE
    if release.is_file():
        return release
    cached = try_to_load_from_cache(HUB_REPO, HUB_FILE)  # a pure file look-up, no network
    if isinstance(cached, str):
        return Path(cached)
    how = ("pass a local checkpoint instead, e.g. --weights deit_tiny_patch16_224-a1311bcf.pth "
           "(the official DeiT release) or a timm model.safetensors")
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(f"pretrained DeiT-tiny weights are not in the local cache and "
                           f"HF_HUB_OFFLINE is set; {how}")
    if not _reachable(constants.ENDPOINT):
        raise WeightsError(f"pretrained DeiT-tiny weights are not in the local cache and "
                           f"{constants.ENDPOINT} cannot be reached (no network?); {how}")
    try:
        return Path(hf_hub_download(HUB_REPO, HUB_FILE))
    except Exception as error:
        raise WeightsError(f"could not download pretrained DeiT-tiny weights ({error}); {how}") from None


def _reachable(url):
    """Whether a TCP connection to the hub (or the HTTPS proxy in use) opens within
    PROBE_SECONDS. Runs in a thread because name lookup has no timeout of its own."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy or url)
    address = (target.hostname, target.port or (443 if target.scheme == "https" else 80))
    result = []

    def probe():
        try:
            socket.create_connection(address, timeout=PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    return bool(result)
