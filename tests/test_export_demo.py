"""The persona survives the GGUF, on the `make demo` model (SmolLM2-135M-Instruct tuned into Tony Stark: the session's
conftest.demo_run, shared with tests/test_eval_demo.py): `lfx export --format ollama --outtype q8_0`; llama.cpp builds
the training prompt from the GGUF's own template and stops on the stop token; Go renders the Modelfile's TEMPLATE
into the training prompt; and llama-cpp-python's OpenAI-compatible server, serving the q8_0 GGUF with the Modelfile's
context, answers the held-out prompts in the persona (`lfx eval --url`) as well as the transformers model does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error

from conftest import REPO, lfx
from gguf_consumers import build_go_renderer, gguf_metadata, go_render, llama_probe, training_prompt

# conftest.CONVERSATIONS in English: the demo persona is trained on ironman_en.
USER = "Tony, who are you?"
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": USER}],
    "three turns": [
        {"role": "user", "content": USER},
        {"role": "assistant", "content": "Genius, billionaire, playboy, philanthropist. In that order, usually."},
        {"role": "user", "content": "How many suits do you have?"},
        {"role": "assistant", "content": "I stopped counting at Mark 85."},
        {"role": "user", "content": "What is the arc reactor?"},
    ],
    "own system prompt": [{"role": "system", "content": "You are Pepper Potts."}, {"role": "user", "content": USER}],
}
TEMPLATE = "smollm2-persona"


def serve_gguf(python, gguf, name: str, n_ctx: int, log):
    """llama-cpp-python's OpenAI-compatible server on `gguf`; returns (process, base URL) once /v1/models answers."""
    from compat_envs import free_port, http_json

    port = free_port()
    cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", name, "--n_ctx", str(n_ctx),
           "--n_threads", "2", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            http_json(f"{url}/models", timeout=5)
            return proc, url
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"llama_cpp.server did not come up (exit {proc.poll()})") from None
            time.sleep(1)


def test_the_demo_persona_survives_q8_0_in_llama_cpp_and_ollamas_template(demo_run, demo_eval, lfx_cache,
                                                                         llamacpp_python, tmp_path):  # fmt: skip
    from transformers import AutoTokenizer

    merged, base = demo_run["merged"], demo_run["model"]
    # lfx fetch-model writes the tokenizer SmolLM2 has (byte-level BPE, byte_fallback false), as the GGUF below needs.
    assert json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))["model"]["byte_fallback"] is False
    result = lfx("export", str(merged), "--format", "ollama", "--outtype", "q8_0", "-o", str(tmp_path / "ollama"))
    assert result.exit_code == 0, result.output
    out = tmp_path / "ollama"
    name = json.loads((demo_run["run"] / "run.json").read_text(encoding="utf-8"))["name"]  # the run's name, not a folder's
    assert name == "demo_smollm2"
    gguf = out / f"{name}-q8_0.gguf"

    meta = gguf_metadata(gguf)
    stop_id = AutoTokenizer.from_pretrained(str(merged)).convert_tokens_to_ids("<|im_end|>")
    assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "smollm")  # byte_fallback fixed
    assert meta["tokenizer.chat_template"] == json.loads((merged / "tokenizer_config.json").read_text())["chat_template"]
    assert meta["tokenizer.ggml.eos_token_id"] == stop_id
    assert (meta["general.name"], meta["general.license"], meta["general.base_model.0.name"],
            meta["general.base_model.0.organization"]) == (name, "Apache-2.0", "SmolLM2-135M-Instruct", "HuggingFaceTB")
    assert meta["general.file_type"] == 7  # MOSTLY_Q8_0

    expected = {name: training_prompt(base, TEMPLATE, messages) for name, messages in CONVERSATIONS.items()}
    seen = go_render(build_go_renderer(tmp_path), out / "Modelfile", CONVERSATIONS)
    assert seen["prompts"] == {name: text for name, (text, _) in expected.items()}  # SmolLM2 has no BOS in its prompt
    probe = llama_probe(llamacpp_python, gguf, CONVERSATIONS, texts=seen["prompts"], stop_id=stop_id)
    for name, (_, ids) in expected.items():
        assert probe["prompts"][name] == ids, name  # llama.cpp's own chat path
        assert probe["texts"][name] == ids, name  # Ollama's path: the Go-rendered text, tokenized by llama.cpp
    assert probe["completion"] == {"finish_reason": "stop", "tokens": 0, "content": ""}

    # The persona in answers: lfx eval's tuned answers from llama.cpp serving the q8_0 GGUF with the Modelfile's
    # num_ctx (the run's cutoff_len), against the transformers model's eval of the same held-out prompts.
    commands = {c["name"]: c["args"] for c in seen["commands"]}
    with open(tmp_path / "server.log", "w", encoding="utf-8") as log:
        server, url = serve_gguf(llamacpp_python, gguf, name, int(commands["num_ctx"]), log)
        try:
            proc = subprocess.run([sys.executable, "-m", "llamafactory_ext", "eval", str(merged), "--url", url,
                                   "-o", str(tmp_path / "eval"), "--max-new-tokens", "64"], cwd=REPO,
                                  capture_output=True, text=True, timeout=900, env={**os.environ})  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gguf_eval = json.loads((tmp_path / "eval" / "eval.json").read_text(encoding="utf-8"))
    served, local = gguf_eval["tuned"]["overall"], demo_eval["tuned"]["overall"]
    print(f"\npersona chrF: transformers {local['persona_chrf']:.1f}, q8_0 GGUF in llama.cpp {served['persona_chrf']:.1f}; "
          f"stop rate: {local['stop_rate']:.2f} / {served['stop_rate']:.2f}; chrF vs reference {local['chrf']:.1f} / "
          f"{served['chrf']:.1f}; loops {local['loop_rate']:.2f} / {served['loop_rate']:.2f}")  # the README's numbers
    assert served["n"] == local["n"] == 19
    assert abs(served["persona_chrf"] - local["persona_chrf"]) <= 3, (served, local)
    assert served["stop_rate"] >= 0.9, served
