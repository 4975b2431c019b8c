"""Datasets declared in datasets/dataset_info.json (LLaMA-Factory's own vocabulary): validation,
and merging our entries into another dataset_info.json without clobbering it.

An entry may carry one key of ours, `lfx`, which LLaMA-Factory ignores and we strip when merging:
`lfx: {json_output: true}` says every response is JSON; `lfx: {json_output: {FIELD: [VALUES]}}`
says so for the records whose FIELD is one of VALUES (multi-task data); `lfx: {language: ko}` names
the language the responses are written in (`lfx eval` measures the share of answers in it).
"""

from __future__ import annotations

import difflib
import filecmp
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import atomic_copy, atomic_write_text, dump_json, read_json
from .paths import datasets_dir

INFO_FILE = "dataset_info.json"
SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
# The keys llamafactory.data.parser.DatasetAttr reads (tests check them against it), plus ours.
ENTRY_KEYS = {*SOURCE_KEYS, "formatting", "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "lfx"}
COLUMN_KEYS = {
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "images", "videos", "audios", "chosen", "rejected", "kto_tag",
}  # fmt: skip
TAG_KEYS = {"role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag"}
FORMATTINGS = ("alpaca", "sharegpt", "openai")
ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output"}
SHAREGPT_DEFAULTS = {
    "messages": "conversations",
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
LFX_KEYS = {"json_output", "language"}
# Languages `lfx eval` can recognise by script (llamafactory_ext.eval_metrics.SCRIPTS).
LANGUAGES = ("ko", "en")


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    info: dict[str, Any]
    directory: Path

    @property
    def path(self) -> Path | None:
        return self.directory / self.info["file_name"] if "file_name" in self.info else None

    @property
    def lf_info(self) -> dict[str, Any]:
        """The entry as LLaMA-Factory reads it (our `lfx` key removed)."""
        return {k: v for k, v in self.info.items() if k != "lfx"}


def _unknown_key(where: str, key: str, allowed: set[str]) -> LfxError:
    hint = difflib.get_close_matches(key, sorted(allowed), n=1)
    did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(sorted(allowed))})"
    return LfxError(f"{where}: unknown key '{key}'{did_you_mean}")


