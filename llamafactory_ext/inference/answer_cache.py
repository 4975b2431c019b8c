"""A model's greedy answers, remembered: the base model answers the same conversations in every `lfx eval` of
its fine-tunes (held-out prompts, identity probes, the identifiability sample) and in `lfx pairs`, so the second
time they are read back instead of generated, and the base model is not even loaded when nothing is new.

An answer is kept per model folder and per conversation as the model saw it: the chat-templated prompt text and
the cap on new tokens. The folder's identity is its resolved path and every file's name, size and modification
time (a re-fetched or re-converted model is another model), with the torch and transformers versions and the
device. Only greedy answers are kept. The cache lives in `$LFX_CACHE_DIR/answers` (default
`~/.cache/llamafactory-ext/answers`); `LFX_ANSWER_CACHE=0` turns it off. A cache file that cannot be read as
written is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..paths import cache_dir, env_enabled
from .prompts import Answer

SWITCH = "LFX_ANSWER_CACHE"


def _fingerprint(folder: Path) -> str:
    import torch
    import transformers

    folder = folder.resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    identity = [str(folder), files, torch.__version__, transformers.__version__, device]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]


def _key(prompt: str, cap: int) -> str:
    return hashlib.sha256(f"{cap}\0{prompt}".encode()).hexdigest()


class AnswerCache:
    """The remembered greedy answers of the model in one folder."""

    def __init__(self, folder: Path):
        self.path = cache_dir() / "answers" / f"{_fingerprint(folder)}.json"
        self.model = str(folder.resolve())
        self.answers: dict[str, list] = {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("model") == self.model and isinstance(data.get("answers"), dict):
                self.answers = {k: v for k, v in data["answers"].items() if _valid(v)}
        except (OSError, ValueError, AttributeError):
            pass  # absent or not as written: generated again, and rewritten

    @classmethod
    def open(cls, folder: Path) -> AnswerCache | None:
        """The folder's cache, or None when it is off (LFX_ANSWER_CACHE=0) or the folder is not a local folder."""
        if not env_enabled(SWITCH, "1") or not folder.is_dir():
            return None
        return cls(folder)

    def get(self, prompt: str, cap: int) -> Answer | None:
        found = self.answers.get(_key(prompt, cap))
        return Answer(found[0], found[1]) if found else None

    def put(self, items: list[tuple[str, int, Answer]]) -> None:
        """Remember these answers: written whole (a temporary file renamed over the old one), so a reader never
        sees half a file; two writers at once lose at most each other's new answers."""
        if not items:
            return
        for prompt, cap, answer in items:
            self.answers[_key(prompt, cap)] = [answer.text, answer.stopped]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"model": self.model, "answers": self.answers}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)


def _valid(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], bool)
