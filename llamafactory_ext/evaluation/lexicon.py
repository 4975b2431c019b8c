"""The persona lexicon (persona_lexicon.yaml beside this file), read once and validated: identity probes and
out-of-character patterns per language, the names chat models give themselves, the generic system prompt.
Declared as data so the words `lfx eval` judges by can be read, and changed, without reading code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ..errors import LfxError
from ..files import read_yaml
from ..persona.schema import Strict, Text
from ..validation import validate

LEXICON_FILE = Path(__file__).with_name("persona_lexicon.yaml")


class LanguageLexicon(Strict):
    probes: Annotated[list[Text], Field(min_length=1)] = Field(description="questions about the model itself")
    out_of_character: Annotated[list[Text], Field(min_length=1)] = Field(
        description="regular expressions (case-insensitive) of an answer that leaks the assistant")


class LexiconFile(Strict):
    generic_system_prompt: Text
    assistant_names: list[Text]
    languages: dict[Literal["ko", "en"], LanguageLexicon]


def name_pattern(name: str) -> str:
    """A name as a pattern: its words with any spacing between them ("토니 스타크", "토니스타크"), and, where it
    begins or ends with a Latin letter, not inside a longer word ("Tony" is not in "Antony"; "SmolLM" is in "SmolLM2")."""
    body = r"\s*".join(re.escape(part) for part in name.split())
    head = r"(?<![A-Za-z])" if name[:1].isascii() and name[:1].isalpha() else ""
    tail = r"(?![A-Za-z])" if name[-1:].isascii() and name[-1:].isalpha() else ""
    return head + body + tail


def names_regex(names: tuple[str, ...] | list[str]) -> re.Pattern | None:
    """One case-insensitive pattern matching any of `names` (longest first); None for no names."""
    ordered = sorted(set(names), key=len, reverse=True)
    return re.compile("|".join(name_pattern(n) for n in ordered), re.I) if ordered else None


@dataclass(frozen=True)
class Lexicon:
    path: Path
    generic_system_prompt: str
    probes: dict[str, tuple[str, ...]]  # language -> questions
    out_of_character: re.Pattern  # every language's patterns and every assistant name, in one

    def leaks(self, text: str) -> str | None:
        """The first stretch of `text` that leaks the assistant, or None."""
        found = self.out_of_character.search(text)
        return found.group(0) if found else None


@lru_cache(maxsize=4)
def load_lexicon(path: Path = LEXICON_FILE) -> Lexicon:
    data = validate(LexiconFile, read_yaml(path), str(path))
    patterns = []
    for language, entry in data.languages.items():
        for i, pattern in enumerate(entry.out_of_character):
            try:
                re.compile(pattern)
            except re.error as err:
                raise LfxError(f"{path}: field 'languages.{language}.out_of_character[{i}]': not a regular expression "
                               f"({err})") from None  # fmt: skip
            patterns.append(f"(?:{pattern})")
    names = names_regex(data.assistant_names)
    if names is not None:
        patterns.append(f"(?:{names.pattern})")
    return Lexicon(path, data.generic_system_prompt, {lang: tuple(e.probes) for lang, e in data.languages.items()},
                   re.compile("|".join(patterns), re.I))  # fmt: skip
