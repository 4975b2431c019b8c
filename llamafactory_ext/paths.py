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

