"""Copying: an answer that reuses training answers nearly verbatim on a prompt they did not answer, so that a
persona score is not bought with stock phrases ("Work hard, think fast, and sometimes drink more coffee than
recommended. Then never mention that again." to "What is teamwork to you?", stitched from three training answers).

An answer's copied share is the share of its characters inside a stretch of at least WINDOW characters (case
and spacing ignored) that occurs verbatim in a training answer to another prompt; the answer is a copy when that
share is at least THRESHOLD."""

from __future__ import annotations

import re

WINDOW = 20  # characters: about four English words, two or three Korean ones
THRESHOLD = 0.5


def normalized(text: str) -> str:
    return re.sub(r"\s+", " ", text.casefold()).strip()


class CopyIndex:
    """Every WINDOW-character stretch of the training answers, with the prompts whose answers hold it."""

    def __init__(self, training: list[tuple[str, str]]):  # (prompt, answer) pairs
        self.size = len(training)
        self._windows: dict[str, set[str]] = {}
        for prompt, answer in training:
            key, text = normalized(prompt), normalized(answer)
            for i in range(len(text) - WINDOW + 1):
                self._windows.setdefault(text[i : i + WINDOW], set()).add(key)

    @classmethod
    def of_training(cls, training) -> CopyIndex:
        """The index of a run's training exchanges (inference.prompts.Prompt) that have the persona's answer: what
        lfx eval's copying metric and lfx pairs' copy test both read."""
        return cls([(p.text, p.reference) for p in training if p.reference])

    def copied_share(self, answer: str, prompt: str) -> float:
        """The share of `answer`'s characters inside stretches found in training answers to other prompts."""
        text, own = normalized(answer), normalized(prompt)
        if not text:
            return 0.0
        covered = [False] * len(text)
        for i in range(len(text) - WINDOW + 1):
            if self._windows.get(text[i : i + WINDOW], set()) - {own}:
                covered[i : i + WINDOW] = [True] * WINDOW
        return sum(covered) / len(text)

    def copied(self, answer: str, prompt: str) -> bool:
        return self.copied_share(answer, prompt) >= THRESHOLD
