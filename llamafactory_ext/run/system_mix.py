"""The recipe's `system_prompt_mix`, applied to a run folder's data snapshot: a declared share of the training
records get another system prompt in place of the persona's, so the persona holds when an application sends its
own prompt (`lfx eval` measures it: the tuned model under a generic system prompt).

    system_prompt_mix: {share: 0.3, prompts: ["You are a helpful assistant."]}

Only the snapshot changes (data/ of the run folder, which then stands alone; the run id covers it); the source
datasets stay as they are. The records are picked and given a prompt with a generator seeded by the run's seed and
the dataset's name, so a render is reproducible. A record that already has its own system prompt keeps it.
"Without any system prompt" cannot be written in the data: LLaMA-Factory's template puts the persona's default
system prompt in place of an empty one (llamafactory/data/template.py:144, `system or self.default_system`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import atomic_write_text, dump_json, read_json, read_json_records, read_jsonl
from ..persona.dataset_entries import ALPACA_DEFAULTS, INFO_FILE, SHAREGPT_DEFAULTS


def picked(count: int, share: float, seed: int, name: str) -> list[int]:
    """Which of `count` records get another prompt: round(share x count) of them, seeded."""
    return sorted(random.Random(f"{seed}:{name}").sample(range(count), round(share * count)))


def mix(folder: Path, names: list[str], share: float, prompts: list[str], seed: int, where: str) -> dict[str, int]:
    """Rewrite the training datasets `names` of the data snapshot `folder`; returns how many records each got."""
    info_path = folder / INFO_FILE
    info = read_json(info_path)
    counts = {}
    for name in names:
        entry = info[name]
        path = folder / str(entry.get("file_name", ""))
        if "file_name" not in entry or not path.is_file() or path.suffix not in (".json", ".jsonl"):
            raise LfxError(f"{where}: field 'system_prompt_mix': dataset '{name}' is not one local .json or .jsonl file "
                           "(only those are mixed in the run's data snapshot)")  # fmt: skip
        records = read_jsonl(path) if path.suffix == ".jsonl" else read_json_records(path)
        if entry.get("formatting", "alpaca") == "alpaca":
            column = _alpaca_system_column(entry)
            open_ = [i for i, r in enumerate(records) if not r.get(column)]
            for i in open_:  # every record has the column (LLaMA-Factory's converter reads it from each): "" is the persona's
                records[i][column] = ""
            set_prompt = lambda r, text, column=column: r.__setitem__(column, text)
        else:
            cols = {**SHAREGPT_DEFAULTS, **entry.get("columns", {}), **entry.get("tags", {})}
            messages, role, content, system = cols["messages"], cols["role_tag"], cols["content_tag"], cols["system_tag"]
            open_ = [i for i, r in enumerate(records) if not (r[messages] and r[messages][0].get(role) == system)]
            set_prompt = lambda r, text, m=messages, ro=role, c=content, s=system: r[m].insert(0, {ro: s, c: text})
        rng = random.Random(f"{seed}:{name}:prompts")
        chosen = [open_[i] for i in picked(len(open_), share, seed, name)]
        for i in chosen:
            set_prompt(records[i], prompts[rng.randrange(len(prompts))])
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) if path.suffix == ".jsonl" else dump_json(records)
        atomic_write_text(path, text)
        counts[name] = len(chosen)
    atomic_write_text(info_path, dump_json(info))
    return counts


def _alpaca_system_column(entry: dict[str, Any]) -> str:
    """The entry's system column, declared when it has none (with the alpaca columns LLaMA-Factory would otherwise
    default: declaring `columns` resets every column it does not name)."""
    columns = entry.get("columns")
    if columns is None:
        columns = entry["columns"] = dict(ALPACA_DEFAULTS)
    return columns.setdefault("system", "system")
