"""The conversations `lfx eval` asks. Each variant is one model under one condition, asked the held-out prompts
and the identity probes:

- base: the base model through its own chat template; prompted: the base with the persona's system prompt;
  tuned: the tuned model through its saved chat template (which adds the persona's system prompt);
- tuned_generic, tuned_app: the tuned model with a generic system prompt, and with an application's (`--app-prompt`),
  in place of the persona's (system-prompt robustness);
- tuned_turn3: each question as the third user turn of a conversation made of two other held-out exchanges
  (their prompts and reference answers), so the persona is measured after a few turns.

Besides, the base answers a sample of the *training* prompts: the other side of the identifiability classifier.
The prompted base is not asked at turn 3 nor under other system prompts: each answer of the base runs to the token
limit, and the whole eval stays within 3x the time of the three plain variants (tests/benchmarks/bench_eval.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..inference.prompts import Prompt

Messages = list[dict[str, str]]
IDENTIFIABILITY_PROMPTS = 24  # training prompts the base answers for the classifier (all, when fewer)


@dataclass(frozen=True)
class Variant:
    key: str  # in eval.json
    model: str  # "base" or "tuned"
    label: str  # in the tables
    system: str | None = None  # the system message (None: none; the tuned model's template adds the persona's)
    turn3: bool = False


def variants(persona_system: str, generic_system: str, app_system: str | None, turns: bool) -> list[Variant]:
    out = [Variant("base", "base", "base"), Variant("prompted", "base", "prompted", persona_system),
           Variant("tuned", "tuned", "tuned"),
           Variant("tuned_generic", "tuned", "tuned, generic system prompt", generic_system)]  # fmt: skip
    if app_system:
        out.append(Variant("tuned_app", "tuned", "tuned, app system prompt", app_system))
    if turns:
        out.append(Variant("tuned_turn3", "tuned", "tuned, turn 3", turn3=True))
    return out


def can_build_turns(prompts: list[Prompt]) -> str:
    """Why held-out conversations cannot be built ("" when they can): two other exchanges with answers are needed."""
    if len(prompts) < 3:
        return f"{len(prompts)} held-out prompts (3 are needed to ask one as the third turn after two others)"
    if not all(p.reference for p in prompts):
        return "the prompts have no reference answers to build earlier turns from"
    return ""


def exchanges(prompts: list[Prompt], first: int) -> Messages:
    """Two held-out exchanges, the `first`-th and the next (wrapping), as user and assistant turns."""
    out: Messages = []
    for k in (first, first + 1):
        p = prompts[k % len(prompts)]
        out += [{"role": "user", "content": p.text}, {"role": "assistant", "content": p.reference}]
    return out


def conversation(variant: Variant, question: Messages, earlier: Messages) -> Messages:
    system = [{"role": "system", "content": variant.system}] if variant.system is not None else []
    return system + (earlier if variant.turn3 else []) + question


def heldout_conversations(variant: Variant, prompts: list[Prompt]) -> list[Messages]:
    """Held-out prompt i; at turn 3 after the exchanges i+1 and i+2 (never its own)."""
    return [conversation(variant, list(p.messages), exchanges(prompts, i + 1) if variant.turn3 else [])
            for i, p in enumerate(prompts)]  # fmt: skip


def probe_conversations(variant: Variant, probes: list[str], prompts: list[Prompt]) -> list[Messages]:
    """Probe j; at turn 3 after the held-out exchanges j and j+1."""
    return [conversation(variant, [{"role": "user", "content": q}], exchanges(prompts, j) if variant.turn3 else [])
            for j, q in enumerate(probes)]  # fmt: skip


def identifiability_sample(training: list[Prompt]) -> list[Prompt]:
    """The training prompts (with persona answers) the base answers: a fixed sample of IDENTIFIABILITY_PROMPTS."""
    answered = [p for p in training if p.reference]
    if len(answered) <= IDENTIFIABILITY_PROMPTS:
        return answered
    picked = sorted(random.Random(0).sample(range(len(answered)), IDENTIFIABILITY_PROMPTS))
    return [answered[i] for i in picked]


def usable_probes(probes: dict[str, tuple[str, ...]], languages: list[str], training: list[Prompt]) -> tuple[list[str], int]:
    """The probes of the persona's languages that are not training prompts of the run, and how many were."""
    trained = {" ".join(p.text.casefold().split()) for p in training}
    wanted = [q for lang in languages for q in probes.get(lang, ())]
    kept = [q for q in wanted if " ".join(q.casefold().split()) not in trained]
    return kept, len(wanted) - len(kept)
