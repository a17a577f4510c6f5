#!/usr/bin/env python3
"""Regenerate docs/comparison.md, the comparison README quotes: python docs/make_comparison.py

gradient_rollout.py --method all --category 87 with the red squares' boxes, on six planted
scenes (tests/planted.py: a red square for class 87 and a smaller blue one against it, placed
differently in each), every method with its defaults. Deterministic and offline; about ten
minutes on 2 cores. Prints the command it ran and where the table went.
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from deit_functional.cli import main  # noqa: E402
from deit_functional.writing import write_atomically  # noqa: E402
from planted import RED_CLASS, draw_scene, planted_state_dict  # noqa: E402

HEIGHT, WIDTH = 210, 280
SCENES = [  # the red square's top, left, side; the blue one's (each cut to fit the picture)
    ((30, 40, 70), (110, 170, 50)), ((120, 180, 64), (20, 30, 44)), ((70, 110, 56), (150, 10, 48)),
    ((10, 200, 60), (140, 90, 52)), ((140, 20, 58), (30, 150, 46)), ((60, 30, 66), (100, 200, 50)),
]


def main_():
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_file(planted_state_dict(), tmp / "planted.safetensors")
        (tmp / "scenes").mkdir()
        lines = ["picture,class,x0,y0,x1,y1"]
        for k, ((top, left, side), blue) in enumerate(SCENES):
            picture = draw_scene(HEIGHT, WIDTH, [("red", top, left, side), ("blue", *blue)])
            Image.fromarray(picture).save(tmp / "scenes" / f"scene{k}.png")
            lines.append(f"scene{k}.png,{RED_CLASS},{left},{top},{min(left + side, WIDTH)},{min(top + side, HEIGHT)}")
        (tmp / "boxes.csv").write_text("\n".join(lines) + "\n")
        argv = ["--image", str(tmp / "scenes"), "--method", "all", "--category", str(RED_CLASS),
                "--boxes", str(tmp / "boxes.csv"), "--weights", str(tmp / "planted.safetensors"),
                "--output-dir", str(tmp / "out"), "-qq"]
        print("gradient_rollout.py " + " ".join(a.replace(str(tmp) + "/", "") for a in argv), flush=True)
        status = main(True, argv=argv)
        if status:
            sys.exit(status)
        target = ROOT / "docs" / "comparison.md"
        write_atomically(target, lambda f: f.write((tmp / "out" / "comparison.md").read_bytes()))
        print(target)


if __name__ == "__main__":
    main_()
