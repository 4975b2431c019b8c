"""The bad-input catalog: every case through `lfx check` gives one line naming file, record or field,
exit status 2, and leaves every file as it was."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import lfx, snapshot, tiny_recipe_dict, write_recipe
from test_datasets import BAD_DATASETS
from test_templates import BAD_TEMPLATES

# case -> (recipe changes (None deletes a key), expected part of the one error line)
BAD_RECIPES = {
    "unknown_key": ({"learning_rte": 1e-4}, "unknown key 'learning_rte': not a LLaMA-Factory argument (did you mean 'learning_rate'?)"),
    "string_where_number": ({"learning_rate": "1e-4"}, "field 'learning_rate': expected a number, got the string '1e-4'"),
    "string_where_integer": ({"per_device_train_batch_size": "four"}, "field 'per_device_train_batch_size': expected an integer"),
    "string_where_bool": ({"bf16": "yes"}, "field 'bf16': expected true or false"),
    "unknown_scheduler": ({"lr_scheduler_type": "cosin"}, "field 'lr_scheduler_type': 'cosin' is not one of the known values (did you mean 'cosine'?)"),
    "zero_epochs": ({"num_train_epochs": 0, "max_steps": None}, "field 'num_train_epochs': must be positive"),
    "negative_learning_rate": ({"learning_rate": -1.0e-4}, "field 'learning_rate': must be positive"),
    "zero_max_steps": ({"max_steps": 0}, "field 'max_steps': must be positive"),
    "warmup_ratio_above_one": ({"warmup_ratio": 1.5}, "field 'warmup_ratio': must be in [0, 1)"),
    "negative_val_size": ({"val_size": -0.1}, "field 'val_size'"),
    "unknown_template": ({"template": "llama3-persnoa"}, "field 'template': unknown template 'llama3-persnoa'"),
    "unknown_dataset": ({"dataset": "ironmen"}, "field 'dataset': unknown dataset 'ironmen'"),
    "no_dataset": ({"dataset": None}, "missing 'dataset'"),
    "model_path_missing": ({"model_name_or_path": "./models/nope"}, "field 'model_name_or_path': './models/nope' does not exist"),
    "model_not_cached_offline": ({"model_name_or_path": "nobody/not-cached-model"},
                                 "'nobody/not-cached-model' is neither a local folder nor in the local Hugging Face cache (offline"),
    "cutoff_below_prompt": ({"cutoff_len": 40}, "field 'cutoff_len': 40 is not above the shortest prompt of dataset 'ironman'"),
    "deepspeed_in_recipe": ({"deepspeed": "ds.json"}, "field 'deepspeed': set by the launcher"),
    "save_only_model": ({"save_only_model": True}, "field 'save_only_model': checkpoints without optimizer state cannot resume"),
    "qlora_8bit_with_zero3": ({"quantization_bit": 8}, "field 'quantization_bit': LLaMA-Factory trains only 4-bit bitsandbytes QLoRA under DeepSpeed ZeRO-3"),
    "hqq_with_zero3": ({"quantization_bit": 4, "quantization_method": "hqq"}, "field 'quantization_bit': LLaMA-Factory trains no hqq quantization under DeepSpeed ZeRO-3"),
    "pure_bf16_with_zero3": ({"pure_bf16": True}, "field 'pure_bf16': pure_bf16 is incompatible with DeepSpeed ZeRO-3"),
    "bf16_and_fp16": ({"bf16": True, "fp16": True}, "field 'fp16': bf16 and fp16 are both set"),
    "eval_without_split": ({"eval_strategy": "steps", "eval_steps": 10}, "field 'eval_strategy': 'steps' needs val_size or eval_dataset"),
    "batch_does_not_divide": ({"launch": {"gpus": 2, "global_batch_size": 30}}, "field 'launch.global_batch_size': 30 does not divide"),
    "zero_stage_4": ({"launch": {"zero_stage": 4}}, "field 'launch.zero_stage': 4 is not one of 0, 2, 3"),
    "unknown_launcher": ({"launch": {"launcher": "mpirun"}}, "field 'launch.launcher': 'mpirun' is not one of"),
    "zero_gpus": ({"launch": {"gpus": 0}}, "field 'launch.gpus': expected a positive integer, got 0"),
    "negative_nodes": ({"launch": {"nodes": -1}}, "field 'launch.nodes': expected a positive integer, got -1"),
    "launch_typo": ({"launch": {"gpu": 2}}, "unknown key 'launch.gpu' (did you mean 'gpus'?)"),
    "offload_with_zero0": ({"launch": {"zero_stage": 0, "offload": True}}, "field 'launch.offload': ZeRO-0 has nothing to offload"),
    "bf16_on_t4": ({"bf16": True, "launch": {"gpu_type": "T4"}}, "field 'bf16': T4 has no bf16 support"),
    "unknown_gpu_type": ({"launch": {"gpu_type": "A100"}}, "field 'launch.gpu_type': unknown GPU type 'A100'"),
    "bad_hub_repo": ({"launch": {"hub_repo": "no-slash"}}, "field 'launch.hub_repo': 'no-slash' is not USER/NAME"),
}  # fmt: skip

BAD_RECIPE_FILES = {
    "malformed_yaml": ("dataset: [ironman\n", "invalid YAML"),
    "empty_file": ("", "file is empty"),
    "not_a_mapping": ("- dataset: ironman\n", "expected a mapping, got list"),
}


def _one_line_exit_2(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe(case, tiny_llama3, tmp_path):
    changes, message = BAD_RECIPES[case]
    recipe = tiny_recipe_dict(tiny_llama3)
    for key, value in changes.items():
        if key == "launch":
            recipe["launch"] = {**recipe["launch"], **value}
        elif value is None:
            recipe.pop(key, None)
        else:
            recipe[key] = value
    path = write_recipe(tmp_path / "runs" / "bad.yaml", recipe)
    before = snapshot(tmp_path)
    _one_line_exit_2(lfx("check", str(path)), message)
    assert str(path) in lfx("check", str(path)).stderr or "nobody" in message or "does not exist" in message
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", sorted(BAD_RECIPE_FILES))
def test_bad_recipe_file(case, tmp_path):
    text, message = BAD_RECIPE_FILES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    _one_line_exit_2(lfx("check", str(path)), message)
    assert f"{path}" in lfx("check", str(path)).stderr and path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset(case, tiny_llama3, data_copy, tmp_path):
    breaker, message = BAD_DATASETS[case]
    breaker(data_copy)
    try:
        names = [n for n in json.loads((data_copy / "dataset_info.json").read_text(encoding="utf-8")) if n != "ironman"]
    except ValueError:
        names = []
    dataset = ",".join(["ironman", *names])
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset=dataset))
    before = snapshot(data_copy)
    _one_line_exit_2(lfx("check", str(path)), message)
    assert snapshot(data_copy) == before


@pytest.mark.parametrize("case,text,message", BAD_TEMPLATES, ids=[c[0] for c in BAD_TEMPLATES])
def test_bad_template(case, text, message, tiny_llama3, templates_copy, tmp_path):
    (templates_copy / "bad.yaml").write_text(text, encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3))
    before = snapshot(templates_copy)
    result = lfx("check", str(path))
    _one_line_exit_2(result, message)
    assert "bad.yaml" in result.stderr
    assert snapshot(templates_copy) == before


def test_catalog_has_at_least_30_distinct_cases():
    assert len(BAD_RECIPES) + len(BAD_RECIPE_FILES) + len(BAD_DATASETS) + len(BAD_TEMPLATES) >= 30
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"  # the YAML pitfall behind string_where_number
