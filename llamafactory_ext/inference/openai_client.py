"""The one client for OpenAI-compatible servers (vLLM via `lfx serve`, llama.cpp's server, any other):
list the served models, answer a chat. Every call is bounded and every failure is one line naming the URL.

A server started with a key (vLLM's VLLM_API_KEY) gets it from OPENAI_API_KEY, as every OpenAI-compatible
client reads it; a key is never an argument (every process list shows those)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import LfxError
from .prompts import Answer

LIST_TIMEOUT_S = 10  # a server that does not list its models in this time is not up
ANSWER_TIMEOUT_S = 300  # one answer on a slow CPU server; a dead server fails sooner (connection refused)
KEY_VARIABLE = "OPENAI_API_KEY"


def endpoint(url: str) -> str:
    """http://HOST:PORT[/v1] -> http://HOST:PORT/v1; anything but an http(s) URL with a host is refused."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LfxError(f"--url: '{url}' is not an http(s) URL with a host: give http://HOST:PORT/v1 (lfx serve prints it)")
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _request(url: str, payload: dict | None, timeout: float) -> Any:
    data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(KEY_VARIABLE)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a URL the user gave)
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        if err.code == 401:
            why = f"the server refused the key in {KEY_VARIABLE}" if key else f"the server wants an API key: set {KEY_VARIABLE}"
            raise LfxError(f"{url}: HTTP 401: {why} (the key it was started with, e.g. vLLM's VLLM_API_KEY)") from None
        detail = " ".join(err.read().decode(errors="replace").split())[:300]
        raise LfxError(f"{url}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as err:  # refused, DNS, timed out
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, (TimeoutError, ConnectionRefusedError)) or "timed out" in str(reason):
            what = "nothing listens there" if isinstance(reason, ConnectionRefusedError) else f"no answer within {timeout:.0f} s"
        else:
            what = "cannot reach it"
        raise LfxError(f"{url}: {what} ({reason}); is the server up (lfx serve)?") from None
    except ValueError:
        raise LfxError(f"{url}: the answer is not JSON (not an OpenAI-compatible server?)") from None


def served_models(url: str) -> list[dict[str, Any]]:
    """The models the server lists (`GET /v1/models`)."""
    listed = _request(f"{endpoint(url)}/models", None, LIST_TIMEOUT_S)
    models = listed.get("data") if isinstance(listed, dict) else None
    if not isinstance(models, list) or not models:
        raise LfxError(f"{endpoint(url)}/models: the server lists no model")
    return models


def persona_model(url: str) -> str:
    """The persona's name on the server: the LoRA adapter when one is served over a base, else the model."""
    models = served_models(url)
    adapters = [m for m in models if m.get("parent")]
    return str((adapters or models)[0]["id"])


def chat(url: str, model: str, messages: list[dict[str, str]], max_tokens: int = 256, temperature: float = 0.0,
         **extra: Any) -> Answer:  # fmt: skip
    """One assistant turn; the server applies the model's chat template."""
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}
    answer = _request(f"{endpoint(url)}/chat/completions", payload, ANSWER_TIMEOUT_S)
    try:
        choice = answer["choices"][0]
        # finish_reason 'stop': the model ended on a stop token, not at the token limit
        return Answer((choice["message"].get("content") or "").strip(), choice.get("finish_reason") == "stop")
    except (KeyError, IndexError, TypeError):
        raise LfxError(f"{endpoint(url)}/chat/completions: unexpected answer {str(answer)[:200]}") from None
