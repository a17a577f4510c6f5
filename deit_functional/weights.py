"""A ViT's parameters as plain tensors, loaded strictly.

The weights are a nested dict that mirrors timm's state-dict names, so
``blocks.3.attn.qkv.weight`` is ``weights["blocks"][3]["attn"]["qkv"]["weight"]`` and each
layer's dict unpacks straight into a torch call; each ``attn`` dict also holds ``heads``, the
one size no tensor's shape tells. Loading checks every expected key is present exactly once and
has the right shape, so a wrong checkpoint fails here, naming the key, not deep inside the
forward.

Two namings are read: timm's (a timm model, its state dict, timm's model.safetensors, the
official DeiT release's ``{"model": state_dict}``), and Hugging Face transformers' files of four
model classes (TRANSFORMERS_NAMES: ``facebook/deit-tiny-patch16-224``, ``google/vit-base-patch16-224``,
``facebook/deit-tiny-distilled-patch16-224``, ``facebook/dino-vits16``,
``facebook/dinov2-with-registers-small`` and their siblings), whose separate query, key and
value are stacked into timm's ``qkv``. The Architecture the weights are of (architectures.py)
is kept in them, under "architecture".
"""
import json
import os
import pickle
import re
import socket
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from einops import rearrange

from .architectures import KNOWN, Architecture, ArchitectureError, architecture, at_size
from .model import DEFAULT_MODEL, READ_OUTS

TIMM_FILE = "model.safetensors"  # in timm's hub repo of each model
TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")  # what save_pretrained writes, newer first
# The official DeiT release files, as older timm versions cached them under torch.hub's dir.
RELEASE_FILES = {"deit_tiny_patch16_224": "deit_tiny_patch16_224-a1311bcf.pth",
                 "deit_small_patch16_224": "deit_small_patch16_224-cd65a155.pth",
                 "deit_base_patch16_224": "deit_base_patch16_224-b5f2ef4d.pth"}
PROBE_SECONDS = 5.0
WEIGHTS_VARIABLE = "DEIT_EXPLAIN_WEIGHTS"  # names a local checkpoint once, for every run without --weights
RELEASE_URL = "https://dl.fbaipublicfiles.com/deit/"  # the official DeiT release (Touvron et al.), + file name
HUB_URL = "https://huggingface.co/"

# timm's names -> transformers' names as its files hold them, by prefix ({i}: the block), for
# each of the four model classes read: ViTForImageClassification (ViT, DeiT), ViTModel (no
# head: DINO), DeiTForImageClassificationWithTeacher (distilled DeiT) and
# Dinov2WithRegistersModel. The three of qkv are stacked in this order along the output
# dimension, as timm's qkv holds them.
_VIT_BLOCK = {
    "blocks.{i}.norm1.": "encoder.layer.{i}.layernorm_before.",
    "blocks.{i}.attn.qkv.": "encoder.layer.{i}.attention.attention.{part}.",
    "blocks.{i}.attn.proj.": "encoder.layer.{i}.attention.output.dense.",
    "blocks.{i}.norm2.": "encoder.layer.{i}.layernorm_after.",
    "blocks.{i}.mlp.fc1.": "encoder.layer.{i}.intermediate.dense.",
    "blocks.{i}.mlp.fc2.": "encoder.layer.{i}.output.dense.",
}
_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token",
    "dist_token": "embeddings.distillation_token",
    "reg_token": "embeddings.register_tokens",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.": "embeddings.patch_embeddings.projection.",
    "norm.": "layernorm.",
}


def _prefixed(table, prefix):
    return {timm: prefix + theirs for timm, theirs in table.items()}


