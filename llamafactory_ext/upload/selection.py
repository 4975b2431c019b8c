"""What goes to the Hub: a model, not the training machine. The model's files (weights, configs, tokenizer,
chat template), the run's plots, records and evaluation made portable (no secret, no local path), and
nothing else: no checkpoint, optimizer state, pickled training arguments, log or dot-file, and nothing that
describes another model (a model card or config of the base a merge carried along).

Everything that would go up is checked before anything is sent, whatever its name: every text file whole,
the text inside binary ones (a safetensors header, a PyTorch checkpoint's pickle, the strings of any other
file), for a secret and for a path of this machine (its home, its volume, the upload's folders, the user's
name as a folder); weights must be whole (safetensors' own check) and not empty."""

from __future__ import annotations

import getpass
import json
import mmap
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import read_json
from ..models import hub_id
from ..secrets import HOW, find_in_text

# Training state that is not part of a model: checkpoints, optimizer shards, pickles (training_args.bin keeps
# every argument, tokens included), logs, local notes, the output's markers. README.md: our card replaces it.
IGNORE = ["checkpoint-*", "checkpoint-*/*", "global_step*", "global_step*/*", "*.pt", "*.pth", "*.pkl", "training_args.bin",
          "README.md", ".*", "*/.*", "runs/*", "train.log", "hostfile*", "*.incomplete*", "eval.md",
          "lfx_tokenizer.json"]  # fmt: skip
