"""The second hostile battery (issue #22): what happens to standard output, odd file names,
weights that carry code or garbage, devices that cannot compute, pictures that are no pictures.

Every bad input ends with one line naming the problem, no traceback and nothing written; every
run that can go on does, and its results are whole. Where a user meets a case through the
shell (a pipe, /dev/full, a locale), the test runs the real script; the rest call the command
line in-process, which is what the script runs."""
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional.cli import main
from deit_functional.methods import METHODS
from deit_functional.outputs import Names, PictureResult, file_tag, name_limit, ratio_text
from script_runs import ATTENTION, run


@pytest.fixture(scope="module")
def state(timm_model):
    return {k: v.clone() for k, v in timm_model.state_dict().items()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, state):
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save(state, path)
    return path


def photo(path, seed=0, size=(60, 90)):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def folder_of(tmp_path, names):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for seed, name in enumerate(names):
        photo(folder / os.fsdecode(name), seed)  # bytes: a name that need not be valid UTF-8
    return folder


def results(folder):
    return sorted(p for p in Path(folder).iterdir()) if Path(folder).exists() else []


# ---- standard output --------------------------------------------------------------------------

def test_a_closed_pipe_stops_no_explanation_and_prints_nothing_more(tmp_path, checkpoint):
    """`attention_rollout.py --image folder/ | head -1`: the reader goes after one line; every
    picture is still explained, whole, and the run exits 0 without a word on stderr."""
    folder = folder_of(tmp_path, [f"{i}.png" for i in range(3)])  # two batches
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(ATTENTION), "--image", str(folder), "--weights", str(checkpoint),
                                "--batch-size", "2", "--output-dir", str(out), "--report"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    first = process.stdout.readline()
    process.stdout.close()  # as head does
    error = process.stderr.read().decode()
    assert process.wait(timeout=300) == 0, error
    assert first.decode().endswith("0.png:\n")
    assert "Traceback" not in error and "Exception ignored" not in error and "Broken pipe" not in error, error
    names = [p.name for p in results(out)]
    assert len([n for n in names if n.endswith("_all_discard0.9.png")]) == 3 and "report.html" in names


def test_a_full_standard_output_leaves_the_results_and_says_so_in_one_line(tmp_path, checkpoint):
    folder = folder_of(tmp_path, [f"{i}.png" for i in range(3)])
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, str(ATTENTION), "--image", str(folder), "--weights", str(checkpoint),
                                 "--output-dir", str(tmp_path / "out")], stdout=full, stderr=subprocess.PIPE,
                                text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "%|" not in line and line.strip()]  # no progress bar
    assert lines == ["standard output: no space left on device: the printout stopped there; the results were "
                     "written all the same"], result.stderr
    assert len(results(tmp_path / "out")) == 3 * 2 + 1  # and predictions.csv


@pytest.mark.parametrize("encoding, name, printed", [
    ("utf-8", b"caf\xe9.png", b"caf\xe9.png"),          # Latin-1 bytes on a UTF-8 desktop: printed as they are
    ("utf-8", b"na\xc3\xafve.png", b"na\xc3\xafve.png"),  # valid UTF-8, as ever
    ("ascii", b"na\xc3\xafve.png", b"na\\xefve.png"),    # a character an ASCII terminal lacks: escaped
])
def test_any_name_the_file_system_holds_is_printed_and_written(tmp_path, checkpoint, encoding, name, printed):
    """The printout, the explorer page and the report, for a picture whose name the locale's
    encoding cannot decode (or the terminal cannot show), with Python's strict stdout."""
    folder = folder_of(tmp_path, [name, b"plain.png"])
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ATTENTION), "--image", str(folder), "--weights", str(checkpoint),
                             "--output-dir", str(out), "--html", "--report"], capture_output=True, cwd=tmp_path,
                            env=dict(os.environ, PYTHONIOENCODING=f"{encoding}:strict"), timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    stem = os.fsencode(name)[:-4]
    assert printed + b":\n" in result.stdout
    written = [os.fsencode(line) for line in result.stdout.decode("utf-8", "surrogateescape").splitlines()
               if line.endswith((".png", ".npy", ".html"))]
    mine = [w for w in written if os.path.basename(w).startswith(stem + b"_")]
    if encoding == "utf-8":  # the printed paths are the files' own
        assert len(mine) == 1 + 3 + 2 and all(os.path.exists(os.path.join(os.fsencode(tmp_path), w)) for w in mine)
    page = next(p for p in results(out) if os.fsencode(p.name).startswith(stem) and p.suffix == ".html")
    report = (out / "report.md").read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert "plain.png" in report and page.read_bytes().decode("utf-8")
    overlay = next(p for p in results(out) if os.fsencode(p.name).startswith(stem) and p.suffix == ".png")
    from urllib.parse import quote
    assert f"]({quote(os.fsencode(overlay.name))})" in report  # a link that finds the file