TRANSFORMERS_NAMES = {  # transformers' model class -> timm's names -> theirs
    "ViTForImageClassification": {**_prefixed({**_EMBEDDINGS, **_VIT_BLOCK}, "vit."), "head.": "classifier."},
    "ViTModel": {**_EMBEDDINGS, **_VIT_BLOCK},
    "DeiTForImageClassificationWithTeacher": {**_prefixed({**_EMBEDDINGS, **_VIT_BLOCK}, "deit."),
                                              "head.": "cls_classifier.", "head_dist.": "distillation_classifier."},
    "Dinov2WithRegistersModel": {**_EMBEDDINGS, **{
        "blocks.{i}.norm1.": "encoder.layer.{i}.norm1.",
        "blocks.{i}.attn.qkv.": "encoder.layer.{i}.attention.attention.{part}.",
        "blocks.{i}.attn.proj.": "encoder.layer.{i}.attention.output.dense.",
        "blocks.{i}.ls1.gamma": "encoder.layer.{i}.layer_scale1.lambda1",
        "blocks.{i}.norm2.": "encoder.layer.{i}.norm2.",
        "blocks.{i}.mlp.fc1.": "encoder.layer.{i}.mlp.fc1.",
        "blocks.{i}.mlp.fc2.": "encoder.layer.{i}.mlp.fc2.",
        "blocks.{i}.ls2.gamma": "encoder.layer.{i}.layer_scale2.lambda1",
    }},
}
# The Hugging Face repos of the same checkpoints, where transformers has the model.
TRANSFORMERS_REPOS = {
    **{f"deit_{size}_patch16_224": f"facebook/deit-{size}-patch16-224" for size in ("tiny", "small", "base")},
    **{f"deit_{size}_distilled_patch16_224": f"facebook/deit-{size}-distilled-patch16-224"
       for size in ("tiny", "small", "base")},
    "vit_base_patch16_224.orig_in21k_ft_in1k": "google/vit-base-patch16-224",
    "vit_small_patch14_reg4_dinov2": "facebook/dinov2-with-registers-small",
    "vit_base_patch14_reg4_dinov2": "facebook/dinov2-with-registers-base",
}
QKV = ("query", "key", "value")


class WeightsError(ValueError):
    """Weights that cannot be had or do not fit the model; the message says which and why."""


def timm_hub_repo(model):
    return architecture(model).hub  # e.g. timm/deit_tiny_patch16_224.fb_in1k


def transformers_hub_repo(model):
    """The Hugging Face repo of ``model``'s checkpoint in transformers' naming, or None."""
    return TRANSFORMERS_REPOS.get(model)


def expected_shapes(model=DEFAULT_MODEL, classes=None):
    """Every state-dict key of ``model`` (timm's names) with its shape; 5,717,416 parameters for
    DeiT-tiny. ``classes``: the head's size, where it is not the pretrained one (0: no head)."""
    a = architecture(model)
    D, M = a.D, a.M
    classes = a.classes if classes is None else classes
    layer = {"norm1": (D,), "attn.qkv": (3 * D, D), "attn.proj": (D, D),
             "norm2": (D,), "mlp.fc1": (M, D), "mlp.fc2": (D, M)}
    positions = a.prefix_positions + a.G * a.G
    shapes = {"cls_token": (1, 1, D), **({"dist_token": (1, 1, D)} if a.distilled else {}),
              **({"reg_token": (1, a.registers, D)} if a.registers else {}), "pos_embed": (1, positions, D),
              "patch_embed.proj.weight": (D, 3, a.P, a.P), "patch_embed.proj.bias": (D,),
              "norm.weight": (D,), "norm.bias": (D,)}
    for head in ("head", "head_dist")[:(1 + a.distilled) if classes else 0]:
        shapes.update({f"{head}.weight": (classes, D), f"{head}.bias": (classes,)})
    for i in range(a.L):
        for name, shape in layer.items():
            shapes[f"blocks.{i}.{name}.weight"] = shape
            shapes[f"blocks.{i}.{name}.bias"] = (shape[0],)
        if a.layer_scale:
            shapes.update({f"blocks.{i}.ls1.gamma": (D,), f"blocks.{i}.ls2.gamma": (D,)})
    return shapes


