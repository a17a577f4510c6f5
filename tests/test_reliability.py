"""Inputs and conditions real users meet: phone photos stored on their side, results lying in
the input folder, a full disk, several runs into one folder at once. Each through the real
scripts where a user would meet it. (Named pipes, pickled weights and file modes are among the
bad inputs and outputs of test_scripts.py.)"""
import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deit_functional import read_picture
from deit_functional.drawing import to_side
from figure_panels import locate
from planted import draw_scene, planted_state_dict
from script_runs import ATTENTION, run

ORIENTATION = 0x0112  # the EXIF tag

# How a camera stores an upright picture U under each orientation value: the tag tells a
# viewer how to turn the stored pixels back into U (EXIF 2.3, tag 274).
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1], 4: lambda u: u[::-1],
          5: lambda u: u.transpose(1, 0, 2), 6: lambda u: np.rot90(u, 1),
          7: lambda u: np.rot90(u, 2).transpose(1, 0, 2), 8: lambda u: np.rot90(u, -1)}


def save_with_orientation(upright, orientation, path, palette=False, **options):
    image = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    image = image.quantize(4) if palette else image
    exif = image.getexif()
    exif[ORIENTATION] = orientation
    image.save(path, exif=exif, **options)


@pytest.fixture(scope="module")
def planted_checkpoint(tmp_path_factory):
    from safetensors.torch import save_file
    path = tmp_path_factory.mktemp("planted") / "planted.safetensors"
    save_file(planted_state_dict(), path)
    return path


def written(stdout):
    return [Path(line) for line in stdout.splitlines() if line.endswith((".png", ".npy"))]


# ---- phone photos ---------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", STORED)
def test_every_exif_orientation_is_applied_when_reading(tmp_path, orientation):
    upright = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    save_with_orientation(upright, orientation, tmp_path / "lossless.png")
    np.testing.assert_array_equal(read_picture(tmp_path / "lossless.png"), upright)
    three_colours = np.zeros((30, 50, 3), np.uint8)
    three_colours[:, :10], three_colours[:8] = (255, 0, 0), (0, 0, 255)  # every turn shows
    save_with_orientation(three_colours, orientation, tmp_path / "palette.png", palette=True)
    np.testing.assert_array_equal(read_picture(tmp_path / "palette.png"), three_colours)
    smooth = np.repeat(np.repeat(upright[::10, ::10], 10, axis=0), 10, axis=1)  # survives JPEG
    save_with_orientation(smooth, orientation, tmp_path / "phone.jpg", quality=95)
    picture = read_picture(tmp_path / "phone.jpg")
    # JPEG's loss on these blocks is ~6 levels on average; a wrong turn would be ~80
    assert picture.shape == smooth.shape and np.abs(picture.astype(int) - smooth).mean() < 12


