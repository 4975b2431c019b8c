"""lfx merge against peft's own merge_and_unload, on the tiny models and a real ZeRO-3 run's adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import lfx, snapshot

PROMPT = [{"role": "user", "content": "토니, 소코비아 협정에 대해 어떻게 생각하나요?"}]
ANSWER = {"role": "assistant", "content": "서명했죠. 고삐가 필요하다는 건 인정하니까요."}


def _logits(model_dir: Path, ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    with torch.no_grad():
        return model(ids).logits.float()


def _peft_logits(base: Path, adapter: Path, ids: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The seed's approach: load, PeftModel.merge_and_unload()."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype), str(adapter))
    model = model.merge_and_unload()
    with torch.no_grad():
        return model(ids).logits.float()


def _ids(model_dir: Path) -> torch.Tensor:
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    return (torch.arange(7, 7 + 48) * 37 % vocab).unsqueeze(0)


def _make_adapter(base: Path, out: Path, *, perturb_saved: bool = False, **lora) -> Path:
    """A peft LoRA adapter with random (non-zero) A and B, as peft itself writes it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora)
    model = get_peft_model(model, config)
    if perturb_saved:  # modules_to_save: make the trained copy differ from the base
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.data += 0.05 * torch.randn_like(param)
    model.save_pretrained(str(out))
    return out


def _resave(base: Path, out: Path, dtype, shard: str) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype).save_pretrained(str(out), max_shard_size=shard)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


def test_merge_of_a_zero3_run_equals_peft_and_keeps_the_persona(ironman_run, tiny_llama3, tmp_path):
    from llamafactory.data.template import TEMPLATES  # noqa: F401 (registers LLaMA-Factory's templates)
    from transformers import AutoTokenizer

    from llamafactory_ext.persona.registration import get_template

    # A base like Llama-3 (not Instruct) whose generation config stops at <|end_of_text|> only.
    base = tmp_path / "base"
    shutil.copytree(tiny_llama3, base)
    tok = AutoTokenizer.from_pretrained(str(base))
    end_of_text = tok.convert_tokens_to_ids("<|end_of_text|>")
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    (base / "generation_config.json").write_text(json.dumps({"bos_token_id": tok.bos_token_id, "eos_token_id": end_of_text}))

    out = tmp_path / "merged"
    result = lfx("merge", str(ironman_run["adapter"]), "-o", str(out), "--base", str(base), "--ignore-base-name")
    assert result.exit_code == 0, result.output
    ids = _ids(base)
    torch.testing.assert_close(_logits(out, ids), _peft_logits(base, ironman_run["adapter"], ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(out, ids), _logits(base, ids), atol=1e-4)  # the adapter did something

    gen = json.loads((out / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {end_of_text, eot}
    record = json.loads((out / "lfx_merge.json").read_text())
    assert record["template"] == "llama3-persona"  # read from the run's lfx_run.json
    assert (out / "training_loss.png").is_file() is (ironman_run["adapter"] / "training_loss.png").is_file()

    # The merged tokenizer's chat template reproduces the training prompt, token for token.
    merged_tok = AutoTokenizer.from_pretrained(str(out))
    template = get_template("llama3-persona")
    prompt_ids, response_ids = template.encode_oneturn(merged_tok, [*PROMPT, ANSWER])
    assert merged_tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True, return_dict=False) == prompt_ids
    full = merged_tok.apply_chat_template([*PROMPT, ANSWER], tokenize=True, return_dict=False)
    assert full == prompt_ids + response_ids
    assert "토니 스타크" in merged_tok.chat_template and merged_tok.eos_token == "<|eot_id|>"


def test_merge_of_a_checkpoint_written_under_zero3(ironman_run, tmp_path):
    checkpoint = ironman_run["adapter"] / "checkpoint-4"
    out = tmp_path / "merged"
    result = lfx("merge", str(checkpoint), "-o", str(out))
    assert result.exit_code == 0, result.output
    ids = _ids(out)
    base = Path(ironman_run["config"]["model_name_or_path"])
    torch.testing.assert_close(_logits(out, ids), _peft_logits(base, checkpoint, ids), atol=1e-5, rtol=1e-5)
    assert json.loads((out / "lfx_merge.json").read_text())["template"] == "llama3-persona"


LORA_VARIANTS = {
    "plain": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    "rslora_and_patterns": dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear",
                                rank_pattern={"q_proj": 4, r"layers\.1\.mlp\.down_proj": 2},
                                alpha_pattern={"v_proj": 3, "up_proj": 40}),
    "embedding_and_modules_to_save": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj", "v_proj"],
                                          modules_to_save=["lm_head"]),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(LORA_VARIANTS))
