"""What the GGUF's consumers make of an `lfx export`, for the tests: llama.cpp itself (llama-cpp-python 0.3.36,
compiled, in its own venv: tests/compat_envs.py) and Ollama's template engine (Go's text/template, through
tests/ollama_render.go), next to the prompt LLaMA-Factory trains on."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Run under llama-cpp-python's python. The prompt of create_chat_completion, built as its chat handler builds it
# (llama_chat_format.chat_formatter_to_chat_completion_handler: the GGUF's template through Jinja2ChatFormatter
# with the GGUF's bos/eos text, tokenized with special tokens and no added BOS since the template adds it);
# texts (Ollama's rendered prompts) tokenized as llama-server tokenizes a prompt (add_special: llama.cpp adds
# the BOS when the GGUF says so); a chat completion with a logit bias on the stop token (llama-cpp-python
# leaves the stop token out of completion_tokens: a stop on the first token is 0 tokens and no text).
LLAMA_PROBE = r"""
import json, sys
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
args = json.loads(sys.stdin.read())
llm = Llama(model_path=args["gguf"], n_ctx=512, n_threads=2, verbose=False)
eos, bos = llm.token_eos(), llm.token_bos()
text = lambda i: llm._model.token_get_text(i) if i != -1 else ""
formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], text(eos), text(bos), stop_token_ids=[eos])
prompts = {}
for name, messages in args["conversations"].items():
    result = formatter(messages=messages)
    prompts[name] = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
texts = {name: llm.tokenize(t.encode("utf-8"), add_bos=True, special=True) for name, t in args["texts"].items()}
out = {"chat_format": llm.chat_format, "eos": eos, "prompts": prompts, "texts": texts}
if args.get("stop_id") is not None:
    first = next(iter(args["conversations"].values()))
    answer = llm.create_chat_completion(messages=first, max_tokens=8, temperature=0,
                                        logit_bias={args["stop_id"]: 100.0})
    out["completion"] = {"finish_reason": answer["choices"][0]["finish_reason"],
                         "tokens": answer["usage"]["completion_tokens"],
                         "content": answer["choices"][0]["message"]["content"]}
print("LLAMA_PROBE " + json.dumps(out))
"""


def llama_probe(python: Path, gguf: Path, conversations: dict, texts: dict | None = None, stop_id: int | None = None) -> dict:
    payload = {"gguf": str(gguf), "conversations": conversations, "texts": texts or {}, "stop_id": stop_id}
    proc = subprocess.run([str(python), "-c", LLAMA_PROBE], input=json.dumps(payload), capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"llama.cpp could not run {gguf}:\n{(proc.stdout + proc.stderr)[-3000:]}"
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("LLAMA_PROBE "))
    return json.loads(line.removeprefix("LLAMA_PROBE "))


def build_go_renderer(out_dir: Path) -> Path:
    """tests/ollama_render.go compiled with Debian's Go (make install puts golang-go there)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go not found: the Ollama template test renders with Go's text/template "
                    "(apt-get install golang-go; make install does it)", pytrace=False)  # fmt: skip
    binary = out_dir / "ollama_render"
    proc = subprocess.run([go, "build", "-o", str(binary), str(HERE / "ollama_render.go")], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"go build tests/ollama_render.go failed: {proc.stderr[-2000:]}", pytrace=False)
    return binary


def go_render(binary: Path, modelfile: Path, conversations: dict) -> dict:
    """{"commands": [{"name", "args"}], "prompts": {name: text}}: Ollama's parser and chat template, in Go."""
    proc = subprocess.run([str(binary)], input=json.dumps({"modelfile": str(modelfile), "conversations": conversations}),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@functools.lru_cache(maxsize=8)
def _training_setup(base: str, template_name: str):
    from transformers import AutoTokenizer

    from llamafactory_ext.persona.registration import get_template

    tokenizer = AutoTokenizer.from_pretrained(base)
    template = get_template(template_name)
    template.fix_special_tokens(tokenizer)  # what LLaMA-Factory does to the base tokenizer before training
    return tokenizer, template


def training_prompt(base: Path, template_name: str, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    """The prompt LLaMA-Factory trains on for `messages` (ending with a user turn): its text and its ids."""
    from llamafactory_ext.persona.prompt_layout import render_messages

    tokenizer, template = _training_setup(str(base), template_name)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    turns = messages[1:] if system else messages
    pairs = template.encode_multiturn(tokenizer, [*turns, {"role": "assistant", "content": ""}], system)
    ids = [i for prompt, response in pairs[:-1] for i in prompt + response] + pairs[-1][0]
    text = "".join(render_messages(template, turns, system, tokenizer))
    assert tokenizer.encode(text, add_special_tokens=False) == ids  # the text is that prompt
    return text, ids


def gguf_metadata(path: Path) -> dict:
    from llamafactory_ext.export.converter import gguf_fields
    from llamafactory_ext.export.gguf import GGUF_KEYS

    return gguf_fields(path, (*GGUF_KEYS, "general.file_type", "general.base_model.0.organization"))
