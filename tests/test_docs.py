"""The walkthrough's figures regenerate from their script (smoke): the same files, the same sizes."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_docs_figures_regenerate(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "make_figures.py"), "--output-dir", tmp_path],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    committed = sorted((ROOT / "docs" / "figures").glob("*.png"))
    assert [p.name for p in sorted(tmp_path.glob("*.png"))] == [p.name for p in committed]
    for path in committed:
        assert np.asarray(Image.open(tmp_path / path.name)).shape == np.asarray(Image.open(path)).shape