# Our records and evaluation, rewritten portable (lfx_run.json, lfx_merge.json, eval.json).
RECORDS = (run_record.RUN_RECORD, run_record.MERGE_RECORD, "eval.json")
# Keys of model files that name where a model was loaded from (a path on the training machine).
PATH_KEYS = ("_name_or_path", "name_or_path", "base_model_name_or_path")
# Files that describe a model: a card (by its name, or by a card's metadata block), Meta's and Mistral's
# original-format config (params.json: its weights are not the merge's), and any model config below the top.
CARD_NAME = re.compile(r"(^|/)(readme|model[_\-]?card)(\.[A-Za-z]+)?$", re.I)
CARD_METADATA = re.compile(r"\A---\s*\n(.*\n)*?(base_model|model-index|pipeline_tag|library_name|license)\s*:", re.M)
MODEL_CONFIGS = ("config.json", "adapter_config.json", "generation_config.json", "params.json")
WEIGHTS = (".safetensors", ".bin")
# Vocabularies: pieces that may look like a folder ("/root"); the path check skips their pieces.
VOCABULARIES = ("vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
STRINGS = re.compile(rb"[\x20-\x7e]{6,}")  # the printable runs of a binary file
TEXT_MAX = 256 << 20  # larger files are read as binary, through mmap (a GGUF, a legacy checkpoint)


@dataclass(frozen=True)
class Item:
    path_in_repo: str
    source: Path | None  # a file sent as it is
    content: bytes | None = None  # or these bytes (a rewritten record, the card)

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.source.stat().st_size

    @property
    def where(self) -> str:
        return str(self.source or self.path_in_repo)

    def data(self) -> bytes:
        return self.content if self.content is not None else self.source.read_bytes()


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


def another_model(name: str, path: Path) -> str | None:
    """Why the file `name` describes another model than the one uploaded (None: it does not)."""
    if CARD_NAME.search(name):
        return "a model card (the upload writes its own README.md)"
    if name.endswith(".md") and path.stat().st_size < 1 << 20 and CARD_METADATA.search(path.read_text(errors="replace")):
        return "a model card's metadata (the upload writes its own README.md)"
    if PurePosixPath(name).name == "params.json":
        return "an original-format (Meta, Mistral) config of weights the upload does not carry"
    if "/" in name and PurePosixPath(name).name in MODEL_CONFIGS:
        return "the config of a model in a subfolder"
    return None


def items(folder: Path, warn, base: Path | None = None) -> list[Item]:
    """The files of `folder` that go up, with our records and model JSONs made portable, all checked."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    rel = {p.relative_to(folder).as_posix(): p for p in files}
    out: list[Item] = []
    for name in filter_repo_objects(list(rel), ignore_patterns=IGNORE):
        path = rel[name]
        why = another_model(name, path)
        if why:
            warn(f"left out {name}: {why}")
        elif name in RECORDS:
            out.append(Item(name, None, _json_bytes(run_record.portable(read_json(path)))))
        elif name.endswith(".json") and "/" not in name and path.stat().st_size < 1 << 20 and name != "tokenizer.json":
            data = read_json(path)
            portable = _portable_model_json(data, lambda m, n=name: warn(f"{n}: {m}")) if isinstance(data, dict) else data
            out.append(Item(name, None, _json_bytes(portable)) if portable != data else Item(name, path))
        else:
            out.append(Item(name, path))
    check(out, local_paths(folder, *([base] if base else [])))
    return out


def local_paths(*folders: Path) -> list[tuple[str, re.Pattern]]:
    """Paths of this machine that must not travel: the home folder, the current folder, the pod's volume, the
    folders the upload reads from, and the user's name as a folder (/home/NAME, C:\\Users\\NAME)."""
    found = {str(Path.home()), os.getcwd(), "/workspace", os.environ.get("LFX_WORKSPACE", "")}
    found |= {str(p.resolve()) for p in folders if p}
    prefixes = sorted((p.rstrip("/") for p in found if p.rstrip("/")), key=len, reverse=True)
    out = [(p, re.compile(re.escape(p) + r"(?![A-Za-z0-9_.\-])")) for p in prefixes]
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name known (a container without a passwd entry)
        user = ""
    if len(user) >= 3:
        out.append((f"a folder named after the user '{user}'", re.compile(r"[/\\]" + re.escape(user) + r"(?=[/\\\"'\s]|$)")))
    return out


def readable_text(item: Item) -> tuple[str, bool]:
    """The text `item` holds, and whether it is running text (a binary file's strings run into each other,
    so no long random token is looked for there). Weights are checked whole and not empty first."""
    name, path = item.path_in_repo, item.source
    if path is not None and name.endswith(WEIGHTS) and item.size == 0:
        raise LfxError(f"{path}: zero bytes: not a model's weights; nothing was uploaded")
    if path is not None and name.endswith(".safetensors"):
        from ..artifact.shards import problem

        why = problem(path)
        if why:
            raise LfxError(f"{path}: {why}; nothing was uploaded")
        with open(path, "rb") as f:  # the header: JSON (names, shapes, metadata); the rest is numbers
            return f.read(struct.unpack("<Q", f.read(8))[0]).decode("utf-8", errors="replace"), True
    if path is not None and name.endswith(".bin") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # torch.save's zip: the pickle holds the text; the tensors are numbers
            return "\n".join(m.decode("ascii") for n in archive.namelist() if n.endswith(".pkl")
                             for m in STRINGS.findall(archive.read(n))), False  # fmt: skip
    if path is not None and name.endswith(".bin") and _starts_with(path, b"PK"):
        raise LfxError(
            f"{path}: cut short or damaged (a zip archive, as torch.save writes, without its end); nothing was uploaded"
        )
    if path is not None and item.size > TEXT_MAX:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return "\n".join(m.decode("ascii") for m in STRINGS.findall(data)), False
    data = item.data()
    try:
        return data.decode("utf-8"), True
    except UnicodeDecodeError:
        return "\n".join(m.decode("ascii") for m in STRINGS.findall(data)), False


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def _without_vocabulary(name: str, text: str) -> str:
    """The text of a file minus its vocabulary's pieces (tokenizer.json's model), which may look like folders."""
    if PurePosixPath(name).name in VOCABULARIES:
        return ""
    if PurePosixPath(name).name == "tokenizer.json":
        try:
            data = json.loads(text)
        except ValueError:
            return text
        if isinstance(data, dict):
            data.pop("model", None)
            data.pop("added_tokens", None)
            return json.dumps(data)
    return text


def check(selected: list[Item], paths: list[tuple[str, re.Pattern]]) -> None:
    """Refuse (nothing sent) when any file holds a secret or a path of this machine, or has broken weights."""
    for item in selected:
        text, running = readable_text(item)
        what = find_in_text(text, random_tokens=running)
        if what:
            raise LfxError(f"{item.where}: holds what looks like {what}; nothing was uploaded ({HOW})")
        text = _without_vocabulary(item.path_in_repo, text)
        for shown, pattern in paths:
            if pattern.search(text):
                raise LfxError(f"{item.where}: holds {shown if shown.startswith('a ') else repr(shown)}, a path of this "
                               "machine; nothing was uploaded (a model on the Hub names no folder of the training machine)")  # fmt: skip
