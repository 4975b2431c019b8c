"""Datasets declared in datasets/dataset_info.json (LLaMA-Factory's own vocabulary, schema in
persona.schema): loading the entries, naming them, and merging them into another dataset_info.json
without clobbering it.

An entry may carry one key of ours, `lfx`, which LLaMA-Factory ignores and we strip when merging:
`lfx: {json_output: true}` says every response is JSON; `lfx: {json_output: {FIELD: [VALUES]}}`
says so for the records whose FIELD is one of VALUES (multi-task data); `lfx: {language: ko}` names
the language the responses are written in (`lfx eval` measures the share of answers in it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json
from ..paths import datasets_dir
from ..secrets import refuse as refuse_secrets
from ..validation import comma_list as dataset_names  # noqa: F401 (the name the commands import)
from ..validation import validate
from .schema import Columns, DatasetInfoEntry, LfxKeys, Tags

INFO_FILE = "dataset_info.json"
# The keys llamafactory.data.parser.DatasetAttr reads (tests check them against it), plus ours.
ENTRY_KEYS = set(DatasetInfoEntry.model_fields)
COLUMN_KEYS = set(Columns.model_fields)
TAG_KEYS = set(Tags.model_fields)
LFX_KEYS = set(LfxKeys.model_fields)
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


def json_expected(info: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether a record's responses must be JSON, by its entry's `lfx: {json_output: ...}`: true for every record,
    {FIELD: [VALUES]} for the records whose FIELD is one of VALUES."""
    rule = (info.get("lfx") or {}).get("json_output", False)
    if isinstance(rule, dict):
        return any(record.get(field) in values for field, values in rule.items())
    return bool(rule)


def validate_entry(name: str, info: Any, info_path: Path) -> None:
    """One dataset_info entry against the schema (keys, types, a source, a file_name that stays inside)."""
    where = f"{info_path}: dataset '{name}'"
    refuse_secrets(where, info)
    validate(DatasetInfoEntry, info, where)


def load_entries(directory: str | Path | None = None, names: list[str] | None = None) -> dict[str, DatasetEntry]:
    """Our dataset entries (default: datasets/dataset_info.json); every one validated, or with `names` only
    those: LLaMA-Factory reads only the entries a run names, so a broken entry of another dataset stops nothing."""
    directory = Path(directory) if directory else datasets_dir()
    info_path = directory / INFO_FILE
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise LfxError(f"{info_path}: expected a JSON object of dataset entries, got {type(info).__name__}")
    for name, entry in info.items():
        if names is None or name in names:
            validate_entry(name, entry, info_path)
    return {name: DatasetEntry(name, entry, directory) for name, entry in info.items()}


def select(entries: dict[str, DatasetEntry], names: list[str] | None) -> list[DatasetEntry]:
    if not names:
        return list(entries.values())
    for name in names:
        if name not in entries:
            raise LfxError(f"unknown dataset '{name}' (known: {', '.join(sorted(entries))})")
    return [entries[name] for name in names]


def fingerprint(entry: DatasetEntry) -> str:
    """sha256 of what LLaMA-Factory reads for an entry: the entry itself and its local file, or every file of its
    folder. A run records them (lfx_run.json `data_sha256`), so `lfx eval` rebuilds the run's split only from
    that very data."""
    digest = hashlib.sha256(json.dumps(entry.lf_info, sort_keys=True, ensure_ascii=False).encode())
    path = entry.path
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path is not None and path.is_dir() else [path]
    for file in files if path is not None and path.exists() else []:
        digest.update(f"{file.relative_to(entry.directory).as_posix()}\n".encode())
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()