# ---- bad input, in-process: exit 2, one line, nothing written ---------------------------------

def refused(capsys, tmp_path, argv):
    """Run the command line -> its one error line, after checking exit 2, no traceback, no
    warning before the usage line, nothing written."""
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        main(False, argv=[str(a) for a in argv])
    captured = capsys.readouterr()
    assert not warned, [str(w.message) for w in warned]
    assert exit.value.code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines[0].startswith("usage:"), captured.err  # nothing before it, a warning least of all
    assert "Traceback" not in captured.err and len(lines[-1]) < 300
    assert sorted(tmp_path.rglob("*")) == before
    return lines[-1]


def test_an_empty_path_is_a_usage_error_not_the_current_folder(tmp_path, capsys, checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo(tmp_path / "here.png")  # what --image '' used to explain
    picture = tmp_path / "here.png"
    for argv, option in [(["--image", "", "--weights", checkpoint], "--image"),
                         (["--image", picture, "", "--weights", checkpoint], "--image"),
                         (["--image", picture, "--weights", ""], "--weights"),
                         (["--image", picture, "--weights", checkpoint, "--output-dir", ""], "--output-dir")]:
        assert refused(capsys, tmp_path, argv).endswith(f"argument {option}: an empty path names no file or folder")


@pytest.mark.parametrize("inside", ["", "sub/deeper"])
def test_an_output_path_through_a_dangling_link_is_refused_up_front(tmp_path, capsys, checkpoint, inside):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", checkpoint,
                                       "--output-dir", tmp_path / "link" / inside])
    assert error.endswith(f"{tmp_path / 'link'}: output path is a symbolic link to {tmp_path / 'gone'}, "
                          "which does not exist")


def evil(call):
    class Payload:
        def __reduce__(self):
            return call
    return Payload()


CODE = {  # how a file can carry code past torch.save; each refused in its own words by torch
    "os.system": lambda: {"x": evil((os.system, ("echo ran > /dev/null",)))},
    "eval": lambda: {"x": evil((eval, ("1 + 1",)))},
    "a class not allowed": lambda: {"x": evil((subprocess.Popen, (["true"],)))},
    "a rebuilt object": lambda: {"x": Path("made by a stranger")},
}


@pytest.mark.parametrize("payload", CODE)
@pytest.mark.parametrize("how", ["torch.save", "torch.save, pickle protocol 4", "a plain pickle"])
def test_weights_that_carry_code_are_refused_in_one_line_that_never_suggests_loading_them(
        tmp_path, capsys, state, payload, how):
    path = tmp_path / "stranger.pth"
    content = {**state, **CODE[payload]()}
    if how == "a plain pickle":
        with open(path, "wb") as file:
            pickle.dump(content, file, protocol=4)
    else:
        torch.save(content, path, **({"pickle_protocol": 4} if "protocol" in how else {}))
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", path])
    assert f"weights file {path} holds more than tensors" in error and "not loaded, for safety" in error
    assert "weights_only" not in error and "Weights only" not in error


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b"just some text", "is not a checkpoint (neither torch's format nor safetensors)"),
    (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "is not a checkpoint"),
    ("cut", "is damaged or cut short"),
])
def test_weights_that_are_no_checkpoint_say_what_they_are(tmp_path, capsys, checkpoint, content, words):
    path = tmp_path / "odd.pth"
    path.write_bytes(checkpoint.read_bytes()[:5000] if content == "cut" else content)
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", path])
    assert f"weights file {path} {words}" in error


