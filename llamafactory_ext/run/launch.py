"""`lfx train RECIPE`: render the recipe into a run folder and run that folder's train_sft.sh here (CPU
processes when there is no GPU), exactly as a pod runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .render import render


def train(recipe: str, overrides: tuple[str, ...], run_dir: str | None, flags: list[str], say: Callable[[str], None]) -> int:
    """Render (every check runs there, before anything is written), then run the script; its exit status."""
    run = Path(run_dir) if run_dir else Path("runs") / Path(recipe).stem
    render(recipe, run, overrides=overrides, say=say)
    env = os.environ.copy()
    if "LFX_DEVICE" not in env and shutil.which("nvidia-smi") is None:
        say("no GPU here (nvidia-smi not found): training on CPU processes (LFX_DEVICE=cpu)")
        env["LFX_DEVICE"] = "cpu"
    # The script runs this package with the same interpreter, wherever the shell's python points.
    env.setdefault("PYTHON", sys.executable)
    return subprocess.call([str(run / "train_sft.sh"), *flags], env=env)
