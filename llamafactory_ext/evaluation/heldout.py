"""The prompts a run never trained on, exactly as LLaMA-Factory held them out, and the answers it did train on.

LLaMA-Factory (llamafactory/data/loader.py, get_dataset) seeds numpy with the run's seed (hparams/parser.py:529,
transformers.set_seed), loads each training dataset in order (each entry's `num_samples` drawn with
`np.random.permutation`, then the run's `max_samples`), then each eval dataset, concatenates, and splits with
`datasets.Dataset.train_test_split(test_size=val_size, seed=seed)` (data/data_utils.py:114-115). The same steps
run here on the same records, read by the reader `lfx check` uses (every file type and source it accepts).

The records come only from the run's own data: the `dataset_dir` it trained on (a rendered run folder's `data/`
snapshot), found where the run recorded it or in the run folder it moved with, and, when the run recorded the
sha256 of each dataset (lfx_run.json `data_sha256`), byte for byte that data. Never from the live `datasets/` in
its place: a run whose data is not here is refused, so the held-out prompts are never training prompts in disguise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json
from ..inference.prompts import Prompt, record_prompt
from ..paths import datasets_dir
from ..persona.dataset_entries import INFO_FILE, DatasetEntry, dataset_names, fingerprint, load_entries
from ..persona.dataset_records import val_split
from ..record import RUN_FILE, sft_origin


@dataclass
class EvalSet:
    """What to answer and how to judge it: the prompts, the run's training prompts with the persona's answers to
    them, the responses' language, and which data they came from."""

    prompts: list[Prompt]
    training: list[Prompt] = field(default_factory=list)
    language: str | None = None
    source: str = ""
    data: dict[str, Any] = field(default_factory=dict)  # eval.json `config.data`
    no_training: str = ""  # why there are no training prompts, when there are none

    @property
    def persona_answers(self) -> list[str]:
        return [p.reference for p in self.training if p.reference]


def snapshot(record: dict[str, Any], record_path: Path, run_dir: Path | None = None) -> tuple[Path, dict[str, Any]]:
    """The run's own data folder and how eval.json names it: where the run recorded it, else the same folder
    inside the run folder it moved with (`run_dir`, or the run folder that holds the record's output). With the
    run's recorded sha256 of each dataset, the data there must be that data; without them, only the recorded
    folder itself is the run's."""
    args = record["args"]
    where = f"{record_path}: field 'args.dataset_dir'"
    if not args.get("dataset_dir"):
        raise LfxError(f"{where}: missing (the run does not say which data it trained on); pass --prompts FILE")
    recorded = Path(args["dataset_dir"])
    sums = record.get("data_sha256")
    checked = isinstance(sums, dict)
    # Run folders: the one given, and the one holding the record (RUN/output/lfx_run.json, RUN/merged/lfx_run.json).
    runs = [r.resolve() for r in (run_dir, record_path.resolve().parent.parent) if r is not None and (r / RUN_FILE).is_file()]
    candidates = [recorded.resolve()] + ([r / recorded.name for r in runs] if checked else [])  # moved with its run folder
    for folder in dict.fromkeys(candidates):
        if (folder / INFO_FILE).is_file() and (not checked or _same_data(folder, sums)):
            run = next((r for r in runs if folder.is_relative_to(r)), None)
            return folder, {"kind": "run data snapshot", "path": folder.relative_to(run).as_posix() if run else str(folder),
                            "relative_to": "run folder" if run else None, "sha256_checked": checked}  # fmt: skip
    state = "changed since training" if any((c / INFO_FILE).is_file() for c in candidates) else "not here"
    raise LfxError(f"{where}: the run's data snapshot {recorded} is {state} (a moved run: pass its run folder; a "
                   "model without its run: pass --prompts FILE); its split is not rebuilt from other data")  # fmt: skip


def _same_data(folder: Path, sums: dict[str, Any]) -> bool:
    try:
        entries = read_json(folder / INFO_FILE)
        return isinstance(entries, dict) and all(
            name in entries and fingerprint(DatasetEntry(name, entries[name], folder)) == digest for name, digest in sums.items())
    except (LfxError, OSError, TypeError):
        return False


