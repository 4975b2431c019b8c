"""`lfx export --format ollama`: the Modelfile's TEMPLATE, run by Go's text/template as Ollama runs it (Ollama's
Modelfile parser and chat semantics ported in tests/ollama_render.go), renders LLaMA-Factory's training prompt for
one and three turns, with and without the user's own system prompt; llama.cpp, tokenizing that text as Ollama's
llama-server does, gets the training prompt's ids. Real Llama-3 and Qwen2.5 tokenizers (conftest.real_tokenizer_run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from gguf_consumers import build_go_renderer, gguf_metadata, go_render, llama_probe, training_prompt

from llamafactory_ext.errors import LfxError
from llamafactory_ext.files import MARKER
from llamafactory_ext.export.modelfile import ChatFormat, check_modelfile_text, modelfile_text

USER = "토니, 자기소개 해줘"
THREE_TURNS = [
    {"role": "user", "content": USER},
    {"role": "assistant", "content": "나는 아이언맨이지. 천재, 억만장자, 플레이보이, 자선가."},
    {"role": "user", "content": "슈트는 몇 벌이야?"},
    {"role": "assistant", "content": "세는 걸 그만뒀어. 마크 85까지는 기억나."},
    {"role": "user", "content": "아크 원자로는 뭐야?"},
]
OWN_SYSTEM = {"role": "system", "content": "You are Pepper Potts.\nAnswer briefly."}
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": USER}],
    "three turns": THREE_TURNS,
    "own system prompt": [OWN_SYSTEM, {"role": "user", "content": USER}],
    "own system prompt, three turns": [OWN_SYSTEM, *THREE_TURNS],
}


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory) -> Path:
    return build_go_renderer(tmp_path_factory.mktemp("go"))


def expected_ollama_text(text: str, bos: str | None, adds_bos: bool) -> str:
    """The training prompt as the text Ollama must render: llama.cpp adds the BOS itself when the GGUF says so."""
    return text[len(bos):] if adds_bos and bos and text.startswith(bos) else text


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_the_modelfile_renders_the_training_prompt_in_go_and_llama_cpp_reads_it_as_trained(
    family, real_tokenizer_run, persona_export, go_renderer, llamacpp_python
):
    from transformers import AutoTokenizer

    from llamafactory_ext.persona.registration import get_template

    run = real_tokenizer_run(family)
    out = persona_export(family)  # lfx export MERGED --format ollama
    name = run["merged"].parent.name
    assert sorted(p.name for p in out.iterdir()) == sorted(["Modelfile", f"{name}-f16.gguf", "lfx_export.json", MARKER])

    seen = go_render(go_renderer, out / "Modelfile", CONVERSATIONS)
    commands = [(c["name"], c["args"]) for c in seen["commands"]]
    template = get_template(run["template"])
    tokenizer = AutoTokenizer.from_pretrained(str(run["merged"]))
    stop_words = [template.stop_words[0], {"llama3": "<|end_of_text|>", "qwen2": "<|endoftext|>"}[family]]
    assert commands[0] == ("model", f"./{name}-f16.gguf") and (out / commands[0][1]).is_file()
    assert dict(commands)["system"] == template.default_system  # the persona's system prompt, Korean intact
    assert [a for n, a in commands if n == "stop"] == stop_words
    assert dict(commands)["num_ctx"] == "256"  # the run's cutoff_len

    meta = gguf_metadata(out / f"{name}-f16.gguf")
    adds_bos = bool(meta["tokenizer.ggml.add_bos_token"])
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None else None
    expected = {name: training_prompt(run["base"], run["template"], messages) for name, messages in CONVERSATIONS.items()}
    for conv, (text, _) in expected.items():
        assert seen["prompts"][conv] == expected_ollama_text(text, bos, adds_bos), conv
    if family == "llama3":  # Llama-3 trains with <|begin_of_text|>; its GGUF lets llama.cpp add it
        assert adds_bos and not seen["prompts"]["one turn"].startswith(bos)

    # What llama.cpp (the runtime under Ollama) makes of the rendered text: the training prompt's ids.
    probe = llama_probe(llamacpp_python, out / f"{name}-f16.gguf", {}, texts=seen["prompts"])
    for conv, (_, ids) in expected.items():
        assert probe["texts"][conv] == ids, conv


def test_go_template_literals_and_modelfile_values_survive_ollamas_parser(go_renderer, tmp_path):
    """Text Ollama's parser and Go's template engine could change: a '{{' in the format, quotes, leading and
    trailing spaces, newlines, Korean; and what cannot be written is refused instead of being changed."""
    fmt = ChatFormat(prefix="<s>{{", system=("[SYS] ", " [/SYS]\n"), user=(' "U" {{ ', "}}\n"), assistant=("", "</s>"))
    system = '  "Tony" says:\n토니 스타크, "I am Iron Man."  '
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(modelfile_text("x.gguf", fmt, system, ["</s>", '"q"'], 512, ["header", ""]), encoding="utf-8")
    conversations = {"one": [{"role": "user", "content": "hi"}],
                     "two": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                             {"role": "user", "content": "c"}]}  # fmt: skip
    seen = go_render(go_renderer, modelfile, conversations)
    assert {c["name"]: c["args"] for c in seen["commands"]}["system"] == system
    assert [c["args"] for c in seen["commands"] if c["name"] == "stop"] == ["</s>", '"q"']
    for name, messages in conversations.items():
        assert seen["prompts"][name] == fmt.render(messages, system), name
    for bad, why in (('say """hi"""', "ends a Modelfile value early"), ("a\u00a0b", "U+00A0"), ("zero\u200bwidth", "U+200B")):
        with pytest.raises(LfxError, match=re.escape(why)):
            check_modelfile_text(bad, "SYSTEM")
