"""Writing results: whole files only, names never overwritten, the user's usual file mode, a full
disk reported as one, PNGs that decode exactly."""
import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from deit_functional.writing import (discard, encode_png, publish, stage, write_atomically, write_json,
                                     write_npy, write_png)


def test_a_failed_save_leaves_no_file_behind(tmp_path):
    def fails(file):
        file.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        stage(tmp_path, "result.npy", fails)
    with pytest.raises(OSError):
        write_atomically(tmp_path / "result.npy", fails)
    assert list(tmp_path.iterdir()) == []


def staged_pair(folder):
    return {"overlay": stage(folder, "a.png", lambda file: file.write(b"picture")),
            "mask": stage(folder, "a_mask.npy", lambda file: file.write(b"mask"))}


def test_published_files_appear_under_their_names_whole(tmp_path):
    staged = staged_pair(tmp_path)
    targets = {"overlay": tmp_path / "a.png", "mask": tmp_path / "a_mask.npy"}
    publish(staged, targets)
    discard(staged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_mask.npy"]
    assert targets["overlay"].read_bytes() == b"picture" and targets["mask"].read_bytes() == b"mask"


@pytest.mark.parametrize("hard_links", [True, False])
def test_publishing_never_overwrites_and_is_all_or_none(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # as on FAT: the name is claimed by creating it, the file moved onto it
        monkeypatch.setattr(os, "link", lambda *args: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no links")))
    (tmp_path / "a_mask.npy").write_bytes(b"an earlier run's mask")
    staged = staged_pair(tmp_path)
    with pytest.raises(FileExistsError):
        publish(staged, {"overlay": tmp_path / "a.png", "mask": tmp_path / "a_mask.npy"})
    assert not (tmp_path / "a.png").exists()  # taken back: nothing of this set is left
    assert (tmp_path / "a_mask.npy").read_bytes() == b"an earlier run's mask"
    publish(staged, {"overlay": tmp_path / "a-2.png", "mask": tmp_path / "a-2_mask.npy"})
    discard(staged)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-2.png", "a-2_mask.npy", "a_mask.npy"]
    assert (tmp_path / "a-2_mask.npy").read_bytes() == b"mask"


@pytest.fixture
def restore_umask():
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives_new_files(tmp_path, restore_umask, mask):
    os.umask(mask)
    staged = {"npy": stage(tmp_path, "m.npy", lambda file: write_npy(file, np.zeros(2))),
              "png": stage(tmp_path, "o.png", lambda file: write_png(file, np.zeros((2, 2, 3), np.uint8))),
              "json": stage(tmp_path, "s.json", lambda file: write_json(file, {"a": 1}))}
    publish(staged, {kind: tmp_path / f"result.{kind}" for kind in staged})
    discard(staged)
    write_atomically(tmp_path / "figure.png", lambda file: file.write(b"figure"))
    (tmp_path / "plain.txt").write_text("made the usual way")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["result.npy", "result.png", "result.json", "figure.png", "plain.txt"],
                                  0o666 & ~mask)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a device that is always full")
def test_a_full_disk_is_reported_as_one_when_writing_a_mask():
    """numpy writing to a file itself says only '... requested and 0 written', with no errno."""
    with pytest.raises(OSError) as caught, open("/dev/full", "wb") as file:
        write_npy(file, np.zeros((400, 600), np.float32))
    assert caught.value.errno == errno.ENOSPC


@pytest.mark.parametrize("height, width", [(1, 1), (7, 13), (300, 451)])  # 451x300: several stored blocks
def test_encoded_png_decodes_to_the_same_pixels(height, width):
    import imageio.v3 as iio
    picture = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(iio.imread(encode_png(picture), extension=".png"), picture)
