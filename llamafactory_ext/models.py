"""Where a model comes from, one rule for every command: a local folder, else the Hub cache, else the Hub.

A recipe names a model as its user wrote it (`runs/models/x`, `~/models/x`, `org/name`); each machine
resolves it where it runs: a local folder relative to the current folder or else to the repository root
(presets name `runs/...`), otherwise a Hub id fetched with the run's `model_revision` and `cache_dir`
(from the cache only when offline).
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import LfxError
from .files import read_json
from .hub import looks_like_repo_id, offline
from .paths import REPO_ROOT

CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "vocab.txt")  # fmt: skip
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
MODEL_FILES = (*CONFIG_FILES, *TOKENIZER_FILES, *WEIGHT_FILES, "*.py")
ADAPTER_CONFIG = "adapter_config.json"
# The weights transformers loads beside config.json (a run's output also holds training_args.bin, which is none).
MODEL_WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
NOT_A_MODEL = "neither a model folder (config.json and weights) nor a LoRA adapter (adapter_config.json)"


def open_tokenizer(folder: str | Path, problem: str = "the tokenizer cannot be loaded"):
    """transformers' AutoTokenizer of a local folder; missing or damaged tokenizer files (the user's) as one line."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LfxError(f"{folder}: {problem} ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None


def folder_kind(folder: str | Path) -> str | None:
    """What a folder holds, the one rule every command applies: 'adapter' (adapter_config.json), 'model'
    (config.json and weights, *.safetensors or pytorch_model*.bin), or None."""
    folder = Path(folder)
    if (folder / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (folder / "config.json").is_file() and any(next(folder.glob(p), None) for p in MODEL_WEIGHTS):
        return "model"
    return None


def local_folder(name: str | Path) -> Path | None:
    """`name` as a local folder (absolute), or None when it is not one here."""
    text = str(name)
    if not text:
        return None
    for candidate in (Path(text).expanduser(), REPO_ROOT / text):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def for_loading(name: str) -> str:
    """What LLaMA-Factory and transformers should load: the absolute local folder, or the Hub id as is."""
    folder = local_folder(name)
    return str(folder) if folder else name


def checked_name(name: str, where: str) -> str:
    """`for_loading`, refusing a name that is neither a local folder here nor shaped like a Hub id."""
    folder = local_folder(name)
    if folder:
        return str(folder)
    if not looks_like_repo_id(name):
        raise LfxError(f"{where}: '{name}' does not exist (no such folder, and not a Hub id org/name)")
    return name


def resolve(name: str, where: str, *, revision: str | None = None, cache_dir: str | None = None,
            files: tuple[str, ...] = MODEL_FILES, hint: str = "") -> Path:  # fmt: skip
    """A local folder holding the model's `files`: the folder itself, or the Hub snapshot (the cache only
    when offline). LfxError naming `where` when it is neither."""
    folder = local_folder(name)
    if folder:
        return folder
    if not looks_like_repo_id(name):
        raise LfxError(f"{where}: '{name}': no such folder{hint}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, allow_patterns=list(files),
                                      local_files_only=offline()))  # fmt: skip
    except Exception as err:  # offline and not cached, gated, missing, no network...
        why = "offline and not in the Hugging Face cache" if offline() else f"cannot be downloaded ({type(err).__name__})"
        revision_text = f" at revision {revision}" if revision else ""
        raise LfxError(f"{where}: '{name}'{revision_text}: not a local folder, and {why}{hint}") from None


def cached_config(name: str, *, revision: str | None = None, cache_dir: str | None = None) -> tuple[dict, str] | None:
    """(config.json, where it was read) from a local folder or the Hub cache, never downloading."""
    folder = local_folder(name)
    if folder and (folder / "config.json").is_file():
        return read_json(folder / "config.json"), str(folder / "config.json")
    if folder or not looks_like_repo_id(name):
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json", cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return read_json(cached), cached
    return None


HUB_CACHE_FOLDER = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


def hub_id(folder: str | Path) -> str | None:
    """The Hub id a local model folder came from, when that is known: a Hub cache snapshot
    (.../models--org--name/snapshots/REV), a model fetched by `lfx fetch-model` (lfx_fetch.json), or a
    name that already is a Hub id. None for a folder of unknown origin."""
    text = str(folder)
    if looks_like_repo_id(text) and not Path(text).expanduser().is_dir():
        return text
    path = Path(text).expanduser()
    for part in path.parts:
        found = HUB_CACHE_FOLDER.match(part)
        if found:
            return f"{found['org']}/{found['name']}"
    record = path / "lfx_fetch.json"
    if record.is_file():
        model = (read_json(record).get("source") or {}).get("model")
        if isinstance(model, str) and looks_like_repo_id(model):
            return model
    return None