def naming_of(state):
    """The transformers model class whose naming ``state`` has (a key of TRANSFORMERS_NAMES), or
    None: timm's."""
    keys = [str(k) for k in state]
    starts = lambda prefix: any(k.startswith(prefix) for k in keys)
    if starts("vit."):
        return "ViTForImageClassification"
    if starts("deit."):
        return "DeiTForImageClassificationWithTeacher"
    if "embeddings.register_tokens" in state:
        return "Dinov2WithRegistersModel"
    return "ViTModel" if starts("embeddings.") else None


def transformers_names(key, naming="ViTForImageClassification"):
    """A timm key -> the transformers keys it is made of in ``naming`` (a key of
    TRANSFORMERS_NAMES): query, key and value for a qkv, else one."""
    table = TRANSFORMERS_NAMES[naming]
    block = re.match(r"blocks\.(\d+)\.", key)
    general = key.replace(block.group(0), "blocks.{i}.", 1) if block else key
    prefix = next((p for p in table if general.startswith(p)), None)
    if prefix is None:
        raise WeightsError(f"transformers' {naming} has no parameter for timm's {key!r}")
    name = table[prefix] + general[len(prefix):]
    i = block.group(1) if block else None
    return [name.format(i=i, part=part) for part in QKV] if "{part}" in name else [name.format(i=i)]


def load_weights(source=None, device="cpu", model=DEFAULT_MODEL):
    """Return ``model``'s weights (timm's name: a key of architectures.KNOWN, or another timm ViT)
    as a nested dict of float32 tensors on ``device``, its "architecture" the Architecture they
    are of (with their head's size: a fine-tuned head may have any number of classes).

    ``source`` may be a timm model (its parameters are copied), a state dict in either naming, a
    path to a local checkpoint (the official DeiT release ``{"model": state_dict}`` .pth, a state
    dict in .pth/.bin or .safetensors, or a folder that transformers' ``save_pretrained`` wrote),
    or None: the checkpoint the environment variable DEIT_EXPLAIN_WEIGHTS names, else the
    pretrained weights from a local cache (the DeiT release's, timm's or transformers'), else
    downloaded from timm's hub repo. Raises WeightsError naming the problem.
    (A transformers model object is not read: transformers 5 names its parameters otherwise
    inside; the files it writes keep the names above.)
    """
    try:
        architecture(model)
    except ArchitectureError as error:
        raise WeightsError(str(error)) from None
    if source is None and os.environ.get(WEIGHTS_VARIABLE):
        path = Path(os.environ[WEIGHTS_VARIABLE])
        try:
            state = _read_file(_checkpoint_file(path, model))
            return _nest(_in_timm_names(state, model), device, model)
        except WeightsError as error:
            raise WeightsError(f"{error} (the file ${WEIGHTS_VARIABLE} names)") from None
    if source is None:
        state = _read_file(_pretrained_file(model))
    elif isinstance(source, (str, os.PathLike)):
        state = _read_file(_checkpoint_file(Path(source), model))
    elif isinstance(source, torch.nn.Module):
        state = source.state_dict()
    elif isinstance(source, dict):
        state = source
    else:
        raise WeightsError(f"cannot load weights from a {type(source).__name__}")
    return _nest(_in_timm_names(state, model), device, model)


def _checkpoint_file(path, model):
    """A checkpoint file as given, or the one in a folder (as transformers' save_pretrained and
    the hub write them), after checking a transformers config.json beside it against ``model``."""
    if not path.is_dir():
        return path
    found = [path / name for name in TRANSFORMERS_FILES if (path / name).is_file()]
    if not found:
        raise WeightsError(f"folder {path} holds no {' or '.join(TRANSFORMERS_FILES)}")
    if (path / "config.json").is_file():
        _check_config(path / "config.json", model)
    return found[0]


