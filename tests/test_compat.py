"""The persona model against the real consumers: transformers 4.57.1 and 5.x, llama.cpp's GGUF converter,
vLLM's OpenAI server through `lfx serve`. Each runs in its own cached environment (tests/compat_envs.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONVERSATIONS, REPO, USER

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

    from llamafactory_ext.persona.registration import get_template

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
    persona_run, transformers4_python, transformers4_oldest_python
):
    from llamafactory_ext.persona.registration import get_template

    stop_word = get_template(persona_run["template"]).stop_words[0]
    expected = training_prompts(persona_run["base"], persona_run["template"])
    for folder in (persona_run["merged"], persona_run["adapter"]):
        assert_portable_files(folder, stop_word, persona_run["base"])
        for python, version in ((sys.executable, "5."), (transformers4_python, "4.57.1"),
                                (transformers4_oldest_python, "4.55.2")):  # fmt: skip
            seen = probe(python, folder)
            assert seen["version"].startswith(version)
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


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_llama_cpp_converter_writes_a_gguf_with_the_persona_and_the_stop_token(family, real_tokenizer_run, llamacpp_converter, tmp_path):
    import os

    from transformers import AutoTokenizer

    from llamafactory_ext.persona.registration import get_template

    run = real_tokenizer_run(family)
    out = tmp_path / "model.gguf"
    env = {**os.environ, "PYTHONPATH": f"gguf-py{os.pathsep}."}
    proc = subprocess.run([sys.executable, "convert_hf_to_gguf.py", str(run["merged"]), "--outfile", str(out),
                           "--outtype", "f32"], cwd=llamacpp_converter, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    read = ("import json, sys; from gguf import GGUFReader; r = GGUFReader(sys.argv[1]); print(json.dumps("
            "{k: r.get_field(k).contents() for k in ('tokenizer.chat_template', 'tokenizer.ggml.eos_token_id')}))")
    proc = subprocess.run([sys.executable, "-c", read, str(out)], cwd=llamacpp_converter, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip  (llama.cpp's own gguf reader)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = json.loads(proc.stdout.strip().splitlines()[-1])
    chat_template, eos_id = fields["tokenizer.chat_template"], fields["tokenizer.ggml.eos_token_id"]
    stop_word = get_template(run["template"]).stop_words[0]
    assert chat_template == AutoTokenizer.from_pretrained(str(run["merged"])).chat_template
    assert "토니 스타크" in chat_template
    assert eos_id == AutoTokenizer.from_pretrained(str(run["base"])).convert_tokens_to_ids(stop_word)


def _served_prompts(url: str, model: str) -> dict[str, list[int]]:
    from compat_envs import http_json

    base = url.removesuffix("/v1")
    return {name: http_json(f"{base}/tokenize", {"model": model, "messages": messages, "add_generation_prompt": True,
                                                 "add_special_tokens": False})["tokens"]
            for name, messages in CONVERSATIONS.items()}  # fmt: skip


def _stops_after_one_token(url: str, model: str, stop_id: int, key: str | None = None) -> dict:
    """A logit bias of 100 on the stop token: the stop metadata must end the answer right there."""
    from compat_envs import http_json

    answer = http_json(f"{url}/chat/completions", {"model": model, "messages": CONVERSATIONS["one turn"],
                       "max_tokens": 8, "temperature": 0, "logit_bias": {str(stop_id): 100}}, timeout=120, key=key)  # fmt: skip
    return {"finish_reason": answer["choices"][0]["finish_reason"], "tokens": answer["usage"]["completion_tokens"]}


SERVER_KEY = "sk-" + "proj-" + "pOnC1-4EakoKm5b-OAYGSTWjRlLK6sNdVU72lZ_o2-YH19dCqgn28s9Dp68GZN9Z3zL"  # a real-shaped fake


def _command_lines() -> list[str]:
    """Every process's command line on this machine (what `ps` shows any user)."""
    lines = []
    for proc in Path("/proc").iterdir():
        try:
            lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # not a process, or gone
            continue
    return lines


