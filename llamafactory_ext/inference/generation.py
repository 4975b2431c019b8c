"""The one way a model is loaded and asked here (chat, compare, eval): a merged folder, an adapter over its
base, or a Hub id; greedy or sampled answers, batched with left padding, stopping on every stop id the model
declares (generation_config's eos ids, then the tokenizer's eos)."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..errors import LfxError
from ..files import read_json
from ..models import ADAPTER_CONFIG, NOT_A_MODEL, folder_kind, open_tokenizer, resolve
from .prompts import Answer


def adapter_base(adapter: Path, base: str | None = None, record: dict[str, Any] | None = None) -> Path:
    """An adapter's base folder: `base` when given, else the one adapter_config.json names (resolved with the
    run's revision and cache)."""
    name = base or str(read_json(adapter / ADAPTER_CONFIG).get("base_model_name_or_path") or "")
    args = (record or {}).get("args") or {}
    where = f"{adapter / ADAPTER_CONFIG}: field 'base_model_name_or_path'" if not base else "--base"
    if not name:
        raise LfxError(f"{where}: empty (pass --base)")
    return resolve(name, where, revision=args.get("model_revision"), cache_dir=args.get("cache_dir"), hint=" (pass --base PATH)")


def load_tokenizer(folder: Path):
    """The tokenizer with its chat template, padding on the left for batches."""
    tokenizer = open_tokenizer(folder)
    if not tokenizer.chat_template:
        raise LfxError(f"{folder}: the tokenizer has no chat template (merge with lfx merge to bake the persona's in)")
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(folder: Path):
    """A causal LM for generation: bf16 on a GPU, fp32 on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16 if cuda else torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # missing or damaged weights or config
        if isinstance(err, torch.OutOfMemoryError):  # the machine, not the folder: exit 1 with the traceback hint
            raise
        raise LfxError(f"{folder}: the model cannot be loaded ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    return model.to("cuda" if cuda else "cpu").eval()


def with_adapter(model, adapter: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).eval()


def locate(path: str | Path, base: str | None = None) -> tuple[Path, Path | None]:
    """(the model or adapter folder, an adapter's base folder or None), every path checked and nothing loaded:
    commands that load several models locate them all first, so a typo costs no model load."""
    folder = resolve(str(path), str(path), files=("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"))
    what = folder_kind(folder)
    if what is None:
        raise LfxError(f"{folder}: {NOT_A_MODEL}")
    if what == "model":
        return folder, None
    base_dir = adapter_base(folder, base)
    if folder_kind(base_dir) != "model":
        raise LfxError(f"{base_dir}: the adapter's base is not a model folder (config.json and weights); pass --base PATH")
    return folder, base_dir


def load(path: str | Path, base: str | None = None):
    """(model, tokenizer) from a merged model folder, an adapter folder (over its base) or a Hub id."""
    return load_located(*locate(path, base))


def load_located(folder: Path, base_dir: Path | None):
    """(model, tokenizer) of what `locate` found."""
    if base_dir is not None:
        tokenizer = load_tokenizer(folder if (folder / "tokenizer_config.json").is_file() else base_dir)
        return with_adapter(load_model(base_dir), folder), tokenizer
    return load_model(folder), load_tokenizer(folder)


def stop_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generate(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 16,
             temperature: float = 0.0, limits: list[int] | None = None, begun: list[str] | None = None) -> list[Answer]:  # fmt: skip
    """Answers, `batch_size` conversations at a time (left padding; similar lengths batched together),
    greedy unless `temperature` > 0; each with whether it ended on a stop token. `limits`: each conversation's
    own cap on new tokens (at most max_new_tokens), as a server with a fixed context window gives it. `begun`: the
    text each answer starts with (the model continues it; the answer includes it)."""
    import torch

    eos = stop_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:  # base tokenizers often have none; left padding is masked anyway
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
    sampling: dict[str, Any] = ({"do_sample": True, "temperature": temperature} if temperature > 0 else
                                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})  # fmt: skip
    caps = [min(max_new_tokens, n) for n in limits] if limits is not None else [max_new_tokens] * len(conversations)
    starts = begun if begun is not None else [""] * len(conversations)
    texts = [prompt_text(tokenizer, c) + start for c, start in zip(conversations, starts, strict=True)]
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    results: list[Answer] = [Answer("", False)] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max(caps[i] for i in chunk), eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)  # fmt: skip
        for row, i in zip(out[:, enc["input_ids"].shape[1] :].tolist(), chunk):
            row = row[: caps[i]]
            end = next((j for j, t in enumerate(row) if t in eos), None)
            text = (starts[i] + tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True)).strip()
            results[i] = Answer(text, end is not None)
    return results


def remembered(load, folder: Path, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int,
               batch_size: int = 16, limits: list[int] | None = None) -> tuple[list[Answer], int]:
    """Greedy answers of the model in `folder`, those it gave before read back (inference/answer_cache.py), the
    others generated by `load()`'s model (called only when one is new) and remembered; (answers, how many were
    read back)."""
    from .answer_cache import AnswerCache

    cache = AnswerCache.open(folder)
    caps = [min(max_new_tokens, n) for n in limits] if limits is not None else [max_new_tokens] * len(conversations)
    texts = [prompt_text(tokenizer, c) for c in conversations]
    found = [cache.get(t, cap) if cache else None for t, cap in zip(texts, caps)]
    todo = [i for i, answer in enumerate(found) if answer is None]
    if todo:
        new = generate(load(), tokenizer, [conversations[i] for i in todo], max_new_tokens, batch_size,
                       limits=[caps[i] for i in todo])  # fmt: skip
        for i, answer in zip(todo, new):
            found[i] = answer
        if cache:
            cache.put([(texts[i], caps[i], answer) for i, answer in zip(todo, new)])
    return [a for a in found if a is not None], len(conversations) - len(todo)


class TargetModels:
    """A fine-tune's two models for commands that ask both (lfx eval, lfx pairs): the base, loaded once and only when
    one of its answers is not remembered or the adapter needs it; then the tuned model, an adapter over that base or
    a merged folder (the base freed first)."""

    def __init__(self, base: Path, tuned: Path, adapter: bool, say: Callable[[str], None]):
        self.base_dir, self.tuned_dir, self.adapter, self.say = base, tuned, adapter, say
        self._base = None
        self.reused = 0  # the base's answers read back so far

    def base(self):
        if self._base is None:
            self.say(f"loading base model {self.base_dir}")
            self._base = load_model(self.base_dir)
        return self._base

    def base_answers(self, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int,
                     limits: list[int] | None = None) -> list[Answer]:  # fmt: skip
        """The base's greedy answers, those it gave before read back (`remembered`), which the line on `say` counts."""
        answers, reused = remembered(self.base, self.base_dir, tokenizer, conversations, max_new_tokens, batch_size, limits)
        self.reused += reused
        if reused:
            self.say(f"{reused} answers of the base read back from lfx's answer cache (LFX_ANSWER_CACHE=0 asks again)")
        return answers

    def tuned(self):
        if self.adapter:
            return with_adapter(self.base(), self.tuned_dir)
        self._base = None
        return load_model(self.tuned_dir)

    def release(self) -> None:
        self._base = None