def test_merge_equals_peft_for_lora_variants(variant, tiny_llama3, tmp_path):
    adapter = _make_adapter(tiny_llama3, tmp_path / "adapter", perturb_saved=True, **LORA_VARIANTS[variant])
    out = tmp_path / "merged"
    assert lfx("merge", str(adapter), "-o", str(out)).exit_code == 0
    ids = _ids(tiny_llama3)
    torch.testing.assert_close(_logits(out, ids), _peft_logits(tiny_llama3, adapter, ids), atol=1e-5, rtol=1e-5)


def test_merge_of_a_sharded_bf16_qwen2_base_is_shard_by_shard(tiny_qwen2, tmp_path):
    base = _resave(tiny_qwen2, tmp_path / "base", torch.bfloat16, "100KB")
    shards = sorted(p.name for p in base.glob("*.safetensors"))
    assert len(shards) > 3
    adapter = _make_adapter(base, tmp_path / "adapter", r=8, lora_alpha=16, target_modules="all-linear")
    out = tmp_path / "merged"
    assert lfx("merge", str(adapter), "-o", str(out)).exit_code == 0
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in _state(out).values())
    assert all(t.dtype == torch.bfloat16 for t in _state(out).values())
    ids = _ids(base)
    # bf16 storage: both round the merged weight to bf16 (peft adds in bf16, we add in fp32).
    torch.testing.assert_close(_logits(out, ids, torch.bfloat16), _peft_logits(base, adapter, ids, torch.bfloat16),
                               atol=3e-2, rtol=3e-2)  # fmt: skip
    gen = json.loads((out / "generation_config.json").read_text())
    assert "<|im_end|>" in [t for t in json.loads((out / "tokenizer_config.json").read_text()).values() if isinstance(t, str)]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).convert_tokens_to_ids("<|im_end|>") in _as_list(gen["eos_token_id"])


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state = {}
    for shard in folder.glob("*.safetensors"):
        state.update(load_file(str(shard)))
    return state