def test_sideways_stored_photos_are_explained_as_viewers_show_them(tmp_path, planted_checkpoint):
    """The model gets the upright picture: every orientation gives exactly the upright file's
    classes and mask; and the mask and overlay have the upright shape, lit where the square is."""
    height, width, square = 160, 240, ("red", 20, 150, 60)  # top right: every turn moves it
    upright = draw_scene(height, width, [square])
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(upright).save(folder / "upright.png")
    for orientation in STORED:
        save_with_orientation(upright, orientation, folder / f"tag{orientation}.png")
    save_with_orientation(upright, 6, folder / "phone.jpg", quality=95)  # as most phones store them
    result = run(ATTENTION, "--image", folder, "--weights", planted_checkpoint, "--output-dir", tmp_path / "out",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reports = dict(block.split(":", 1) for block in result.stdout.split(f"{folder}/")[1:])  # name: lines
    files = written(result.stdout)
    mask_of = {name: np.load(next(f for f in files if f.name.startswith(Path(name).stem + "_") and f.suffix == ".npy"))
               for name in reports}
    top5 = lambda name: [line for line in reports[name].splitlines() if line.startswith("  ")]
    for orientation in STORED:
        name = f"tag{orientation}.png"
        assert top5(name) == top5("upright.png"), orientation
        np.testing.assert_array_equal(mask_of[name], mask_of["upright.png"])
    mask = mask_of["phone.jpg"]
    figure = np.asarray(Image.open(next(f for f in files if f.name.startswith("phone_") and f.suffix == ".png")))
    assert mask.shape == (height, width)
    locate(figure, to_side(read_picture(folder / "phone.jpg")))  # the figure shows the picture upright
    y, x = np.unravel_index(mask.argmax(), mask.shape)
    _, top, left, side = square
    assert top <= y < top + side and left <= x < left + side


# ---- results in the input folder ------------------------------------------------------------

def test_a_run_never_explains_results_of_earlier_runs(tmp_path, planted_checkpoint):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.fromarray(draw_scene(64, 80, [("blue", 10, 20, 30)])).save(folder / name)
    (folder / "._a.png").write_bytes(b"a hidden file, e.g. macOS's resource fork: no picture")
    arguments = ["--image", folder, "--weights", planted_checkpoint, "--output-dir", folder, "--per-layer"]
    first = run(ATTENTION, *arguments, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert len(written(first.stdout)) == 2 * 3  # overlay, mask and per-layer figure per picture
    second = run(ATTENTION, *arguments, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"{folder}: skipping 4 results of earlier runs" in second.stderr  # 2 overlays, 2 figures
    explained = [line[:-1] for line in second.stdout.splitlines() if line.endswith(":")]
    assert explained == [str(folder / "a.png"), str(folder / "b.jpg")]
    assert all(f.name.count("attention-rollout") <= 1 for f in folder.iterdir())  # no result of a result
    assert len(list(folder.iterdir())) == 3 + 2 * (2 * 3 + 1)  # the pictures, two runs' results and predictions


# ---- a full disk ----------------------------------------------------------------------------

def check_stopped_whole(status, stderr, out, pictures):
    """The run stopped with exit 1 and one line, and left only whole results, no temporary file."""
    assert status == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left on device" in lines[0], stderr
    finished = int(lines[0].split("the run stopped with ")[1].split(" of ")[0])
    assert f"with {finished} of {pictures} pictures written" in lines[0] and "nothing partial was left" in lines[0]
    assert 0 < finished < pictures
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")], names  # no temporary file left
    overlays = [n for n in names if n.endswith(".png")]
    assert len(overlays) == finished and len(names) == 2 * finished
    pixels = np.random.default_rng(0).integers(0, 256, (120, 170, 3), dtype=np.uint8)  # photo_folder's
    for overlay in overlays:
        locate(np.asarray(Image.open(out / overlay)), to_side(pixels))  # a whole figure
        assert np.load(out / overlay.replace(".png", "_mask.npy")).shape == (120, 170)


def photo_folder(tmp_path, count):
    folder = tmp_path / "pictures"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (120, 170, 3), dtype=np.uint8)
    for i in range(count):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def small_disk_available():
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not small_disk_available(), reason="cannot mount a small file system here "
                    "(unshare -rm with tmpfs); test_a_full_disk_simulated covers the behaviour")
def test_a_full_disk_stops_the_run_at_once_leaving_whole_results(tmp_path, planted_checkpoint):
    """A real full disk: a 3 MB tmpfs, mounted in a private namespace, holds two or three
    pictures' results (~1.2 MB each: the figure, uncompressed, and the mask) of six; they are
    copied out before the namespace ends."""
    folder = photo_folder(tmp_path, 6)
    disk, kept = tmp_path / "disk", tmp_path / "kept"
    disk.mkdir()
    kept.mkdir()
    command = (f'mount -t tmpfs -o size=3000k tmpfs "{disk}" && "{sys.executable}" "{ATTENTION}" '
               f'--image "{folder}" --weights "{planted_checkpoint}" --output-dir "{disk}/out"; '
               f'status=$?; cp -a "{disk}/out/." "{kept}/"; exit $status')
    result = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300)
    check_stopped_whole(result.returncode, result.stderr, kept, 6)


def test_a_full_disk_simulated(tmp_path, planted_checkpoint, monkeypatch, capsys):
    """The same, in-process: the file system is full for the files of pictures 3.png to 5.png."""
    from deit_functional import outputs, pipeline
    from deit_functional.cli import main
    folder = photo_folder(tmp_path, 6)
    stage = outputs.stage

    def stage_until_full(folder, name, save):
        if int(name.split("_")[0]) >= 3:
            def save(file, save=save):
                file.write(b"half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
        return stage(folder, name, save)

    batches, explain_batch = [], pipeline.explain_batch
    monkeypatch.setattr(outputs, "stage", stage_until_full)
    monkeypatch.setattr(pipeline, "explain_batch", lambda *a: batches.append(a) or explain_batch(*a))
    status = main(False, argv=["--image", str(folder), "--weights", str(planted_checkpoint),
                                        "--output-dir", str(tmp_path / "out"), "--batch-size", "2"])
    error = capsys.readouterr().err
    check_stopped_whole(status, error, tmp_path / "out", 6)
    # batch 1 (0, 1) and picture 2 are written, picture 3 finds the disk full: batch 3 is never begun
    assert len(batches) == 2 and "with 3 of 6 pictures written" in error


# ---- parallel runs --------------------------------------------------------------------------

def test_runs_started_at_once_into_one_folder_each_keep_their_whole_results(tmp_path, planted_checkpoint):
    """Eight runs of one large picture (its results take ~30 ms to write: a wide window for two
    runs to pick the same free name) into one folder: eight whole result sets."""
    runs, height, width = 8, 1500, 2000
    picture = tmp_path / "photo.png"
    Image.fromarray(draw_scene(height, width, [("red", 100, 200, 400)])).save(picture)
    out = tmp_path / "out"
    command = [sys.executable, str(ATTENTION), "--image", str(picture), "--weights", str(planted_checkpoint),
               "--output-dir", str(out)]
    processes = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(runs)]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err for _, err in outputs]
    claimed = [written(stdout) for stdout, _ in outputs]
    assert len({path for files in claimed for path in files}) == runs * 2  # no name printed twice
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == runs * 2 and not [n for n in names if n.startswith(".")]
    expected = np.load(claimed[0][1])
    for overlay, mask in claimed:
        assert mask.name == overlay.name.replace(".png", "_mask.npy")
        np.testing.assert_array_equal(np.load(mask), expected)  # each run's own, whole
        assert np.array_equal(Image.open(overlay), Image.open(claimed[0][0]))  # whole, as any other
