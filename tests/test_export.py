"""`lfx export --format gguf`: merged folders, run folders and adapters to GGUF through llama.cpp's own converter,
checked in llama.cpp itself (llama-cpp-python 0.3.36 compiled from its PyPI source): the prompt it builds from the
GGUF's own template is LLaMA-Factory's training prompt token for token, and the stop token ends the answer. On tiny
models trained on the real Llama-3 and Qwen2.5 tokenizers (conftest.real_tokenizer_run). Bad input: one line,
exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import CONVERSATIONS, lfx, one_line_error, snapshot
from gguf_consumers import gguf_metadata, llama_probe, training_prompt

from llamafactory_ext.files import MARKER

FAMILIES = ["llama3", "qwen2"]


def export_ok(*args: str) -> Path:
    result = lfx("export", *args)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.splitlines()[0].removeprefix("wrote "))


def stop_id(base: Path, template_name: str) -> int:
    from transformers import AutoTokenizer

    from llamafactory_ext.persona.registration import get_template

    return AutoTokenizer.from_pretrained(str(base)).convert_tokens_to_ids(get_template(template_name).stop_words[0])


@pytest.mark.parametrize("family", FAMILIES)
def test_the_gguf_carries_the_persona_and_llama_cpp_renders_the_training_prompt(family, real_tokenizer_run,
                                                                                persona_export, llamacpp_python):  # fmt: skip
    run = real_tokenizer_run(family)
    merged = run["merged"]
    gguf = persona_export(family) / f"{merged.parent.name}-f16.gguf"  # f16 by default
    assert sorted(p.name for p in gguf.parent.iterdir()) == sorted([gguf.name, "Modelfile", "lfx_export.json", MARKER])

    meta = gguf_metadata(gguf)
    config = json.loads((merged / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert meta["tokenizer.chat_template"] == config["chat_template"] == (merged / "chat_template.jinja").read_text(encoding="utf-8")
    assert "토니 스타크" in meta["tokenizer.chat_template"]
    stop = stop_id(run["base"], run["template"])
    assert meta["tokenizer.ggml.eos_token_id"] == stop
    assert meta["tokenizer.ggml.model"] == "gpt2"  # byte-level BPE, as llama.cpp must read it
    assert meta["general.name"] == merged.parent.name
    assert meta["general.base_model.count"] == 1 and meta["general.base_model.0.name"] == run["base"].name
    assert meta["general.file_type"] == 1  # MOSTLY_F16

    expected = {name: training_prompt(run["base"], run["template"], messages)[1] for name, messages in CONVERSATIONS.items()}
    seen = llama_probe(llamacpp_python, gguf, CONVERSATIONS, stop_id=stop)
    assert seen["chat_format"] == "chat_template.default"  # create_chat_completion uses the GGUF's own template
    assert seen["eos"] == stop
    for name, ids in expected.items():
        assert seen["prompts"][name] == ids, name  # one turn, three turns, the user's own system prompt
    assert seen["completion"] == {"finish_reason": "stop", "tokens": 0, "content": ""}  # stopped on the first token


def test_an_adapter_is_merged_first_into_the_same_gguf(real_tokenizer_run, persona_export, tmp_path):
    """The run's adapter (output folder), --format gguf: merged shard-wise into a temporary folder, converted, the
    temporary merge removed. The GGUF is byte for byte the merged folder's."""
    run = real_tokenizer_run("llama3")
    gguf = export_ok(str(run["adapter"]), "--format", "gguf", "-o", str(tmp_path / "out"))
    merged_gguf = persona_export("llama3") / gguf.name
    assert hashlib.sha256(gguf.read_bytes()).digest() == hashlib.sha256(merged_gguf.read_bytes()).digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary merge or partial folder left
    assert sorted(p.name for p in gguf.parent.iterdir()) == sorted([gguf.name, "lfx_export.json", MARKER])
    record = json.loads((tmp_path / "out" / "lfx_export.json").read_text(encoding="utf-8"))
    assert record["kind"] == "adapter" and record["converter"] == "llama-cpp-python==0.3.36"


