"""The one-image job done the way users copy today, for bench/benchmark.py to time against
attention_rollout.py: build timm's model, load a local checkpoint, switch fused attention off,
collect the maps with forward hooks, roll out layer by layer, save an overlay and the mask.

    python bench/hook_based_script.py --image PICTURE --weights FILE --output-dir DIR

Benchmark only: the package itself has no hooks.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from timm_reference import hook_based_rollout  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--output-dir", required=True)
    args = p.parse_args()
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    state = torch.load(args.weights, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state))
    config = timm.data.resolve_model_data_config(model)
    picture = Image.open(args.image).convert("RGB")
    transform = timm.data.create_transform(**config)
    x = transform(picture.resize((224, 224), Image.BICUBIC))[None]
    mask = hook_based_rollout(model, x)[0].reshape(14, 14).numpy()
    mask = np.asarray(Image.fromarray(mask).resize(picture.size, Image.BILINEAR))
    heat = np.asarray(Image.fromarray(np.uint8(255 * mask)).convert("RGB"))  # grey heat map
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.uint8(0.5 * np.asarray(picture) + 0.5 * heat)).save(out / "hook_based.png")
    np.save(out / "hook_based_mask.npy", mask.astype(np.float32))


if __name__ == "__main__":
    main()
