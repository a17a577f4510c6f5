"""Strict loading from every supported source, and a fast, clear failure offline."""
import socket
import time
from pathlib import Path

import pytest
import torch

from deit_functional import WeightsError, forward, load_weights
from deit_functional import weights as weights_module
from timm_reference import random_timm_model

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


@pytest.fixture(scope="module")
def state(timm_model):
    return {k: v.detach().clone() for k, v in timm_model.state_dict().items()}


def logits_of(w, images):
    with torch.no_grad():
        return forward(w, images)[0]


@pytest.mark.parametrize("name, wrap", [
    ("deit_tiny_patch16_224-a1311bcf.pth", lambda s: {"model": s}),  # official DeiT release
    ("timm_state_dict.pth", lambda s: s),
    ("pytorch_model.bin", lambda s: s),
    ("model.safetensors", None),
])
def test_every_checkpoint_format_round_trips_to_identical_logits(tmp_path, state, weights, images, name, wrap):
    path = tmp_path / name
    if wrap is None:
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(wrap(state), path)
    assert torch.equal(logits_of(load_weights(path), images), logits_of(weights, images))
    assert torch.equal(logits_of(load_weights(str(path)), images), logits_of(weights, images))


def test_loaded_weights_are_copies(timm_model, weights):
    assert weights["head"]["weight"].data_ptr() != timm_model.head.weight.data_ptr()
    assert not weights["head"]["weight"].requires_grad


@pytest.mark.parametrize("edit, named", [
    (lambda s: s.pop("blocks.7.mlp.fc1.bias"), "blocks.7.mlp.fc1.bias"),
    (lambda s: s.__setitem__("blocks.12.norm1.weight", torch.ones(192)), "blocks.12.norm1.weight"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(10, 192)), "head.bias"),  # a head of 10 classes, 1000 biases
    (lambda s: s.__setitem__("pos_embed", torch.zeros(1, 577, 192)), "pos_embed"),
])
def test_a_wrong_checkpoint_is_refused_naming_the_key(tmp_path, state, edit, named):
    bad = dict(state)
    edit(bad)
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        load_weights(bad)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=named.replace(".", r"\.")):
        load_weights(tmp_path / "bad.pth")


def test_missing_and_unreadable_files_are_refused(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="is not a checkpoint"):
        load_weights(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_weights(tmp_path / "list.pth")


def test_a_file_holding_pickled_code_is_refused_in_one_short_line(tmp_path, state):
    import datetime
    torch.save({"model": state, "saved": datetime.date(2026, 11, 29)}, tmp_path / "stranger.pth")
    with pytest.raises(WeightsError) as caught:
        load_weights(tmp_path / "stranger.pth")
    message = str(caught.value)
    assert "holds more than tensors (a pickled datetime.date" in message and "for safety" in message
    assert "\n" not in message and len(message) < 150 + len(str(tmp_path))  # torch says 1,000 characters


@pytest.fixture
def no_local_weights(tmp_path, monkeypatch):
    """An empty Hugging Face cache and torch.hub dir: nothing pretrained is on this 'machine'."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))


def timed_failure():
    start = time.monotonic()
    with pytest.raises(WeightsError) as caught:
        load_weights()
    return str(caught.value), time.monotonic() - start


@pytest.mark.parametrize("network", ["hangs", "refuses"])
def test_pretrained_without_network_fails_fast_and_says_what_to_do(no_local_weights, monkeypatch, network):
    from huggingface_hub import constants

    def hang(*args, **kwargs):  # e.g. a name lookup that never answers
        time.sleep(60)

    if network == "hangs":
        monkeypatch.setattr(socket, "create_connection", hang)
    else:  # a closed port answers at once
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    message, seconds = timed_failure()
    assert seconds < 15
    assert "cannot be reached" in message and "--weights" in message


def test_pretrained_with_hub_offline_set_fails_at_once(no_local_weights, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    message, seconds = timed_failure()
    assert seconds < 2 and "HF_HUB_OFFLINE" in message and "--weights" in message


def test_pretrained_is_read_from_the_local_cache_when_there(tmp_path, monkeypatch, state, weights, images):
    """The cache path, exercised with a hand-made release file where torch.hub keeps it."""
    hub = tmp_path / "torch_hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.save({"model": state}, hub / "checkpoints" / weights_module.RELEASE_FILES["deit_tiny_patch16_224"])
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    assert torch.equal(logits_of(load_weights(), images), logits_of(weights, images))


def test_pretrained_is_read_from_the_hugging_face_cache_when_there(tmp_path, monkeypatch, state, weights, images):
    """The hub cache's own layout: refs/main names the snapshot that holds model.safetensors."""
    from huggingface_hub import constants
    from safetensors.torch import save_file
    repo = tmp_path / "hf" / ("models--" + weights_module.timm_hub_repo("deit_tiny_patch16_224").replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(state, snapshot / weights_module.TIMM_FILE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch_hub"))
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("went to the network"))
    assert torch.equal(logits_of(load_weights(), images), logits_of(weights, images))


def test_real_pretrained_weights_load_as_timm_loads_them(images):
    """Runs only where the real weights sit in a local cache; never downloads."""
    from huggingface_hub import try_to_load_from_cache
    release = Path(torch.hub.get_dir()) / "checkpoints" / weights_module.RELEASE_FILES["deit_tiny_patch16_224"]
    cached = try_to_load_from_cache(weights_module.timm_hub_repo("deit_tiny_patch16_224"), weights_module.TIMM_FILE)
    path = release if release.is_file() else Path(cached) if isinstance(cached, str) else None
    if path is None:
        pytest.skip("pretrained DeiT-tiny weights are not in a local cache (no network here)")
    import timm
    model = timm.create_model("deit_tiny_patch16_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(forward(load_weights(), images)[0],
                           forward(load_weights(model), images)[0])


def test_another_families_pretrained_weights_come_from_its_own_hub_repos(no_local_weights, tmp_path, monkeypatch):
    """DINOv2 with registers: timm's repo (timm/vit_small_patch14_reg4_dinov2.lvd142m) or
    transformers' (facebook/dinov2-with-registers-small) in the hub cache; offline, the message
    names the file to fetch."""
    from huggingface_hub import constants
    from safetensors.torch import save_file
    name = "vit_small_patch14_reg4_dinov2"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"HF_HUB_OFFLINE is set; fetch them where there is network \(curl -L -o "
                                           rf"{name}.safetensors https://huggingface.co/timm/{name}.lvd142m/resolve/"
                                           r"main/model.safetensors, https://huggingface.co/facebook/dinov2-with-registers-small\)"):
        load_weights(model=name)
    state = random_timm_model(name=name, depth=12).state_dict()
    repo = tmp_path / "hf" / ("models--" + weights_module.timm_hub_repo(name).replace("/", "--"))
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(state, repo / "snapshots" / ("0" * 40) / weights_module.TIMM_FILE)
    loaded = load_weights(model=name)
    assert loaded["architecture"].registers == 4 and torch.equal(loaded["reg_token"], state["reg_token"])
