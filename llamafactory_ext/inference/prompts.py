"""Prompts to answer, one reader for every command (`lfx eval --prompts`, `lfx compare --prompts`): a text file
(one prompt a line), a JSON list (strings or records), JSON Lines; records in alpaca or sharegpt/openai form,
with their reference answer, dataset and task when they carry them. Dataset records become prompts here too."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json_records, read_jsonl, read_text
from ..persona.dataset_entries import ALPACA_DEFAULTS, SHAREGPT_DEFAULTS, json_expected

# sharegpt records in OpenAI's form (`messages` with role/content), as LLaMA-Factory's openai formatting reads them.
OPENAI_INFO = {"formatting": "sharegpt", "columns": {"messages": "messages"},
               "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                        "system_tag": "system"}}  # fmt: skip


@dataclass
class Prompt:
    messages: list[dict[str, str]]  # the conversation up to the last user turn
    reference: str = ""  # the answer after it, when known
    dataset: str = ""
    task: str | None = None
    json_expected: bool = False

    @property
    def text(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Answer:
    text: str
    stopped: bool  # ended on a stop token, not at the token limit


def record_prompt(where: str, record: Any, info: dict[str, Any], dataset: str = "") -> Prompt:
    """A dataset record (alpaca or sharegpt, the entry's columns) as the conversation up to the last
    user turn and the answer after it."""
    if not isinstance(record, dict):
        raise LfxError(f"{where}: expected an object, got {type(record).__name__}")
    task = record.get("task") if isinstance(record.get("task"), str) else None
    if info.get("formatting", "alpaca") == "alpaca":
        cols = {**ALPACA_DEFAULTS, **info.get("columns", {})}
        prompt = record.get(cols["prompt"])
        if not isinstance(prompt, str) or not prompt.strip():
            raise LfxError(f"{where}: field '{cols['prompt']}': expected non-empty text")
        query = record.get(cols["query"]) or ""
        messages: list[dict[str, str]] = []
        for pair in (record.get(cols["history"]) if "history" in cols else None) or []:  # only when declared
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages.append({"role": "user", "content": "\n".join(filter(None, [prompt, query]))})
        reference = record.get(cols["response"]) or ""
    else:
        cols = {**SHAREGPT_DEFAULTS, **info.get("columns", {}), **info.get("tags", {})}
        turns = record.get(cols["messages"])
        if not isinstance(turns, list) or not turns:
            raise LfxError(f"{where}: field '{cols['messages']}': expected a non-empty list of messages")
        roles = {cols["user_tag"]: "user", cols["assistant_tag"]: "assistant", cols["system_tag"]: "system"}
        messages = [{"role": roles.get(t.get(cols["role_tag"]), "user"), "content": str(t.get(cols["content_tag"], ""))}
                    for t in turns if isinstance(t, dict)]  # fmt: skip
        reference = ""
        if messages and messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        messages = [m for m in messages if m["role"] != "system"]
        if not messages or messages[-1]["role"] != "user":
            raise LfxError(f"{where}: field '{cols['messages']}': no user turn to answer")
    if not isinstance(reference, str):
        raise LfxError(f"{where}: reference answer: expected a string, got {type(reference).__name__}")
    return Prompt(messages, reference, dataset, task, bool(reference) and json_expected(info, record))


def read_prompts_file(path: str | Path) -> list[Prompt]:
    """Prompts from a text file (one per line), a JSON list (strings or alpaca/sharegpt/openai records) or
    JSON Lines. Records may carry the reference answer (`output`) and `dataset`/`task`; a record naming one
    of our datasets is read with that entry's columns."""
    from ..persona.dataset_entries import load_entries

    path = Path(path)
    if path.is_dir():
        raise LfxError(f"{path}: is a folder, not a prompts file")
    if path.suffix == ".jsonl":
        items = read_jsonl(path)
    elif path.suffix == ".json":
        items = read_json_records(path)
    else:
        items = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    entries = load_entries()
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise LfxError(f"{path}: record {i}: empty prompt")
            prompts.append(Prompt([{"role": "user", "content": item.strip()}], dataset=path.stem))
            continue
        dataset = item.get("dataset") if isinstance(item, dict) and isinstance(item.get("dataset"), str) else None
        info = entries[dataset].info if dataset in entries else {}
        if isinstance(item, dict) and not info and ("conversations" in item or "messages" in item):
            info = {"formatting": "sharegpt"} if "conversations" in item else OPENAI_INFO
        prompts.append(record_prompt(f"{path}: record {i}", item, info, dataset or path.stem))
    if not prompts:
        raise LfxError(f"{path}: no prompts")
    return prompts
