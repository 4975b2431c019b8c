"""Which answer a preference pair rejects, from the persona verdicts of `lfx eval` (evaluation/persona_judge.py).

For every turn a pair is made of, the tuned model and the base have answered; each answer is judged. An answer
fails, in this order of severity: it breaks character (the lexicon's assistant phrases and names), it claims no
persona identity where one was asked for, it loops, it did not stop (ran to the token limit), it copies training
answers to other prompts (lfx eval's copying test, evaluation/copying.py), or the identifiability classifier finds
it least like the persona (P(persona) below one half). The rejected answer is the
tuned model's when it fails: its own mistakes are the ones to unlearn. Measured on the demo (docs/preference.md):
rejecting the base's worse failure left the SFT model's identity failures untouched, and the base's failures on
turns the SFT model passes (102 of 110 pairs) diluted the 8 that mattered; the tuned model's 8 failures alone
took identity from 0% to 100%. The base's failures are paired only on request (`lfx pairs --with-base-failures`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..evaluation.persona_judge import Verdict

# Most severe first: what the reason says in the pairs file.
FAILURES = ("out of character", "no persona identity", "loop", "did not stop", "copies another answer",
            "least identifiable")
UNLIKE_PERSONA = 0.5  # P(persona) under which the classifier says an answer reads like the base, not the persona


@dataclass(frozen=True)
class Candidate:
    source: str  # "tuned" or "base"
    text: str
    verdict: Verdict
    copied: bool = False  # repeats training answers to other prompts (evaluation/copying.py)


def failure(verdict: Verdict, identity_asked: bool, copied: bool = False) -> str | None:
    """The most severe way an answer fails, or None when it passes."""
    if verdict.out_of_character:
        return FAILURES[0]
    if identity_asked and verdict.identity is False:
        return FAILURES[1]
    if verdict.loop:
        return FAILURES[2]
    if not verdict.stopped:
        return FAILURES[3]
    if copied:
        return FAILURES[4]
    if verdict.persona_probability is not None and verdict.persona_probability < UNLIKE_PERSONA:
        return FAILURES[5]
    return None


def rejected(candidates: list[Candidate], identity_asked: bool = False, with_base: bool = False) -> tuple[Candidate, str] | None:
    """The answer to reject and why: the tuned model's (the first candidate) when it fails, with its most severe
    failure, so the round unlearns the tuned model's own mistakes. With `with_base`, where the tuned answer passes, the
    first other candidate (the base's) that fails. None when nothing to reject."""
    for candidate in candidates if with_base else candidates[:1]:
        why = failure(candidate.verdict, identity_asked, candidate.copied)
        if why is not None:
            return candidate, why
    return None


def passing(candidates: list[Candidate], identity_asked: bool) -> Candidate | None:
    """The first candidate that passes (an identity probe's chosen answer when the persona has no training answer to
    that question)."""
    return next((c for c in candidates if failure(c.verdict, identity_asked, c.copied) is None), None)