def _check_config(path, model):
    """A transformers config.json must describe ``model``: a ViT of its sizes. Another
    config.json (timm's hub folder holds one, without a model_type) is left alone: the tensors
    are checked anyway."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"cannot read {path}: {error}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        return
    wanted = _config_type(model)
    if config["model_type"] != wanted:
        raise WeightsError(f"{path} describes a model of type {config['model_type']!r}, but "
                           f"{architecture(model).title} is one of type {wanted!r} in transformers")
    differs = lambda m: [(f, size) for f, size in _config_sizes(m).items() if f in config and config[f] != size]
    mismatched = differs(model)
    if mismatched:
        field, size = mismatched[0]
        raise WeightsError(f"{path} has {field} {config[field]!r}, but {architecture(model).title} has {size}"
                           + _other_model_hint(lambda m: not differs(m), model))


def _config_type(model):
    """transformers' model_type of ``model``'s family."""
    a = architecture(model)
    return "dinov2_with_registers" if a.registers else "deit" if a.distilled else "vit"


def _config_sizes(model):
    """The sizes of ``model`` under the names of transformers' configs."""
    a = architecture(model)
    return {"hidden_size": a.D, "num_attention_heads": a.H, "num_hidden_layers": a.L,
            "intermediate_size": a.M, "image_size": a.image_size, "patch_size": a.P,
            **({"num_register_tokens": a.registers} if a.registers else {})}


def _other_model_hint(fits, model):
    """For an error message: where another model of KNOWN ``fits``, a hint to choose it; else ''."""
    other = next((m for m in KNOWN if m != model and fits(m)), None)
    return f"; {other} fits: choose that model (--model {other})" if other else ""


def _read_file(path):
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if not path.is_file():  # e.g. /dev/zero, which would be read for ever
        raise WeightsError(f"weights file {path}: not a regular file")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty")
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols before it refuses a file
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file
                state = load_file(path)
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(_why_unloadable(path, error)) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # the official DeiT release wraps the state dict
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _why_unloadable(path, error):
    """The message for a weights file that torch.load or safetensors refused with ``error``,
    told by what the file is: torch's zip archive, a pickle, or neither.

    torch's safe loader (weights_only) refuses anything but tensors and plain containers, with
    a long text that suggests weights_only=False -- which would run whatever the file holds. Its
    wordings vary (a blocked global, an unsupported class, a function it will not call, a
    pickle operation it does not know), but each is an UnpicklingError saying "Weights only
    load failed"; in an archive or a pickle that means the file holds more than tensors.
    """
    text = str(error)
    reason = text.splitlines()[0] if text else type(error).__name__
    if path.suffix == ".safetensors":
        return f"cannot read weights file {path}: {reason}"
    with open(path, "rb") as file:
        start = file.read(4)
    archive, pickled = start == b"PK\x03\x04", start[:1] == b"\x80"  # torch.save's zip; a pickle's protocol mark
    if (archive or pickled) and isinstance(error, pickle.UnpicklingError) and "weights only load failed" in text.lower():
        culprit = re.search(r"GLOBAL (\S+?)[,.]?(?:\s|$)", text)
        what = f" (a pickled {culprit.group(1)}, which could run code)" if culprit else ""
        return f"weights file {path} holds more than tensors{what}, so it was not loaded, for safety"
    if archive:
        return f"weights file {path} is damaged or cut short (torch's zip archive cannot be read)"
    if pickled:
        return f"weights file {path} is a pickle that torch.save did not write, or a damaged one ({reason})"
    return f"weights file {path} is not a checkpoint (neither torch's format nor safetensors)"


def _in_timm_names(state, model):
    """A state dict in either naming, checked strictly -> in timm's names, qkv stacked."""
    try:
        return _renamed(state, model)
    except WeightsError as error:
        raise WeightsError(str(error) + _other_model_hint(lambda m: _fits(state, m), model)) from None


def _fits(state, model):
    try:
        _renamed(state, model)
        return True
    except WeightsError:
        return False


