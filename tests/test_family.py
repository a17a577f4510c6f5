"""The ViT family (GUIDE §14): each architecture as timm describes it, bitwise timm's forward,
its Hugging Face checkpoints, and every method on every family."""
from dataclasses import replace

import pytest
import torch

from deit_functional import explain, load_weights
from deit_functional.architectures import KNOWN, ArchitectureError, architecture, from_timm
from deit_functional.images import normalised, to_input
from deit_functional.methods import METHODS
from deit_functional.model import forward, prefix_count
from deit_functional.weights import WeightsError, expected_shapes, with_read_out
from timm_reference import attention_fused, random_timm_model, timm_attention, timm_state

# One checkpoint of each family, its switches in the comment.
FAMILIES = [
    "deit_tiny_distilled_patch16_224",  # a distillation token and head; the mean of two heads
    "deit3_small_patch16_224",          # LayerScale; positions for the patches only
    "vit_tiny_patch16_224",             # mean = std = 0.5
    "vit_small_patch32_224",            # patch 32: 7 x 7 patches
    "vit_tiny_patch16_384",             # input 384: 24 x 24 patches
    "vit_small_patch16_224.dino",       # no classifier
    "vit_small_patch8_224.dino",        # patch 8: 785 tokens
    "vit_small_patch14_reg4_dinov2",    # patch 14, input 518, four registers, LayerScale, no classifier
]


def meta_model(name, **sizes):
    import timm
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **sizes)


@pytest.mark.quick
def test_each_recorded_architecture_is_what_timm_says():
    for name, recorded in KNOWN.items():
        assert from_timm.__wrapped__(name) == recorded, name
        state = meta_model(name).state_dict()
        assert expected_shapes(name) == {k: tuple(v.shape) for k, v in state.items()}, name


@pytest.mark.quick
def test_an_unknown_or_unsupported_timm_model_is_refused_in_one_line():
    with pytest.raises(ArchitectureError, match=r"timm cannot build a model 'vit_nonesuch'"):
        architecture("vit_nonesuch")
    for name, why in (("vit_base_patch16_clip_224", "it has a norm before the blocks"),
                      ("resnet18", "it is a ResNet, not a plain ViT"),
                      ("vit_small_patch16_18x2_224", "it has ParallelThingsBlock blocks"),  # no .attn to read
                      ("vit_giant_patch14_dinov2", "it has an MLP other than fc-GELU-fc")):
        with pytest.raises(ArchitectureError, match=rf"^{name} is not a ViT this forward runs: {why}"):
            architecture(name)
    with pytest.raises(WeightsError, match="timm cannot build"):
        load_weights({}, model="vit_nonesuch")


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_and_every_map_are_bitwise_timms_unfused(name):
    """At each family's own width, heads, patch, input size, prefix tokens and switches, with
    two blocks of the twelve (timm's depth=2; every block runs the same code): the full models
    take a minute more here, and test_model.py runs DeiT-small and -base whole."""
    model = random_timm_model(name=name, depth=2)
    weights = load_weights(model, model=replace(KNOWN[name], L=2))
    a = weights["architecture"]
    images = torch.randn(2, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(3))
    logits, maps, _ = timm_attention(model, images)
    with torch.no_grad():
        ours, our_maps = forward(weights, images)
    assert prefix_count(weights) == a.prefix == model.num_prefix_tokens
    assert ours.shape == (2, a.classes or a.D) and len(our_maps) == a.L
    assert all(m.shape == (2, a.H, a.N, a.N) for m in our_maps) and a.N == model.pos_embed.shape[1] + (
        a.prefix - a.prefix_positions)
    assert torch.equal(ours, logits)
    for layer, (m, theirs) in enumerate(zip(our_maps, maps)):
        assert torch.equal(m, theirs), f"layer {layer}"


def test_a_distilled_deits_read_out_is_either_head_or_their_mean():
    model = random_timm_model(name="deit_tiny_distilled_patch16_224")
    weights = load_weights(model, model="deit_tiny_distilled_patch16_224")
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), attention_fused(model, False):
        features = model.forward_features(images)
        cls, dist = model.head(features[:, 0]), model.head_dist(features[:, 1])
        outputs = {r: forward(with_read_out(weights, r), images)[0] for r in ("mean", "cls", "dist")}
    assert torch.equal(outputs["cls"], cls) and torch.equal(outputs["dist"], dist)
    assert torch.equal(outputs["mean"], (cls + dist) / 2)
    with pytest.raises(WeightsError, match="read-out is one of mean, cls, dist"):
        with_read_out(weights, "both")


