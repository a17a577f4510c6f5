"""Writing results: nothing half-written, the user's usual file mode, PNGs that decode exactly."""
import os
import stat

import numpy as np
import pytest

from deit_functional.writing import encode_png, save_json, save_npy, save_png, write_atomically


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    def fails(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomically(tmp_path / "result.npy", fails)
    assert list(tmp_path.iterdir()) == []
    save_npy(tmp_path / "mask.npy", np.ones(3, np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["mask.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), np.ones(3, np.float32))


@pytest.fixture
def restore_umask():
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_gives_new_files(tmp_path, restore_umask, mask):
    os.umask(mask)
    save_npy(tmp_path / "mask.npy", np.zeros(2))
    save_png(tmp_path / "overlay.png", np.zeros((2, 2, 3), np.uint8))
    save_json(tmp_path / "scores.json", {"a": 1})
    (tmp_path / "plain.txt").write_text("made the usual way")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["mask.npy", "overlay.png", "scores.json", "plain.txt"], 0o666 & ~mask)


@pytest.mark.parametrize("height, width", [(1, 1), (7, 13), (300, 451)])  # 451x300: several stored blocks
def test_encoded_png_decodes_to_the_same_pixels(height, width):
    import imageio.v3 as iio
    picture = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    np.testing.assert_array_equal(iio.imread(encode_png(picture), extension=".png"), picture)