def _trained_adapter(base: Path, out: Path, **lora) -> Path:
    """A peft adapter after a few real training steps (A, B and DoRA's magnitude all move), saved by peft."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                           LoraConfig(task_type="CAUSAL_LM", **lora))  # fmt: skip
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ids = _ids(base)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return out


def _assert_merged_as_peft_merges(base: Path, adapter: Path, out: Path) -> None:
    """Every tensor lfx wrote equals peft's merge_and_unload of the same base and adapter, and exactly the
    weights the adapter holds LoRA tensors for differ from the base."""
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        theirs = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().state_dict()
    ours, before = _state(out), _state(base)
    assert set(ours) == set(before) and set(ours) <= set(theirs)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as f:
        targeted = {key.removeprefix("base_model.model.").split(".lora_")[0] + ".weight" for key in f.keys() if ".lora_" in key}
    assert {name for name in ours if not torch.equal(ours[name], before[name])} == targeted


DORA_AND_PATTERNS = {
    "dora": dict(r=8, lora_alpha=16, use_dora=True, target_modules=["embed_tokens", "q_proj", "v_proj", "down_proj"]),
    "dora_rslora_and_patterns": dict(r=8, lora_alpha=16, use_dora=True, use_rslora=True, target_modules="all-linear",
                                     rank_pattern={"q_proj": 4, r"layers\.1\.mlp\.down_proj": 2},
                                     alpha_pattern={"v_proj": 3, "up_proj": 40}),
    "rslora_and_patterns": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=["embed_tokens", "q_proj", "v_proj", "o_proj",
                                                                                       "up_proj", "down_proj"],
                                rank_pattern={"embed_tokens": 2, "q_proj": 4, r"layers\.1\.mlp\.down_proj": 2},
                                alpha_pattern={"v_proj": 3, "embed_tokens": 5, "up_proj": 40}),
}  # fmt: skip


@pytest.mark.parametrize("variant", sorted(DORA_AND_PATTERNS))
def test_merge_equals_peft_tensor_by_tensor(variant, tiny_llama3, tmp_path, monkeypatch):
    """DoRA (linear and embedding), rsLoRA and rank/alpha patterns, trained with peft; merged a few output rows
    at a time (BLOCK made small), as the weights of a large model are."""
    from llamafactory_ext.artifact import merge as merge_module

    monkeypatch.setattr(merge_module, "BLOCK", 1000)
    adapter = _trained_adapter(tiny_llama3, tmp_path / "adapter", **DORA_AND_PATTERNS[variant])
    out = tmp_path / "merged"
    result = lfx("merge", str(adapter), "-o", str(out))
    assert result.exit_code == 0, result.output
    _assert_merged_as_peft_merges(tiny_llama3, adapter, out)


@pytest.fixture
def tiny_gpt2(tiny_llama3, tmp_path) -> Path:
    """A tiny GPT-2: its attention and MLP layers are transformers' Conv1D, stored (in, out), which peft
    merges with fan_in_fan_out."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    vocab = json.loads((tiny_llama3 / "config.json").read_text())["vocab_size"]
    folder = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=128)).save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_llama3 / name, folder / name)
    return folder


def test_merge_of_a_dora_adapter_on_conv1d_layers_equals_peft(tiny_gpt2, tmp_path, monkeypatch):
    from llamafactory_ext.artifact import merge as merge_module

    monkeypatch.setattr(merge_module, "BLOCK", 1000)
    adapter = _trained_adapter(tiny_gpt2, tmp_path / "adapter", r=4, lora_alpha=8, use_dora=True,
                               target_modules=["c_attn", "c_proj", "c_fc"])  # fmt: skip
    assert json.loads((adapter / "adapter_config.json").read_text())["fan_in_fan_out"] is True  # what peft writes
    out = tmp_path / "merged"
    result = lfx("merge", str(adapter), "-o", str(out))
    assert result.exit_code == 0, result.output
    _assert_merged_as_peft_merges(tiny_gpt2, adapter, out)


# --- bad input: one line, exit 2, nothing half-written ------------------------------------------


