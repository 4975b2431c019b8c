"""The judges of one `lfx eval`, built from the run's data and the base model's answers: the per-answer Judge
(lexicon, persona, identifiability classifier), the copy index of the training answers, and the persona's
dominant Korean speech level; every answer of every variant judged with them. What cannot be judged is skipped,
with the reason (a template without a `persona:` block, no training answers, too few for the classifier)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..inference.prompts import Answer as Reply
from ..inference.prompts import Prompt
from ..persona.schema import Persona
from . import copying, identifiability, speech_level
from .heldout import EvalSet
from .lexicon import Lexicon
from .metrics import Answer, share
from .persona_judge import Judge, Verdict


@dataclass
class Judges:
    judge: Judge
    copies: copying.CopyIndex | None = None
    level: str | None = None  # the persona's dominant Korean speech level
    config: dict[str, Any] = field(default_factory=dict)  # what eval.json's config says about them
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why


def build(lexicon: Lexicon, persona: Persona | None, no_persona: str, evalset: EvalSet, sample: list[Prompt],
          base_answers: list[Reply], skipped: dict[str, str]) -> Judges:  # fmt: skip
    """`sample`: the training prompts the base answered (`base_answers`) for the classifier."""
    config: dict[str, Any] = {"lexicon": lexicon.path.name, "generic_system_prompt": lexicon.generic_system_prompt}
    training = evalset.training
    # The answers' language: the data's, else the persona's when it speaks one.
    language = evalset.language or (persona.languages[0] if persona and len(persona.languages) == 1 else None)
    if persona is None:
        skipped["identity"] = no_persona
    classifier = None
    if not training:
        why = evalset.no_training or "the run has no training answers to compare with"
        for metric in ("persona chrF", "identifiability", "copying", *(["speech level"] if language == "ko" else [])):
            skipped[metric] = why
    else:
        try:
            classifier = identifiability.train([p.reference for p in sample], [a.text for a in base_answers])
            config["identifiability"] = classifier.describe()
        except identifiability.TooFewAnswers as why:
            skipped["identifiability"] = f"too few training answers for the classifier: {why}"
    copies = None
    if training:
        copies = copying.CopyIndex.of_training(training)
        config["copying"] = {"window_chars": copying.WINDOW, "threshold": copying.THRESHOLD, "training_answers": copies.size}
    level = None
    if training and language == "ko":
        level, shares = speech_level.dominant([p.reference for p in training if p.reference])
        config["speech_level"] = {"dominant": level, "training_shares": shares}
        if level is None:
            skipped["speech level"] = "no sentence of the training answers has a final ending"
    return Judges(Judge(lexicon, persona, classifier), copies, level, config, skipped)


def judged(judges: Judges, prompts: list[Prompt], replies: list[Reply]) -> tuple[list[Answer], list[Verdict]]:
    """The held-out answers of one variant as metric items carrying their persona verdicts."""
    verdicts = judges.judge.verdicts([r.text for r in replies], [r.stopped for r in replies])
    items = []
    for p, r, v in zip(prompts, replies, verdicts, strict=True):
        items.append(Answer(prompt=p.text, answer=r.text, reference=p.reference, stopped=r.stopped, dataset=p.dataset,
                            task=p.task, json_expected=p.json_expected, out_of_character=v.out_of_character,
                            persona_probability=v.persona_probability,
                            copied=judges.copies.copied(r.text, p.text) if judges.copies else None,
                            speech=speech_level.matching(r.text, judges.level) if judges.level else None))  # fmt: skip
    return items, verdicts


def identity_rate(verdicts: list[Verdict]) -> float | None:
    return share(v.identity for v in verdicts)
