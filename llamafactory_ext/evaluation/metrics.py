"""Metrics of generated answers: pure functions over strings and flags (no torch, no model).

`lfx eval` feeds them; each one is defined here once so the numbers in eval.json can be checked by hand:

- stop_rate: share of answers that ended on a stop token rather than at the token limit.
- chrf: mean sentence chrF (sacrebleu's CHRF, character 6-grams, beta 2) of each answer against its
  held-out reference; character n-grams work for Korean, where word-based ROUGE does not.
- persona_chrf: mean over answers of the best sentence chrF against any of the persona's training
  answers (the voice, whatever the content).
- json_valid_rate / json_keys_match_rate: over the answers whose dataset or task is declared
  JSON-output, the share that parse as JSON, and the share whose top-level keys equal the reference's.
- language_rate: share of answers whose letters are mostly (>= half) in the persona's script.
- length_ratio: total answer characters over total reference characters.
- loop_rate: share of answers that repeat a word n-gram (default 4 words) at least 3 times.

Persona metrics, from verdicts on each answer (persona_judge, copying, speech_level) carried by the Answer:

- identity_rate: over the answers to identity probes, the share that name the persona and claim no other identity.
- out_of_character_rate: share of answers that leak the assistant (the lexicon's patterns, a chat model's name).
- identifiability: mean P(persona) of the answers under the persona-vs-base classifier.
- copying_rate: share of answers that reuse training answers to other prompts nearly verbatim.
- speech_level_rate: over the answers' sentences with a final ending, the share at the persona's dominant level.

Scores are on sacrebleu's 0-100 scale for chrF, 0-1 shares for the rest.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from ..persona.schema import LANGUAGE_LETTERS

# Letters that count as "in the language" (declared with the languages a dataset may name): every other letter
# (Han, kana, Cyrillic...) counts against both.
SCRIPTS = {language: re.compile(letters) for language, letters in LANGUAGE_LETTERS.items()}
LOOP_NGRAM = 4
LOOP_TIMES = 3


@dataclass(frozen=True)
class Answer:
    """One generated answer with what the metrics need to judge it."""

    prompt: str
    answer: str
    reference: str
    stopped: bool
    dataset: str = ""
    task: str | None = None
    json_expected: bool = False
    # Per-answer persona verdicts (None: not judged).
    out_of_character: bool | None = None
    persona_probability: float | None = None
    copied: bool | None = None
    speech: tuple[int, int] | None = None  # (sentences at the persona's level, sentences with a final ending)


def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


def sentence_chrf(hypothesis: str, references: list[str], metric=None) -> float:
    """sacrebleu's sentence chrF; with several references, the best one's (sacrebleu picks it)."""
    if not hypothesis.strip() or not references:
        return 0.0
    return float((metric or _chrf()).sentence_score(hypothesis, references).score)


def mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def stop_rate(stopped: list[bool]) -> float | None:
    return mean(1.0 if s else 0.0 for s in stopped)


def chrf(answers: list[str], references: list[str]) -> float | None:
    metric = _chrf()
    return mean(sentence_chrf(a, [r], metric) for a, r in zip(answers, references, strict=True))


def persona_chrf(answers: list[str], persona_answers: list[str]) -> float | None:
    if not persona_answers:
        return None
    metric = _chrf()
    return mean(sentence_chrf(a, persona_answers, metric) for a in answers)


def parse_json(text: str) -> Any:
    """The answer as JSON, or None when it is not JSON (a bare JSON `null` counts as not JSON)."""
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None


def json_valid_rate(answers: list[str]) -> float | None:
    return mean(0.0 if parse_json(a) is None else 1.0 for a in answers)


def json_keys_match_rate(answers: list[str], references: list[str]) -> float | None:
    """Share of answers that are JSON objects with exactly the reference object's top-level keys."""
    def same_keys(answer: str, reference: str) -> bool:
        got, want = parse_json(answer), parse_json(reference)
        return isinstance(got, dict) and isinstance(want, dict) and set(got) == set(want)

    return mean(1.0 if same_keys(a, r) else 0.0 for a, r in zip(answers, references, strict=True))


