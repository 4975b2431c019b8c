"""`lfx pairs RUN_OR_MODEL -o DIR`: a LLaMA-Factory ranking dataset from the tuned model's failures.

The run's *training* prompts (never its held-out split, which `lfx eval` measures) and the identity probes are
answered by the tuned model, greedily, through `lfx eval`'s own generation; the base answers the probes and lfx
eval's identifiability sample (every turn with `--with-base-failures`), read back from the answer cache when lfx
eval asked them before. Every answer is judged by `lfx eval`'s persona judge (evaluation/persona_judge.py, with the
identifiability classifier trained as lfx eval trains it). A multi-turn record becomes one pair per assistant
turn (the earlier turns as history: hiyouga's advice in LLaMA-Factory issue 3495).

- chosen: the persona's training answer to that turn; for an identity probe (no training answer), the first answer
  that passes (tuned, then base), else the tuned model's own answer begun with the sentences that name the persona
  in its training answer closest to the probe (when that answer passes), else those sentences alone. One stock
  answer taught to every probe was given to other questions too (docs/preference.md);
- rejected: the tuned model's answer when it fails (preference/choose.py: out of character, no identity, a loop,
  no stop, a copy of training answers to other prompts, unlike the persona); with `--with-base-failures`, where it
  passes, the base's failing answer; a turn without a failing answer gives no pair.

DIR gets `<name>.json` (alpaca ranking records: instruction, input, history, chosen, rejected, and `why`) and
`dataset_info.json` with its entry (`"ranking": true`): point LFX_DATASETS_DIR at DIR for a `stage: dpo` recipe.
Everything is checked and answered first; DIR is written whole or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import check_replaceable, dump_json, refuse_overwrite, staged_folder
from ..inference.prompts import Answer, Prompt
from ..persona.dataset_entries import INFO_FILE
from . import choose

COMMAND = "lfx pairs"
SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Turn:
    """One pair's question: the conversation up to a user turn, and the persona's answer to it ("" for a probe)."""

    messages: Messages
    reference: str = ""
    probe: bool = False


def turns(training: list[Prompt]) -> list[Turn]:
    """Every assistant turn of every training record, with the turns before it as its history."""
    out = []
    for p in training:
        if not p.reference:
            continue
        conversation = [m for m in p.messages if m["role"] != "system"]
        for i, m in enumerate(conversation):
            if m["role"] == "assistant" and i and conversation[i - 1]["role"] == "user":
                out.append(Turn(conversation[:i], m["content"]))
        out.append(Turn(conversation, p.reference))
    return out


def probe_turns(probes: list[str], held_out: list[Prompt]) -> list[Turn]:
    """The identity probes that are not held-out prompts."""
    held = {" ".join(p.text.casefold().split()) for p in held_out}
    return [Turn([{"role": "user", "content": q}], probe=True) for q in probes if " ".join(q.casefold().split()) not in held]


def record(turn: Turn, chosen: str, rejected: str, why: str) -> dict[str, Any]:
    """A turn as an alpaca ranking record (history as [question, answer] pairs)."""
    history = [[turn.messages[i]["content"], turn.messages[i + 1]["content"]] for i in range(0, len(turn.messages) - 1, 2)]
    return {"instruction": turn.messages[-1]["content"], "input": "", "history": history, "chosen": chosen,
            "rejected": rejected, "why": why}  # fmt: skip


def entry(name: str, language: str | None) -> dict[str, Any]:
    info: dict[str, Any] = {"file_name": f"{name}.json", "formatting": "alpaca", "ranking": True,
                            "columns": {"prompt": "instruction", "query": "input", "history": "history",
                                        "chosen": "chosen", "rejected": "rejected"}}  # fmt: skip
    if language:
        info["lfx"] = {"language": language}
    return info


def build(turns_: list[Turn], tuned: list[Answer], base: list[Answer | None], judge, training: list[Prompt],
          with_base: bool = False, begun: list[Answer | None] | None = None) -> list[dict]:  # fmt: skip
    """The pairs of the judged answers: each turn's rejected answer (the tuned model's failure; with `with_base`
    also the base's where the tuned answer passes), and its chosen one. `base`: None for a turn the base did not
    answer; `begun`: for a probe, the tuned model's answer begun with the persona's naming sentences (None
    elsewhere)."""
    from ..evaluation.copying import CopyIndex

    begun = begun or [None] * len(turns_)
    asked = [(i, "tuned", a) for i, a in enumerate(tuned)] + [(i, "base", a) for i, a in enumerate(base) if a is not None]
    asked += [(i, "begun", a) for i, a in enumerate(begun) if a is not None]
    verdicts = judge.verdicts([a.text for _, _, a in asked], [a.stopped for _, _, a in asked])
    copies = CopyIndex.of_training(training)  # as lfx eval's copying metric
    by_turn: dict[int, list[choose.Candidate]] = {}
    for (i, source, answer), verdict in zip(asked, verdicts):  # the tuned model's answer first
        copied = copies.copied(answer.text, turns_[i].messages[-1]["content"])
        by_turn.setdefault(i, []).append(choose.Candidate(source, answer.text, verdict, copied))
    named = _named_answers(judge, training)
    out = []
    for i, turn in enumerate(turns_):
        candidates = [c for c in by_turn[i] if c.source != "begun"]
        worst = choose.rejected(candidates, identity_asked=turn.probe, with_base=with_base)
        if worst is None:
            continue
        bad, why = worst
        if turn.probe:  # an answer that passes: the models', else the tuned model's begun with the naming sentences
            good = choose.passing([c for c in by_turn[i] if c is not bad], identity_asked=True)
            chosen = good.text if good is not None else naming_sentences(named, turn.messages[-1]["content"], judge)
        else:
            chosen = turn.reference
        if chosen and chosen.strip() != bad.text.strip():
            out.append(record(turn, chosen, bad.text, f"{bad.source}: {why}"))
    return out


def _named_answers(judge, training: list[Prompt]) -> list[Prompt]:
    """The training exchanges whose persona answer names the persona, in character."""
    return [p for p in training if p.reference and judge.names_persona(p.reference) and not judge.out_of_character(p.reference)]


def naming_sentences(named: list[Prompt], question: str, judge) -> str:
    """For an identity probe the persona has no answer to: the sentences that name the persona in its answer to the
    training question closest to the probe (chrF), so the probes are not all taught one memorized answer, nor a
    whole answer to another question."""
    if not named:
        return ""
    from ..evaluation.metrics import sentence_chrf

    answer = max(named, key=lambda p: sentence_chrf(question, [p.text])).reference
    naming = [s for s in SENTENCE_END.split(answer.strip()) if judge.names_persona(s)]
    return " ".join(naming) or answer


def pairs(path: str, out_dir: str, name: str | None = None, base: str | None = None, max_new_tokens: int = 64,
          batch_size: int = 16, force: bool = False, say: Callable[[str], None] = lambda _line: None,
          with_base: bool = False) -> tuple[Path, int]:  # fmt: skip
    """Answer, judge, write DIR; (the pairs file, its record count)."""
    from ..evaluation import conditions, identifiability
    from ..evaluation.budget import Budget, prompt_lengths
    from ..evaluation.heldout import held_out
    from ..evaluation.lexicon import load_lexicon
    from ..evaluation.persona_judge import Judge
    from ..evaluation.targets import resolve_target
    from ..inference import generation
    from ..record import trained_context

    out = Path(out_dir)
    target = resolve_target(path, base)
    refuse_overwrite(out, [path, base, target.path, target.base], "pairs folder")
    check_replaceable(out, COMMAND, force)
    name = name or f"{(target.record.get('run') or {}).get('name') or 'persona'}_pairs".replace("-", "_")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise LfxError(f"--name: '{name}' is not a dataset name (letters, digits, _ . -)")
    try:
        evalset = held_out(target.record, target.record_path, target.run_dir)
    except LfxError as err:
        raise LfxError(f"{err} (lfx pairs answers only the run's training prompts, so it needs the split that keeps the "
                       "held-out ones out)".replace("; pass --prompts FILE", "")) from None  # fmt: skip
    if not evalset.prompts:
        raise LfxError(f"{target.record_path}: field 'args.val_size': the run's held-out split is empty")
    todo = turns(evalset.training)
    if not todo:
        raise LfxError(f"{target.record_path}: field 'args.dataset': the run has no training prompts with the persona's "
                       "answers to build pairs from")  # fmt: skip
    lexicon = load_lexicon()
    languages = target.persona.languages if target.persona else []
    probes, _ = conditions.usable_probes(lexicon.probes, languages, evalset.training)
    todo += probe_turns(probes, evalset.prompts)
    tuned_tokenizer = generation.load_tokenizer(target.path if (target.path / "tokenizer_config.json").is_file() else target.base)
    base_tokenizer = generation.load_tokenizer(target.base)
    # Asked within the context the run trained at, as lfx eval asks (evaluation/budget.py): a turn that leaves no
    # room for an answer is left out; each answer gets at most what its prompt leaves.
    budget = Budget(trained_context(target.record, target.path if target.kind == "merged" else target.base), max_new_tokens)
    lengths = {m: prompt_lengths(tok, [t.messages for t in todo]) for m, tok in (("base", base_tokenizer), ("tuned", tuned_tokenizer))}
    kept = [i for i in range(len(todo)) if budget.room(max(lengths["base"][i], lengths["tuned"][i]))]
    if len(kept) < len(todo):
        say(f"note: {len(todo) - len(kept)} turns leave no room for an answer in the run's context of {budget.context} tokens: "
            "left out")  # fmt: skip
    todo, limits = [todo[i] for i in kept], {m: budget.limits([n[i] for i in kept]) for m, n in lengths.items()}
    if not any(not t.probe for t in todo):
        raise LfxError(f"{target.record_path}: field 'args.cutoff_len': no training turn fits the run's context of "
                       f"{budget.context} tokens with room for an answer")  # fmt: skip
    conversations = [t.messages for t in todo]
    # The base answers the probes (a passing answer of its may be a probe's chosen one) and lfx eval's own
    # identifiability sample (its classifier, trained as lfx eval trains it): the same conversations lfx eval asked,
    # so their answers are read back from the answer cache after lfx eval; every turn with --with-base-failures.
    asked_base = [i for i, t in enumerate(todo) if t.probe or with_base]
    sample = conditions.identifiability_sample(evalset.training)
    sample_lengths = prompt_lengths(base_tokenizer, [list(p.messages) for p in sample])
    sample = [p for p, n in zip(sample, sample_lengths) if budget.room(n)]
    base_convs = [conversations[i] for i in asked_base] + [list(p.messages) for p in sample]
    base_limits = [limits["base"][i] for i in asked_base] + budget.limits([n for n in sample_lengths if budget.room(n)])
    models = generation.TargetModels(target.base, target.path, target.kind == "adapter", say)
    say(f"answering {len(base_convs)} conversations ({len(asked_base)} turns or probes, {len(sample)} for the "
        "identifiability classifier): base")  # fmt: skip
    replies = models.base_answers(base_tokenizer, base_convs, max_new_tokens, batch_size, limits=base_limits)
    base_answers: list[Answer | None] = [None] * len(todo)
    for i, answer in zip(asked_base, replies):
        base_answers[i] = answer
    model = models.tuned()
    say(f"answering {len(conversations)} turns ({sum(t.probe for t in todo)} identity probes): tuned")
    tuned_answers = generation.generate(model, tuned_tokenizer, conversations, max_new_tokens, batch_size,
                                        limits=limits["tuned"])  # fmt: skip
    # Each probe once more, the answer begun with the sentences naming the persona in its closest training answer:
    # a chosen answer in the tuned model's own words, not one stock answer for every probe.
    naming = Judge(lexicon, target.persona)
    named, probes_at = _named_answers(naming, evalset.training), [i for i, t in enumerate(todo) if t.probe]
    begun: list[Answer | None] = [None] * len(todo)
    if named and probes_at:
        starts = [naming_sentences(named, todo[i].messages[-1]["content"], naming) for i in probes_at]
        say(f"answering {len(probes_at)} identity probes begun with the persona's name: tuned")
        continued = generation.generate(model, tuned_tokenizer, [conversations[i] for i in probes_at], max_new_tokens,
                                        batch_size, limits=[limits["tuned"][i] for i in probes_at], begun=starts)  # fmt: skip
        for i, answer in zip(probes_at, continued):
            begun[i] = answer
    del model
    models.release()
    classifier = None
    try:  # persona (its training answers) vs base (its answers to the same prompts), as lfx eval trains it
        classifier = identifiability.train([p.reference for p in sample], [a.text for a in replies[len(asked_base) :]])
    except identifiability.TooFewAnswers as why:
        say(f"note: no identifiability classifier ({why}): rejected answers are chosen by the other failures")
    judge = Judge(lexicon, target.persona, classifier)
    records = build(todo, tuned_answers, base_answers, judge, evalset.training, with_base, begun)
    if not records:
        who = "the tuned model and the base" if with_base else "the tuned model"
        raise LfxError(f"{path}: every answer of {who} to {len(todo)} training turns and probes passes "
                       "(in character, identity, no loop, stopped, identifiable): no pair to train on")  # fmt: skip
    with staged_folder(out, COMMAND, force) as tmp:
        (tmp / f"{name}.json").write_text(dump_json(records), encoding="utf-8")
        (tmp / INFO_FILE).write_text(dump_json({name: entry(name, evalset.language)}), encoding="utf-8")
    return out / f"{name}.json", len(records)
