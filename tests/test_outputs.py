"""Result names: what they carry, that they never collide, and that a run recognises every one
of them as a result, never as a picture to explain."""
import itertools

import numpy as np
import pytest

from deit_functional.outputs import Names, PictureResult, file_endings, file_tag, looks_like_a_result, write
from deit_functional.methods import METHODS
from deit_functional.rollout import HEAD_FUSIONS

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)


def every_result_name():
    """Every picture file name a run can write, for every method, fusion choice and option."""
    fusion_choices = [(f,) for f in HEAD_FUSIONS] + [HEAD_FUSIONS, ("mean", "max")]
    runs = [(m, fusions, ratio, counter) for m in METHODS.values() for fusions, ratio, counter in itertools.product(
        fusion_choices if m.fuses_heads else [m.fusions], (0.0, 0.9, 1e-5) if m.discards else (0.0,), (1, 12))]
    for method, fusions, ratio, counter in runs:
        category = 87 if method.uses_gradient else None
        grid = np.zeros((14, 14), np.float32)
        result = PictureResult("photo.jpg", None, None, dict.fromkeys(fusions, grid),
                               layers=dict.fromkeys(fusions, (grid, grid)), faithfulness={})
        stem = f"my_photo_{file_tag(method, fusions, ratio, category)}" + (f"-{counter}" if counter > 1 else "")
        for ending in file_endings(result, save_grid=True).values():
            if ending.endswith(".png"):
                yield stem + ending


def test_every_picture_a_run_writes_is_recognised_as_a_result():
    names = list(every_result_name())
    assert len(names) > 100 and all(looks_like_a_result(n) for n in names), \
        [n for n in names if not looks_like_a_result(n)]


@pytest.mark.parametrize("name", ["cat.jpg", "attention-rollout.png", "my_attention-rollout_photo.png",
                                  "x_chefer_median_discard0.png", "x_gradient-rollout_mean_discard0.9_notes.png",
                                  "a_attention-rollout_mean_discarded.png"])
def test_ordinary_pictures_are_not_taken_for_results(name):
    assert not looks_like_a_result(name)


def test_tags_carry_method_fusion_ratio_and_category():
    assert file_tag(METHODS["attention"], ("max",), 0.9) == "attention-rollout_max_discard0.9"
    assert file_tag(METHODS["gradient"], HEAD_FUSIONS, 0.0, 258) == "gradient-rollout_all_discard0_category258"
    assert file_tag(METHODS["chefer"], ("mean", "min"), 0.5, 3) == "chefer_mean+min_discard0.5_category3"
    larger = file_tag(METHODS["gradient"], ("max",), 0.9, 87, model="deit_base_patch16_224")
    assert larger == "deit-base_gradient-rollout_max_discard0.9_category87"
    assert looks_like_a_result(f"cat_{larger}.png") and looks_like_a_result(f"cat_{larger}-2_evaluation.png")


def test_names_skip_existing_files_and_names_given_before(tmp_path):
    names = Names(tmp_path, "tag")
    endings = {"overlay": ".png", "mask": "_mask.npy"}
    (tmp_path / "a_tag_mask.npy").write_bytes(b"")  # an earlier run's mask alone still takes the stem
    first = names.claim("x/a.jpg", endings)
    second = names.claim("y/a.png", endings)  # same stem, another folder
    assert first == {"overlay": tmp_path / "a_tag-2.png", "mask": tmp_path / "a_tag-2_mask.npy"}
    assert second == {"overlay": tmp_path / "a_tag-3.png", "mask": tmp_path / "a_tag-3_mask.npy"}


def test_a_name_taken_after_it_was_claimed_goes_to_the_next_free_one(tmp_path):
    """As when another run, writing into the same folder, publishes first: the existing file is
    left alone, and this result's files move together to the next free stem."""
    picture = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    result = PictureResult(tmp_path / "a.jpg", picture, np.full(1000, 0.001), {"mean": np.ones((14, 14), np.float32)})
    names = Names(tmp_path / "out", "tag")
    endings = file_endings(result)
    targets = names.claim(result.path, endings)
    (tmp_path / "out").mkdir()
    targets["mask mean"].write_bytes(b"another run's mask")
    files, _ = write(result, endings, names, targets)
    assert targets["mask mean"].read_bytes() == b"another run's mask"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_tag-2.png", "a_tag-2_mask.npy", "a_tag_mask.npy"]
    assert files == {"overlay": tmp_path / "out" / "a_tag-2.png", "mask mean": tmp_path / "out" / "a_tag-2_mask.npy"}
    assert np.load(tmp_path / "out" / "a_tag-2_mask.npy").shape == (40, 60)
