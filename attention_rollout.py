#!/usr/bin/env python3
"""Attention Rollout for DeiT-tiny: python attention_rollout.py --image path/to/image
(--method flow or raw-attention; DeiT-small or -base with --model)

See --help for options; the methods live in deit_functional/methods.py (the table) and the modules it names.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from any directory, installed or not

from deit_functional.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(class_specific=False))
