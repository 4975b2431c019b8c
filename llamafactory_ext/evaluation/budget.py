"""Each conversation's answer budget within the context the run trained at.

The persona was trained on sequences of at most `cutoff_len` tokens, and that is the context the exported
Modelfile asks Ollama for (`num_ctx`) and the window a llama.cpp server is started with: a question asked beyond
it measures a model nobody serves. So every conversation `lfx eval` asks gets at most `max_new_tokens`, and no
more than the context leaves after its prompt, the same on every path (transformers, vLLM, llama.cpp). A held-out
prompt that leaves less than MIN_ROOM tokens in the plain variants is left out (and counted); an optional
condition (the app's system prompt, turn 3) that does not fit is skipped, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import LfxError
from ..inference.prompts import Prompt
from .conditions import Messages, Variant, heldout_conversations, probe_conversations

MIN_ROOM = 16  # fewer tokens left for an answer than this, and the conversation is not asked


@dataclass(frozen=True)
class Budget:
    context: int  # tokens: the run's cutoff_len within the model's positions
    max_new_tokens: int

    def limits(self, lengths: list[int]) -> list[int]:
        """New tokens each conversation may have: max_new_tokens, or what the context leaves after its prompt."""
        return [min(self.max_new_tokens, self.context - n) for n in lengths]

    @property
    def least(self) -> int:
        """The fewest new tokens a conversation must have room for to be asked."""
        return min(MIN_ROOM, self.max_new_tokens)

    def room(self, n: int) -> bool:
        """Whether a prompt of `n` tokens leaves enough of the context for an answer."""
        return self.context - n >= self.least

    def fits(self, lengths: list[int]) -> bool:
        return all(self.room(n) for n in lengths)

    def beyond(self, what: str, lengths: list[int]) -> str:
        """Why `what` is not asked: its longest prompt against the context."""
        return (f"{what} need up to {max(lengths)} prompt tokens and {self.least} for an answer, beyond the run's "
                f"context of {self.context} tokens (cutoff_len)")


def prompt_lengths(tokenizer, conversations: list[Messages]) -> list[int]:
    """Prompt tokens of each conversation through the tokenizer's chat template (with the generation prompt)."""
    from ..inference.generation import prompt_text

    texts = [prompt_text(tokenizer, c) for c in conversations]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


CORE = ("base", "prompted", "tuned", "tuned_generic")  # the variants every held-out prompt is asked in
OPTIONAL = {"tuned_app": "app system prompt", "tuned_turn3": "turn 3"}  # skipped (metric name) when they do not fit


def fit(budget: Budget, tokenizers: dict, variants: list[Variant], prompts: list[Prompt], probes: list[str],
        sample: list[Prompt], skipped: dict[str, str]) -> tuple[list[Prompt], list[Variant], list[str], list[Prompt], int]:  # fmt: skip
    """The held-out prompts, variants, probes and identifiability sample that fit the context, and how many
    held-out prompts did not; a skipped condition goes into `skipped` with why."""
    core = [v for v in variants if v.key in CORE]

    def longest(make) -> list[int]:  # per conversation: its prompt tokens in the core variant where it is longest
        rows = [prompt_lengths(tokenizers[v.model], make(v)) for v in core]
        return [max(lengths[i] for lengths in rows) for i in range(len(rows[0]))]

    lengths = longest(lambda v: heldout_conversations(v, prompts))
    kept = [p for p, n in zip(prompts, lengths) if budget.room(n)]
    if not kept:
        raise LfxError(budget.beyond("the held-out prompts", lengths))
    if probes:
        probes = [q for q, n in zip(probes, longest(lambda v: probe_conversations(v, probes, kept))) if budget.room(n)]
    out = []
    for v in variants:
        if v.key in OPTIONAL:
            convs = heldout_conversations(v, kept) + probe_conversations(v, probes, kept)
            lengths = prompt_lengths(tokenizers[v.model], convs)
            if not budget.fits(lengths):
                skipped[OPTIONAL[v.key]] = budget.beyond(f"the '{v.label}' conversations", lengths)
                continue
        out.append(v)
    lengths = prompt_lengths(tokenizers["base"], [list(p.messages) for p in sample])
    sample = [p for p, n in zip(sample, lengths) if budget.room(n)]
    return kept, out, probes, sample, len(prompts) - len(kept)
