"""--device cuda and the library on CUDA tensors; skipped where no GPU exists."""

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import explain, load_weights
from script_runs import GRADIENT, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


@pytest.mark.parametrize("method, category", [("attention", None), ("gradient", 87), ("chefer", 87)])
def test_explain_on_cuda_equals_cpu(timm_model, weights, images, method, category):
    on_gpu = load_weights(timm_model, device="cuda")
    how = dict(category=category, head_fusions=("mean", "min", "max"))
    logits, maps = explain(on_gpu, images.cuda(), method, **how)
    ref_logits, ref_maps = explain(weights, images, method, **how)
    assert logits.is_cuda and all(m.is_cuda for m in maps.values())
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=0, atol=1e-4)
    for fusion, ref in ref_maps.items():
        torch.testing.assert_close(maps[fusion].cpu(), ref, rtol=0, atol=1e-4)
    _, discarded = explain(on_gpu, images.cuda(), method, category=category, head_fusions=("max",),
                           discard_ratio=0.9)  # torch.kthvalue path
    assert torch.isfinite(discarded["max"]).all() and discarded["max"].amax() == 1


def test_script_runs_on_cuda(tmp_path, timm_model):
    torch.save(timm_model.state_dict(), tmp_path / "w.pth")
    Image.fromarray(np.full((100, 150, 3), 90, np.uint8)).save(tmp_path / "p.png")
    result = run(GRADIENT, "--image", tmp_path / "p.png", "--category", 5, "--weights", tmp_path / "w.pth",
                 "--device", "cuda", "--output-dir", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mask = np.load(next((tmp_path / "out").glob("*_mask.npy")))
    assert mask.shape == (100, 150)
