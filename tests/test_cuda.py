"""--device cuda and the library on CUDA tensors; skipped where no GPU exists."""

import numpy as np
import pytest
import torch
from PIL import Image

from deit_functional import METHODS, explain, load_weights
from script_runs import GRADIENT, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


# Transformer Attribution's LRP divides by sums that cross zero: float32 runs of one picture that
# add up in another order differ by far more than rounding (transformer_attribution.py), so the
# two devices are compared in float64 for it
IN_FLOAT64 = {"transformer-attribution"}


@pytest.mark.parametrize("method", [name for name in METHODS if name != "flow"])  # flow: numpy, on the CPU
def test_explain_on_cuda_equals_cpu(timm_model, weights, images, method):
    from test_field_methods import in_float64

    on_gpu = load_weights(timm_model, device="cuda")
    if method in IN_FLOAT64:
        on_gpu, weights, images = in_float64(on_gpu), in_float64(weights), images.double()
    how = dict(category=87 if METHODS[method].uses_gradient else None, head_fusions=METHODS[method].fusions)
    logits, maps = explain(on_gpu, images.cuda(), method, **how)
    ref_logits, ref_maps = explain(weights, images, method, **how)
    assert logits.is_cuda and all(m.is_cuda for m in maps.values())
    torch.testing.assert_close(logits.cpu(), ref_logits, rtol=0, atol=1e-4)
    for fusion, ref in ref_maps.items():
        torch.testing.assert_close(maps[fusion].cpu(), ref, rtol=0, atol=1e-4)


def test_the_discard_keeps_on_the_gpu_what_it_keeps_on_the_cpu():
    """The same maps on both devices (whole runs differ by rounding, which moves entries across a
    discard threshold): torch's kthvalue path against the numpy one, bitwise."""
    from deit_functional.fast_forms import keep_above_kth_smallest
    from test_fast_forms import fused_maps
    maps = fused_maps(0, 12, torch.float32)
    for k in (1, int(197 * 196 * 0.9), 197 * 196):
        assert torch.equal(keep_above_kth_smallest(maps.cuda(), k).cpu(), keep_above_kth_smallest(maps, k))


def test_script_on_cuda_writes_what_it_writes_on_the_cpu(tmp_path, timm_model):
    torch.save(timm_model.state_dict(), tmp_path / "w.pth")
    pixels = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    masks = {}
    for device in ("cuda", "cpu"):
        result = run(GRADIENT, "--image", tmp_path / "p.png", "--category", 5, "--weights", tmp_path / "w.pth",
                     "--discard-ratio", 0, "--device", device, "--output-dir", tmp_path / device, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        masks[device] = np.load(next((tmp_path / device).glob("*_mask.npy")))
    assert masks["cuda"].shape == (100, 150)
    np.testing.assert_allclose(masks["cuda"], masks["cpu"], rtol=0, atol=1e-4)
