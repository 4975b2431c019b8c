"""The records of a dataset entry, from every source LLaMA-Factory reads (local files and folders in its
file types, Hub datasets through the cache, scripts), each record validated against its entry."""

from __future__ import annotations

import json
import os

from ..errors import LfxError
from ..files import read_json_records, read_jsonl
from ..hub import offline as hub_offline
from ..paths import env_enabled
from ..secrets import HOW, find_in_text, walk
from .dataset_entries import ALPACA_DEFAULTS, INFO_FILE, SHAREGPT_DEFAULTS, DatasetEntry, json_expected

# LLaMA-Factory's FILEEXT2TYPE (llamafactory/extras/constants.py; tests check they agree): file
# extension -> the `datasets` builder that reads it.
FILE_TYPES = {"arrow": "arrow", "csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet", "txt": "text"}


class RecordsUnavailable(Exception):
    """The records of a dataset cannot be read here (a Hub dataset offline and not in the local cache,
    a cloud file): `lfx check` says so in a warning and skips what needs them."""


def source_kind(entry: DatasetEntry) -> str:
    """Where LLaMA-Factory loads the entry from, chosen as llamafactory/data/parser.py get_dataset_list does."""
    info = entry.info
    has_hf, has_ms, has_om = ("hf_hub_url" in info), ("ms_hub_url" in info), ("om_hub_url" in info)
    if has_hf or has_ms or has_om:
        if has_ms and (env_enabled("USE_MODELSCOPE_HUB") or not has_hf):
            return "ms_hub"
        if has_om and (env_enabled("USE_OPENMIND_HUB") or not has_hf):
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

    from datasets.utils.logging import disable_progress_bar

    from datasets import load_dataset

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
        # LLaMA-Factory reads every entry of the folder, in os.listdir order (llamafactory/data/loader.py:76-78):
        # the same order here keeps `lfx eval`'s held-out split equal to its split.
        files = [path / name for name in os.listdir(path)]
        if not files:
            raise LfxError(f"{where}: the folder is empty")
        inner = next((f for f in files if f.is_dir()), None)
        if inner is not None:
            raise LfxError(f"{inner}: a folder inside dataset folder '{entry.info['file_name']}' (dataset '{entry.name}'): "
                           "LLaMA-Factory reads every entry there as a data file; move it out")  # fmt: skip
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
        records = read_json_records(path)
    else:
        try:
            records = _hf_load(where, kinds.pop(), data_files=[str(p) for p in files], split=entry.info.get("split", "train"), local=True)
        except Exception as err:  # the builders raise many types; the message says what is wrong
            raise LfxError(f"{where}: cannot be read ({_first_line(err)})") from None
    if not records:
        raise LfxError(f"{path}: no records" if path.suffix != ".jsonl" else f"{path}: file is empty")
    return records


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


def taken(entry: DatasetEntry, count: int, max_samples: int | None) -> int:
    """How many of a dataset's `count` records a run reads, as LLaMA-Factory's _load_single_dataset takes them
    (llamafactory/data/loader.py:145-159): the entry's `num_samples` (drawn, repeating records when above the
    count), then the run's `max_samples`."""
    n = entry.info.get("num_samples") or count
    return min(n, int(max_samples)) if max_samples else n


def val_split(total: int, val_size: float | int | None, seed: int, where: str) -> tuple[list[int], list[int]]:
    """(training, held-out) indexes of the `total` records a run reads, split as LLaMA-Factory splits them
    (llamafactory/data/data_utils.py:109-115: `datasets`' train_test_split with the run's seed; nothing held out
    at or below 1e-6); LfxError naming `where` when the split fails there at launch."""
    val = val_size or 0
    if val <= 1e-6:
        return list(range(total)), []
    from datasets import Dataset

    try:
        split = Dataset.from_dict({"i": list(range(total))}).train_test_split(test_size=int(val) if val > 1 else val, seed=seed)
    except ValueError as err:
        raise LfxError(f"{where}: {val_size} of {total} records: {' '.join(str(err).split())} (LLaMA-Factory splits there "
                       "at launch: llamafactory/data/data_utils.py:115)") from None  # fmt: skip
    return split["train"]["i"], split["test"]["i"]


def _check_json(where: str, text: str) -> None:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise LfxError(f"{where}: response is not valid JSON ({err.msg} at char {err.pos})") from None


def _check_alpaca(where: str, record: dict, info: dict) -> None:
    cols = {**ALPACA_DEFAULTS, **info.get("columns", {})}
    if info.get("ranking"):  # llamafactory/data/parser.py reads chosen/rejected only from the entry's columns
        for key in ("chosen", "rejected"):
            if key not in cols:
                raise LfxError(f"{where}: a ranking dataset, but its entry names no 'columns.{key}' (the column "
                               f"LLaMA-Factory reads the {key} answer from)")  # fmt: skip
    required = ["prompt"] + (["chosen", "rejected"] if info.get("ranking") else ["response"])
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
    if not info.get("ranking") and json_expected(info, record):
        _check_json(f"{where}: field '{cols['response']}'", record[cols["response"]])


def _check_sharegpt(where: str, record: dict, info: dict) -> None:
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
    if json_expected(info, record):
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
    check = _check_alpaca if info.get("formatting", "alpaca") == "alpaca" else _check_sharegpt
    for index, record in enumerate(records):
        where = f"{label}: record {index}"
        if not isinstance(record, dict):
            raise LfxError(f"{where}: expected an object, got {type(record).__name__}")
        check(where, record, info)
        _refuse_secrets(where, record)
    return len(records)


def _refuse_secrets(where: str, record: dict) -> None:
    """A credential in the training data would be learned by the model and published with it."""
    for field, _key, value in walk(record):
        what = find_in_text(value) if isinstance(value, str) else None
        if what:
            raise LfxError(f"{where}: field '{field}': holds what looks like {what}; remove it from the data ({HOW})")



def check_lines(names: list[str]) -> list[str]:
    """`lfx datasets check`: one line per dataset, its record count or why it is not read here."""
    from .dataset_entries import load_entries, select

    lines = []
    for entry in select(load_entries(names=names or None), names):
        try:
            records = read_records(entry)
        except RecordsUnavailable as why:
            lines.append(f"skipped  {entry.name}: {why}")
            continue
        lines.append(f"ok  {entry.name}: {check_entry(entry, records)} records")
    return lines
