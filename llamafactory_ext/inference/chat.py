"""A quick look at a persona: a chat with a merged model, an adapter or a served persona, and a before/after
table (Markdown) over a prompts file, as seed 001 does by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import LfxError
from ..files import atomic_write_text, refuse_overwrite
from . import generation, openai_client
from .prompts import read_prompts_file


def responder(model_path: str | None, url: str | None, served: str | None, max_new_tokens: int, temperature: float,
              show_prompt: Callable[[str], None] | None = None) -> Callable[[list[dict[str, str]]], str]:  # fmt: skip
    """A function from a conversation to the next assistant answer, local or served."""
    if bool(model_path) == bool(url):
        raise LfxError("lfx chat: give MODEL_OR_ADAPTER or --url http://HOST:PORT/v1 (one of them)")
    if url:
        if show_prompt:
            raise LfxError("lfx chat: --show-prompt needs MODEL_OR_ADAPTER (the server applies the template)")
        name = served or openai_client.persona_model(url)
        return lambda history: openai_client.chat(url, name, history, max_new_tokens, temperature).text
    model, tokenizer = generation.load(model_path)

    def answer(history: list[dict[str, str]]) -> str:
        if show_prompt:
            show_prompt(generation.prompt_text(tokenizer, history))
        return generation.generate(model, tokenizer, [history], max_new_tokens, 1, temperature)[0].text

    return answer


def session(answer: Callable[[list[dict[str, str]]], str], messages: list[str], system: str | None,
            ask: Callable[[], str | None], say: Callable[[str], None]) -> None:  # fmt: skip
    """Say each of `messages` (or, without them, what `ask` returns until it returns nothing) and print the
    answers; the conversation carries on from turn to turn."""
    history = [{"role": "system", "content": system}] if system else []
    queue = list(messages)
    while True:
        text = (queue.pop(0) if queue else None) if messages else ask()
        if text is None or not text.strip():
            return
        history.append({"role": "user", "content": text})
        reply = answer(history)
        history.append({"role": "assistant", "content": reply})
        say(f"assistant> {reply}")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "(empty)"


TABLE_HEAD = "# Before / after\n"  # the first line of every table compare writes: --force replaces only such a file


def compare(before: str, after: str, prompts_file: str, max_new_tokens: int = 256, system: str | None = None,
            out_file: str | None = None, force: bool = False) -> str:  # fmt: skip
    """A Markdown table of each prompt with the base model's and the fine-tuned model's answer; written to
    `out_file` (never over one of the inputs, over an existing file only with `force` and only a table of
    compare's) or returned."""
    if out_file:
        refuse_overwrite(out_file, [prompts_file, before, after], "table")
        _check_replaceable(Path(out_file), force)
    prompts = [p.text for p in read_prompts_file(prompts_file)]
    located = {"before": generation.locate(before), "after": generation.locate(after)}  # every path before any load
    answers = {}
    for name, where in located.items():
        model, tokenizer = generation.load_located(*where)
        convs = [([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}] for p in prompts]
        answers[name] = [a.text for a in generation.generate(model, tokenizer, convs, max_new_tokens)]
        del model
    lines = [f"{TABLE_HEAD}\n- before: `{before}`\n- after: `{after}`\n- greedy decoding, up to {max_new_tokens} new tokens\n",
             "| # | Prompt | Before | After |", "|---|---|---|---|"]  # fmt: skip
    for i, prompt in enumerate(prompts, 1):
        lines.append(f"| {i} | {_cell(prompt)} | {_cell(answers['before'][i - 1])} | {_cell(answers['after'][i - 1])} |")
    table = "\n".join(lines) + "\n"
    if out_file:
        atomic_write_text(Path(out_file), table)
    return table


def _check_replaceable(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if out.is_dir():
        raise LfxError(f"{out}: is a folder; -o names the table's file")
    with open(out, "rb") as f:
        ours = f.read(len(TABLE_HEAD.encode())) == TABLE_HEAD.encode()
    if not ours:
        raise LfxError(f"{out}: already exists and is not a table lfx compare wrote; it never replaces another file: "
                       "choose another path")  # fmt: skip
    if not force:
        raise LfxError(f"{out}: already exists (pass --force to replace it)")
