"""What goes to the Hub: a model, not the training machine. The model's files (weights, configs, tokenizer,
chat template), the run's plots, records and evaluation made portable (no secret, no local path), and
nothing else: no checkpoint, optimizer state, pickled training arguments, log or dot-file. A file that still
holds a secret or a path of this machine stops the upload before anything is sent."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import read_json
from ..models import hub_id
from ..secrets import HOW, find_in_text

# Training state that is not part of a model: checkpoints, optimizer shards, pickles (training_args.bin keeps
# every argument, tokens included), logs, local notes, the output's markers.
IGNORE = ["checkpoint-*", "checkpoint-*/*", "global_step*", "global_step*/*", "*.pt", "*.pth", "*.pkl", "training_args.bin",
          "README.md", ".*", "*/.*", "runs/*", "train.log", "hostfile*", "*.incomplete*", "eval.md",
          "lfx_tokenizer.json"]  # fmt: skip
# Our records and evaluation, rewritten portable (lfx_run.json, lfx_merge.json, eval.json).
RECORDS = (run_record.RUN_RECORD, run_record.MERGE_RECORD, "eval.json")
# Keys of model files that name where a model was loaded from (a path on the training machine).
PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path")
TEXT_SUFFIXES = (".json", ".jsonl", ".jinja", ".txt", ".md", ".yaml", ".yml", ".model_card")


@dataclass(frozen=True)
class Item:
    path_in_repo: str
    source: Path | None  # a file sent as it is
    content: bytes | None = None  # or these bytes (a rewritten record, the card)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.source.stat().st_size


def _json_bytes(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _portable_model_json(data: dict[str, Any], warn) -> dict[str, Any]:
    """A model file's JSON with local folders in `*name_or_path` replaced by the Hub id they came from."""
    out = dict(data)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and run_record.is_local_path(value):
            found = hub_id(value)
            if found is None:
                warn(f"{key} '{Path(value).name}' is a local folder of unknown origin: whoever loads this needs that "
                     "base model themselves")  # fmt: skip
            out[key] = found or Path(value.rstrip("/")).name
    return out


def local_prefixes(*extra: Path) -> list[str]:
    """Paths of this machine that must not travel: the home folder, the current folder, the pod's volume, and
    the folders the upload reads from."""
    found = {str(Path.home()), os.getcwd(), "/workspace"}
    found |= {str(p.resolve()) for p in extra if p}
    return sorted((p for p in found if p not in ("/", "")), key=len, reverse=True)


def items(folder: Path, warn, base: Path | None = None) -> list[Item]:
    """The files of `folder` that go up, with our records and model JSONs made portable."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    rel = {p.relative_to(folder).as_posix(): p for p in files}
    chosen = list(filter_repo_objects(list(rel), ignore_patterns=IGNORE))
    out: list[Item] = []
    for name in chosen:
        path = rel[name]
        if name in RECORDS:
            out.append(Item(name, None, _json_bytes(run_record.portable(read_json(path)))))
        elif name.endswith(".json") and "/" not in name and path.stat().st_size < 1 << 20 and name != "tokenizer.json":
            data = read_json(path)
            portable = _portable_model_json(data, lambda m, n=name: warn(f"{n}: {m}")) if isinstance(data, dict) else data
            out.append(Item(name, None, _json_bytes(portable)) if portable != data else Item(name, path))
        else:
            out.append(Item(name, path))
    check(out, local_prefixes(folder, *([base] if base else [])))
    return out


def check(selected: list[Item], prefixes: list[str]) -> None:
    """Refuse (nothing sent) when a text file still holds a secret or a path of this machine."""
    for item in selected:
        if not item.path_in_repo.endswith(TEXT_SUFFIXES):
            continue
        data = item.content if item.content is not None else item.source.read_bytes()
        text = data.decode("utf-8", errors="replace")
        what = find_in_text(text)
        if what:
            raise LfxError(f"{item.source or item.path_in_repo}: holds what looks like {what}; nothing was uploaded ({HOW})")
        if item.path_in_repo == "tokenizer.json":
            continue  # a vocabulary, whose pieces may look like anything
        for prefix in prefixes:
            if prefix in text:
                raise LfxError(f"{item.source or item.path_in_repo}: holds the local path '{prefix}'; nothing was uploaded "
                               "(a model on the Hub names no folder of the training machine)")  # fmt: skip
