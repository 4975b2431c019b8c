"""`lfx eval`: the run's held-out prompts answered three ways, side by side, and scored:

- base: the base model as shipped, through its own chat template;
- prompted: the base with the persona's system prompt (the prompt-engineering baseline of seed 001);
- tuned: the fine-tuned model (a merged folder, a full fine-tune or an adapter on its base) through its saved
  chat template, or an OpenAI-compatible endpoint serving it (`--url`: vLLM, llama.cpp's server).

Besides, the identity probes, the tuned model under other system prompts and at the third turn (conditions.py),
and the base model's answers to training prompts for the identifiability classifier: every conversation one model
answers goes through one batched `generate` call. Greedy decoding. Every input (model folders, tokenizers and
their chat templates, the split or the prompts file, the endpoint, the output folder) is checked before the first
model loads, and nothing is written unless everything succeeded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..errors import LfxError
from ..inference import generation, openai_client
from ..inference.prompts import Answer, read_prompts_file
from .. import record as run_record
from . import conditions, judging
from .budget import Budget, fit, prompt_lengths
from .heldout import EvalSet, held_out, training_records
from .lexicon import load_lexicon
from .report import report, summary, write_outputs
from .targets import Target, find_model, resolve_target

Jobs = dict[str, list[conditions.Messages]]


def eval_set(target: Target, prompts_file: str | None) -> EvalSet:
    """The held-out split from the run's own data, or the prompts file (with the run's training prompts when its
    data is here: the persona's answers the persona metrics compare with)."""
    if prompts_file is None:
        evalset = held_out(target.record, target.record_path, target.run_dir)
    else:
        prompts = read_prompts_file(prompts_file)
        training, why = None, ""
        try:  # the training split when the run has one, else every training record
            training = held_out(target.record, target.record_path, target.run_dir)
        except LfxError:
            try:
                training = training_records(target.record, target.record_path, target.run_dir)
            except LfxError as err:
                why = str(err)
        data = {"kind": "prompts file", "path": prompts_file, "training_data": training.data if training else None}
        evalset = EvalSet(prompts, training.training if training else [], training.language if training else None,
                          f"prompts file {prompts_file}", data, why)  # fmt: skip
    if not evalset.prompts:
        raise LfxError(f"{target.record_path}: the held-out split is empty")
    return evalset


def _answer(generate: Callable[[list[conditions.Messages], list[int]], list[Answer]], jobs: Jobs, tokenizer,
            budget: Budget) -> dict[str, list[Answer]]:  # fmt: skip
    """Every job's conversations answered in one call (one batched generate per model), each within its budget,
    split back by job."""
    convs = [c for cs in jobs.values() for c in cs]
    replies = generate(convs, budget.limits(prompt_lengths(tokenizer, convs)))
    out, i = {}, 0
    for name, cs in jobs.items():
        out[name], i = replies[i : i + len(cs)], i + len(cs)
    return out


