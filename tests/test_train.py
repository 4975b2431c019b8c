"""Real LoRA SFT through LLaMA-Factory with DeepSpeed ZeRO-3 on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO, lfx, tiny_recipe_dict, train_config, write_recipe

from llamafactory_ext.errors import LfxError
from llamafactory_ext.train import split_argv

IGNORE_INDEX = -100


def test_adapter_is_saved_whole_and_loads_with_peft(ironman_run, tiny_llama3):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter = ironman_run["adapter"]
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for k, t in weights.items() if "lora_B" in k]
    # ZeRO-3 partitions parameters; the saved adapter must hold gathered, full-shape, trained tensors.
    assert lora_b and all(t.numel() > 0 for t in lora_b)
    assert any(t.abs().sum() > 0 for t in lora_b)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_llama3)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(config["target_modules"])

    base = AutoModelForCausalLM.from_pretrained(tiny_llama3)
    model = PeftModel.from_pretrained(base, adapter)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()


def test_losses_are_finite_and_all_steps_ran(ironman_run):
    log = [json.loads(line) for line in (ironman_run["adapter"] / "trainer_log.jsonl").read_text().splitlines()]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == ironman_run["config"]["max_steps"]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert "DeepSpeed ZeRO3 detected" in ironman_run["log"] or "ZeRO-3" in ironman_run["log"]


def _training_samples(ironman_run):
    from datasets import load_from_disk

    return load_from_disk(str(ironman_run["out"] / "tokenized"))["train"]


def test_prompt_is_masked_and_carries_the_persona(ironman_run):
    from transformers import AutoTokenizer

    from llamafactory_ext.persona.templates import load_specs

    tokenizer = AutoTokenizer.from_pretrained(ironman_run["adapter"])
    persona = load_specs()["llama3-persona"].default_system
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    samples = _training_samples(ironman_run)
    assert len(samples) >= 60
    for sample in samples:
        ids, labels = sample["input_ids"], sample["labels"]
        n_prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        assert all(label == IGNORE_INDEX for label in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]  # the whole response is trained on
        assert labels[-1] == eot  # the stop word is learned, so generation ends
        prompt = tokenizer.decode(ids[:n_prompt])
        assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + persona)
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_saved_chat_template_reproduces_training_prompt_token_for_token(ironman_run):
    """A user message alone, through the saved tokenizer's chat template, gives exactly the prompt
    LLaMA-Factory trained on, persona system prompt included."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ironman_run["adapter"])
    assert tokenizer.eos_token == "<|eot_id|>"
    records = json.loads((REPO / "datasets" / "ironman.json").read_text(encoding="utf-8"))
    samples = _training_samples(ironman_run)
    for record, sample in list(zip(records, samples))[:10]:
        user = record["instruction"] + ("\n" + record["input"] if record["input"] else "")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        n_prompt = next(i for i, label in enumerate(sample["labels"]) if label != IGNORE_INDEX)
        assert list(ids) == sample["input_ids"][:n_prompt]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_rank_argument_is_consumed(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "")  # recorded, so the value split_argv sets is undone after the test
    monkeypatch.delenv("LOCAL_RANK")
    assert split_argv(["--local_rank=1", "run.yaml", "max_steps=3"]) == ("run.yaml", ["max_steps=3"])
    assert os.environ["LOCAL_RANK"] == "1"
    with pytest.raises(LfxError, match="not key=value"):
        split_argv(["run.yaml", "--max_steps", "3"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("template=llama3-persnoa", "field 'template': unknown template 'llama3-persnoa'"),
        ("dataset=ironmen", "field 'dataset': unknown dataset 'ironmen'"),
    ],
)
def test_bad_names_fail_in_seconds_before_any_launch(override, message, tiny_llama3, tmp_path):
    train_config(tiny_llama3, tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "llamafactory_ext.train", str(tmp_path / "train.yaml"), override],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in proc.stderr
    assert "(ours: llama3-persona, qwen-persona" in proc.stderr or "known: eco_multitask, ironman" in proc.stderr
    assert not (tmp_path / "adapter").exists()

    # The same names through `lfx train`, which takes a recipe.
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tiny_llama3))
    result = lfx("train", str(recipe), override, "-o", str(tmp_path / "run"))
    assert result.exit_code == 2 and message in result.stderr and not (tmp_path / "run").exists()


def test_user_dataset_dir_gets_our_entries_merged(tiny_llama3, tmp_path):
    from llamafactory_ext.train import load_config, prepare

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text('{"identity": {"file_name": "identity.json"}}', encoding="utf-8")
    train_config(tiny_llama3, tmp_path, dataset_dir=str(data_dir))
    config = prepare(load_config(str(tmp_path / "train.yaml"), []))
    info = json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"identity", "ironman"} and config["dataset_dir"] == str(data_dir)


def test_a_dataset_dir_that_defines_the_dataset_is_used_as_it_is(tiny_llama3, tmp_path):
    """A run folder's data snapshot wins over the live datasets/: no comparison, no refusal."""
    from llamafactory_ext.persona.registration import register_datasets
    from llamafactory_ext.train import load_config, prepare

    data_dir = tmp_path / "data"
    register_datasets(data_dir, ["ironman"])
    snapshot_file = data_dir / "ironman.json"
    records = json.loads(snapshot_file.read_text(encoding="utf-8"))[:10]
    snapshot_file.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    train_config(tiny_llama3, tmp_path, dataset_dir=str(data_dir), dataset="ironman", eval_dataset="eco_multitask")
    prepare(load_config(str(tmp_path / "train.yaml"), []))
    assert json.loads(snapshot_file.read_text(encoding="utf-8")) == records
    assert set(json.loads((data_dir / "dataset_info.json").read_text(encoding="utf-8"))) == {"ironman", "eco_multitask"}