@pytest.fixture
def adapter(tiny_llama3, tmp_path) -> Path:
    return _make_adapter(tiny_llama3, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def _refused(args: list[str], message: str, watch: Path) -> None:
    before = snapshot(watch)
    result = lfx("merge", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert snapshot(watch) == before
    assert not [p for p in watch.rglob(".*partial*")]


def test_merge_refuses_lora_bias(tiny_llama3, tmp_path):
    biased = _make_adapter(tiny_llama3, tmp_path / "biased", r=4, target_modules=["q_proj"], lora_bias=True)
    _refused([str(biased), "-o", str(tmp_path / "out")], "field 'lora_bias': lfx merge does not support LoRA bias", tmp_path)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("edit,message", [
    ({"r": 8}, "module 'model.layers.0.self_attn.q_proj': does not fit peft's LoRA layer for adapter_config.json "
               "(r=8, use_dora=False): size mismatch for lora_A.default.weight"),
    ({"rank_pattern": {"v_proj": 2}}, "module 'model.layers.0.self_attn.v_proj': does not fit peft's LoRA layer"),
    ({"use_dora": True}, "(r=4, use_dora=True): Missing key(s) in state_dict: \"lora_magnitude_vector.default.weight\""),
    ({"layers_pattern": "layers"}, "adapter_config.json: peft cannot read it: When `layers_pattern` is specified, "
                                   "`layers_to_transform` must also be specified."),
])  # fmt: skip
def test_merge_refuses_tensors_that_do_not_fit_the_config(edit, message, adapter, tmp_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    _refused([str(adapter), "-o", str(tmp_path / "out")], message, tmp_path)


def test_merge_refuses_a_base_of_another_name_or_shape(adapter, tiny_llama3, tiny_qwen2, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    out = str(tmp_path / "out")
    _refused([str(adapter), "-o", out, "--base", str(tiny_qwen2)], "adapter was trained on", tmp_path)
    config = AutoConfig.from_pretrained(str(tiny_llama3))
    config.hidden_size, config.intermediate_size = 32, 64
    narrow = tmp_path / "narrow-llama3"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(narrow))
    _refused([str(adapter), "-o", out, "--base", str(narrow), "--ignore-base-name"],
             "adapter does not match base", tmp_path)  # fmt: skip


def test_merge_refuses_missing_files(adapter, tiny_llama3, tmp_path):
    out = str(tmp_path / "out")
    (tmp_path / "not-an-adapter").mkdir()
    _refused([str(tmp_path / "not-an-adapter"), "-o", out], "adapter_config.json: missing: not a LoRA adapter folder", tmp_path)
    (adapter / "adapter_model.safetensors").rename(tmp_path / "moved.safetensors")
    _refused([str(adapter), "-o", out], "adapter_model.safetensors: missing", tmp_path)
    (tmp_path / "moved.safetensors").rename(adapter / "adapter_model.safetensors")
    base = _resave(tiny_llama3, tmp_path / "sharded", torch.float32, "300KB")
    shard = sorted(base.glob("*.safetensors"))[1]
    shard.rename(tmp_path / "gone.safetensors")
    _refused([str(adapter), "-o", out, "--base", str(base), "--ignore-base-name"], f"{shard.name}: missing shard", tmp_path)


def test_merge_force_replaces_only_a_merge_it_wrote(adapter, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder is written into, without --force: nothing is lost
    assert lfx("merge", str(adapter), "-o", str(out)).exit_code == 0
    _refused([str(adapter), "-o", str(out)], "already exists (pass --force to replace it), written by lfx merge", tmp_path)
    assert lfx("merge", str(adapter), "-o", str(out), "--force").exit_code == 0
    (out / "notes.txt").write_text("keep")  # the user's file inside it: --force refuses, naming it
    _refused([str(adapter), "-o", str(out), "--force"], "holds notes.txt, which lfx merge did not write", tmp_path)
    (out / "notes.txt").unlink()
    with open(out / "config.json", "a") as f:  # a file lfx merge wrote, changed since
        f.write("\n")
    _refused([str(adapter), "-o", str(out), "--force"], "holds config.json, which lfx merge did not write", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_merged_folder_lfx_eval_reported_into_is_still_lfx_merges_to_replace(ironman_run, tmp_path):
    """EVAL=1 then UPLOAD=1 on a pod: lfx eval writes its report into the merged folder, and the next merge
    --force replaces that folder (the report is recorded in its marker), while a user's file stops it."""
    out = tmp_path / "merged"
    assert lfx("merge", str(ironman_run["adapter"]), "-o", str(out)).exit_code == 0
    (tmp_path / "prompts.txt").write_text("토니, 자기소개 해줘\n", encoding="utf-8")
    result = lfx("eval", str(out), "--prompts", str(tmp_path / "prompts.txt"), "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert (out / "eval.json").is_file() and (out / "eval.png").is_file()
    assert lfx("merge", str(ironman_run["adapter"]), "-o", str(out), "--force").exit_code == 0
    assert not (out / "eval.json").exists()
    (out / "eval.json").write_text("{}", encoding="utf-8")  # not lfx eval's, not recorded
    _refused([str(ironman_run["adapter"]), "-o", str(out), "--force"], "holds eval.json, which lfx merge did not write", tmp_path)


def test_merge_checks_free_disk_before_starting(adapter, tmp_path, monkeypatch):
    import shutil as shutil_module

    real = shutil_module.disk_usage
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: real(p)._replace(free=1000))
    _refused([str(adapter), "-o", str(tmp_path / "out")], "GB free, the merged model needs", tmp_path)


def test_interrupted_merge_leaves_no_half_model(tiny_llama3, tmp_path, monkeypatch):
    from llamafactory_ext.artifact import merge as merge_module

    base = _resave(tiny_llama3, tmp_path / "sharded", torch.float32, "100KB")
    adapter = _make_adapter(base, tmp_path / "adapter", r=4, target_modules="all-linear")
    calls = []

    def interrupted(src, dst, adapter):
        if calls:
            raise KeyboardInterrupt
        calls.append(src)
        return real(src, dst, adapter)

    real = merge_module._write_shard
    monkeypatch.setattr(merge_module, "_write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_module.merge(adapter, tmp_path / "out", progress=False)
    assert calls and not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _init_adapter(base: Path, out: Path, init) -> tuple[Path, object]:
    """A peft adapter created with `init_lora_weights=init` (peft runs the initialisation for real)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(2)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=init))  # fmt: skip
    model.save_pretrained(str(out))
    return out, model


@pytest.mark.parametrize("init", ["pissa_niter_2", "olora"])
def test_merge_refuses_adapters_whose_init_rewrote_the_base(init, tiny_llama3, tmp_path):
    adapter, _ = _init_adapter(tiny_llama3, tmp_path / "adapter", init)
    assert json.loads((adapter / "adapter_config.json").read_text())["init_lora_weights"] == init  # what peft writes
    _refused([str(adapter), "-o", str(tmp_path / "out")], f"field 'init_lora_weights': '{init}' initialisation rewrote "
             "the base weights", tmp_path)  # fmt: skip


def test_a_pissa_adapter_converted_to_plain_lora_merges_exactly(tiny_llama3, tmp_path):
    """LLaMA-Factory's pissa_convert saves through peft's conversion: that adapter applies to the original base."""
    adapter, model = _init_adapter(tiny_llama3, tmp_path / "initial", "pissa_niter_2")
    for name, param in model.named_parameters():  # "training"
        if "lora_" in name:
            param.data += 0.02 * torch.randn_like(param)
    model.save_pretrained(str(tmp_path / "converted"), path_initial_model_for_weight_conversion=str(adapter))
    assert json.loads((tmp_path / "converted" / "adapter_config.json").read_text())["init_lora_weights"] is True
    out = tmp_path / "merged"
    assert lfx("merge", str(tmp_path / "converted"), "-o", str(out)).exit_code == 0
    ids = _ids(tiny_llama3)
    torch.testing.assert_close(_logits(out, ids), _peft_logits(tiny_llama3, tmp_path / "converted", ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args,refused", [
    ({"adapter_name_or_path": "runs/first/output", "create_new_adapter": True}, True),
    ({"adapter_name_or_path": "runs/a/output,runs/b/output"}, True),
    ({"adapter_name_or_path": "runs/first/output"}, False),  # resumed, not merged: the output holds it all
])  # fmt: skip
def test_merge_refuses_stacked_adapters(args, refused, adapter, tmp_path):
    (adapter / "lfx_run.json").write_text(json.dumps({"args": {"template": "llama3-persona", **args}, "zero_stage": 2}))
    if refused:
        first = args["adapter_name_or_path"].split(",")[0]
        _refused([str(adapter), "-o", str(tmp_path / "out")], f"field 'args.adapter_name_or_path': this adapter was trained "
                 f"on the base with {first}", tmp_path)  # fmt: skip
    else:
        assert lfx("merge", str(adapter), "-o", str(tmp_path / "out")).exit_code == 0


def _sharded_base(tiny_llama3, tmp_path) -> Path:
    return _resave(tiny_llama3, tmp_path / "sharded", torch.float32, "100KB")


@pytest.mark.parametrize("damage", ["truncated", "bad_offsets", "garbage"])
def test_merge_refuses_a_truncated_or_corrupted_base_shard(damage, tiny_llama3, tmp_path):
    base = _sharded_base(tiny_llama3, tmp_path)
    adapter = _make_adapter(base, tmp_path / "adapter", r=4, target_modules="all-linear")
    shard = sorted(base.glob("model-*.safetensors"))[-1]
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[:-1000])
        message = "not a whole safetensors file (safetensors: incomplete metadata, file not fully covered"
    elif damage == "bad_offsets":
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 4
        blob = json.dumps(header, separators=(",", ":")).encode().ljust(size)  # same length: only the offsets lie
        assert len(blob) == size
        shard.write_bytes(data[:8] + blob + data[8 + size :])
        message = "not a whole safetensors file (safetensors: invalid shape, data type, or offset for tensor"
    else:
        shard.write_bytes(b"\x00" * 8 + data[8:])
        message = "not a whole safetensors file (safetensors: invalid JSON in header"
    _refused([str(adapter), "-o", str(tmp_path / "out"), "--base", str(base), "--ignore-base-name"], message, tmp_path)
    assert shard.name in lfx("merge", str(adapter), "-o", str(tmp_path / "out"), "--base", str(base),
                             "--ignore-base-name").stderr  # fmt: skip


def test_an_interrupt_while_writing_surfaces_as_itself(tiny_llama3, tmp_path, monkeypatch):
    """Ctrl-C inside a shard: the KeyboardInterrupt, not the writer's 'tensors were not written'."""
    from llamafactory_ext.artifact import merge as merge_module

    base = _sharded_base(tiny_llama3, tmp_path)
    adapter = _make_adapter(base, tmp_path / "adapter", r=4, target_modules="all-linear")
    real, calls = merge_module.read_into, []

    def interrupted(file, entry, buffer):  # called once per tensor it merges
        calls.append(entry.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(file, entry, buffer)

    monkeypatch.setattr(merge_module, "read_into", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_module.merge(adapter, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_full_disk_surfaces_as_itself_in_one_line_and_leaves_nothing(tiny_llama3, tmp_path):
    """A real write failure: the process may not write files over 64 KB (RLIMIT_FSIZE, as a full disk would stop it)."""
    import resource
    import signal
    import subprocess
    import sys

    base = _sharded_base(tiny_llama3, tmp_path)
    adapter = _make_adapter(base, tmp_path / "adapter", r=4, target_modules="all-linear")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "llamafactory_ext", "merge", str(adapter), "-o", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "File too large" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "were not written" not in proc.stderr
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_leftovers_of_a_killed_merge_are_cleaned_on_the_next_run(adapter, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names folders no live merge owns
    out = tmp_path / "out"
    partial = tmp_path / f".out.partial-{dead.pid}"
    (partial / "junk").mkdir(parents=True)
    assert lfx("merge", str(adapter), "-o", str(out)).exit_code == 0
    assert not partial.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # killed between its two renames: the previous OUT, moved aside, is put back (and kept without --force)
    moved = tmp_path / f".out.old-{dead.pid}"
    out.rename(moved)
    _refused([str(adapter), "-o", str(out)], "already exists (pass --force", adapter)
    assert (out / "model.safetensors").is_file() and not moved.exists()
