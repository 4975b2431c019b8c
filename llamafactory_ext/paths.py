"""What the environment says: where the declared data lives (templates/ and datasets/ at the repository root),
which folders lfx reads from, where its cache is, and whether a flag variable is on.

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


def read_folders() -> list[Path]:
    """The folders lfx reads from (no output may be, hold or lie inside one): templates, datasets, recipes and
    presets, DeepSpeed configs, the package itself."""
    return [templates_dir(), datasets_dir(), *(REPO_ROOT / name for name in ("launch", "deepspeed_configs", "llamafactory_ext"))]


def cache_dir() -> Path:
    """lfx's own cache (the pinned GGUF converter, remembered answers): `$LFX_CACHE_DIR`, else
    `$XDG_CACHE_HOME/llamafactory-ext` or `~/.cache/llamafactory-ext`."""
    explicit = os.environ.get("LFX_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "llamafactory-ext"


def env_enabled(name: str, default: str = "0") -> bool:
    """A flag variable read as LLaMA-Factory reads its own (llamafactory.extras.misc.is_env_enabled: true, y
    or 1, any case), without importing it (it imports torch)."""
    return os.environ.get(name, default).lower() in ("true", "y", "1")