def test_a_device_file_as_weights_is_not_a_regular_file(tmp_path, capsys):
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", "/dev/zero"])
    assert error.endswith("weights file /dev/zero: not a regular file")


@pytest.mark.parametrize("key, value, count", [
    ("blocks.3.mlp.fc1.weight", float("nan"), 1),
    ("pos_embed", float("inf"), 1),
    ("head.bias", -float("inf"), 1),
    ("blocks.0.attn.qkv.weight", 1e300, 2),  # finite in float64, infinite in the model's float32
])
def test_weights_with_nan_or_infinite_values_are_refused_at_load_naming_the_first(
        tmp_path, capsys, state, key, value, count):
    bad = {k: v.double() if k == key else v for k, v in state.items()}
    bad[key].view(-1)[:count] = value
    keys = list(state)
    for later in keys[keys.index(key) + 1:][:1]:  # the next tensor in the file, bad too, is not the one named
        bad[later] = bad[later].clone().fill_(float("nan"))
    torch.save(bad, tmp_path / "bad.pth")
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", tmp_path / "bad.pth"])
    assert error.endswith(f"unusable weights: key {key!r} holds {count} NaN or infinite values (in float32)")


def test_weights_that_overflow_on_the_pictures_write_no_nan_map(tmp_path, capsys, state):
    """Finite weights, so large that the model's logits overflow: each picture is skipped with
    its reason, exit status 1, and no file is written."""
    huge = dict(state)
    huge["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"] * 1e30
    torch.save(huge, tmp_path / "huge.pth")
    folder = folder_of(tmp_path, ["a.png", "b.png"])
    for given, pictures in ((folder, ["a.png", "b.png"]), (folder / "a.png", ["a.png"])):
        status = main(False, argv=["--image", str(given), "--weights", str(tmp_path / "huge.pth"),
                                            "--output-dir", str(tmp_path / "out"), "--per-layer"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert status == 1 and not results(tmp_path / "out")
        assert lines == [f"skipped {folder / p}: the model's output for it is not finite (NaN or infinite logits): "
                         "the weights overflow on it; nothing written" for p in pictures] + \
                        [f"{len(pictures)} of {len(pictures)} pictures failed"]


def test_a_result_whose_map_is_not_finite_says_which_map():
    picture = np.zeros((20, 20, 3), np.uint8)
    maps = {"mean": np.ones((14, 14)), "max": np.full((14, 14), np.nan)}
    finite = PictureResult(Path("p.png"), picture, np.full(1000, 1e-3), {"mean": np.ones((14, 14))})
    assert finite.not_finite() is None
    assert PictureResult(Path("p.png"), picture, np.full(1000, 1e-3), maps).not_finite() == \
        "its map (max fusion) holds NaN or infinite values"
    layers = {"mean": (np.ones((12, 14, 14)), np.full((12, 14, 14), np.inf))}
    assert PictureResult(Path("p.png"), picture, np.full(1000, 1e-3), {"mean": np.ones((14, 14))},
                         layers=layers).not_finite() == "its map (mean fusion) holds NaN or infinite values"


@pytest.mark.parametrize("device", ["meta", "hpu", "cuda:7"])
def test_a_device_torch_names_but_cannot_compute_on_is_refused_naming_the_usable_ones(
        tmp_path, capsys, checkpoint, device):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    error = refused(capsys, tmp_path, ["--image", photo(tmp_path / "p.png"), "--weights", checkpoint,
                                       "--device", device])
    assert f"--device {device}" in error and error.endswith("usable here: " + ", ".join(
        ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]))


# ---- pictures that are no pictures --------------------------------------------------------------

def png_bytes(size=(40, 60)):
    import io
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes():
    import io
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def huge_png():
    """A PNG header claiming 20000 x 20000 pixels: Pillow's decompression-bomb guard refuses it."""
    import struct
    import zlib
    chunk = lambda kind, body: (struct.pack(">I", len(body)) + kind + body
                                + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100)))
            + chunk(b"IEND", b""))


