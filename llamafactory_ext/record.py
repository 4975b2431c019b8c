"""The contract between commands: a rendered run folder's run.json and where its outputs live, the run record
(lfx_run.json) and the merge record (lfx_merge.json). The one place that names, writes, finds and reads them,
and makes them portable (no secret, no path of the training machine) for the Hub.

Standard library only (the launch plan reads run.json with a pod's bare python, before any install)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import atomic_write_text, dump_json, read_json
from .secrets import scrub

RUN_FILE = "run.json"  # in a rendered run folder: name, run id, launch shape
RUN_RECORD = "lfx_run.json"
MERGE_RECORD = "lfx_merge.json"
CHECKPOINT = re.compile(r"^checkpoint-\d+$")
# What a run leaves beside its adapter that a model folder carries on: the record, plots, results, eval.
RUN_FILES = (RUN_RECORD, "training_loss.png", "training_eval_loss.png", "trainer_log.jsonl", "all_results.json",
             "train_results.json", "eval.json", "eval.md", "eval.png")  # fmt: skip


# Folder names that say what a folder is, not which run: the model's name is found above them.
GENERIC_NAMES = re.compile(r"^(output|outputs|merged|adapter|run|checkpoint-\d+)$")


def model_name(folder: str | Path) -> str:
    """The name a model folder is served and exported under: its run's name (run.json, kept in the run record,
    so a run's outputs on a workspace volume are named like the run folder), else the nearest folder name that
    is not generic (runs/ironman/merged -> ironman)."""
    path = find(folder)
    if path is not None:
        run = (read_json(path) or {}).get("run") if path.is_file() else None
        if isinstance(run, dict) and isinstance(run.get("name"), str) and run["name"]:
            return run["name"]
    resolved = Path(folder).resolve()
    for part in (resolved, *resolved.parents):
        if part.name and not GENERIC_NAMES.match(part.name):
            return part.name
    return "persona"


def write(output_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write the run record into `output_dir`, secrets dropped whatever they came from."""
    path = Path(output_dir) / RUN_RECORD
    atomic_write_text(path, dump_json(scrub(record)))
    return path


def candidates(folder: str | Path) -> list[Path]:
    """Where the run record of a model folder is, in order: the folder itself (an output folder, or a merged
    folder carrying a copy), the output folder above a checkpoint-N, the output folder beside a merged one."""
    folder = Path(folder)
    found = [folder / RUN_RECORD]
    if CHECKPOINT.match(folder.name):
        found.append(folder.parent / RUN_RECORD)
    found.append(folder.parent / "output" / RUN_RECORD)
    return found


def find(folder: str | Path) -> Path | None:
    return next((p for p in candidates(folder) if p.is_file()), None)


def read(path: str | Path) -> dict[str, Any]:
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise LfxError(f"{path}: field 'args': missing (not a run record of lfx)")
    return record


def load(folder: str | Path, required: bool = True) -> tuple[dict[str, Any], Path | None]:
    """(record, its path) for a model folder; ({}, None) when there is none and it is not required."""
    path = find(folder)
    if path is None:
        if required:
            raise LfxError(f"{folder}: no {RUN_RECORD} here or in its run's output folder (a run's output, checkpoint "
                           "or merged folder is needed)")  # fmt: skip
        return {}, None
    return read(path), path


def read_merge(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MERGE_RECORD
    if not path.is_file():
        return {}
    record = read_json(path)
    return record if isinstance(record, dict) else {}


DEFAULT_CUTOFF_LEN = 2048  # LLaMA-Factory's DataArguments.cutoff_len default


def trained_context(record: dict[str, Any], model: str | Path) -> int:
    """The context the run trained at: its cutoff_len, within the model's positions (config.json of `model`).
    `lfx export` gives it to Ollama as num_ctx; `lfx eval` asks within it."""
    cutoff = int((record.get("args") or {}).get("cutoff_len") or DEFAULT_CUTOFF_LEN)
    config_path = Path(model) / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    config = config if isinstance(config, dict) else {}
    positions = (config.get("text_config") or config).get("max_position_embeddings")
    return min(cutoff, int(positions)) if positions else cutoff


def portable(value: Any, key: str = "") -> Any:
    """A record as it may travel (model card, Hub): secrets dropped, and every absolute path of this machine
    reduced to its last part (a model folder's name, a file's name), so no home folder, volume or user name
    leaves with the model."""
    value = scrub(value)
    if isinstance(value, dict):
        return {k: portable(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, key) for v in value]
    if isinstance(value, str) and is_local_path(value):
        from .models import hub_id

        return hub_id(value) or Path(value.rstrip("/")).name or value
    return value


def is_local_path(text: str) -> bool:
    """An absolute path of some machine (POSIX, home-relative or Windows), not a Hub id or a relative name."""
    return text.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", text)) or text.startswith(os.sep + os.sep)


def read_run_file(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def workspace(environ: dict[str, str] | None = None) -> Path | None:
    """The pod's writable volume: LFX_WORKSPACE, else /workspace when it exists and is writable."""
    env = os.environ if environ is None else environ
    folder = Path(env.get("LFX_WORKSPACE") or "/workspace")
    return folder if folder.is_dir() and os.access(folder, os.W_OK) else None


def output_root(run_dir: str | Path, environ: dict[str, str] | None = None) -> Path:
    """Where a run folder's outputs are: OUTPUT_ROOT, else the workspace volume's lfx-runs/RUN_ID (a pod's
    /workspace survives the pod), else the run folder itself."""
    env = os.environ if environ is None else environ
    if env.get("OUTPUT_ROOT"):
        return Path(env["OUTPUT_ROOT"])
    info = read_run_file(run_dir)
    space = workspace(env)
    if info and space is not None:
        return space / "lfx-runs" / info["run_id"]
    return Path(run_dir)


PREFERENCE_STAGES = ("dpo",)  # rounds that start from an SFT model and train on ranking data, not on the persona's


def sft_origin(record: dict[str, Any], record_path: str | Path) -> tuple[dict[str, Any], Path] | None:
    """For a preference round's record (stage dpo), the record of the SFT model it started from: its
    model_name_or_path is a merged SFT model, which keeps its run's record. None for any other stage; LfxError
    naming the field when that model is not here or has no record (the held-out split and the base are the SFT
    run's)."""
    args = record.get("args") or {}
    if str(args.get("stage", "sft")) not in PREFERENCE_STAGES:
        return None
    from .models import local_folder

    start = local_folder(str(args.get("model_name_or_path") or ""))
    where = f"{record_path}: field 'args.model_name_or_path'"
    if start is None:
        raise LfxError(f"{where}: '{args.get('model_name_or_path')}' is not a folder here: a {args.get('stage')} round is evaluated on the held-out "
                       "split of the SFT run it started from, and that model (with its lfx_run.json) is needed")  # fmt: skip
    path = find(start)
    if path is None:
        raise LfxError(f"{where}: '{start}' has no {RUN_RECORD}: not a model lfx trained or merged (its SFT run's "
                       "held-out split is unknown); pass --prompts FILE")  # fmt: skip
    origin = read(path)
    if sft_origin(origin, path) is not None:
        return sft_origin(origin, path)  # a second round: the first SFT run's split
    return origin, path
