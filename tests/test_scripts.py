"""The two graded scripts, run for real as subprocesses: outputs, and every kind of bad input."""
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional.drawing import to_side
from figure_panels import GAP, locate
from script_runs import ATTENTION, GRADIENT, run, run_here


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, timm_model):
    path = tmp_path_factory.mktemp("weights") / "random_deit_tiny.pth"
    torch.save({"model": timm_model.state_dict()}, path)  # the official release's layout
    return path


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.jpg"
    pixels = np.random.default_rng(0).integers(0, 256, (120, 170, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def written(stdout):
    return [Path(line) for line in stdout.splitlines() if line.endswith((".png", ".npy"))]


@pytest.mark.quick
def test_attention_script_from_another_directory(tmp_path, photo, checkpoint):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run(ATTENTION, "--image", photo, "--weights", checkpoint, cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n  ") >= 5  # the top-5 lines
    files = written(result.stdout)
    assert [f.suffix for f in files] == [".png", ".npy"]
    assert all("attention-rollout_mean_discard0.9" in f.name for f in files)
    figure = np.asarray(Image.open(elsewhere / files[0]))
    mask = np.load(elsewhere / files[1])
    locate(figure, to_side(np.asarray(Image.open(photo))))  # the figure holds the picture, and its map
    assert mask.shape == (120, 170) and mask.dtype == np.float32
    assert 0 <= mask.min() and mask.max() <= 1
    # the default output folder sits in the working directory, holding exactly these two files
    assert sorted(p.name for p in (elsewhere / "results").iterdir()) == sorted(f.name for f in files)
    umask = os.umask(0o022)
    os.umask(umask)  # the child inherited it: results get the usual mode of new files
    assert all(stat.S_IMODE((elsewhere / f).stat().st_mode) == 0o666 & ~umask for f in files)


@pytest.mark.quick
def test_gradient_script_all_fusions_and_no_overwrite(tmp_path, photo, checkpoint):
    out = tmp_path / "out"
    args = ["--image", photo, "--category", "87", "--weights", checkpoint, "--output-dir", out,
            "--head-fusion", "all", "--save-grid"]
    first = run(GRADIENT, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    files = written(first.stdout)
    assert len(files) == 1 + 3 + 3
    assert all("gradient-rollout_all_discard0.9_category87" in f.name for f in files)
    assert {f.name.split("_")[-2] for f in files if f.suffix == ".npy"} == {"mean", "min", "max"}
    figure = np.asarray(Image.open(files[0]))
    from deit_functional.drawing import grey, overlay, stretched, upsample
    photo_pixels = np.asarray(Image.open(photo).convert("RGB"))
    small = to_side(photo_pixels)
    top, left = locate(figure, small)
    assert left == 0 and figure.shape[1] == 2 * small.shape[1] + GAP  # two panels to a row: picture, mean / min, max
    found = {}
    for fusion in ("mean", "min", "max"):  # each panel: that fusion's map over the grey photo, found in the figure
        grid = np.load(next(f for f in files if f.name.endswith(f"_{fusion}_grid.npy")))
        found[fusion] = locate(figure, overlay(grey(small), stretched(upsample(grid, small.shape[:2]), grid.min(),
                                                                      grid.max())))
    second_row = found["min"][0]
    assert found == {"mean": (top, small.shape[1] + GAP), "min": (second_row, 0), "max": (second_row, small.shape[1] + GAP)}
    assert second_row > top + small.shape[0]
    grid = np.load(next(f for f in files if f.name.endswith("max_grid.npy")))
    assert grid.shape == (14, 14) and grid.max() == 1
    before = {f: f.read_bytes() for f in files}
    second = run(GRADIENT, *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert not set(written(second.stdout)) & set(files)
    assert all(f.read_bytes() == data for f, data in before.items())


def test_chefer_method_is_selectable(tmp_path, photo, checkpoint):
    result = run(GRADIENT, "--image", photo, "--category", "3", "--method", "chefer",
                 "--weights", checkpoint, "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert all("chefer_mean_discard0_category3" in f.name for f in written(result.stdout))  # paper: no discard


@pytest.mark.parametrize("name, make", [
    ("grey.png", lambda: Image.fromarray(np.full((50, 70), 90, np.uint8))),
    ("rgba.png", lambda: Image.fromarray(np.full((50, 70, 4), 200, np.uint8))),
    ("deep.png", lambda: Image.fromarray(np.full((50, 70), 40000, np.uint16))),
    ("palette.gif", lambda: Image.fromarray(np.full((50, 70, 3), 30, np.uint8)).quantize(8)),
    ("large.jpg", lambda: Image.fromarray(np.full((3000, 4000, 3), 120, np.uint8))),
])
def test_odd_but_valid_pictures_give_a_mask_at_their_size(tmp_path, checkpoint, name, make):
    picture = make()
    picture.save(tmp_path / name)
    result = run(ATTENTION, "--image", tmp_path / name, "--weights", checkpoint,
                 "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mask = np.load(written(result.stdout)[1])
    assert mask.shape == (picture.height, picture.width)


def bad_inputs():
    """(name, build(tmp_path, photo, checkpoint) -> extra arguments, expected words in the error)."""
    def file_with(content, name="bad.png"):
        def build(tmp, photo, ckpt):
            path = tmp / name
            path.write_bytes(content(photo) if callable(content) else content)
            return ["--image", path, "--weights", ckpt]
        return build

    def args(*extra):
        return lambda tmp, photo, ckpt: ["--image", photo, "--weights", ckpt, *extra]

    def empty_folder(tmp, photo, ckpt):
        (tmp / "empty").mkdir()
        (tmp / "empty" / "notes.txt").write_text("no pictures here")
        return ["--image", tmp / "empty", "--weights", ckpt]

    def tiny(tmp, photo, ckpt):
        Image.fromarray(np.zeros((10, 300, 3), np.uint8)).save(tmp / "tiny.png")
        return ["--image", tmp / "tiny.png", "--weights", ckpt]

    def wrong_weights(tmp, photo, ckpt):
        state = torch.load(ckpt, weights_only=True)["model"]
        del state["blocks.4.attn.proj.bias"]
        torch.save(state, tmp / "wrong.pth")
        return ["--image", photo, "--weights", tmp / "wrong.pth"]

    def named_pipe(tmp, photo, ckpt):
        os.mkfifo(tmp / "pipe.png")  # reading it would wait for a writer forever
        return ["--image", tmp / "pipe.png", "--weights", ckpt]

    def earlier_result(tmp, photo, ckpt):
        (tmp / "photo_attention-rollout_mean_discard0.9.png").write_bytes(photo.read_bytes())
        return ["--image", tmp / "photo_attention-rollout_mean_discard0.9.png", "--weights", ckpt]

    def earlier_flow_result(tmp, photo, ckpt):
        (tmp / "photo_attention-flow_all_discard0_max_layers.png").write_bytes(photo.read_bytes())
        return ["--image", tmp / "photo_attention-flow_all_discard0_max_layers.png", "--weights", ckpt]

    def only_results(tmp, photo, ckpt):
        (tmp / "old").mkdir()
        (tmp / "old" / "a_gradient-rollout_all_discard0.9_category87.png").write_bytes(photo.read_bytes())
        return ["--image", tmp / "old", "--weights", ckpt]

    def pickled_code(tmp, photo, ckpt):
        state = torch.load(ckpt, weights_only=True)
        state["note"] = Path("made by a stranger")  # any object a pickle rebuilds by running code
        torch.save(state, tmp / "stranger.pth")
        return ["--image", photo, "--weights", tmp / "stranger.pth"]

    def output_is_file(tmp, photo, ckpt):
        (tmp / "taken").write_text("a file")
        return ["--image", photo, "--weights", ckpt, "--output-dir", tmp / "taken"]

    return [
        ("missing file", lambda tmp, photo, ckpt: ["--image", tmp / "nope.jpg", "--weights", ckpt],
         "no such file"),
        ("not an image", file_with(b"just some text, not a picture"), "not a readable picture"),
        ("empty file", file_with(b""), "not a readable picture"),
        ("truncated file", file_with(lambda p: p.read_bytes()[:400], "cut.jpg"), "not a readable picture"),
        ("folder without pictures", empty_folder, "holds no pictures"),
        ("picture smaller than a patch", tiny, "smaller than one 16x16 patch"),
        ("category not a class name", args("--category", "parrot"), "no ImageNet class is called 'parrot'"),
        ("category fitting two classes", args("--category", "crane"), "'crane' fits 2 classes: 134 crane; 517 crane"),
        ("category out of range", args("--category", "1000"), "not an ImageNet class index"),
        ("negative category", args("--category=-1"), "not an ImageNet class index"),
        ("discard ratio 1", args("--discard-ratio", "1"), "outside [0, 1)"),
        ("negative discard ratio", args("--discard-ratio=-0.1"), "outside [0, 1)"),
        ("discard ratio nan", args("--discard-ratio", "nan"), "outside [0, 1)"),
        ("unknown fusion", args("--head-fusion", "median"), "invalid choice"),
        ("batch size 0", args("--batch-size", "0"), "not a positive integer"),
        ("missing weights file", lambda tmp, photo, ckpt: ["--image", photo, "--weights", tmp / "no.pth"],
         "weights file not found"),
        ("wrong weights file", wrong_weights, "blocks.4.attn.proj.bias"),
        ("weights file with pickled code", pickled_code, "holds more than tensors"),
        ("named pipe", named_pipe, "pipe.png: not a regular file"),
        ("device file", lambda tmp, photo, ckpt: ["--image", "/dev/null", "--weights", ckpt],
         "/dev/null: not a regular file"),
        ("a result of an earlier run", earlier_result, "is a result of an earlier run"),
        ("a result of an earlier flow run", earlier_flow_result, "is a result of an earlier run"),
        ("folder of earlier results only", only_results, "holds no pictures but results of earlier runs"),
        ("output path is a file", output_is_file, "not a folder"),
        ("output folder not writable", args("--output-dir", "/proc/deit-results"), "not writable"),
        ("no CUDA here", args("--device", "cuda") if not torch.cuda.is_available() else
         args("--device", "nonsense"), "cuda" if not torch.cuda.is_available() else "unknown device"),
    ]


def snapshot(folder):
    return {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


# the input checks come before any method runs; flow is checked on a sample of them
FLOW_CASES = {"missing file", "truncated file", "folder without pictures", "discard ratio 1",
              "wrong weights file", "a result of an earlier flow run", "output folder not writable"}
BAD_RUNS = ([(ATTENTION, [], *case) for case in bad_inputs() if "category" not in case[0]]
            + [(ATTENTION, ["--method", "flow"], *case) for case in bad_inputs() if case[0] in FLOW_CASES]
            + [(GRADIENT, [] if "category" in case[0] else ["--category", "87"], *case) for case in bad_inputs()]
            + [(script, [], case, lambda tmp, photo, ckpt, more=more: ["--image", photo, "--weights", ckpt, *more],
                words) for script, case, more, words in (
                (ATTENTION, "category for a class-agnostic method", ["--category", "87"],
                 "--category: rollout explains what the model looks at, not one class; for a class's map run "
                 "gradient_rollout.py"),
                (ATTENTION, "unknown method", ["--method", "grad-cam"], "invalid choice: 'grad-cam' (choose from "
                 "rollout, flow, raw-attention, all)"),
                (GRADIENT, "fusion the method does not offer", ["--category", "87", "--method", "tam,grad-cam",
                 "--head-fusion", "max"], "--head-fusion max: no method chosen offers it (tam: mean; grad-cam: none)"),
                (GRADIENT, "discard ratio for a method that discards nothing", ["--category", "87", "--method",
                 "legrad", "--discard-ratio", "0.5"], "--discard-ratio: legrad discards nothing; only the rollouts do"),
                (GRADIENT, "per-layer figure of a method not built layer by layer", ["--category", "87",
                 "--method", "chefer,grad-sam", "--per-layer"], "--per-layer shows a map built layer by layer; "
                 "grad-sam is not (choose a rollout)"),
                (ATTENTION, "explorer page of raw attention", ["--method", "raw-attention", "--html"],
                 "--html shows a map built layer by layer; raw-attention is not"))])


@pytest.mark.parametrize("script, method, case, build, words", BAD_RUNS,
                         ids=[f"{s.stem.split('_')[0]}{'-flow' * bool(m)}-{c}" for s, m, c, _, _ in BAD_RUNS])
def test_bad_input_one_message_exit_2_nothing_written(tmp_path, photo, checkpoint, script, method, case, build,
                                                      words, capsys, monkeypatch):
    """Each case through attention_rollout.py in a process of its own; the same cases for
    --method flow and gradient_rollout.py through the same command line in this process (the
    checks come before any method runs; 2-3 s of start-up saved each)."""
    arguments = build(tmp_path, photo, checkpoint) + method
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path)  # where ./results would appear
    result = run(script, *arguments, cwd=tmp_path) if script == ATTENTION and not method else \
        run_here(capsys, script, *arguments)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert words in error and len(error) < 300  # one short line
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert snapshot(tmp_path) == before  # nothing written, inputs untouched


@pytest.fixture
def without_scipy(tmp_path_factory):
    """An environment in which ``import scipy`` fails, as on a machine without it."""
    folder = tmp_path_factory.mktemp("no-scipy")
    (folder / "scipy").mkdir()
    (folder / "scipy" / "__init__.py").write_text("raise ImportError('no SciPy on this machine')\n")
    return dict(os.environ, PYTHONPATH=str(folder))


def test_flow_without_scipy_says_what_to_install_and_writes_nothing(tmp_path, photo, checkpoint, without_scipy):
    result = run(ATTENTION, "--image", photo, "--weights", checkpoint, "--method", "flow", cwd=tmp_path,
                 env=without_scipy)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "attention flow needs SciPy: pip install scipy, or the project's extra: pip install -e '.[flow]'")
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("script, extra", [(ATTENTION, []), (GRADIENT, ["--category", "87", "--method", "chefer"])])
def test_the_graded_scripts_run_without_scipy(tmp_path, photo, checkpoint, without_scipy, script, extra):
    result = run(script, "--image", photo, "--weights", checkpoint, "--head-fusion", "all", "--per-layer",
                 *extra, cwd=tmp_path, env=without_scipy)
    assert result.returncode == 0, result.stderr
    assert len(written(result.stdout)) == 1 + 3 + 3


def test_gradient_script_requires_a_category(tmp_path, photo, checkpoint):
    result = run(GRADIENT, "--image", photo, "--weights", checkpoint, cwd=tmp_path)
    assert result.returncode == 2 and "--category" in result.stderr
    assert not (tmp_path / "results").exists()


def test_without_weights_or_network_the_script_fails_fast_and_says_how(tmp_path, photo):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               HF_ENDPOINT="http://127.0.0.1:9")  # an empty cache; a hub nobody answers on
    start = time.monotonic()
    result = run(ATTENTION, "--image", photo, cwd=tmp_path, env=env)
    assert time.monotonic() - start < 15
    assert result.returncode == 2 and "--weights" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_folder_with_one_bad_file_reports_it_and_goes_on(tmp_path, photo, checkpoint):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (folder / name).write_bytes(photo.read_bytes())
    (folder / "broken.png").write_bytes(b"not a png")
    result = run(ATTENTION, "--image", folder, "--weights", checkpoint, "--batch-size", "2",
                 "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 1
    assert "broken.png" in result.stderr and "1 of 4 pictures failed" in result.stderr
    assert sorted(f.name.split("_")[0] for f in written(result.stdout)) == ["a", "a", "b", "b", "c", "c"]


@pytest.fixture(scope="module")
def planted_checkpoint(tmp_path_factory):
    from planted import planted_state_dict
    path = tmp_path_factory.mktemp("planted") / "planted.safetensors"
    from safetensors.torch import save_file
    save_file(planted_state_dict(), path)
    return path


def peak_inside(mask, square):
    _, top, left, side = square
    y, x = np.unravel_index(np.argmax(mask), mask.shape)
    return top <= y < top + side and left <= x < left + side


def square_mean(mask, square):
    _, top, left, side = square
    return mask[top:top + side, left:left + side].mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_both_scripts_find_the_planted_squares_end_to_end(tmp_path, planted_checkpoint, seed):
    """The homework's cases on a model whose answer is known: one square for attention rollout;
    a red and a blue square for gradient rollout, each class lighting its own square only."""
    from planted import BLUE_CLASS, RED_CLASS, draw_scene
    rng = np.random.default_rng(seed)
    height, width, side = 240, 320, 56
    # off-centre, not on the 16-px grid: the red square on the left, the blue one on the right
    red = ("red", int(rng.integers(10, height - side - 10)), int(rng.integers(5, 90)), side)
    blue = ("blue", int(rng.integers(10, height - side - 10)), int(rng.integers(180, width - side - 5)), side)
    Image.fromarray(draw_scene(height, width, [red])).save(tmp_path / "one.png")
    Image.fromarray(draw_scene(height, width, [red, blue])).save(tmp_path / "two.png")
    common = ["--weights", planted_checkpoint, "--output-dir", tmp_path / "out", "--head-fusion", "all"]

    result = run(ATTENTION, "--image", tmp_path / "one.png", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    masks = [np.load(f) for f in written(result.stdout) if f.suffix == ".npy"]
    assert len(masks) == 3 and all(m.shape == (height, width) for m in masks)
    assert all(peak_inside(m, red) for m in masks)
    result = run(ATTENTION, "--image", tmp_path / "one.png", "--method", "flow", *common, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    flows = [np.load(f) for f in written(result.stdout) if f.suffix == ".npy"]
    assert all("attention-flow_all_discard0.9" in f.name for f in written(result.stdout))
    assert len(flows) == 3 and all(peak_inside(m, red) for m in flows)

    for category, own, other in ((RED_CLASS, red, blue), (BLUE_CLASS, blue, red)):
        for method in ("rollout", "chefer"):
            result = run(GRADIENT, "--image", tmp_path / "two.png", "--category", category,
                         "--method", method, *common, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            for mask in (np.load(f) for f in written(result.stdout) if f.suffix == ".npy"):
                assert peak_inside(mask, own)
                assert square_mean(mask, other) < 0.2 * square_mean(mask, own)


def test_model_chooses_the_larger_deit_and_names_its_files(tmp_path, photo):
    """--model deit_small_patch16_224: the mask is the library's on the same weights, the files
    say which DeiT, the explorer page shows its 6 heads; a tiny checkpoint is refused for it."""
    from deit_functional import explain, load_weights, read_picture, to_input
    from deit_functional.drawing import upsample
    from timm_reference import random_timm_model
    small = random_timm_model(name="deit_small_patch16_224")
    torch.save(small.state_dict(), tmp_path / "small.pth")
    result = run(ATTENTION, "--image", photo, "--weights", tmp_path / "small.pth", "--model", "deit_small_patch16_224",
                 "--html", "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [overlay, mask] = written(result.stdout)
    assert overlay.name == "photo_deit-small_attention-rollout_mean_discard0.9.png"
    picture = read_picture(photo)
    _, maps = explain(load_weights(small, model="deit_small_patch16_224"), to_input(picture)[None], "attention",
                      discard_ratio=0.9)
    np.testing.assert_array_equal(np.load(tmp_path / mask), upsample(maps["mean"][0], picture.shape[:2]))
    page = (tmp_path / "out" / "photo_deit-small_attention-rollout_mean_discard0.9_explorer.html").read_text()
    assert '"model":"DeiT-small","layers":12,"heads":6' in page and "where DeiT-small looks" in page

    torch.save(random_timm_model().state_dict(), tmp_path / "tiny.pth")
    refused = run(ATTENTION, "--image", photo, "--weights", tmp_path / "tiny.pth", "--model", "deit_small_patch16_224",
                  "--output-dir", tmp_path / "out2", cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "out2").exists()
    assert refused.stderr.splitlines()[-1].endswith(
        "not DeiT-small weights: key 'cls_token' has shape (1, 1, 192), expected (1, 1, 384); "
        "deit_tiny_patch16_224 fits: choose that model (--model deit_tiny_patch16_224)")
