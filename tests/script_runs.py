"""Running the two graded scripts as a user would: a fresh Python process, from any folder."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTENTION, GRADIENT = ROOT / "attention_rollout.py", ROOT / "gradient_rollout.py"


def run(script, *args, cwd, env=None):
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def run_here(capsys, script, *args):
    """The script's command line run in this process (no 2-3 s of start-up): for tests about
    what a run writes and prints, not about the process itself -> (returncode, stdout, stderr)."""
    from types import SimpleNamespace

    from deit_functional.cli import main
    capsys.readouterr()  # drop what came before
    try:
        status = main(script == GRADIENT, argv=list(map(str, args)))
    except SystemExit as exit:
        status = exit.code
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=status, stdout=captured.out, stderr=captured.err)
