"""The pipeline decodes and writes in worker threads while the model runs in the main one.

A parallel torch op in a worker would give that thread an OpenMP pool of its own, and with more
OpenMP threads than cores libgomp makes the model's threads sleep at every barrier
(pipeline.py). A new pool shows as a new thread of the process, so the test counts them.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from deit_functional.methods import METHODS

from deit_functional.images import read_picture, to_input
from deit_functional.outputs import Names, PictureResult, write
from script_runs import ROOT

pytestmark = pytest.mark.quick  # in the first check: python -m pytest -m quick (README)

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
        rng = np.random.default_rng(0)
        result = PictureResult(PHOTO, picture, rng.random(1000), {"mean": rng.random((14, 14), np.float32)})
        names, endings = Names(tmp_path, name), {"overlay": ".png", "mask mean": "_mask.npy"}
        write(result, endings, names, names.claim(PHOTO, endings))
        return threads() - before

    with ThreadPoolExecutor(1) as worker:  # one worker thread, alive for both calls
        assert worker.submit(decode_and_write, "io").result() == 0
        # the count can see a pool: making the model's input there starts one
        assert worker.submit(decode_and_write, "io_and_torch", to_input).result() > 0


def test_results_reach_the_writers_as_numpy_arrays(weights, tmp_path):
    """So the writer threads need no torch at all (see the module docstring)."""
    from deit_functional.pipeline import Job, explain_batch
    picture = read_picture(PHOTO)
    job = Job(methods=(METHODS["gradient"],), categories=(87,), head_fusions=("mean", "max"), discard_ratio=0.9,
              output_dir=tmp_path, per_layer=True, evaluate=True)
    (result,) = explain_batch(weights, [(PHOTO, picture, to_input(picture))], job, torch.device("cpu"), METHODS["gradient"], 87)
    arrays = [result.probabilities, *result.maps.values(), *(a for pair in result.layers.values() for a in pair)]
    assert len(arrays) == 1 + 2 + 4 and all(type(a) is np.ndarray for a in arrays)
    assert result.category == 87 and set(result.faithfulness) == {"mean", "max"}


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs single-threaded here")
def test_inputs_are_made_on_one_torch_thread_and_the_model_runs_on_all(weights, tmp_path, monkeypatch):
    """The main thread makes each input while the workers decode and write, on one torch thread
    (pipeline.py); the model must still get every thread, and the count is the same after."""
    from deit_functional import pipeline
    threads, seen = torch.get_num_threads(), {"input": set(), "model": set()}
    to_input, explain_batch = pipeline.to_input, pipeline.explain_batch
    monkeypatch.setattr(pipeline, "to_input", lambda *a: seen["input"].add(torch.get_num_threads()) or to_input(*a))
    monkeypatch.setattr(pipeline, "explain_batch",
                        lambda *a: seen["model"].add(torch.get_num_threads()) or explain_batch(*a))
    job = pipeline.Job(methods=(METHODS["attention"],), categories=(), head_fusions=("mean",), discard_ratio=0.9,
                       output_dir=tmp_path, batch_size=2)
    assert pipeline.run([PHOTO] * 5, weights, job, torch.device("cpu")) == 0
    assert seen == {"input": {1}, "model": {threads}} and torch.get_num_threads() == threads
    assert len(list(tmp_path.glob("coffee_*.png"))) == 5
