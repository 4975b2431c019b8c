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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import atomic_copy, atomic_write_text, dump_json, read_json, read_jsonl
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


# LLaMA-Factory's FILEEXT2TYPE (llamafactory/extras/constants.py; tests check they agree): file
# extension -> the `datasets` builder that reads it.
FILE_TYPES = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}


class RecordsUnavailable(Exception):
    """The records of a dataset cannot be read here (a Hub dataset offline and not in the local cache,
    a cloud file): `lfx check` says so in a warning and skips what needs them."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("true", "y", "1")


def source_kind(entry: DatasetEntry) -> str:
    """Where LLaMA-Factory loads the entry from, chosen as llamafactory/data/parser.py get_dataset_list does."""
    info = entry.info
    has_hf, has_ms, has_om = ("hf_hub_url" in info), ("ms_hub_url" in info), ("om_hub_url" in info)
    if has_hf or has_ms or has_om:
        if has_ms and (_env_flag("USE_MODELSCOPE_HUB") or not has_hf):
            return "ms_hub"
        if has_om and (_env_flag("USE_OPENMIND_HUB") or not has_hf):
            return "om_hub"
        return "hf_hub"
    if "script_url" in info:
        return "script"
    if "cloud_file_name" in info:
        return "cloud_file"
    return "file"


SOURCE_FIELD = {"hf_hub": "hf_hub_url", "ms_hub": "ms_hub_url", "om_hub": "om_hub_url", "script": "script_url",
                "cloud_file": "cloud_file_name", "file": "file_name"}  # fmt: skip


def source_label(entry: DatasetEntry) -> str:
    """What error lines name for the entry's records: the file, or the dataset and its source."""
    kind = source_kind(entry)
    if kind == "file":
        return str(entry.path)
    key = SOURCE_FIELD[kind]
    return f"dataset '{entry.name}' ({key} '{entry.info[key]}')"


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def _hf_load(where: str, *args, cache_dir: str | None = None, **kwargs) -> list:
    """Records through HF `datasets`.load_dataset, as LLaMA-Factory's loader calls it. Local files are
    read with a throw-away cache (check writes nothing); Hub datasets use the run's cache_dir."""
    import contextlib
    import logging
    import tempfile

    from datasets import load_dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    # A bad file makes `datasets` log an ERROR line before it raises; our one-line error says it instead.
    quiet = logging.getLogger("datasets")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        with contextlib.ExitStack() as stack:
            if cache_dir is None and kwargs.pop("local", False):
                cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lfx-check-"))
            kwargs.pop("local", None)
            dataset = load_dataset(*args, cache_dir=cache_dir, **kwargs)
            return dataset.to_list()
    finally:
        quiet.setLevel(level)


def _file_records(entry: DatasetEntry) -> list:
    path = entry.path
    where = f"{path}: field 'file_name' (dataset '{entry.name}')"
    if path.is_dir():
        files = sorted(p for p in path.iterdir())  # LLaMA-Factory reads every file in the folder
        if not files:
            raise LfxError(f"{where}: the folder is empty")
    elif path.is_file():
        files = [path]
    else:
        raise LfxError(f"{path}: file not found (dataset '{entry.name}', field 'file_name')")
    kinds = {FILE_TYPES.get(p.suffix.lstrip(".")) for p in files}
    if None in kinds:
        odd = next(p for p in files if FILE_TYPES.get(p.suffix.lstrip(".")) is None)
        raise LfxError(f"{odd}: field 'file_name' (dataset '{entry.name}'): '{odd.suffix or odd.name}' is not a file type "
                       f"LLaMA-Factory reads ({', '.join(FILE_TYPES)})")  # fmt: skip
    if len(kinds) > 1:
        raise LfxError(f"{where}: the folder mixes file types ({', '.join(sorted(kinds))}); LLaMA-Factory needs one type")
    if len(files) == 1 and path.suffix == ".jsonl":
        records = read_jsonl(path)
    elif len(files) == 1 and path.suffix == ".json":
        data = read_json(path)
        if not isinstance(data, list):
            raise LfxError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        records = data
    else:
        try:
            records = _hf_load(where, kinds.pop(), data_files=[str(p) for p in files], split=entry.info.get("split", "train"), local=True)
        except Exception as err:  # the builders raise many types; the message says what is wrong
            raise LfxError(f"{where}: cannot be read ({_first_line(err)})") from None
    if not records:
        raise LfxError(f"{path}: no records" if path.suffix != ".jsonl" else f"{path}: file is empty")
    return records


def hub_offline() -> bool:
    return _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE")


