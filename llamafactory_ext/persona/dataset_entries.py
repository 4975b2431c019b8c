"""Datasets declared in datasets/dataset_info.json (LLaMA-Factory's own vocabulary, schema in
persona.schema): loading the entries, naming them, and merging them into another dataset_info.json
without clobbering it.

An entry may carry one key of ours, `lfx`, which LLaMA-Factory ignores and we strip when merging:
`lfx: {json_output: true}` says every response is JSON; `lfx: {json_output: {FIELD: [VALUES]}}`
says so for the records whose FIELD is one of VALUES (multi-task data); `lfx: {language: ko}` names
the language the responses are written in (`lfx eval` measures the share of answers in it).
"""

from __future__ import annotations

import filecmp
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import atomic_copy, atomic_write_text, dump_json, has_bom, inside, read_json, read_text
from ..paths import datasets_dir
from ..secrets import refuse as refuse_secrets
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


def validate_entry(name: str, info: Any, info_path: Path) -> None:
    """One dataset_info entry against the schema (keys, types, a source, a file_name that stays inside)."""
    where = f"{info_path}: dataset '{name}'"
    refuse_secrets(where, info)
    validate(DatasetInfoEntry, info, where)


def load_entries(directory: str | Path | None = None) -> dict[str, DatasetEntry]:
    """Our dataset entries (default: datasets/dataset_info.json), validated."""
    directory = Path(directory) if directory else datasets_dir()
    info_path = directory / INFO_FILE
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise LfxError(f"{info_path}: expected a JSON object of dataset entries, got {type(info).__name__}")
    for name, entry in info.items():
        validate_entry(name, entry, info_path)
    return {name: DatasetEntry(name, entry, directory) for name, entry in info.items()}


def select(entries: dict[str, DatasetEntry], names: list[str] | None) -> list[DatasetEntry]:
    if not names:
        return list(entries.values())
    for name in names:
        if name not in entries:
            raise LfxError(f"unknown dataset '{name}' (known: {', '.join(sorted(entries))})")
    return [entries[name] for name in names]


def dataset_names(value: Any) -> list[str]:
    """The names in a `dataset`/`eval_dataset` value: "a, b" or a list, as LLaMA-Factory splits them."""
    if value is None:
        return []
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n).strip() for n in value]


def register_datasets(into: str | Path, names: list[str] | None = None, force: bool = False,
                      keep_lfx: bool = False) -> list[str]:  # fmt: skip
    """Merge our entries (and copy their files) into `into`/dataset_info.json.

    Existing entries are kept; redefining one differently is refused unless `force`. Everything is
    validated and every conflict found before the first byte is written. `keep_lfx` keeps our `lfx`
    key (a run folder's snapshot, which `lfx check` reads back); LLaMA-Factory ignores it.
    """
    from .dataset_records import check_entry

    into = Path(into)
    if into.exists() and not into.is_dir():
        raise LfxError(f"{into}: exists and is not a folder (--into names LLaMA-Factory's dataset folder)")
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
    copies: list[tuple[Path, Path]] = []
    for entry in chosen:
        info = entry.info if keep_lfx else entry.lf_info
        old = existing.get(entry.name)
        if old is not None and old != info and not force:
            raise LfxError(f"{info_path}: dataset '{entry.name}' is already defined differently (use --force to replace it)")
        merged[entry.name] = info
        if entry.path is not None:
            target = inside(into, entry.info["file_name"], f"{entry.directory / INFO_FILE}: dataset '{entry.name}': field 'file_name'")
            pairs = ([(f, target / f.name) for f in sorted(entry.path.iterdir()) if f.is_file()]
                     if entry.path.is_dir() else [(entry.path, target)])  # a folder: LLaMA-Factory reads all its files
            for src, dst in pairs:
                if dst.is_dir() or (dst.exists() and not _same(src, dst)):
                    if not force or dst.is_dir():
                        raise LfxError(f"{dst}: a different {'folder' if dst.is_dir() else 'file'} is already there "
                                       "(use --force to replace it)")  # fmt: skip
                if not dst.is_file() or not _same(src, dst):
                    copies.append((src, dst))
    for src, dst in copies:
        _copy_data(src, dst)
    if merged != existing or not info_path.exists():
        atomic_write_text(info_path, dump_json(merged))
    return [e.name for e in chosen]


def _same(src: Path, dst: Path) -> bool:
    """dst holds what a copy of src would hold (a BOM dropped)."""
    if has_bom(src):
        return dst.read_bytes() == src.read_bytes()[3:]
    return filecmp.cmp(src, dst, shallow=False)


def _copy_data(src: Path, dst: Path) -> None:
    """Copy a data file; a UTF-8 BOM is dropped on the way, since LLaMA-Factory's loader (HF datasets)
    refuses a JSON file that starts with one, while every reader of ours accepts it."""
    if has_bom(src):
        atomic_write_text(dst, read_text(src))
    else:
        atomic_copy(src, dst)