def _renamed(state, model):
    """``state`` checked against ``model``'s keys and shapes in its own naming -> timm's names.

    The head may have any number of classes (a fine-tuned one), or none where the model has none.
    transformers' DINOv2 with registers adds its class token's position to the class token, as
    timm's own conversion does (_convert_dinov2), and has an unused mask token, dropped; a
    ViTModel's pooler, which timm's model has not (its output is the class token), is dropped too.
    """
    naming = naming_of(state)
    head = "head.weight" if naming is None else TRANSFORMERS_NAMES[naming].get("head.", "no head.") + "weight"
    classes = state[head].shape[0] if torch.is_tensor(state.get(head)) and state[head].dim() == 2 else None
    shapes = expected_shapes(model, classes)
    if naming is None:
        return _checked(state, shapes, model)
    if naming == "ViTModel":
        state = {k: v for k, v in state.items() if not str(k).startswith("pooler.")}
    if naming == "Dinov2WithRegistersModel":
        state = {k: v for k, v in state.items() if k != "embeddings.mask_token"}
        positions = state.get("embeddings.position_embeddings")
        if torch.is_tensor(positions) and torch.is_tensor(state.get("embeddings.cls_token")) and positions.dim() == 3:
            state["embeddings.cls_token"] = state["embeddings.cls_token"] + positions[:, :1]
            state["embeddings.position_embeddings"] = positions[:, 1:]
    names = {key: transformers_names(key, naming) for key in shapes}  # a WeightsError where a key has none
    state = _checked(state, _transformers_shapes(shapes, names), model)
    return {key: state[names[key][0]] if len(names[key]) == 1 else torch.cat([state[n] for n in names[key]])
            for key in shapes}