def _expect(where: str, value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise LfxError(f"{where}: expected {what}, got {type(value).__name__} {value!r}")


def validate_entry(name: str, info: Any, info_path: Path) -> None:
    """Check one dataset_info entry's keys and types."""
    where = f"{info_path}: dataset '{name}'"
    _expect(where, info, dict, "a mapping")
    for key in info:
        if key not in ENTRY_KEYS:
            raise _unknown_key(where, key, ENTRY_KEYS)
    sources = [k for k in SOURCE_KEYS if k in info]
    if not sources:
        raise LfxError(f"{where}: missing 'file_name' (or a hub url)")
    for key in sources + [k for k in ("subset", "split", "folder") if k in info]:
        _expect(f"{where}: field '{key}'", info[key], str, "a string")
        if not info[key].strip():
            raise LfxError(f"{where}: field '{key}': must not be empty")
    formatting = info.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        raise LfxError(f"{where}: field 'formatting': '{formatting}' is not one of {', '.join(FORMATTINGS)}")
    if "ranking" in info:
        _expect(f"{where}: field 'ranking'", info["ranking"], bool, "true or false")
    if "num_samples" in info:
        _expect(f"{where}: field 'num_samples'", info["num_samples"], int, "an integer")
        if info["num_samples"] <= 0:
            raise LfxError(f"{where}: field 'num_samples': must be positive, got {info['num_samples']}")
    for group, allowed in (("columns", COLUMN_KEYS), ("tags", TAG_KEYS)):
        if group in info:
            _expect(f"{where}: field '{group}'", info[group], dict, "a mapping")
            for key, value in info[group].items():
                if key not in allowed:
                    raise _unknown_key(f"{where}: field '{group}'", key, allowed)
                _expect(f"{where}: field '{group}.{key}'", value, str, "a string")
                if not value.strip():
                    raise LfxError(f"{where}: field '{group}.{key}': must not be empty")
    if "lfx" in info:
        _expect(f"{where}: field 'lfx'", info["lfx"], dict, "a mapping")
        for key in info["lfx"]:
            if key not in LFX_KEYS:
                raise _unknown_key(f"{where}: field 'lfx'", key, LFX_KEYS)
        rule = info["lfx"].get("json_output", False)
        if isinstance(rule, dict):
            for field_name, values in rule.items():
                _expect(f"{where}: field 'lfx.json_output.{field_name}'", values, list, "a list of values")
        else:
            _expect(f"{where}: field 'lfx.json_output'", rule, bool, "true, false or {FIELD: [VALUES]}")
        if "language" in info["lfx"] and info["lfx"]["language"] not in LANGUAGES:
            raise LfxError(f"{where}: field 'lfx.language': '{info['lfx']['language']}' is not one of {', '.join(LANGUAGES)}")


def load_entries(directory: str | Path | None = None) -> dict[str, DatasetEntry]:
    """Our dataset entries (default: datasets/dataset_info.json), keys and types checked."""
    directory = Path(directory) if directory else datasets_dir()
    info_path = directory / INFO_FILE
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise LfxError(f"{info_path}: expected a JSON object of dataset entries, got {type(info).__name__}")
    for name, entry in info.items():
        validate_entry(name, entry, info_path)
    return {name: DatasetEntry(name, entry, directory) for name, entry in info.items()}


def _records(entry: DatasetEntry) -> list:
    path = entry.path
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise LfxError(f"{path}: file not found (dataset '{entry.name}', field 'file_name')")
        records = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise LfxError(f"{path}:{lineno}:{err.colno}: invalid JSON: {err.msg}") from None
        if not records:
            raise LfxError(f"{path}: file is empty")
        return records
    if not path.is_file():
        raise LfxError(f"{path}: file not found (dataset '{entry.name}', field 'file_name')")
    data = read_json(path)
    if not isinstance(data, list):
        raise LfxError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise LfxError(f"{path}: no records")
    return data


def _wants_json(rule: Any, record: dict) -> bool:
    if isinstance(rule, dict):
        return any(record.get(field_name) in values for field_name, values in rule.items())
    return bool(rule)


def _check_json(where: str, text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise LfxError(f"{where}: response is not valid JSON ({err.msg} at char {err.pos})") from None


def _check_alpaca(where: str, record: dict, info: dict, json_rule: Any) -> None:
    cols = {**ALPACA_DEFAULTS, **info.get("columns", {})}
    required = ["prompt"] + ([] if info.get("ranking") else ["response"])
    for key in required:
        col = cols[key]
        if col not in record:
            raise LfxError(f"{where}: field '{col}': missing")
        if not isinstance(record[col], str):
            raise LfxError(f"{where}: field '{col}': expected a string, got {type(record[col]).__name__}")
        if not record[col].strip():
            raise LfxError(f"{where}: field '{col}': empty")
    for key in ("query", "system"):
        col = cols.get(key)
        if col and col in record and not isinstance(record[col], str):
            raise LfxError(f"{where}: field '{col}': expected a string, got {type(record[col]).__name__}")
    if "columns" in info and "query" in info["columns"] and cols["query"] not in record:
        raise LfxError(f"{where}: field '{cols['query']}': missing")
    history = cols.get("history")
    if history and history in record:
        turns = record[history]
        if not isinstance(turns, list) or not all(
            isinstance(t, list) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in turns
        ):
            raise LfxError(f"{where}: field '{history}': expected a list of [question, answer] string pairs")
    if not info.get("ranking") and _wants_json(json_rule, record):
        _check_json(f"{where}: field '{cols['response']}'", record[cols["response"]])


def _check_sharegpt(where: str, record: dict, info: dict, json_rule: Any) -> None:
    cols = {**SHAREGPT_DEFAULTS, **info.get("columns", {}), **info.get("tags", {})}
    col = cols["messages"]
    if col not in record:
        raise LfxError(f"{where}: field '{col}': missing")
    messages = record[col]
    if not isinstance(messages, list) or not messages:
        raise LfxError(f"{where}: field '{col}': expected a non-empty list of messages")
    role_tag, content_tag = cols["role_tag"], cols["content_tag"]
    asks = {cols["user_tag"], cols["observation_tag"]}
    answers = {cols["assistant_tag"], cols["function_tag"]}
    known = asks | answers | {cols["system_tag"]}
    start = 1 if isinstance(messages[0], dict) and messages[0].get(role_tag) == cols["system_tag"] else 0
    for i, message in enumerate(messages):
        at = f"{where}: field '{col}[{i}]"
        if not isinstance(message, dict):
            raise LfxError(f"{at}': expected a message object, got {type(message).__name__}")
        for tag in (role_tag, content_tag):
            if tag not in message:
                raise LfxError(f"{at}.{tag}': missing")
        role, content = message[role_tag], message[content_tag]
        if role not in known:
            raise LfxError(f"{at}.{role_tag}': role '{role}' is not one of the entry's tags ({', '.join(sorted(known))})")
        if not isinstance(content, str) or not content.strip():
            raise LfxError(f"{at}.{content_tag}': expected non-empty text")
        if i >= start:
            expected = asks if (i - start) % 2 == 0 else answers
            if role not in expected:
                want = "/".join(sorted(expected))
                raise LfxError(f"{at}.{role_tag}': roles must alternate, expected {want}, got '{role}'")
    if (len(messages) - start) % 2 != 0 or len(messages) == start:
        raise LfxError(f"{where}: field '{col}': must end with an {cols['assistant_tag']} message")
    if _wants_json(json_rule, record):
        for i in range(start + 1, len(messages), 2):
            _check_json(f"{where}: field '{col}[{i}].{content_tag}'", messages[i][content_tag])


def check_entry(entry: DatasetEntry, records: list | None = None) -> int:
    """Validate every record of a local dataset (read here unless given); returns the record count."""
    path = entry.path
    if path is None:
        return 0
    records = _records(entry) if records is None else records
    info = entry.info
    json_rule = info.get("lfx", {}).get("json_output", False)
    check = _check_alpaca if info.get("formatting", "alpaca") == "alpaca" else _check_sharegpt
    for index, record in enumerate(records):
        where = f"{path}: record {index}"
        if not isinstance(record, dict):
            raise LfxError(f"{where}: expected an object, got {type(record).__name__}")
        check(where, record, info, json_rule)
    return len(records)


def select(entries: dict[str, DatasetEntry], names: list[str] | None) -> list[DatasetEntry]:
    if not names:
        return list(entries.values())
    for name in names:
        if name not in entries:
            raise LfxError(f"unknown dataset '{name}' (known: {', '.join(sorted(entries))})")
    return [entries[name] for name in names]


def register_datasets(into: str | Path, names: list[str] | None = None, force: bool = False) -> list[str]:
    """Merge our entries (and copy their files) into `into`/dataset_info.json.

    Existing entries are kept; redefining one differently is refused unless `force`. Everything is
    validated and every conflict found before the first byte is written.
    """
    into = Path(into)
    chosen = select(load_entries(), names)
    for entry in chosen:
        check_entry(entry)
    if into.resolve() == datasets_dir().resolve():
        return [e.name for e in chosen]
    info_path = into / INFO_FILE
    existing = read_json(info_path) if info_path.exists() else {}
    if not isinstance(existing, dict):
        raise LfxError(f"{info_path}: expected a JSON object of dataset entries, got {type(existing).__name__}")
    merged = dict(existing)
    copies = []
    for entry in chosen:
        old = existing.get(entry.name)
        if old is not None and old != entry.lf_info and not force:
            raise LfxError(
                f"{info_path}: dataset '{entry.name}' is already defined differently (use --force to replace it)"
            )
        merged[entry.name] = entry.lf_info
        if entry.path is not None:
            target = into / entry.info["file_name"]
            if target.exists() and not filecmp.cmp(entry.path, target, shallow=False):
                if not force:
                    raise LfxError(f"{target}: a different file is already there (use --force to replace it)")
            if not target.exists() or not filecmp.cmp(entry.path, target, shallow=False):
                copies.append((entry.path, target))
    for src, dst in copies:
        atomic_copy(src, dst)
    if merged != existing or not info_path.exists():
        atomic_write_text(info_path, dump_json(merged))
    return [e.name for e in chosen]