UNREADABLE = [
    ("empty.png", lambda: b"", "the file is empty"),
    ("cut.png", lambda: png_bytes()[:60], "a truncated or damaged PNG file"),
    ("cut.jpg", lambda: jpeg_bytes()[:len(jpeg_bytes()) // 2], "a truncated or damaged JPEG file"),
    ("header.jpg", lambda: jpeg_bytes()[:20], "a truncated or damaged JPEG file"),
    ("notes.png", lambda: b"just some text", "its contents are in no picture format"),
    ("paper.png", lambda: b"%PDF-1.4\n" + bytes(300), "a PDF document, not a picture"),
    ("drawing.png", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
     "an SVG drawing, vector graphics rather than pixels"),
    ("modern.jxl", lambda: b"\xff\x0a" + bytes(100), "a JPEG XL picture, and no JPEG XL decoder is installed"),
    ("bomb.png", huge_png, "too large to decode safely: 400,000,000 pixels, over Pillow's limit of 178,956,970"),
]


@pytest.mark.parametrize("name, content, words", UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_an_unreadable_picture_is_described_in_a_users_words(tmp_path, capsys, checkpoint, name, content, words):
    (tmp_path / name).write_bytes(content())
    error = refused(capsys, tmp_path, ["--image", tmp_path / name, "--weights", checkpoint])
    assert f"{tmp_path / name}: not a readable picture: {words}" in error
    assert "pillow" not in error.lower() or "Pillow's limit" in error


def test_a_folder_says_why_each_picture_was_skipped_in_the_words_of_a_single_one(tmp_path, capsys, checkpoint):
    folder = folder_of(tmp_path, [f"{i:03}.png" for i in range(6)])
    for name, content, _ in UNREADABLE[:5]:
        (folder / name).write_bytes(content())
    alone = {}
    for name, _, _ in UNREADABLE[:5]:
        with pytest.raises(SystemExit):
            main(False, argv=["--image", str(folder / name), "--weights", str(checkpoint),
                                       "--output-dir", str(tmp_path / "out")])
        alone[name] = capsys.readouterr().err.strip().splitlines()[-1].split("error: ", 1)[1]
    status = main(False, argv=["--image", str(folder), "--weights", str(checkpoint),
                                        "--output-dir", str(tmp_path / "out")])
    lines = capsys.readouterr().err.splitlines()
    assert status == 1 and "5 of 11 pictures failed" in lines
    assert sorted(line for line in lines if line.startswith("skipped")) == sorted(f"skipped {m}" for m in alone.values())
    assert len(results(tmp_path / "out")) == 6 * 2 + 1  # and predictions.csv


def test_heic_photos_are_read_with_pillow_heif_and_say_what_to_install_without(tmp_path, checkpoint):
    """An iPhone's HEIC photo: with pillow-heif (the test extra has it) read like any picture;
    on a machine without it, skipped in a folder, saying what to install."""
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    folder = tmp_path / "phone"
    folder.mkdir()
    pixels = np.zeros((48, 64, 3), np.uint8)
    pixels[:, :32] = (200, 30, 30)
    Image.fromarray(pixels).save(folder / "IMG_0001.HEIC")
    from deit_functional import read_picture
    assert np.abs(read_picture(folder / "IMG_0001.HEIC").astype(int) - pixels).mean() < 4  # lossy, but this
    photo(folder / "plain.png")
    blocked = tmp_path / "no-heif"  # a machine without pillow-heif: importing it fails
    (blocked / "pillow_heif").mkdir(parents=True)
    (blocked / "pillow_heif" / "__init__.py").write_text("raise ImportError('no pillow-heif here')\n")
    result = run(ATTENTION, "--image", folder, "--weights", checkpoint, "--output-dir", tmp_path / "out",
                 cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(blocked)))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        f"skipped {folder / 'IMG_0001.HEIC'}: not a readable picture: a HEIC picture, and no HEIC decoder is "
        "installed: pip install pillow-heif, or the project's extra: pip install -e '.[heif]'")
    assert [p.name for p in results(tmp_path / "out")] == ["plain_attention-rollout_mean_discard0.9.png",
                                                           "plain_attention-rollout_mean_discard0.9_mask.npy",
                                                           "predictions.csv"]


# ---- names -------------------------------------------------------------------------------------

def test_discard_ratios_that_are_one_number_have_one_name_and_others_never_share_one():
    assert ratio_text(-0.0) == ratio_text(0.0) == "0" and ratio_text(0.9) == "0.9" and ratio_text(1e-05) == "1e-05"
    assert ratio_text(0.9000001) == "0.9000001" and ratio_text(0.12345678) == "0.12345678"  # :g would cut both
    assert file_tag(METHODS["attention"], ("mean",), -0.0) == file_tag(METHODS["attention"], ("mean",), 0.0)
    for ratio in (0.9, 0.9000001, 1 / 3, 0.25, 5e-7):
        assert float(ratio_text(ratio)) == ratio


def test_discard_minus_zero_names_its_files_as_zero(tmp_path, capsys, checkpoint):
    main(False, argv=["--image", str(photo(tmp_path / "p.png")), "--weights", str(checkpoint),
                               "--discard-ratio", "-0", "--output-dir", str(tmp_path / "out")])
    assert [p.name for p in results(tmp_path / "out")] == ["p_attention-rollout_mean_discard0.png",
                                                           "p_attention-rollout_mean_discard0_mask.npy"]


@pytest.mark.parametrize("unit, count", [("a", 240), ("é", 120), ("名", 80)])  # 240 bytes of 1-, 2- and 3-byte characters
def test_names_near_the_file_system_limit_are_shortened_unique_and_recognisable(tmp_path, capsys, checkpoint,
                                                                                  unit, count):
    """Two pictures whose 240-byte names differ only at their ends, with every kind of file a
    run writes: all names fit, none is shared, each starts as its picture's name."""
    names = [unit * (count - 1) + end for end in ("x", "y")]
    folder = folder_of(tmp_path, [os.fsencode(n + ".png") for n in names])
    status = main(True, argv=["--image", str(folder), "--weights", str(checkpoint), "--category", "87",
                                       "--head-fusion", "all", "--per-layer", "--html", "--save-grid",
                                       "--evaluate", "--output-dir", str(tmp_path / "out")])
    assert status == 0, capsys.readouterr().err
    written = [p for p in results(tmp_path / "out") if p.name != "predictions.csv"]
    assert len(written) == 2 * (1 + 3 * 3 + 2 + 1)
    limit = name_limit(tmp_path)
    assert all(len(os.fsencode(p.name)) <= limit for p in written)
    pictures = {}  # the shortened picture name -> its files
    for p in written:
        pictures.setdefault(p.name.split("_gradient-rollout_all_")[0], []).append(p)
    assert len(pictures) == 2 and all(len(files) == 13 for files in pictures.values())  # one name each
    for short in pictures:
        start, mark = short.split("~")
        assert names[0].startswith(start) and len(os.fsencode(start)) > 150 and len(mark) == 8
    assert all(p.name.encode("utf-8").decode("utf-8") == p.name for p in written)  # no character cut in half


def test_short_names_are_kept_whole():
    names = Names(Path("."), "attention-rollout_mean_discard0.9")
    assert names.short_name("cat", {"overlay": ".png"}) == "cat"
    long = "b" * 300
    short = names.short_name(long, {"overlay": ".png", "page": "_explorer.html"})
    assert short.startswith("b" * 100) and short[-9] == "~" and len(short) < 255
    assert short != names.short_name(long + "c", {"overlay": ".png", "page": "_explorer.html"})


# ---- matplotlib's own warnings -------------------------------------------------------------------

def test_stderr_holds_only_the_runs_own_lines_where_home_is_read_only(tmp_path, checkpoint):
    pytest.importorskip("matplotlib")
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    env["HOME"] = "/proc/no-home"  # cannot be created, even by root
    result = run(ATTENTION, "--image", photo(tmp_path / "p.png"), "--weights", checkpoint, "--evaluate",
                 "--output-dir", tmp_path / "out", cwd=tmp_path, env=env)
    assert result.returncode == 0 and result.stderr == ""
    assert any(p.name.endswith("_evaluation.png") for p in results(tmp_path / "out"))