def _entry(name: str, folder: Path, where: str) -> DatasetEntry:
    """The entry the run read, from its data folder; our `lfx` keys (the responses' language, JSON output) from our
    own entry when the run's lacks them."""
    entries = load_entries(folder, names=[name])
    if name not in entries:
        raise LfxError(f"{where}: field 'args.dataset': dataset '{name}' not found in the run's data {folder}")
    entry = entries[name]
    if "lfx" not in entry.info and (datasets_dir() / INFO_FILE).is_file():
        ours = load_entries(names=[name])
        if name in ours and "lfx" in ours[name].info:
            entry = DatasetEntry(name, {**entry.info, "lfx": ours[name].info["lfx"]}, entry.directory)
    return entry


def _loaded(name: str, args: dict[str, Any], folder: Path, where: str) -> tuple[list[Prompt], dict[str, Any]]:
    """A dataset's prompts as LLaMA-Factory's _load_single_dataset selects them: num_samples, then max_samples."""
    import numpy as np

    from ..persona.dataset_records import RecordsUnavailable, read_records

    entry = _entry(name, folder, where)
    try:
        records = read_records(entry, cache_dir=args.get("cache_dir"))
    except RecordsUnavailable as why:
        raise LfxError(f"{where}: dataset '{name}': {why}; pass --prompts FILE") from None
    target = entry.info.get("num_samples")
    if target is not None:  # llamafactory/data/loader.py:145-154, the same numpy calls in the same order
        indexes = np.random.permutation(len(records))[:target]
        if target - len(indexes) > 0:
            indexes = np.concatenate((indexes, np.random.choice(len(records), target - len(indexes))), axis=0)
        records = [records[int(i)] for i in indexes]
    if args.get("max_samples"):
        records = records[: int(args["max_samples"])]
    prompts = [record_prompt(f"{entry.path or name}: record {i}", r, entry.info, name) for i, r in enumerate(records)]
    return prompts, entry.info


def _language(infos: list[dict[str, Any]]) -> str | None:
    declared = {(i.get("lfx") or {}).get("language") for i in infos}
    return declared.pop() if len(declared) == 1 else None


def held_out(record: dict[str, Any], record_path: Path, run_dir: Path | None = None) -> EvalSet:
    """The run's held-out prompts (val_size split or eval_dataset) and its training prompts, from its own data."""
    import numpy as np

    origin = sft_origin(record, record_path)
    if origin is not None:  # a preference round is measured on the split of the SFT run it started from
        return held_out(*origin)
    args = record["args"]
    where = str(record_path)
    val_size = float(args.get("val_size") or 0)
    evals = dataset_names(args.get("eval_dataset"))
    if val_size <= 1e-6 and not evals:
        raise LfxError(f"{where}: field 'args.val_size': the run has no held-out split (no val_size or "
                       f"eval_dataset); pass --prompts FILE")  # fmt: skip
    if args.get("streaming"):
        raise LfxError(f"{where}: field 'args.streaming': the streamed split is not reproducible here; pass --prompts FILE")
    if args.get("mix_strategy", "concat") != "concat":
        raise LfxError(f"{where}: field 'args.mix_strategy': only 'concat' splits are reproduced; pass --prompts FILE")
    folder, data = snapshot(record, record_path, run_dir)
    seed = int(args.get("seed", 42))
    np.random.seed(seed)  # what transformers.set_seed does to numpy before LLaMA-Factory loads the data
    train, infos = [], []
    for name in dataset_names(args.get("dataset")):
        prompts, info = _loaded(name, args, folder, where)
        train += prompts
        infos.append(info)
    if evals:
        test = []
        for name in evals:
            prompts, info = _loaded(name, args, folder, where)
            test += prompts
            infos.append(info)
        source = f"eval_dataset {', '.join(evals)}"
    else:
        kept, held = val_split(len(train), val_size, seed, f"{where}: field 'args.val_size'")
        test = [train[i] for i in held]
        train = [train[i] for i in kept]
        source = f"val_size {args['val_size']} split of {args.get('dataset')} (seed {seed})"
    return EvalSet(test, train, _language(infos), source, data)


def training_records(record: dict[str, Any], record_path: Path, run_dir: Path | None = None) -> EvalSet:
    """Every record of the run's training datasets as training prompts, from its own data (for a prompts file,
    when the run has no held-out split)."""
    origin = sft_origin(record, record_path)
    if origin is not None:  # the persona's answers are the SFT run's, not the ranking pairs
        return training_records(*origin)
    folder, data = snapshot(record, record_path, run_dir)
    train, infos = [], []
    for name in dataset_names(record["args"].get("dataset")):
        prompts, info = _loaded(name, record["args"], folder, str(record_path))
        infos.append(info)
        train += prompts
    return EvalSet([], train, _language(infos), "", data)
