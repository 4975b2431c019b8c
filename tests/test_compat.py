"""The persona model against the real consumers: transformers 4.57.1 and 5.x, llama.cpp's GGUF converter,
vLLM's OpenAI server through `lfx serve`. Each runs in its own cached environment (tests/compat_envs.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

USER = "토니, 자기소개 해줘"
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": USER}],
    "three turns": [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": "나는 아이언맨이지. 천재, 억만장자, 플레이보이, 자선가."},
        {"role": "user", "content": "슈트는 몇 벌이야?"},
        {"role": "assistant", "content": "세는 걸 그만뒀어. 마크 85까지는 기억나."},
        {"role": "user", "content": "아크 원자로는 뭐야?"},
    ],
    "own system prompt": [{"role": "system", "content": "You are Pepper Potts."}, {"role": "user", "content": USER}],
}

# Run under another python: prints what that environment's AutoTokenizer makes of a folder.
TOKENIZER_PROBE = r"""
import json, sys
import transformers
from transformers import AutoTokenizer
folder, conversations = sys.argv[1], json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(folder)
print(json.dumps({
    "version": transformers.__version__,
    "eos_token": tok.eos_token, "pad_token": tok.pad_token,
    "prompts": {name: list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
                for name, messages in conversations.items()},
}))
"""


def training_prompts(base: Path, template_name: str) -> dict[str, list[int]]:
    """The prompt ids LLaMA-Factory trains on (its template's encoding, on the base tokenizer as training fixes it)."""
    from transformers import AutoTokenizer

    from llamafactory_ext.templates import get_template

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    template = get_template(template_name)
    template.fix_special_tokens(tokenizer)
    prompts = {}
    for name, messages in CONVERSATIONS.items():
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = messages[1:] if system else messages
        pairs = template.encode_multiturn(tokenizer, [*turns, {"role": "assistant", "content": ""}], system)
        prompts[name] = [i for prompt, response in pairs[:-1] for i in prompt + response] + pairs[-1][0]
    return prompts


def probe(python: Path | str, folder: Path) -> dict:
    proc = subprocess.run([str(python), "-c", TOKENIZER_PROBE, str(folder)], input=json.dumps(CONVERSATIONS),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"{python} could not use the tokenizer in {folder}:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_portable_files(folder: Path, stop_word: str, base: Path) -> None:
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == (folder / "chat_template.jinja").read_text(encoding="utf-8")
    assert "토니 스타크" in config["chat_template"]
    assert config["eos_token"] == stop_word
    assert not {"is_local", "local_files_only", "backend"} & set(config)
    assert config.get("pad_token") == json.loads((base / "tokenizer_config.json").read_text()).get("pad_token")


def stop_ids_of(folder: Path, base: Path, stop_word: str) -> tuple[int, list[int]]:
    """The stop word's id and the eos ids the merged model must list: the stop word first, the base's end-of-text."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    base_eos = json.loads((base / "config.json").read_text())["eos_token_id"]
    end_of_text = [tok.convert_tokens_to_ids(t) for t in ("<|end_of_text|>", "<|endoftext|>") if t in tok.get_vocab()]
    return tok.convert_tokens_to_ids(stop_word), [base_eos, *end_of_text]


RUNS = ["ironman-zero3", "llama3-real-tokenizer", "qwen2-real-tokenizer"]


@pytest.fixture(params=RUNS)
def persona_run(request) -> dict:
    """A trained run (adapter output folder) and its merge, with the base and template it was trained on."""
    if request.param == "ironman-zero3":
        run = request.getfixturevalue("ironman_run")
        return {"base": Path(run["config"]["model_name_or_path"]), "adapter": run["adapter"],
                "merged": request.getfixturevalue("merged_ironman"), "template": "llama3-persona"}  # fmt: skip
    family = request.param.split("-")[0]
    return request.getfixturevalue("real_tokenizer_run")(family)


def test_merged_and_output_tokenizers_give_the_training_prompt_under_transformers_4_and_5(
    persona_run, transformers4_python
):
    from llamafactory_ext.templates import get_template

    stop_word = get_template(persona_run["template"]).stop_words[0]
    expected = training_prompts(persona_run["base"], persona_run["template"])
    for folder in (persona_run["merged"], persona_run["adapter"]):
        assert_portable_files(folder, stop_word, persona_run["base"])
        for python in (sys.executable, transformers4_python):
            seen = probe(python, folder)
            assert seen["version"].startswith("5." if python == sys.executable else "4.57.1")
            assert seen["eos_token"] == stop_word, (folder, seen["version"])
            for name, ids in expected.items():
                assert seen["prompts"][name] == ids, (folder, seen["version"], name)

    # Stop metadata consistent in the three files of the merged model (LLaMA-Factory issue #9338).
    merged = persona_run["merged"]
    stop_id, base_end = stop_ids_of(merged, persona_run["base"], stop_word)
    for name in ("config.json", "generation_config.json"):
        eos = json.loads((merged / name).read_text())["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]
        assert eos[0] == stop_id and set(base_end) <= set(eos), (name, eos)
