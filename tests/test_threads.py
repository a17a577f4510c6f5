"""The pipeline decodes and writes in worker threads while the model runs in the main one.

A parallel torch op in a worker would give that thread an OpenMP pool of its own, and with more
OpenMP threads than cores libgomp makes the model's threads sleep at every barrier
(pipeline.py). A new pool shows as a new thread of the process, so the test counts them.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from deit_functional.images import read_picture, to_input
from deit_functional.outputs import Names, PictureResult, write
from script_runs import ROOT

PHOTO = ROOT / "images" / "coffee.jpg"  # 600x400: large enough for torch to go parallel


def threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in Linux's /proc")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs single-threaded here")
def test_decoding_and_writing_start_no_threads_of_their_own(tmp_path):
    def decode_and_write(name, also=lambda picture: None):
        before = threads()
        picture = read_picture(PHOTO)
        also(picture)
        result = PictureResult(PHOTO, picture, torch.rand(1000), {"mean": torch.rand(14, 14)})
        names, endings = Names(tmp_path, name), {"overlay": ".png", "mask mean": "_mask.npy"}
        write(result, endings, names, names.claim(PHOTO, endings))
        return threads() - before

    with ThreadPoolExecutor(1) as worker:  # one worker thread, alive for both calls
        assert worker.submit(decode_and_write, "io").result() == 0
        # the count can see a pool: making the model's input there starts one
        assert worker.submit(decode_and_write, "io_and_torch", to_input).result() > 0
