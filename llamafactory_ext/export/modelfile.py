"""Ollama's Modelfile for a persona GGUF: the persona's chat format as an Ollama Go template, without Jinja.

Why a TEMPLATE at all: on a GGUF import without one, Ollama matches the GGUF's Jinja template against
its bundled templates by edit distance (`template.Named`, a match only under distance 100) and
otherwise uses `{{ .Prompt }}`: the persona's format and stop word are lost (ollama issues 6823,
8363, 11019; LLaMA-Factory issue 6020). So the Modelfile carries the format explicitly.

The template is built from the LLaMA-Factory template the run trained with (its formatter slots: the
same source the trained prompt and the saved Jinja template come from), not by translating Jinja.
What Ollama does with it (read from ollama/ollama, template/template.go and server/routes.go):
- a template that names `.Messages` gets `{"System", "Messages", "Tools", "Response", ...}`:
  consecutive messages of one role merged with "\\n\\n", `.System` all system messages joined;
- the Modelfile's SYSTEM is prepended as a system message when the first message is not one, so a
  user's own system prompt replaces the persona's, as LLaMA-Factory's system argument does;
- the prompt goes to llama.cpp, which adds the BOS token itself when the GGUF says
  `tokenizer.ggml.add_bos_token` (llm/llama_server.go, tokenizerAddsBOS): the template carries the
  BOS text only when the GGUF does not add it.
The Modelfile parser (parser/parser.go) keeps a `\"\"\"`-quoted value verbatim up to the next `\"\"\"`
and drops runes Go's strconv.IsPrint rejects: such text is refused rather than silently changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..persona.prompt_layout import slot_text

SENTINEL = "\x00LFX-CONTENT\x00"
ROLE_FIELDS = ("format_system", "format_user", "format_assistant")


@dataclass(frozen=True)
class ChatFormat:
    """The persona's chat format as text around each message's content."""

    prefix: str  # once, before everything (the BOS text when llama.cpp does not add it)
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]

    def go_template(self) -> str:
        """Ollama's TEMPLATE. No `{{-` trimming: the literal text (newlines included) is the format."""
        def block(parts: tuple[str, str], value: str) -> str:
            return f"{_go_literal(parts[0])}{{{{ {value} }}}}{_go_literal(parts[1])}"

        return (f"{_go_literal(self.prefix)}{{{{ if .System }}}}{block(self.system, '.System')}{{{{ end }}}}"
                f'{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{block(self.user, ".Content")}'
                f'{{{{ else if eq .Role "assistant" }}}}{block(self.assistant, ".Content")}{{{{ end }}}}{{{{ end }}}}')  # fmt: skip

    def render(self, messages: list[dict[str, str]], default_system: str) -> str:
        """What Ollama renders from `go_template()` for a chat request (the semantics above), in Python:
        the export checks it against the model's own Jinja template before writing anything."""
        if default_system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": default_system}, *messages]
        collated: list[dict[str, str]] = []
        for message in messages:
            if collated and collated[-1]["role"] == message["role"]:
                collated[-1] = {**collated[-1], "content": collated[-1]["content"] + "\n\n" + message["content"]}
            else:
                collated.append(dict(message))
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        out = [self.prefix]
        if system:
            out.append(self.system[0] + system + self.system[1])
        for message in collated:
            if message["role"] in ("user", "assistant"):
                before, after = getattr(self, message["role"])
                out.append(before + message["content"] + after)
        return "".join(out)


def _go_literal(text: str) -> str:
    """Literal text inside a Go template: a `{{` would open an action, so an action prints it."""
    return text.replace("{{", '{{ "{{" }}')


def _around(template, field: str, tokenizer, where: str) -> tuple[str, str]:
    formatter = getattr(template, field)
    text = slot_text(formatter.apply(content=SENTINEL, idx="0"), tokenizer)
    if text.count(SENTINEL) != 1 or slot_text(formatter.apply(content=SENTINEL, idx="1"), tokenizer) != text:
        raise LfxError(f"{where}: field '{field}': a format that repeats the content or numbers the turns "
                       "has no Ollama translation (use --format gguf)")  # fmt: skip
    before, after = text.split(SENTINEL)
    return before, after


def chat_format(template, tokenizer, name: str, llama_cpp_adds_bos: bool) -> ChatFormat:
    """The ChatFormat of LLaMA-Factory template `template` (named `name`) on `tokenizer`."""
    from llamafactory.data.template import Template

    where = f"template '{name}'"
    if type(template) is not Template:  # Llama2Template folds the system into the first turn; reasoning templates add think tags
        raise LfxError(f"{where}: a LLaMA-Factory {type(template).__name__} has no Ollama translation here "
                       "(plain chat formats only: llama3, qwen, chatml, ...; use --format gguf)")  # fmt: skip
    prefix = slot_text(template.format_prefix.apply(), tokenizer)
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
    if llama_cpp_adds_bos and bos and prefix.startswith(bos):
        prefix = prefix[len(bos):]
    parts = {field: _around(template, field, tokenizer, where) for field in ROLE_FIELDS}
    return ChatFormat(prefix, parts["format_system"], parts["format_user"], parts["format_assistant"])


