"""A run's identity and where its outputs live, as the generated scripts decide it.

A render's identity is a hash of what decides the trained weights: the resolved train.yaml, the DeepSpeed
config, the data snapshot, the persona template file, and the number of processes (it sets the global
batch). Its run id is `NAME-IDENT8`. Outputs go to `$OUTPUT_ROOT`: by default `/workspace/lfx-runs/RUN_ID`
on a pod (`LFX_WORKSPACE` names another volume), else the run folder itself. The output folder is marked
with the run id that trained into it (`output/.lfx_run_id`), and no other identity writes into it.

Standard library only (the launch plan decides with a pod's bare python, before any install).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ..record import workspace

MARKER = ".lfx_run_id"  # in the output folder: the run id that trains into it
DONE = ".lfx_done"  # in the output folder: training finished (written by train_sft.sh)
IDENTITY_FILES = ("train.yaml", "ds_config.json")
IDENTITY_DIRS = ("data", "templates")


def compute(run_dir: str | Path, processes: str) -> str:
    """The identity hash of a rendered run folder (`processes`: the launch shape, e.g. '1x2')."""
    run_dir = Path(run_dir)
    digest = hashlib.sha256(f"processes {processes}\n".encode())
    files = [run_dir / name for name in IDENTITY_FILES]
    for folder in IDENTITY_DIRS:
        files += sorted(p for p in (run_dir / folder).rglob("*") if p.is_file()) if (run_dir / folder).is_dir() else []
    for path in files:
        digest.update(f"{path.relative_to(run_dir).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_id(name: str, identity: str) -> str:
    return f"{name}-{identity[:8]}"


def status(output_dir: str | Path) -> str:
    """'empty', 'finished', or 'started' of an output folder."""
    output_dir = Path(output_dir)
    if (output_dir / DONE).is_file():
        return "finished"
    if output_dir.is_dir() and any(p.name != MARKER for p in output_dir.iterdir()):
        return "started"
    return "empty"


def owner(output_dir: str | Path) -> str | None:
    """The run id that trained into `output_dir` ('unknown' for outputs from before run ids; None: empty)."""
    output_dir = Path(output_dir)
    marker = output_dir / MARKER
    if marker.is_file():
        return marker.read_text(encoding="utf-8").strip() or "unknown"
    if output_dir.is_dir() and any(output_dir.iterdir()):
        return "unknown"
    return None


def set_aside(folder: Path, label: str) -> Path | None:
    """Move `folder` to `folder.LABEL` (numbered when taken); None when there is nothing to move."""
    if not folder.exists():
        return None
    target = folder.with_name(f"{folder.name}.{label}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.{label}.{n}")
    folder.rename(target)
    return target


class ClaimRefused(Exception):
    """The output folder is not this run's to train into (another start claimed it meanwhile)."""


def decide_claim(output_root: Path, rid: str, found: str | None, state: str, fresh: bool) -> tuple[str, str, str | None]:
    """What a start of run `rid` does with `output_root`, from the output folder's owner (`found`) and `state`:
    ('train', what it does, label to move earlier outputs aside under or None), ('finished', why, None) or
    ('refuse', why, None)."""
    output_dir = output_root / "output"
    if found not in (None, rid):
        if not fresh:
            return "refuse", (f"{output_dir} holds the outputs of run {found}, this render is {rid}: render into another "
                              f"folder (lfx render ... -o DIR), set OUTPUT_ROOT, or start with --fresh to move them aside "
                              f"to output.{found}"), None  # fmt: skip
        label = found
    elif state == "finished" and not fresh:
        return "finished", f"run {rid} is done: its outputs are in {output_root} (--fresh trains it again into a fresh output folder)", None
    elif fresh and state != "empty":
        label = f"{rid}.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    else:
        label = None
    moved = f"; earlier outputs move aside to output.{label}" if label else ""
    return "train", f"train run {rid} into {output_dir}{moved}", label


def claim(output_root: Path, rid: str, fresh: bool) -> str:
    """Claim `output_root` for run `rid` (after every check passed): earlier outputs moved aside under the label
    decide_claim gives (never deleted), the output folder marked with the run id. Returns what was done."""
    output_dir, merged = output_root / "output", output_root / "merged"
    what, why, label = decide_claim(output_root, rid, owner(output_dir), status(output_dir), fresh)
    if what != "train":
        raise ClaimRefused(why)
    said = ""
    if label:
        moved = [str(p) for p in (set_aside(output_dir, label), set_aside(merged, label)) if p]
        said = f"; earlier outputs moved to {', '.join(moved)}" if moved else ""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER).write_text(rid + "\n", encoding="utf-8")
    return f"training run {rid} into {output_dir}{said}"


def mark_done(output_dir: str | Path) -> None:
    Path(output_dir, DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n", encoding="utf-8")


def runs_table(space: str | Path | None = None) -> list[str]:
    """`lfx runs`: one line per run on the workspace volume (lfx-runs/RUN_ID): state, newest checkpoint,
    merged model, evaluation."""
    root = Path(space) if space else workspace()
    if root is None:
        return [f"no workspace volume here ({os.environ.get('LFX_WORKSPACE') or '/workspace'} is missing or not writable; "
                "runs then keep their outputs in their run folder: RUN_DIR/output, RUN_DIR/merged)"]  # fmt: skip
    folders = sorted(p for p in (root / "lfx-runs").glob("*") if p.is_dir()) if (root / "lfx-runs").is_dir() else []
    if not folders:
        return [f"no runs under {root / 'lfx-runs'}"]
    lines = [f"runs under {root / 'lfx-runs'}:"]
    for folder in folders:
        output = folder / "output"
        steps = sorted((int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if p.name.split("-")[1].isdigit()))
        parts = [status(output), f"checkpoint {steps[-1]}" if steps else "no checkpoint",
                 "merged" if (folder / "merged" / "config.json").is_file() else "not merged",
                 "evaluated" if any((folder / d / "eval.json").is_file() for d in ("merged", "output")) else "not evaluated"]  # fmt: skip
        lines.append(f"  {folder.name}  {', '.join(parts)}  ({folder})")
    return lines
