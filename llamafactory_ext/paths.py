"""Where the declared data lives: templates/ and datasets/ at the repository root.

`LFX_TEMPLATES_DIR` and `LFX_DATASETS_DIR` point elsewhere (a pod with the data mounted apart,
a test with its own files).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def templates_dir() -> Path:
    return Path(os.environ.get("LFX_TEMPLATES_DIR") or REPO_ROOT / "templates")


def datasets_dir() -> Path:
    return Path(os.environ.get("LFX_DATASETS_DIR") or REPO_ROOT / "datasets")


def resolve_model(name: str) -> str:
    """A recipe's `model_name_or_path` as this machine loads it: a local folder, relative to the current
    folder or else to the repository root (presets name `runs/...`), made absolute; anything else
    (a Hub id) unchanged. Recipes and run folders keep what the user wrote, so they move between
    machines; each machine resolves it where it runs."""
    for candidate in (Path(name).expanduser(), REPO_ROOT / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    return name
