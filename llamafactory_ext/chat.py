"""A quick look at a persona: chat with a merged model or an adapter through its saved chat template,
and a before/after table (Markdown) over a prompt file, as seed 001 does by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import read_json


def load(path: str | Path):
    """(model, tokenizer) from a merged model folder, an adapter folder (on its base) or a Hub id."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    device_map = "auto" if torch.cuda.is_available() else None
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        from .merge import resolve_base

        base = resolve_base(str(read_json(path / "adapter_config.json").get("base_model_name_or_path") or ""))
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, device_map=device_map)
        model = PeftModel.from_pretrained(model, str(path))
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
    elif (path / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, device_map=device_map)
        tokenizer_dir = path
    else:
        raise LfxError(f"{path}: neither a model folder (config.json) nor a LoRA adapter (adapter_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not tokenizer.chat_template:
        raise LfxError(f"{tokenizer_dir}: the tokenizer has no chat template (merge with lfx merge to bake one in)")
    model.eval()
    return model, tokenizer


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def reply(model, tokenizer, messages: list[dict[str, str]], max_new_tokens: int = 256, temperature: float = 0.0) -> str:
    """One assistant turn, stopping at the generation config's eos ids (the template's stop word)."""
    import torch

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    sampling: dict[str, Any] = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                pad_token_id=tokenizer.pad_token_id or eos[0], **sampling)  # fmt: skip
    return tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line), a JSON list of strings, or alpaca/sharegpt records."""
    path = Path(path)
    if path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise LfxError(f"{path}: expected a JSON list of prompts")
        prompts = []
        for i, item in enumerate(data):
            if isinstance(item, str):
                prompts.append(item)
            elif isinstance(item, dict) and isinstance(item.get("instruction"), str):
                prompts.append("\n".join(filter(None, [item["instruction"], item.get("input") or ""])))
            elif isinstance(item, dict) and isinstance(item.get("conversations") or item.get("messages"), list):
                turns = item.get("conversations") or item.get("messages")
                first = next((t for t in turns if t.get("from", t.get("role")) in ("human", "user")), None)
                if first is None:
                    raise LfxError(f"{path}: record {i}: no user turn")
                prompts.append(first.get("value", first.get("content")))
            else:
                raise LfxError(f"{path}: record {i}: expected a string or a record with 'instruction'")
    else:
        try:
            prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except FileNotFoundError:
            raise LfxError(f"{path}: file not found") from None
    if not prompts:
        raise LfxError(f"{path}: no prompts")
    return prompts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "(empty)"


def compare(before: str, after: str, prompts: list[str], max_new_tokens: int = 256, system: str | None = None) -> str:
    """A Markdown table of each prompt with the base model's and the fine-tuned model's answer."""
    answers = {}
    for name, path in (("before", before), ("after", after)):
        model, tokenizer = load(path)
        answers[name] = []
        for prompt in prompts:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            answers[name].append(reply(model, tokenizer, messages, max_new_tokens))
        del model
    lines = [f"# Before / after\n\n- before: `{before}`\n- after: `{after}`\n- greedy decoding, up to {max_new_tokens} new tokens\n",
             "| # | Prompt | Before | After |", "|---|---|---|---|"]  # fmt: skip
    for i, prompt in enumerate(prompts, 1):
        lines.append(f"| {i} | {_cell(prompt)} | {_cell(answers['before'][i - 1])} | {_cell(answers['after'][i - 1])} |")
    return "\n".join(lines) + "\n"



# --- a served persona (lfx serve, or any OpenAI-compatible server) ---------------------------------

HTTP_TIMEOUT = 300  # one answer on a slow CPU server; a dead server fails sooner (connection refused)


def _http(url: str, payload: dict | None = None, timeout: float = HTTP_TIMEOUT) -> Any:
    import json
    import urllib.error
    import urllib.request

    data = None if payload is None else json.dumps(payload, ensure_ascii=False).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:300]
        raise LfxError(f"{url}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise LfxError(f"{url}: no answer ({reason}); is the server up (lfx serve)?") from None


def served_model(url: str) -> str:
    """The persona's name on the server: the LoRA adapter when one is served over a base, else the model."""
    models = (_http(f"{url.rstrip('/')}/models", timeout=30) or {}).get("data") or []
    if not models:
        raise LfxError(f"{url}/models: the server lists no model")
    adapters = [m for m in models if m.get("parent")]
    return (adapters or models)[0]["id"]


def reply_url(url: str, model: str, messages: list[dict[str, str]], max_new_tokens: int = 256,
              temperature: float = 0.0) -> str:  # fmt: skip
    """One assistant turn from an OpenAI-compatible server; the server applies the persona chat template."""
    answer = _http(f"{url.rstrip('/')}/chat/completions", {"model": model, "messages": messages,
                   "max_tokens": max_new_tokens, "temperature": temperature})  # fmt: skip
    try:
        return (answer["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError):
        raise LfxError(f"{url}/chat/completions: unexpected answer {str(answer)[:200]}") from None
