"""Which checkpoint a restarted run resumes from: the newest *complete* `checkpoint-N`.

A pod stopped or killed during a save leaves a `checkpoint-N` folder with some files missing or cut
short. Transformers' `get_last_checkpoint` (which LLaMA-Factory uses when `resume_from_checkpoint` is
unset) takes the highest N whatever its state, and the run then dies loading it, or worse, loads a
truncated file. Here a checkpoint is complete when everything the Trainer writes at the end of a save
is there and whole:
- `trainer_state.json` (written last) parses and names the same step;
- every safetensors file opens with safetensors' own `safe_open` (header whole, file as long as it says);
- every torch pickle (`*.pt`, `*.pth`, `*.bin`: optimizer, scheduler, rng, DeepSpeed partitions) is
  a zip archive whose central directory is intact (a cut file loses it);
- a DeepSpeed checkpoint's `latest` names a folder that exists.

Incomplete checkpoints newer than the chosen one are moved aside into `OUTPUT_DIR/.incomplete/` (never
deleted): out of the `checkpoint-*` namespace, so nothing picks them up later, neither LLaMA-Factory's own
resume nor transformers' checkpoint rotation (`save_total_limit` globs `checkpoint-*`; a
`checkpoint-4.incomplete` there would take a slot and could make it delete a complete checkpoint).
The launch plan (run/launch_plan.py) reads the resume point before every launch.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
PICKLES = (".pt", ".pth", ".bin")
SET_ASIDE = ".incomplete"


def problem(folder: Path, verify_weights: bool = True) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is. Without `verify_weights` (safetensors not
    installed yet, on a bare pod's python) the weights are not opened."""
    step = int(CHECKPOINT.match(folder.name).group(1))
    state_file = folder / "trainer_state.json"
    if not state_file.is_file():
        return "no trainer_state.json (the save did not finish)"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return "trainer_state.json is cut short or not JSON"
    if state.get("global_step") != step:
        return f"trainer_state.json says step {state.get('global_step')}, not {step}"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder)
        if path.suffix == ".safetensors" and verify_weights:
            from ..artifact.shards import problem as shard_problem

            why = shard_problem(path)
            if why:
                return f"{name}: {why}"
        elif path.suffix in PICKLES and not zipfile.is_zipfile(path):
            return f"{name}: cut short (not a whole torch archive)"
    latest = folder / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8").strip()
        if not tag or not (folder / tag).is_dir():
            return f"latest names DeepSpeed folder '{tag}', which is missing"
    return None


def checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders, oldest first."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def resume_point(output_dir: str | Path, verify_weights: bool = True) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint (None: start from scratch), and the newer incomplete ones with why."""
    skipped: list[tuple[Path, str]] = []
    for folder in reversed(checkpoints(Path(output_dir))):
        why = problem(folder, verify_weights)
        if why is None:
            return folder, skipped
        skipped.append((folder, why))
    return None, skipped


def set_aside(folder: Path) -> Path:
    """Move an incomplete checkpoint out of every resume logic's sight (OUTPUT_DIR/.incomplete/), keeping its files."""
    aside = folder.parent / SET_ASIDE
    aside.mkdir(exist_ok=True)
    target = aside / folder.name
    n = 1
    while target.exists():
        n += 1
        target = aside / f"{folder.name}.{n}"
    folder.rename(target)
    return target