def _transformers_shapes(shapes, names):
    """timm's {key: shape} -> transformers' {name: shape}: a (3D, D) qkv weight is three (D, D)
    pieces, query, key and value, and its (3D,) bias three (D,); the rest keep their shapes."""
    return {name: (shape[0] // len(names[key]),) + shape[1:] for key, shape in shapes.items() for name in names[key]}


def _checked(state, shapes, model):
    """``state`` if it holds exactly the keys of ``shapes``, each a tensor of that shape."""
    title = architecture(model).title
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    if missing or extra:
        found = [f"missing key {k!r}" for k in missing[:3]] + [f"unexpected key {k!r}" for k in extra[:3]]
        more = len(missing) + len(extra) - len(found)
        raise WeightsError(f"not {title} weights: " + ", ".join(found) + (f" and {more} more" if more else ""))
    for key, shape in shapes.items():
        value = state[key]
        if not torch.is_tensor(value) or tuple(value.shape) != shape:
            got = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise WeightsError(f"not {title} weights: key {key!r} has shape {got}, expected {shape}")
    for key in state:  # in float32, as the model computes: a float64 1e300 is infinite there
        finite = torch.isfinite(state[key].to(torch.float32))
        if not finite.all():
            raise WeightsError(f"unusable weights: key {key!r} holds {int((~finite).sum())} NaN or infinite "
                               "values (in float32)")
    return state


def _nest(state, device, model):
    """Flat ``a.b.c`` keys -> nested dicts; ``blocks`` becomes a list in block order, each
    attention's dict given its number of heads."""
    tree = {}
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value.detach().to(device=device, dtype=torch.float32, copy=True)
    a = architecture(model)
    tree["blocks"] = [tree["blocks"][str(i)] for i in range(a.L)]
    for block in tree["blocks"]:
        block["attn"]["heads"] = a.H
    tree["architecture"] = replace(a, classes=tree["head"]["weight"].shape[0] if "head" in tree else 0)
    return tree


def architecture_of(weights):
    """The Architecture ``weights`` are of, which load_weights records in them; a WeightsError
    naming the fix for a weights dict made otherwise."""
    if not isinstance(weights, dict) or not isinstance(weights.get("architecture"), Architecture):
        raise WeightsError("these weights do not say which model they are of: make them with load_weights")
    return weights["architecture"]


def at_image_size(weights, size):
    """The weights for size x size inputs: the position embedding's patch rows resampled to the
    new grid, bicubic and antialiased, as timm does when it builds a model at another img_size
    from a checkpoint (timm.layers.resample_abs_pos_embed); the prefix tokens' rows as they are.
    A smaller input for a model of many tokens (DINOv2's 518 pixels are 1,374 tokens, whose maps
    take 544 MB a picture). Raises WeightsError unless size is a multiple of the patch side."""
    a = architecture_of(weights)
    try:
        resized = at_size(a, size)
    except ArchitectureError as error:
        raise WeightsError(str(error)) from None
    if size == a.image_size:
        return weights
    first, positions = a.prefix_positions, weights["pos_embed"]
    patches = rearrange(positions[:, first:], "1 (gh gw) d -> 1 d gh gw", gh=a.G)
    patches = F.interpolate(patches, size=(size // a.P,) * 2, mode="bicubic", antialias=True, align_corners=False)
    resampled = torch.cat([positions[:, :first], rearrange(patches, "1 d gh gw -> 1 (gh gw) d")], dim=1)
    return {**weights, "pos_embed": resampled, "architecture": resized}


def with_read_out(weights, read_out):
    """A distilled DeiT's weights predicting by ``read_out`` (model.READ_OUTS: both heads' mean,
    timm's prediction, or the class or distillation token's head alone); others as they are."""
    if read_out not in READ_OUTS:
        raise WeightsError(f"read-out is one of {', '.join(READ_OUTS)}, not {read_out!r}")
    if "head_dist" not in weights or read_out == weights.get("read_out", "mean"):
        return weights
    return {**weights, "read_out": read_out}


def _pretrained_file(model):
    """``model``'s pretrained checkpoint from a local cache, or downloaded -- failing within
    seconds where there is no network, instead of the hub client's ~50 s of retries."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache  # with timm

    release = Path(torch.hub.get_dir()) / "checkpoints" / RELEASE_FILES.get(model, "")
    if model in RELEASE_FILES and release.is_file():
        return release
    if not timm_hub_repo(model):
        raise WeightsError(f"timm names no pretrained weights for {model}: pass your checkpoint with --weights")
    transformers = transformers_hub_repo(model)
    cached = [(timm_hub_repo(model), TIMM_FILE)] + [(transformers, f) for f in TRANSFORMERS_FILES if transformers]
    for repo, name in cached:
        found = try_to_load_from_cache(repo, name)  # a pure file look-up, no network
        if isinstance(found, str):
            return Path(found)
    title = architecture(model).title
    how = f"fetch them where there is network ({fetch_command(model)}), then pass --weights or set {WEIGHTS_VARIABLE}"
    if constants.HF_HUB_OFFLINE:
        raise WeightsError(f"pretrained {title} weights are not in the local cache and "
                           f"HF_HUB_OFFLINE is set; {how}")
    if not _reachable(constants.ENDPOINT):
        raise WeightsError(f"pretrained {title} weights are not in the local cache and "
                           f"{constants.ENDPOINT} cannot be reached (no network?); {how}")
    try:
        return Path(hf_hub_download(timm_hub_repo(model), TIMM_FILE))
    except Exception as error:
        raise WeightsError(f"could not download pretrained {title} weights ({error}); {how}") from None


def fetch_command(model=DEFAULT_MODEL):
    """The command that downloads ``model``'s pretrained file (the official DeiT release's where
    there is one), and where else it is."""
    timm_file = f"{HUB_URL}{timm_hub_repo(model)}/resolve/main/{TIMM_FILE}"
    first = f"curl -LO {RELEASE_URL}{RELEASE_FILES[model]}; or {HUB_URL}{timm_hub_repo(model)}" \
        if model in RELEASE_FILES else f"curl -L -o {model}.safetensors {timm_file}"
    transformers = transformers_hub_repo(model)
    return first + (f", {HUB_URL}{transformers}" if transformers else "")


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