def test_vllm_serves_the_merged_persona_through_lfx_serve(real_tokenizer_run, vllm_python, tmp_path):
    """Started with a key (VLLM_API_KEY, never an argument: no process shows it), vLLM refuses requests without it;
    lfx chat --url and lfx eval --url send it from OPENAI_API_KEY."""
    from compat_envs import http_json, lfx_serve
    from conftest import lfx, one_line_error

    run = real_tokenizer_run("llama3")
    expected = training_prompts(run["base"], run["template"])
    stop_id = stop_ids_of(run["merged"], run["base"], "<|eot_id|>")[0]
    with lfx_serve(run["merged"], vllm_python, tmp_path / "serve.log", env={"VLLM_API_KEY": SERVER_KEY}) as url:
        assert not [line for line in _command_lines() if SERVER_KEY in line]
        name = run["merged"].parent.name  # the run's folder name
        assert [m["id"] for m in http_json(f"{url}/models", key=SERVER_KEY)["data"]] == [name]
        assert _served_prompts(url, name) == expected  # one turn, three turns, the user's own system prompt
        assert _stops_after_one_token(url, name, stop_id, SERVER_KEY) == {"finish_reason": "stop", "tokens": 1}
        with_key = {"OPENAI_API_KEY": SERVER_KEY}
        for key, why in ((None, "the server wants an API key: set OPENAI_API_KEY"),
                         ("sk-" + "proj-" + "not-the-servers-key-0123456789", "the server refused the key in OPENAI_API_KEY")):  # fmt: skip
            refused = lfx("chat", "--url", url, "-m", USER, env={"OPENAI_API_KEY": key})
            one_line_error(refused.exit_code, refused.stderr, f"{url}/models: HTTP 401: {why}")
        chat = lfx("chat", "--url", url, "-m", USER, "-m", "슈트는 몇 벌이야?", "--max-new-tokens", "4", env=with_key)
        assert chat.exit_code == 0, chat.output
        assert chat.stdout.count("assistant> ") == 2
        # lfx eval --url: the tuned answers come from the server, base and prompted from transformers here.
        prompts = tmp_path / "prompts.txt"
        prompts.write_text(f"{USER}\n슈트는 몇 벌이야?\n", encoding="utf-8")
        # The real Llama-3 tokenizer here is the base model's, without a chat template: give the base the
        # official Llama-3 Instruct one, as an instruct base would have.
        base = tmp_path / "base"
        shutil.copytree(run["base"], base)
        config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["chat_template"] = (REPO / "llamafactory_ext" / "tiny" / "llama3-instruct.jinja").read_text(encoding="utf-8")
        (base / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
        evaluated = lfx("eval", str(run["merged"]), "--url", url, "--prompts", str(prompts), "-o", str(tmp_path / "eval"),
                        "--base", str(base), "--max-new-tokens", "4", env=with_key)  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((tmp_path / "eval" / "eval.json").read_text(encoding="utf-8"))
    assert result["config"]["url"] == url
    assert {"base", "prompted", "tuned"} <= set(result) and len(result["answers"]) == 2
    assert "stop_rate" in result["tuned"]["overall"] and all(isinstance(a["tuned"]["text"], str) for a in result["answers"])
    log = (tmp_path / "serve.log").read_text(encoding="utf-8")
    assert "curl http://127.0.0.1:" in log and "/chat/completions" in log and 'Bearer $VLLM_API_KEY' in log
    assert "(requires the API key in VLLM_API_KEY)" in log and SERVER_KEY not in log


def test_vllm_serves_the_adapter_over_its_base_through_lfx_serve(real_tokenizer_run, vllm_python, tmp_path):
    from compat_envs import http_json, lfx_serve

    run = real_tokenizer_run("llama3")
    expected = training_prompts(run["base"], run["template"])
    stop_id = stop_ids_of(run["merged"], run["base"], "<|eot_id|>")[0]
    with lfx_serve(run["adapter"], vllm_python, tmp_path / "serve.log", "--name", "tony") as url:
        served = {m["id"]: m for m in http_json(f"{url}/models")["data"]}
        assert served["tony"]["parent"] == str(run["base"])  # the LoRA adapter over its base
        assert _served_prompts(url, "tony") == expected
        assert _stops_after_one_token(url, "tony", stop_id) == {"finish_reason": "stop", "tokens": 1}


# --- lfx serve: bad input, one line, exit 2 (no vLLM started) --------------------------------------


def _serve_refused(args: list[str], message: str) -> None:
    from conftest import lfx, one_line_error

    result = lfx("serve", *args)
    one_line_error(result.exit_code, result.stderr, message)


def test_serve_bad_input(tiny_llama3, tmp_path, monkeypatch):
    import shutil
    import socket

    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_llama3, no_weights)
    (no_weights / "model.safetensors").unlink()
    _serve_refused([str(no_weights)], "no config.json or weights")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama3, no_tokenizer)
    (no_tokenizer / "tokenizer_config.json").unlink()
    _serve_refused([str(no_tokenizer)], "tokenizer_config.json: missing")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"), "r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    _serve_refused([str(adapter)], f"adapter_config.json: field 'base_model_name_or_path': '{tmp_path / 'gone'}': no such folder (pass --base PATH)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        _serve_refused([str(tiny_llama3), "--port", str(busy.getsockname()[1])], "is in use (pass --port)")
    _serve_refused([str(tiny_llama3), "--python", sys.executable], "vLLM is not installed there; install vLLM")
    monkeypatch.delenv("LFX_VLLM_PYTHON", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    _serve_refused([str(tiny_llama3)], "vLLM not found (no --python, LFX_VLLM_PYTHON or vllm on PATH)")


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_a_tokenizer_saved_by_transformers_5_is_rewritten_into_the_form_4x_loads(family, real_tokenizer,
                                                                                 transformers4_python, tmp_path):  # fmt: skip
    """The issue's failure, reproduced and fixed: what transformers 5's save_pretrained writes does not load
    under 4.57.1 (TokenizersBackend; extra_special_tokens as a list); the persona tokenizer written from it does."""
    from conftest import REAL_TOKENIZERS
    from transformers import AutoTokenizer

    from llamafactory_ext.artifact.tokenizer_files import write_persona_tokenizer

    saved = tmp_path / "saved-by-5"
    AutoTokenizer.from_pretrained(str(real_tokenizer(family))).save_pretrained(str(saved))
    proc = subprocess.run([str(transformers4_python), "-c", TOKENIZER_PROBE, str(saved)], input="{}",
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode != 0 and ("TokenizersBackend" in proc.stderr or "'list' object" in proc.stderr), proc.stderr[-2000:]

    template = REAL_TOKENIZERS[family][2]
    out = tmp_path / "persona"
    write_persona_tokenizer(out, saved, template)
    seen = probe(transformers4_python, out)
    assert seen["prompts"] == training_prompts(real_tokenizer(family), template)