def check_modelfile_text(value: str, what: str) -> str:
    """`value` as Ollama's Modelfile parser will read it back inside \"\"\"...\"\"\", or LfxError."""
    if '"""' in value:
        raise LfxError(f"{what}: contains '\"\"\"', which ends a Modelfile value early (Ollama's parser has no escape)")
    for ch in value:
        if not (ch.isprintable() or ch in " \t\n\r"):
            raise LfxError(f"{what}: contains the non-printing character U+{ord(ch):04X}, which Ollama's Modelfile "
                           "parser drops")  # fmt: skip
    return value


def modelfile_text(gguf_name: str, fmt: ChatFormat, system: str, stops: list[str], num_ctx: int,
                   header: list[str]) -> str:  # fmt: skip
    """The Modelfile: FROM the GGUF beside it, TEMPLATE, SYSTEM, a stop parameter per stop word, num_ctx."""
    template = check_modelfile_text(fmt.go_template(), "the Ollama TEMPLATE")
    lines = [f"# {line}" if line else "#" for line in header]
    lines += [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{check_modelfile_text(system, "the persona system prompt (SYSTEM)")}"""')
    for stop in stops:
        lines.append(f'PARAMETER stop "{check_modelfile_text(stop, "a stop word")}"')
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def stop_words(template, tokenizer, eos_ids: Any) -> list[str]:
    """The template's stop words, then the tokens of the model's eos ids (generation_config.json): every
    token the merged model stops on in transformers and vLLM, in that order, once each."""
    words = list(template.stop_words)
    ids = eos_ids if isinstance(eos_ids, list) else [eos_ids] if isinstance(eos_ids, int) else []
    for token_id in ids:
        token = tokenizer.convert_ids_to_tokens(int(token_id))
        if token and token not in words:
            words.append(token)
    return words


CHECK_CONVERSATIONS = (
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Tony Stark."},
     {"role": "user", "content": "And the suit?"}, {"role": "assistant", "content": "Mark 85."},
     {"role": "user", "content": "What now?"}],
    [{"role": "system", "content": "You are Pepper Potts."}, {"role": "user", "content": "Who are you?"}],
)  # fmt: skip


def check_against_jinja(fmt: ChatFormat, system: str, tokenizer, model: Path, adds_bos: bool) -> None:
    """The Ollama template must render what the model's own chat template (the one the GGUF carries) renders;
    a template file edited since training, or a format this translation gets wrong, stops here."""
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
    for messages in CHECK_CONVERSATIONS:
        jinja = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if adds_bos and bos and jinja.startswith(bos):
            jinja = jinja[len(bos):]
        ollama = fmt.render(messages, system)
        if ollama != jinja:
            raise LfxError(f"{model}/tokenizer_config.json: field 'chat_template': renders {jinja!r} where the Ollama "
                           f"template from the run's template renders {ollama!r} (template file changed since "
                           "training? merge again)")  # fmt: skip


def write_modelfile(out: Path, template_name: str, name: str, gguf_name: str, tokenizer, model: Path, adds_bos: Any,
                    num_ctx: int) -> dict[str, Any]:  # fmt: skip
    """Write `out`/Modelfile for the GGUF `gguf_name` of persona `name`; returns what the export record keeps."""
    from .. import __version__
    from ..files import atomic_write_text, read_json
    from ..persona.registration import get_template

    template = get_template(template_name)
    fmt = chat_format(template, tokenizer, template_name, bool(adds_bos))
    system = template.default_system
    check_against_jinja(fmt, system, tokenizer, model, bool(adds_bos))
    generation = model / "generation_config.json"
    eos_ids = read_json(generation).get("eos_token_id") if generation.is_file() else None
    stops = stop_words(template, tokenizer, eos_ids)
    header = [
        f"Ollama Modelfile of the persona '{name}' ({template_name}), written by lfx export (llamafactory-ext {__version__}).",
        f"ollama create {name} -f Modelfile",
        f"4-bit: ollama create {name} -f Modelfile --quantize q4_K_M",
    ]
    atomic_write_text(out / "Modelfile", modelfile_text(gguf_name, fmt, system, stops, num_ctx, header))
    return {"modelfile": "Modelfile", "stop": stops, "num_ctx": num_ctx}