def read_records(entry: DatasetEntry, cache_dir: str | None = None) -> list:
    """Every record of a dataset, from any source LLaMA-Factory reads; raises LfxError for bad input
    and RecordsUnavailable when they cannot be read here."""
    kind = source_kind(entry)
    info = entry.info
    if kind == "file":
        return _file_records(entry)
    key = SOURCE_FIELD[kind]
    where = f"{entry.directory / INFO_FILE}: dataset '{entry.name}': field '{key}'"
    if kind == "hf_hub":
        try:
            records = _hf_load(where, info[key], name=info.get("subset"), data_dir=info.get("folder"),
                               split=info.get("split", "train"), cache_dir=cache_dir)  # fmt: skip
        except Exception as err:
            if hub_offline() and isinstance(err, (ConnectionError, FileNotFoundError, OSError, ValueError)):
                raise RecordsUnavailable(f"'{info[key]}' is not in the local Hugging Face datasets cache and the Hub "
                                         "is offline") from None  # fmt: skip
            raise LfxError(f"{where}: '{info[key]}' cannot be loaded ({_first_line(err)})") from None
        if not records:
            raise LfxError(f"{where}: '{info[key]}' has no records in split '{info.get('split', 'train')}'")
        return records
    if kind == "script":
        path = entry.directory / info[key]
        scripts = [path] if path.suffix == ".py" else sorted(path.glob("*.py")) if path.is_dir() else []
        if scripts:
            # datasets>=4 (datasets/load.py): "Dataset scripts are no longer supported"
            raise LfxError(f"{where}: '{scripts[0].name}' is a dataset script, which the installed `datasets` no longer "
                           "runs; convert the data to json/jsonl/csv/parquet files and use file_name")  # fmt: skip
        if not path.is_dir():
            raise LfxError(f"{where}: '{path}' does not exist (no such folder beside {INFO_FILE})")
        try:
            return _hf_load(where, str(path), name=info.get("subset"), data_dir=info.get("folder"),
                            split=info.get("split", "train"), local=True)  # fmt: skip
        except Exception as err:
            raise LfxError(f"{where}: cannot be read ({_first_line(err)})") from None
    if kind in ("ms_hub", "om_hub"):
        hub = "ModelScope" if kind == "ms_hub" else "Modelers (openMind)"
        raise RecordsUnavailable(f"{hub} dataset '{info[key]}' is not read by lfx check (only the Hugging Face cache is)")
    raise RecordsUnavailable(f"cloud file '{info[key]}' is not read by lfx check")


def countable_records(entry: DatasetEntry, cache_dir: str | None = None) -> list:
    """read_records, with 'not available here' as an error (for counting samples in `lfx plan`)."""
    try:
        return read_records(entry, cache_dir=cache_dir)
    except RecordsUnavailable as why:
        raise LfxError(f"{entry.directory / INFO_FILE}: dataset '{entry.name}': {why}: its samples cannot be counted "
                       "here (download it first)") from None  # fmt: skip


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
        if col and record.get(col) is not None and not isinstance(record[col], str):  # None: an empty csv cell
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
    """Validate every record of a dataset (read here unless given); returns the record count, 0 when
    its records cannot be read here (a Hub dataset offline and not cached)."""
    if records is None:
        try:
            records = read_records(entry)
        except RecordsUnavailable:
            return 0
    label = source_label(entry)
    info = entry.info
    json_rule = info.get("lfx", {}).get("json_output", False)
    check = _check_alpaca if info.get("formatting", "alpaca") == "alpaca" else _check_sharegpt
    for index, record in enumerate(records):
        where = f"{label}: record {index}"
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
        info = entry.info if keep_lfx else entry.lf_info
        old = existing.get(entry.name)
        if old is not None and old != info and not force:
            raise LfxError(
                f"{info_path}: dataset '{entry.name}' is already defined differently (use --force to replace it)"
            )
        merged[entry.name] = info
        if entry.path is not None:
            target = into / entry.info["file_name"]
            pairs = ([(f, target / f.name) for f in sorted(entry.path.iterdir()) if f.is_file()]
                     if entry.path.is_dir() else [(entry.path, target)])  # a folder: LLaMA-Factory reads all its files
            for src, dst in pairs:
                if dst.exists() and not (dst.is_file() and filecmp.cmp(src, dst, shallow=False)):
                    if not force:
                        raise LfxError(f"{dst}: a different file is already there (use --force to replace it)")
                if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
                    copies.append((src, dst))
    for src, dst in copies:
        atomic_copy(src, dst)
    if merged != existing or not info_path.exists():
        atomic_write_text(info_path, dump_json(merged))
    return [e.name for e in chosen]
