"""`lfx eval`: the run's held-out prompts answered three ways, side by side, and scored:

- base: the base model as shipped, through its own chat template;
- prompted: the base with the persona's system prompt (the prompt-engineering baseline of seed 001);
- tuned: the fine-tuned model (a merged folder, a full fine-tune or an adapter on its base) through its saved
  chat template, or an OpenAI-compatible endpoint serving it (`--url`: vLLM, llama.cpp's server).

Greedy decoding, batched. Every input (model folders, tokenizers and their chat templates, the split or the
prompts file, the endpoint, the output folder) is checked before the first model loads, and nothing is
written unless everything succeeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import LfxError
from ..inference import generation, openai_client
from ..inference.prompts import Answer, Prompt, read_prompts_file
from .heldout import EvalSet, held_out, training_answers
from .report import report, summary, write_outputs
from .targets import Target, find_model, resolve_target


def conversations(system_name: str, prompts: list[Prompt], persona_system: str) -> list[list[dict[str, str]]]:
    if system_name == "prompted":
        return [[{"role": "system", "content": persona_system}, *p.messages] for p in prompts]
    return [list(p.messages) for p in prompts]


def eval_set(target: Target, prompts_file: str | None) -> EvalSet:
    if prompts_file is None:
        evalset = held_out(target.record, target.record_path)
    else:
        prompts = read_prompts_file(prompts_file)
        try:  # persona answers: the training split when the run has one, else every training record
            split = held_out(target.record, target.record_path)
            persona, language = split.persona_answers, split.language
        except LfxError:
            persona, language = training_answers(target.record, target.record_path)
        evalset = EvalSet(prompts, persona, language, f"prompts file {prompts_file}")
    if not evalset.prompts:
        raise LfxError(f"{target.record_path}: the held-out split is empty")
    return evalset


def evaluate(path: str | Path, base: str | None = None, prompts_file: str | None = None, url: str | None = None,
             max_new_tokens: int = 128, batch_size: int = 16, progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """The eval report (what eval.json holds)."""
    say = progress or (lambda _msg: None)
    target = resolve_target(path, base)
    evalset = eval_set(target, prompts_file)
    # Cheap checks of what the answering needs, before any model loads.
    tuned_tokenizer = None
    if not url:
        tokenizer_dir = target.path if (target.path / "tokenizer_config.json").is_file() else target.base
        tuned_tokenizer = generation.load_tokenizer(tokenizer_dir)
    base_tokenizer = generation.load_tokenizer(target.base)
    model_id = openai_client.persona_model(url) if url else None

    answers: dict[str, list[Answer]] = {}
    say(f"loading base model {target.base}")
    model = generation.load_model(target.base)
    for name in ("base", "prompted"):
        say(f"answering {len(evalset.prompts)} prompts: {name}")
        convs = conversations(name, evalset.prompts, target.system)
        answers[name] = generation.generate(model, base_tokenizer, convs, max_new_tokens, batch_size)
    convs = conversations("tuned", evalset.prompts, target.system)
    if url:
        del model
        say(f"answering {len(convs)} prompts: tuned, served at {url}")
        answers["tuned"] = [openai_client.chat(url, model_id, c, max_new_tokens, 0.0) for c in convs]
    else:
        if target.kind == "adapter":
            model = generation.with_adapter(model, target.path)
        else:
            del model
            model = generation.load_model(target.path)
        say(f"answering {len(convs)} prompts: tuned")
        answers["tuned"] = generation.generate(model, tuned_tokenizer, convs, max_new_tokens, batch_size)
    return report(target, evalset, answers, max_new_tokens, url)


def run(path: str, base: str | None, prompts_file: str | None, url: str | None, out_dir: str | None, max_new_tokens: int,
        batch_size: int, show: int, as_json: bool, say: Callable[[str], None], note: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """`lfx eval`: evaluate, write eval.json/md/png (into the model folder unless `out_dir`), print the summary."""
    from ..files import dump_json

    model, _ = find_model(path)
    out = Path(out_dir) if out_dir else model
    if out.exists() and not out.is_dir():
        raise LfxError(f"{out}: exists and is not a folder (-o names the folder for eval.json, eval.md, eval.png)")
    result = evaluate(path, base, prompts_file, url, max_new_tokens, batch_size, None if as_json else note)
    written = write_outputs(result, out)
    if as_json:
        say(dump_json(result).rstrip("\n"))
        return result
    summary(result, show, say)
    say(f"wrote {', '.join(str(p) for p in written)}")
    return result
