"""The prompts a run never trained on, exactly as LLaMA-Factory held them out, and the answers it did train on.

LLaMA-Factory (llamafactory/data/loader.py, get_dataset) seeds numpy with the run's seed (hparams/parser.py:529,
transformers.set_seed), loads each training dataset in order (each entry's `num_samples` drawn with
`np.random.permutation`, then the run's `max_samples`), then each eval dataset, concatenates, and splits with
`datasets.Dataset.train_test_split(test_size=val_size, seed=seed)` (data/data_utils.py:114-115). The same steps
run here on the same records, read by the reader `lfx check` uses (every file type and source it accepts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..inference.prompts import Prompt, record_prompt
from ..paths import datasets_dir
from ..persona.dataset_entries import INFO_FILE, DatasetEntry, dataset_names, load_entries


@dataclass
class EvalSet:
    """What to answer and how to judge it."""

    prompts: list[Prompt]
    persona_answers: list[str] = field(default_factory=list)
    language: str | None = None
    source: str = ""


def _entry(name: str, args: dict[str, Any], where: str) -> DatasetEntry:
    """The entry the run read: its dataset_dir (a run folder's snapshot) first, else datasets/; our `lfx` keys
    from our own entry when the run's lacks them."""
    ours = load_entries()
    for folder in ([Path(args["dataset_dir"])] if args.get("dataset_dir") else []) + [datasets_dir()]:
        if not (folder / INFO_FILE).is_file():
            continue
        entries = ours if folder.resolve() == datasets_dir().resolve() else load_entries(folder)
        if name in entries:
            entry = entries[name]
            if "lfx" not in entry.info and name in ours and "lfx" in ours[name].info:
                entry = DatasetEntry(name, {**entry.info, "lfx": ours[name].info["lfx"]}, entry.directory)
            return entry
    raise LfxError(f"{where}: field 'args.dataset': dataset '{name}' not found in the run's dataset_dir or datasets/")


def _loaded(name: str, args: dict[str, Any], where: str) -> tuple[list[Prompt], dict[str, Any]]:
    """A dataset's prompts as LLaMA-Factory's _load_single_dataset selects them: num_samples, then max_samples."""
    import numpy as np

    from ..persona.dataset_records import RecordsUnavailable, read_records

    entry = _entry(name, args, where)
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


def held_out(record: dict[str, Any], record_path: Path) -> EvalSet:
    """The run's held-out prompts (val_size split or eval_dataset) and its training answers."""
    import numpy as np

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
    seed = int(args.get("seed", 42))
    np.random.seed(seed)  # what transformers.set_seed does to numpy before LLaMA-Factory loads the data
    train, infos = [], []
    for name in dataset_names(args.get("dataset")):
        prompts, info = _loaded(name, args, where)
        train += prompts
        infos.append(info)
    if evals:
        test = []
        for name in evals:
            prompts, info = _loaded(name, args, where)
            test += prompts
            infos.append(info)
        source = f"eval_dataset {', '.join(evals)}"
    else:
        from datasets import Dataset

        size = int(val_size) if val_size > 1 else val_size
        try:
            split = Dataset.from_dict({"i": list(range(len(train)))}).train_test_split(test_size=size, seed=seed)
        except ValueError as err:
            raise LfxError(f"{where}: field 'args.val_size': {' '.join(str(err).split())}") from None
        test = [train[i] for i in split["test"]["i"]]
        train = [train[i] for i in split["train"]["i"]]
        source = f"val_size {args['val_size']} split of {args.get('dataset')} (seed {seed})"
    return EvalSet(test, [p.reference for p in train if p.reference], _language(infos), source)


def training_answers(record: dict[str, Any], record_path: Path) -> tuple[list[str], str | None]:
    """Every answer of the run's training datasets, and their declared language (for a prompts file)."""
    answers, infos = [], []
    for name in dataset_names(record["args"].get("dataset")):
        prompts, info = _loaded(name, record["args"], str(record_path))
        infos.append(info)
        answers += [p.reference for p in prompts if p.reference]
    return answers, _language(infos)