def script_share(text: str, language: str) -> float:
    """Letters of `language`'s script among all letters (0 when there are none)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if SCRIPTS[language].match(c)) / len(letters)


def language_rate(answers: list[str], language: str) -> float | None:
    return mean(1.0 if script_share(a, language) >= 0.5 else 0.0 for a in answers)


def length_ratio(answers: list[str], references: list[str]) -> float | None:
    total = sum(len(r) for r in references)
    return sum(len(a) for a in answers) / total if total else None


def has_loop(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> bool:
    """A word n-gram repeated `times` times or more: the degenerate endless answer."""
    words = text.split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return any(count >= times for count in grams.values())


def loop_rate(answers: list[str]) -> float | None:
    return mean(1.0 if has_loop(a) else 0.0 for a in answers)


def share(flags: Iterable[bool | None]) -> float | None:
    """Share of True among the judged (not None) flags."""
    return mean(1.0 if f else 0.0 for f in flags if f is not None)


def speech_level_rate(counts: Iterable[tuple[int, int] | None]) -> float | None:
    counted = [c for c in counts if c is not None]
    total = sum(n for _, n in counted)
    return sum(m for m, _ in counted) / total if total else None


def persona_scores(items: list[Answer]) -> dict[str, Any]:
    """The persona metrics of `items` that were judged (absent when none was)."""
    out = {"out_of_character_rate": share(i.out_of_character for i in items),
           "identifiability": mean(i.persona_probability for i in items if i.persona_probability is not None),
           "copying_rate": share(i.copied for i in items),
           "speech_level_rate": speech_level_rate(i.speech for i in items)}  # fmt: skip
    return {k: v for k, v in out.items() if v is not None}


def score(items: list[Answer], persona_answers: list[str], language: str | None) -> dict[str, Any]:
    """Every metric over `items`; JSON metrics over the JSON-expected ones only (absent when none)."""
    answers = [i.answer for i in items]
    # chrF and length against a reference only where there is one (a prompts file may have none).
    referenced = [i for i in items if i.reference]
    out: dict[str, Any] = {
        "n": len(items),
        "chrf": chrf([i.answer for i in referenced], [i.reference for i in referenced]),
        "persona_chrf": persona_chrf(answers, persona_answers),
        "stop_rate": stop_rate([i.stopped for i in items]),
        "length_ratio": length_ratio([i.answer for i in referenced], [i.reference for i in referenced]),
        "loop_rate": loop_rate(answers),
        "mean_answer_chars": mean(len(a) for a in answers),
        **persona_scores(items),
    }
    if language:
        out["language"] = language
        out["language_rate"] = language_rate(answers, language)
    wanted = [i for i in items if i.json_expected]
    if wanted:
        out["json_n"] = len(wanted)
        out["json_valid_rate"] = json_valid_rate([i.answer for i in wanted])
        out["json_keys_match_rate"] = json_keys_match_rate([i.answer for i in wanted], [i.reference for i in wanted])
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def summarize(items: list[Answer], persona_answers: list[str], language: str | None) -> dict[str, Any]:
    """Metrics overall, per dataset and per task (tasks only when the data has a `task` field)."""
    by_dataset: dict[str, list[Answer]] = {}
    by_task: dict[str, list[Answer]] = {}
    for item in items:
        by_dataset.setdefault(item.dataset, []).append(item)
        if item.task is not None:
            by_task.setdefault(item.task, []).append(item)
    return {
        "overall": score(items, persona_answers, language),
        "datasets": {name: score(group, persona_answers, language) for name, group in sorted(by_dataset.items())},
        "tasks": {name: score(group, persona_answers, language) for name, group in sorted(by_task.items())},
    }
