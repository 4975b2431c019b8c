"""The one client for OpenAI-compatible servers (vLLM via `lfx serve`, llama.cpp's server, any other):
list the served models, answer a chat. Every call is bounded and every failure is one line naming the URL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from ..errors import LfxError
from .prompts import Answer

LIST_TIMEOUT_S = 10  # a server that does not list its models in this time is not up
ANSWER_TIMEOUT_S = 300  # one answer on a slow CPU server; a dead server fails sooner (connection refused)


def endpoint(url: str) -> str:
    """http://HOST:PORT[/v1] -> http://HOST:PORT/v1"""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _request(url: str, payload: dict | None, timeout: float) -> Any:
    data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (a URL the user gave)
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
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