def test_preprocessing_is_the_checkpoints_own():
    picture = torch.randint(0, 256, (300, 200, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    for name in ("vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2", "deit_tiny_patch16_224"):
        import timm
        a, config = KNOWN[name], timm.get_pretrained_cfg(name.split(".")[0] if "." not in name else name)
        x = to_input(picture.numpy(), name)
        assert x.shape == (3, *config.input_size[1:]) == (3, a.image_size, a.image_size)
        assert (a.mean, a.std) == (tuple(config.mean), tuple(config.std))
        black = normalised(torch.zeros(3, 1, 1), name).flatten()
        assert torch.allclose(black, -torch.tensor(config.mean) / torch.tensor(config.std))


# Every method on every family, at four blocks (Beyond Intuition starts at the fourth) and 4 x 4
# patches, so the table runs in seconds: the same switches as the full models
# (architectures.Architecture with L and image_size changed).
SMALL = {name: dict(depth=4, img_size=KNOWN[name].P * 4) for name in FAMILIES}


@pytest.fixture(scope="module")
def small_models():
    found = {}
    for name in FAMILIES:
        model = random_timm_model(name=name, **SMALL[name])
        a = replace(KNOWN[name], L=4, image_size=SMALL[name]["img_size"])
        found[name] = model, load_weights(model, model=a)
    return found


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_every_family(small_models, method):
    m = METHODS[method]
    for name, (model, weights) in small_models.items():
        a = weights["architecture"]
        images = torch.randn(2, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(6))
        logits, maps = explain(weights, images, m, category=1 if m.uses_gradient else None)
        side = a.image_size if m.per_pixel else a.G
        for fusion, grid in maps.items():
            assert grid.shape == (2, side, side) and torch.isfinite(grid).all(), (name, fusion)
            peaks = grid.abs().amax(dim=(1, 2))  # each picture's map scaled to max 1, or all 0
            assert ((peaks - 1).abs() < 1e-6).logical_or(peaks == 0).all(), (name, fusion)
        with torch.no_grad(), attention_fused(model, False):
            assert torch.equal(logits, model(images)), name


def test_rollout_reads_the_patches_after_every_prefix_token(small_models):
    """A plain loop: R = prod (A_l + I)/2 renormalised, the class token's row over the patches
    alone (the registers and the distillation token are not patches)."""
    for name in ("vit_small_patch14_reg4_dinov2", "deit_tiny_distilled_patch16_224"):
        _, weights = small_models[name]
        a = weights["architecture"]
        images = torch.randn(1, 3, a.image_size, a.image_size, generator=torch.Generator().manual_seed(7))
        _, maps = forward(weights, images)
        R = torch.eye(a.N, dtype=torch.float64)
        for attn in maps:
            layer = attn[0].double().mean(dim=0) + torch.eye(a.N, dtype=torch.float64)
            R = (layer / layer.sum(dim=-1, keepdim=True)) @ R
        row = R[0, a.prefix:]
        expected = (row / row.max()).reshape(a.G, a.G)
        _, ours = explain(weights, images, "attention")
        assert torch.allclose(ours["mean"][0].double(), expected, atol=1e-5), name


# ---- Hugging Face transformers checkpoints of the same models -----------------------------------

def hf_model(kind):
    """A small random transformers model of ``kind`` (its model_type), in eval mode, eager
    attention (which returns the maps), LayerNorm eps 1e-6 as timm's."""
    transformers = pytest.importorskip("transformers")
    sizes = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192,
                 layer_norm_eps=1e-6, attn_implementation="eager")
    if kind == "dinov2_with_registers":
        config = transformers.Dinov2WithRegistersConfig(image_size=56, patch_size=14, num_register_tokens=4, **sizes)
        model = transformers.Dinov2WithRegistersModel(config)
    elif kind == "vit":  # a ViTModel, as facebook/dino-vits16: no head, a pooler timm's model has not
        model = transformers.ViTModel(transformers.ViTConfig(image_size=64, patch_size=16, **sizes))
    else:
        config = transformers.DeiTConfig(image_size=64, patch_size=16, num_labels=10, **sizes)
        model = transformers.DeiTForImageClassificationWithTeacher(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("kind, name", [("dinov2_with_registers", "vit_small_patch14_reg4_dinov2"),
                                        ("deit", "deit_tiny_distilled_patch16_224"),
                                        ("vit", "vit_small_patch16_224.dino")])
def test_a_transformers_checkpoint_gives_transformers_outputs_and_maps(tmp_path, kind, name):
    model = hf_model(kind)
    model.save_pretrained(tmp_path)
    size = model.config.image_size
    a = replace(KNOWN[name], D=48, H=2, L=2, image_size=size)
    weights = load_weights(tmp_path / "model.safetensors", model=a)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        theirs = model(pixel_values=images, output_attentions=True)
        ours, maps = forward(weights, images)
    output = theirs.logits if kind == "deit" else theirs.last_hidden_state[:, 0]  # (DINOv2's pooler_output)
    assert torch.allclose(ours, output, atol=1e-5, rtol=1e-4)
    assert weights["architecture"].classes == (10 if kind == "deit" else 0)
    for m, their in zip(maps, theirs.attentions):
        assert torch.allclose(m, their, atol=1e-6)
    # the same file, as timm's state dict, drives timm's own model to our numbers bit for bit (the
    # DINOv2 file's class-token position added into the class token, as timm's _convert_dinov2 does)
    import timm
    reference = timm.create_model(name, pretrained=False, embed_dim=48, num_heads=2, depth=2, img_size=size,
                                  num_classes=weights["architecture"].classes).eval()
    reference.load_state_dict(timm_state(weights), strict=True)
    logits, their_maps, _ = timm_attention(reference, images)
    assert torch.equal(logits, ours) and all(torch.equal(m, t) for m, t in zip(maps, their_maps))




# ---- the scripts --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Seeded random checkpoints on disk: a distilled DeiT-tiny, a DINO ViT-S/16, and DeiT-tiny
    fine-tuned to a head of 3 classes."""
    folder = tmp_path_factory.mktemp("checkpoints")
    found = {}
    for name in ("deit_tiny_distilled_patch16_224", "vit_small_patch16_224.dino"):
        found[name] = folder / f"{name}.pth"
        torch.save(random_timm_model(name=name).state_dict(), found[name])
    tuned = random_timm_model(name="deit_tiny_patch16_224").state_dict()
    tuned["head.weight"], tuned["head.bias"] = tuned["head.weight"][:3].clone(), tuned["head.bias"][:3].clone()
    found["tuned"] = folder / "tuned.pth"
    torch.save(tuned, found["tuned"])
    (folder / "labels.txt").write_text("cat\ndog\nparrot\n")
    found["labels"] = folder / "labels.txt"
    return found


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import numpy as np
    from PIL import Image
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_a_distilled_deit_explains_the_head_the_user_reads(tmp_path, capsys, checkpoints, photo):
    from script_runs import GRADIENT, run_here
    import numpy as np
    masks = {}
    for read_out in ("mean", "dist"):
        out = tmp_path / read_out
        done = run_here(capsys, GRADIENT, "--image", photo, "--category", "87", "--model",
                        "deit_tiny_distilled_patch16_224", "--weights", checkpoints["deit_tiny_distilled_patch16_224"],
                        "--read-out", read_out, "--output-dir", out)
        assert done.returncode == 0, done.stderr
        (mask,) = out.glob("*.npy")
        masks[read_out] = np.load(mask)
        assert "deit-tiny-distilled" in mask.name
    assert masks["mean"].shape == (60, 90) and not np.array_equal(masks["mean"], masks["dist"])


def test_a_model_without_a_classifier_explains_a_feature_and_refuses_probabilities(tmp_path, capsys, checkpoints,
                                                                                  photo):
    from script_runs import ATTENTION, GRADIENT, run_here
    dino = ("--model", "vit_small_patch16_224.dino", "--weights", checkpoints["vit_small_patch16_224.dino"])
    done = run_here(capsys, ATTENTION, "--image", photo, *dino, "--output-dir", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert "no classifier: the class token's largest features" in done.stdout and "feature " in done.stdout
    done = run_here(capsys, GRADIENT, "--image", photo, "--category", "383", *dino, "--output-dir", tmp_path / "b")
    assert done.returncode == 0 and "Gradient Rollout, feature 383 (value " in done.stdout, done.stderr
    for refused, words in (((GRADIENT, "--category", "384"), "384 is not a class index of this model (0..383)"),
                           ((ATTENTION, "--compare"), "has no classifier (its output is its 384 features)"),
                           ((ATTENTION, "--labels", checkpoints["labels"]), "--labels: DINO ViT-S/16")):
        done = run_here(capsys, refused[0], "--image", photo, *refused[1:], *dino, "--output-dir", tmp_path / "c")
        last = done.stderr.strip().splitlines()[-1]  # after the usage lines, the one error line
        assert done.returncode == 2 and words in last and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "c").exists()


def test_a_fine_tuned_head_takes_its_labels(tmp_path, capsys, checkpoints, photo):
    from script_runs import GRADIENT, run_here
    tuned = ("--weights", checkpoints["tuned"])
    done = run_here(capsys, GRADIENT, "--image", photo, "--category", "parrot", *tuned, "--labels",
                    checkpoints["labels"], "--output-dir", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert "class 2 parrot" in done.stdout and "rank" in done.stdout and "of 3)" in done.stdout
    for argv, words in ((("--category", "3", "--labels", checkpoints["labels"]), "3 is not a class index of this model (0..2)"),
                        (("--category", "1"), "a head of 3 classes, not ImageNet's 1000: name them with --labels"),
                        (("--category", "1", "--read-out", "dist", "--labels", checkpoints["labels"]),
                         "--read-out: DeiT-tiny (deit_tiny_patch16_224) has one head")):
        done = run_here(capsys, GRADIENT, "--image", photo, *argv, *tuned, "--output-dir", tmp_path / "b")
        assert done.returncode == 2 and words in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "b").exists()


def test_attention_flow_says_what_it_costs_and_is_refused_where_a_picture_takes_minutes(tmp_path, capsys,
                                                                                       checkpoints, photo):
    """Its cost grows as the tokens' cube: 1,374 (DINOv2) would take about 6 minutes a picture;
    226 (DINO ViT-S/16 at 240 pixels) are run, saying so first."""
    from script_runs import ATTENTION, run_here
    done = run_here(capsys, ATTENTION, "--image", photo, "--method", "flow", "--model", "vit_small_patch14_reg4_dinov2",
                    "--output-dir", tmp_path / "out")
    assert done.returncode == 2 and "about 6 min a picture" in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "out").exists()
    done = run_here(capsys, ATTENTION, "--image", photo, "--method", "flow", "--model", "vit_small_patch16_224.dino",
                    "--weights", checkpoints["vit_small_patch16_224.dino"], "--image-size", "240",
                    "--output-dir", tmp_path / "small")
    assert done.returncode == 0, done.stderr
    assert "--method flow: 226 tokens, so Attention Flow will take about 2 s a picture" in done.stderr
    assert len(list((tmp_path / "small").glob("*attention-flow*_mask.npy"))) == 1


@pytest.mark.parametrize("name, size", [("vit_small_patch14_reg4_dinov2", 224), ("deit_tiny_distilled_patch16_224", 288)])
def test_another_input_size_resamples_positions_as_timm_does(name, size):
    """weights.at_image_size against timm building the model at img_size from the same state
    dict (its checkpoint_filter_fn resamples pos_embed): bitwise, logits and maps."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn
    from deit_functional.weights import at_image_size
    model = random_timm_model(name=name, depth=2)
    weights = at_image_size(load_weights(model, model=replace(KNOWN[name], L=2)), size)
    resized = timm.create_model(name, pretrained=False, depth=2, img_size=size).eval()
    resized.load_state_dict(checkpoint_filter_fn(model.state_dict(), resized), strict=True)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(10))
    logits, maps, _ = timm_attention(resized, images)
    with torch.no_grad():
        ours, our_maps = forward(weights, images)
    a = weights["architecture"]
    assert a.image_size == size and our_maps[0].shape[-1] == resized.pos_embed.shape[1] + a.prefix - a.prefix_positions
    assert torch.equal(ours, logits) and all(torch.equal(m, t) for m, t in zip(our_maps, maps))
    with pytest.raises(WeightsError, match="a positive multiple of its"):
        at_image_size(weights, size + 1)


def test_many_tokens_shrink_the_default_batch_and_refuse_the_page(tmp_path, capsys, photo):
    from deit_functional.cli import BATCH, MAP_BUDGET, batch_size, parser_for, script_methods
    from script_runs import ATTENTION, run_here
    parse = parser_for(script_methods(False)).parse_args
    dinov2 = KNOWN["vit_small_patch14_reg4_dinov2"]
    assert dinov2.map_bytes == 4 * 12 * 6 * 1374 ** 2  # 544 MB a picture
    assert batch_size(parse(["--image", "x", "--model", "vit_small_patch14_reg4_dinov2"])) == MAP_BUDGET // dinov2.map_bytes
    assert batch_size(parse(["--image", "x", "--model", "vit_small_patch14_reg4_dinov2", "--image-size", "224"])) == BATCH
    assert batch_size(parse(["--image", "x"])) == BATCH and batch_size(parse(["--image", "x", "--batch-size", "5"])) == 5
    for argv, words in ((("--html",), "its page would hold 173 MB of maps per picture: give --image-size 336 or less"),
                        (("--image-size", "230"), "--image-size: an input size for DINOv2-S/14 registers is a positive multiple of "
                                                  "its 14-pixel patch, not 230")):
        done = run_here(capsys, ATTENTION, "--image", photo, "--model", "vit_small_patch14_reg4_dinov2", *argv,
                        "--output-dir", tmp_path / "out")
        assert done.returncode == 2 and words in done.stderr.strip().splitlines()[-1], done.stderr
    assert not (tmp_path / "out").exists()


def test_a_labels_file_is_a_name_per_line(tmp_path, capsys, checkpoints, photo):
    from deit_functional.labels import read_labels
    from script_runs import GRADIENT, run_here
    cases = {"names.txt": ("cat\ndog\n\n", None), "empty.txt": ("\n\n", "no class names in it"),
             "gap.txt": ("cat\n\ndog\n", "line 2 is empty"), "latin.txt": (b"caf\xe9\n", "cannot read it")}
    for name, (text, error) in cases.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
        if error is None:
            assert read_labels(tmp_path / name) == ["cat", "dog"]
        else:
            with pytest.raises(ValueError, match=error):
                read_labels(tmp_path / name)
    done = run_here(capsys, GRADIENT, "--image", photo, "--category", "1", "--weights", checkpoints["tuned"],
                    "--labels", tmp_path / "names.txt", "--output-dir", tmp_path / "out")
    assert done.returncode == 2 and "2 names, but the head of these weights has 3 classes" in done.stderr
    assert not (tmp_path / "out").exists()


def test_transformer_attribution_reads_layerscale_as_the_linear_layer_it_scales(small_models):
    """LayerScale with positive gammas folded into the layers it scales (attn.proj, mlp.fc2: rows
    and biases times gamma) is the same function without LayerScale; Chefer et al.'s rules share
    relevance by the products' parts, which positive scales keep, so the two maps agree."""
    _, weights = small_models["deit3_small_patch16_224"]
    scaled_weights = {**weights, "blocks": []}
    folded = {**weights, "blocks": []}
    for p in weights["blocks"]:
        gammas = {name: p[name]["gamma"].abs() + 0.5 for name in ("ls1", "ls2")}
        scaled_weights["blocks"].append({**p, **{name: {"gamma": g} for name, g in gammas.items()}})
        plain = {k: v for k, v in p.items() if k not in ("ls1", "ls2")}
        proj, fc2 = p["attn"]["proj"], p["mlp"]["fc2"]
        plain["attn"] = {**p["attn"], "proj": {k: v * (gammas["ls1"][:, None] if k == "weight" else gammas["ls1"])
                                               for k, v in proj.items()}}
        plain["mlp"] = {**p["mlp"], "fc2": {k: v * (gammas["ls2"][:, None] if k == "weight" else gammas["ls2"])
                                           for k, v in fc2.items()}}
        folded["blocks"].append(plain)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert torch.allclose(forward(scaled_weights, images)[0], forward(folded, images)[0], atol=1e-5)
    ours = explain(scaled_weights, images, "transformer-attribution", category=3)[1]["mean"]
    theirs = explain(folded, images, "transformer-attribution", category=3)[1]["mean"]
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_a_dino_with_a_fine_tuned_imagenet_head_explains_imagenet_classes(tmp_path, capsys, photo):
    """The head the weights have decides what the outputs are, not the checkpoint timm names."""
    from script_runs import GRADIENT, run_here
    tuned = random_timm_model(name="vit_small_patch16_224.dino", num_classes=1000).state_dict()
    torch.save(tuned, tmp_path / "dino-imagenet.pth")
    done = run_here(capsys, GRADIENT, "--image", photo, "--category", "tabby", "--model", "vit_small_patch16_224.dino",
                    "--weights", tmp_path / "dino-imagenet.pth", "--output-dir", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "Gradient Rollout, class 281 tabby (p " in done.stdout and "feature" not in done.stdout