def test_a_run_folder_q8_0_default_output_license_and_force(real_tokenizer_run, lfx_cache, llamacpp_python, tmp_path):
    run = real_tokenizer_run("qwen2")
    folder = tmp_path / "qwen-tony"  # a run folder: merged/ inside, the GGUF goes to its gguf/
    shutil.copytree(run["merged"], folder / "merged")
    (folder / "merged" / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: elsewhere/other\n---\n# card\n")
    gguf = export_ok(str(folder), "--outtype", "Q8_0", "--format", "ollama")
    assert gguf == folder / "gguf" / "qwen-tony-q8_0.gguf"
    assert "FROM ./qwen-tony-q8_0.gguf\n" in (gguf.parent / "Modelfile").read_text(encoding="utf-8")
    record = json.loads((gguf.parent / "lfx_export.json").read_text(encoding="utf-8"))
    assert record["template"] == "qwen-persona" and record["outtype"] == "q8_0" and record["num_ctx"] == 256
    assert record["stop"] == ["<|im_end|>", "<|endoftext|>"] and record["kind"] == "merged"
    meta = gguf_metadata(gguf)
    assert meta["general.file_type"] == 7  # MOSTLY_Q8_0
    assert meta["general.license"] == "apache-2.0"  # from the model card; the base model is still the run's
    assert meta["general.base_model.0.name"] == run["base"].name
    seen = llama_probe(llamacpp_python, gguf, {"one turn": CONVERSATIONS["one turn"]},
                       stop_id=stop_id(run["base"], run["template"]))  # fmt: skip
    assert seen["prompts"]["one turn"] == training_prompt(run["base"], run["template"], CONVERSATIONS["one turn"])[1]
    assert seen["completion"]["finish_reason"] == "stop"

    before = snapshot(folder)
    refused = lfx("export", str(folder), "--outtype", "q8_0")
    assert refused.exit_code == 2 and "already exists (pass --force to replace it)" in refused.stderr
    assert snapshot(folder) == before
    gguf = export_ok(str(folder), "--outtype", "bf16", "--force")
    assert sorted(p.name for p in gguf.parent.iterdir()) == sorted(["lfx_export.json", "qwen-tony-bf16.gguf", MARKER])
    assert gguf_metadata(gguf)["general.file_type"] == 32  # MOSTLY_BF16
    assert sorted(p.name for p in folder.iterdir()) == ["gguf", "merged"]


def test_a_tokenizer_llama_cpp_would_misread_is_refused(real_tokenizer_run, lfx_cache, tmp_path):
    """The demo model's old failure, reproduced on the real Llama-3 tokenizer: transformers' GGUF conversion wrote
    SmolLM2's byte-level BPE with `byte_fallback: true` and a `Sequence` decoder, which the converter takes for a
    SentencePiece-style `llama` vocabulary (LlamaHfVocab; llama.cpp then aborts in byte_to_token). The same two
    changes to the Llama-3 tokenizer (same tokens either way: a byte-level vocabulary never falls back) make the
    converter choose `llama` here too; the export reads back what the converter chose and refuses."""
    model = tmp_path / "merged"
    shutil.copytree(real_tokenizer_run("llama3")["merged"], model)
    tokenizer = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer["model"]["byte_fallback"] = True
    tokenizer["decoder"] = {"type": "Sequence", "decoders": [tokenizer["decoder"]]}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    before = snapshot(tmp_path)
    _refused([str(model), "-o", str(tmp_path / "out")], "field 'model.byte_fallback': llama.cpp's converter read this "
             "byte-level BPE tokenizer as a 'llama' vocabulary because it says byte_fallback: true")  # fmt: skip
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


# --- bad input: one line, exit 2, nothing written -----------------------------------------------------


def _refused(args: list[str], message: str) -> None:
    result = lfx("export", *args)
    one_line_error(result.exit_code, result.stderr, message)


def test_export_bad_input(tiny_llama3, lfx_cache, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    adapter = work / "adapter"  # an adapter whose base is gone
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone"),
                                                             "peft_type": "LORA", "r": 8}))  # fmt: skip
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    unsupported = work / "unsupported"  # an architecture llama.cpp's converter has no class for
    shutil.copytree(tiny_llama3, unsupported)
    config = json.loads((unsupported / "config.json").read_text())
    (unsupported / "config.json").write_text(json.dumps({**config, "architectures": ["PersonaNetForCausalLM"]}))
    no_tokenizer = work / "no-tokenizer"
    shutil.copytree(tiny_llama3, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (no_tokenizer / name).unlink(missing_ok=True)
    taken = work / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)

    _refused([str(adapter), "-o", str(work / "a")], f"field 'base_model_name_or_path': '{tmp_path / 'gone'}': no such folder (pass --base PATH)")
    _refused([str(unsupported), "-o", str(work / "u")],
             "field 'architectures': 'PersonaNetForCausalLM' is not supported by llama.cpp's converter "
             "(llama-cpp-python==0.3.36)")  # fmt: skip
    _refused([str(tiny_llama3), "--outtype", "q4_k_m", "-o", str(work / "q")],
             "--outtype: 'q4_k_m' is a quantization llama.cpp's Python converter cannot write (it writes f16, bf16, "
             "q8_0); export q8_0 or f16 and quantize it with 'ollama create NAME -f Modelfile --quantize q4_K_M' or "
             "llama.cpp's compiled llama-quantize")  # fmt: skip
    _refused([str(tiny_llama3), "--outtype", "f64", "-o", str(work / "q")], "--outtype: 'f64' is not one of f16, bf16, q8_0")
    _refused([str(tiny_llama3), "-o", str(taken)], f"{taken}: holds keep.txt, which lfx export did not write")
    _refused([str(unsupported), "-o", str(work), "--force"], f"{work}: the export would overwrite the input {unsupported}")
    _refused([str(no_tokenizer), "-o", str(work / "t")], f"{no_tokenizer}: no tokenizer files")
    _refused([str(tmp_path / "nowhere")], "folder not found")
    _refused([str(tiny_llama3), "--format", "ollama", "-o", str(work / "o")], "no persona template recorded")
    _refused([str(tiny_llama3), "--format", "onnx"], "Invalid value for '--format'")
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in work.iterdir()) == ["adapter", "no-tokenizer", "taken", "unsupported"]
