"""Running the two graded scripts as a user would: a fresh Python process, from any folder."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTENTION, GRADIENT = ROOT / "attention_rollout.py", ROOT / "gradient_rollout.py"


def run(script, *args, cwd, env=None):
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
