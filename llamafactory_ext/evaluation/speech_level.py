"""Korean speech level: each sentence's final ending, read with Kiwi (kiwipiepy, a morphological analyser;
the ending is the morpheme tagged EF), as 합쇼체 (formal polite: -ㅂ니다, -ㅂ니까), 해요체 (polite: -요,
-죠, and a sentence closed by the particle 요) or 반말 (plain: every other final ending, -어, -야, -다,
-냐). A persona keeps its level when its answers' sentences end at the level that dominates its training
answers. Sentences without a final ending (a noun phrase, English) are not counted."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

LEVELS = ("합쇼체", "해요체", "반말")


@lru_cache(maxsize=1)
def _kiwi():
    from kiwipiepy import Kiwi

    return Kiwi()


def ending_level(ending: str, then_yo: bool = False) -> str:
    """The level of a final ending (the EF morpheme's form); `then_yo`: the particle 요 follows it (하거든+요)."""
    if ending.endswith(("ᆸ니다", "습니다", "ᆸ니까", "습니까", "ᆸ시다", "읍시다", "ᆸ시오")):
        return "합쇼체"
    if then_yo or ending.endswith(("요", "죠")):
        return "해요체"
    return "반말"


def sentence_levels(text: str) -> list[str]:
    """The level of each sentence of `text` that has a final ending, in order."""
    levels = []
    for sentence in _kiwi().split_into_sents(text, return_tokens=True):
        tokens = [t for t in sentence.tokens if not t.tag.startswith("S")]  # punctuation, symbols, foreign words
        last = max((i for i, t in enumerate(tokens) if t.tag == "EF"), default=None)
        if last is not None:
            then_yo = any(t.tag == "JX" and t.form == "요" for t in tokens[last + 1 :])
            levels.append(ending_level(tokens[last].form, then_yo))
        elif tokens and tokens[-1].tag == "JX" and tokens[-1].form.endswith("요"):  # 캡이요? 그러니까요.
            levels.append("해요체")
    return levels


def dominant(texts: list[str]) -> tuple[str | None, dict[str, float]]:
    """The level most sentences of `texts` end at (None: no sentence has a final ending), and each level's share."""
    counts = Counter(level for text in texts for level in sentence_levels(text))
    total = sum(counts.values())
    if not total:
        return None, {}
    shares = {level: round(counts[level] / total, 4) for level in LEVELS}
    return max(LEVELS, key=lambda level: counts[level]), shares


def matching(text: str, level: str) -> tuple[int, int]:
    """(sentences ending at `level`, sentences with a final ending) of one answer."""
    levels = sentence_levels(text)
    return sum(1 for x in levels if x == level), len(levels)
