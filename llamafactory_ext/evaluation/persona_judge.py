"""Whether one answer is in character: does it name the persona, leak the assistant, loop, stop, and how much
does it read like the persona (the identifiability classifier). One answer at a time: `lfx eval` averages these
verdicts, and a preference round can pick its rejected answers with the same ones.

    judge = Judge(load_lexicon(), persona, classifier)      # persona: persona.schema.Persona or None
    verdict = judge.verdict("I'm SmolLM, an AI assistant.", stopped=True)
    verdict.out_of_character, verdict.identity, verdict.loop, verdict.persona_probability
"""

from __future__ import annotations

from dataclasses import dataclass

from ..persona.schema import Persona
from .identifiability import PersonaClassifier
from .lexicon import Lexicon, names_regex
from .metrics import has_loop


@dataclass(frozen=True)
class Verdict:
    """What one answer shows."""

    names_persona: bool | None  # names the persona or an alias (None: no persona declared)
    out_of_character: bool  # leaks the assistant (the lexicon's patterns and assistant names)
    loop: bool  # repeats a 4-word n-gram 3 times
    stopped: bool  # ended on the stop token, not at the token limit
    persona_probability: float | None = None  # the classifier's P(persona) (None: no classifier)

    @property
    def identity(self) -> bool | None:
        """The identity metric's test of an answer to "who are you?": it names the persona and claims no other
        identity (None: no persona declared)."""
        return None if self.names_persona is None else self.names_persona and not self.out_of_character


class Judge:
    def __init__(self, lexicon: Lexicon, persona: Persona | None = None, classifier: PersonaClassifier | None = None):
        self.lexicon = lexicon
        self.persona = persona
        self.classifier = classifier
        self._names = names_regex(persona.names()) if persona is not None else None

    def names_persona(self, text: str) -> bool | None:
        return None if self._names is None else bool(self._names.search(text))

    def out_of_character(self, text: str) -> bool:
        return self.lexicon.leaks(text) is not None

    def verdicts(self, texts: list[str], stopped: list[bool]) -> list[Verdict]:
        """Verdicts of many answers (the classifier reads them in one batch)."""
        probabilities = self.classifier.probabilities(texts) if self.classifier is not None else [None] * len(texts)
        return [Verdict(self.names_persona(t), self.out_of_character(t), has_loop(t), s, p)
                for t, s, p in zip(texts, stopped, probabilities, strict=True)]  # fmt: skip

    def verdict(self, text: str, stopped: bool) -> Verdict:
        return self.verdicts([text], [stopped])[0]