def evaluate(path: str | Path, base: str | None = None, prompts_file: str | None = None, url: str | None = None,
             max_new_tokens: int = 128, batch_size: int = 16, progress: Callable[[str], None] | None = None,
             app_prompt: str | None = None, note: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """The eval report (what eval.json holds). `note` gets the one line naming the metrics skipped and why."""
    say = progress or (lambda _msg: None)
    skipped: dict[str, str] = {}
    target = resolve_target(path, base)
    evalset = eval_set(target, prompts_file)
    lexicon = load_lexicon()
    if app_prompt is not None and not app_prompt.strip():
        raise LfxError("--app-prompt: empty (the application's system prompt to test the tuned model with)")
    languages = target.persona.languages if target.persona else []
    probes, dropped = conditions.usable_probes(lexicon.probes, languages, evalset.training)
    no_turns = conditions.can_build_turns(evalset.prompts)
    if no_turns:
        skipped["turn 3"] = no_turns
    variants = conditions.variants(target.system, lexicon.generic_system_prompt, app_prompt, not no_turns)
    sample = conditions.identifiability_sample(evalset.training)
    # Cheap checks of what the answering needs, before any model loads. The tuned tokenizer also counts the
    # prompt tokens of a served model (its chat template is the one the server applies).
    tokenizer_dir = target.path if (target.path / "tokenizer_config.json").is_file() else target.base
    tuned_tokenizer = generation.load_tokenizer(tokenizer_dir)
    base_tokenizer = generation.load_tokenizer(target.base)
    model_id = openai_client.persona_model(url) if url else None
    budget = Budget(run_record.trained_context(target.record, target.path if target.kind == "merged" else target.base),
                    max_new_tokens)  # fmt: skip
    prompts, variants, probes, sample, beyond = fit(budget, {"base": base_tokenizer, "tuned": tuned_tokenizer}, variants,
                                                    evalset.prompts, probes, sample, skipped)  # fmt: skip
    evalset = replace(evalset, prompts=prompts)

    jobs: dict[str, Jobs] = {"base": {}, "tuned": {}}
    for v in variants:
        jobs[v.model][v.key] = conditions.heldout_conversations(v, evalset.prompts)
        jobs[v.model][f"{v.key} probes"] = conditions.probe_conversations(v, probes, evalset.prompts)
    jobs["base"]["identifiability"] = [list(p.messages) for p in sample]
    answers: dict[str, list[Answer]] = {}
    models = generation.TargetModels(target.base, target.path, target.kind == "adapter", say)
    say(f"answering {sum(map(len, jobs['base'].values()))} conversations: base and prompted base")
    answers |= _answer(lambda convs, caps: models.base_answers(base_tokenizer, convs, max_new_tokens, batch_size,
                                                               limits=caps), jobs["base"], base_tokenizer, budget)  # fmt: skip
    count = sum(map(len, jobs["tuned"].values()))
    if url:
        models.release()
        say(f"answering {count} conversations: tuned, served at {url}")
        answers |= _answer(lambda convs, caps: [openai_client.chat(url, model_id, c, n, 0.0) for c, n in zip(convs, caps)],
                           jobs["tuned"], tuned_tokenizer, budget)  # fmt: skip
    else:
        model = models.tuned()
        say(f"answering {count} conversations: tuned")
        answers |= _answer(lambda convs, caps: generation.generate(model, tuned_tokenizer, convs, max_new_tokens,
                                                                   batch_size, limits=caps), jobs["tuned"], tuned_tokenizer, budget)  # fmt: skip
    judges = judging.build(lexicon, target.persona, target.no_persona, evalset, sample, answers.pop("identifiability"), skipped)
    if dropped:
        judges.config["probes_dropped_as_training_prompts"] = dropped
    judges.config["context"] = budget.context
    judges.config["base_answers_remembered"] = models.reused
    if beyond:
        judges.config["prompts_beyond_context"] = beyond
    if beyond and note:
        note(f"lfx eval: left out {beyond} held-out prompts that leave under {budget.least} tokens of the run's context "
             f"({budget.context}) for an answer")  # fmt: skip
    if skipped and note:
        reasons: dict[str, list[str]] = {}
        for metric, why in skipped.items():
            reasons.setdefault(why, []).append(metric)
        note("lfx eval: skipped " + "; ".join(f"{', '.join(metrics)} ({why})" for why, metrics in reasons.items()))
    return report(target, evalset, variants, probes, answers, judges, max_new_tokens, url)


def run(path: str, base: str | None, prompts_file: str | None, url: str | None, out_dir: str | None, max_new_tokens: int,
        batch_size: int, show: int, as_json: bool, say: Callable[[str], None], note: Callable[[str], None],
        app_prompt: str | None = None) -> dict[str, Any]:  # fmt: skip
    """`lfx eval`: evaluate, write eval.json/md/png (into the model folder unless `out_dir`), print the summary."""
    from ..files import dump_json, refuse_overwrite

    model, _ = find_model(path)
    out = Path(out_dir) if out_dir else model
    if out.exists() and not out.is_dir():
        raise LfxError(f"{out}: exists and is not a folder (-o names the folder for eval.json, eval.md, eval.png)")
    if out_dir:  # the report goes beside the model by default; elsewhere, never over what lfx reads
        refuse_overwrite(out, [prompts_file, base], "evaluation report")
    result = evaluate(path, base, prompts_file, url, max_new_tokens, batch_size, None if as_json else note, app_prompt, note)
    written = write_outputs(result, out)
    if as_json:
        say(dump_json(result).rstrip("\n"))
        return result
    summary(result, show, say)
    say(f"wrote {', '.join(str(p) for p in written)}")
    return result
