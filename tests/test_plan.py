"""lfx plan: batch arithmetic, DeepSpeed's estimators, parameter counts, GPU table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, lfx, tiny_recipe_dict, weights_and_states, write_json, write_recipe


def test_plan_of_the_seed_run_on_two_a100(tmp_path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    result = lfx("plan", str(REPO / "launch" / "ironman.yaml"), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert math.isclose(plan["params_b"], 8.03, rel_tol=1e-3)  # from launch/models.yaml (not cached here)
    assert plan["world_size"] == 2 and plan["global_batch"] == 4 * 4 * 2
    # 66 records, 4 a device on 2 GPUs: 9 batches a rank, 3 optimizer steps of 4 batches an epoch (the last one
    # short), 30 in 10 epochs (test_plan_counts_steps_as_the_trainer_does checks the rule against transformers).
    assert (plan["steps_per_epoch"], plan["total_steps"]) == (3, 30)
    trainable = 32 * 8 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336))  # rank 8, all linear
    assert math.isclose(plan["trainable_params_m"], trainable / 1e6)
    _, states, _ = estimate_zero3_model_states_mem_needs(trainable, 128256 * 4096, 2, 1, cpu_offload=False,
                                                         cpu_offload_params=False, additional_buffer_factor=1.0)  # fmt: skip
    assert math.isclose(plan["memory"]["model_states_gb"], states / 1e9)
    assert math.isclose(plan["memory"]["frozen_base_gb"], 8.03e9 * 2 / 2 / 1e9)
    assert plan["gpu_type"] == "A100-80GB-SXM" and plan["fits"] is True and plan["smallest_fitting_gpus"] == 1
    options = {o["gpu_type"]: o for o in plan["options"]}
    assert options["RTX-4090"]["gpus"] == 2 and options["T4"]["gpus"] == 4
    assert plan["cost_usd"] > 0 and min(o["cost_usd"] for o in options.values() if o["gpus"]) < plan["cost_usd"]
    text = lfx("plan", str(REPO / "launch" / "ironman.yaml"), "--gpus", "1", "--gpu-type", "RTX-4090")
    assert text.exit_code == 0 and "does not fit" in text.stdout and "(cheapest)" in text.stdout


def test_plan_counts_the_real_parameters_and_tokens_of_a_local_model(tiny_llama3, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, val_size=0.1))
    plan = json.loads(lfx("plan", str(recipe), "--json").stdout)
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(str(tiny_llama3)).parameters())
    assert plan["params_b"] * 1e9 == real
    assert plan["samples"] == 66 - math.ceil(66 * 0.1)
    assert plan["tokens_source"].startswith("the datasets") and 100 < plan["tokens_per_sample"] < 200


def test_plan_bad_gpu_type_is_one_line_exit_2():
    result = lfx("plan", str(REPO / "launch" / "ironman.yaml"), "--gpu-type", "A100")
    assert result.exit_code == 2 and "unknown GPU type 'A100'" in result.stderr


def _trainer_counts(model, samples: int, tmp_path, **arguments) -> tuple[int, int, int]:
    """(steps per epoch, steps in all, warm-up steps) as transformers' own Trainer counts them for `samples`
    records in one process (Trainer.set_initial_training_values on its real dataloader; nothing is trained)."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), report_to=[], use_cpu=True, remove_unused_columns=False,
                             **arguments)  # fmt: skip
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(str(model)), args=args,
                      train_dataset=[{"input_ids": [1, 2], "labels": [1, 2]}] * samples)  # fmt: skip
    counts = trainer.set_initial_training_values(args, trainer.get_train_dataloader())
    per_epoch, total = counts[1], counts[-1]
    return per_epoch, total, args.get_warmup_steps(total)


@pytest.mark.parametrize("batch,accumulation,epochs,num_samples", [(4, 4, 10.0, None), (2, 3, 1.5, None), (4, 4, 2.0, 90)])
def test_plan_counts_steps_as_the_trainer_does(batch, accumulation, epochs, num_samples, tiny_llama3, data_copy, tmp_path):
    """The plan's steps are transformers' own: an epoch's last optimizer step may be short (rounded up), and a
    dataset's num_samples is what the run reads (here ironman's 66 records drawn to 90)."""
    info = data_copy / "dataset_info.json"
    entries = json.loads(info.read_text(encoding="utf-8"))
    if num_samples:
        entries["ironman"]["num_samples"] = num_samples
        write_json(info, entries)
    recipe = tiny_recipe_dict(tiny_llama3, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                              num_train_epochs=epochs, warmup_ratio=0.1)  # fmt: skip
    recipe.pop("max_steps")
    recipe["launch"] = {**recipe["launch"], "gpus": 1}
    result = lfx("plan", str(write_recipe(tmp_path / "r.yaml", recipe)), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["samples"] == (num_samples or 66)
    expected = _trainer_counts(tiny_llama3, plan["samples"], tmp_path, per_device_train_batch_size=batch,
                               gradient_accumulation_steps=accumulation, num_train_epochs=epochs, warmup_ratio=0.1)  # fmt: skip
    assert (plan["steps_per_epoch"], plan["total_steps"], plan["warmup_steps"]) == expected


def test_plan_of_a_real_training_gives_its_steps(ironman_run, tmp_path):
    """The shared 2-process ZeRO-3 run: the plan of its settings says the steps it ran (global_step), and an epoch
    of its per-rank dataloader (trainer_state.json's epoch is batches run / batches a rank)."""
    config = ironman_run["config"]
    recipe = tiny_recipe_dict(Path(config["model_name_or_path"]), dataset=config["dataset"], max_steps=config["max_steps"],
                              per_device_train_batch_size=config["per_device_train_batch_size"],
                              gradient_accumulation_steps=config["gradient_accumulation_steps"])  # fmt: skip
    recipe["launch"] = {**recipe["launch"], "gpus": 2}
    plan = json.loads(lfx("plan", str(write_recipe(tmp_path / "r.yaml", recipe)), "--json").stdout)
    state = json.loads((ironman_run["adapter"] / "trainer_state.json").read_text(encoding="utf-8"))
    assert plan["total_steps"] == state["global_step"] == config["max_steps"]
    batches = plan["steps_per_epoch"] * config["gradient_accumulation_steps"]  # accumulation 1: every batch a step
    assert config["gradient_accumulation_steps"] == 1 and state["epoch"] == pytest.approx(state["global_step"] / batches)


def test_plan_disk_is_what_a_real_run_leaves(ironman_run, merged_ironman, tmp_path):
    """The shared 2-process ZeRO-3 LoRA run and its lfx merge: the plan's checkpoints, adapter and merged model are
    the bytes they take on disk; train_sft.sh's free-disk check (run.json) asks for them with a margin."""
    config = ironman_run["config"]
    recipe = tiny_recipe_dict(Path(config["model_name_or_path"]), dataset=config["dataset"], max_steps=config["max_steps"],
                              save_steps=config["save_steps"], per_device_train_batch_size=config["per_device_train_batch_size"],
                              gradient_accumulation_steps=config["gradient_accumulation_steps"])  # fmt: skip
    recipe["launch"] = {**recipe["launch"], "gpus": 2}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    disk = json.loads(lfx("plan", str(path), "--json").stdout)["disk"]
    adapter = ironman_run["adapter"]
    checkpoints = sorted(adapter.glob("checkpoint-*"))
    assert disk["checkpoints"] == len(checkpoints) == 1
    # rel 0.1: the files' headers and pickling are a few percent of a tiny model's 16k trainable parameters
    assert disk["checkpoint_gb"] * 1e9 == pytest.approx(weights_and_states(checkpoints[0]), rel=0.1)
    assert disk["output_gb"] * 1e9 == pytest.approx((adapter / "adapter_model.safetensors").stat().st_size, rel=0.1)
    assert disk["merged_gb"] * 1e9 == pytest.approx(weights_and_states(merged_ironman), rel=0.01)
    assert lfx("render", str(path), "-o", str(tmp_path / "run")).exit_code == 0
    assert json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["min_free_disk_gb"] == 1


def test_the_seed_run_asks_for_its_merged_model_and_checkpoints_on_disk(tmp_path):
    """The seed recipe (8B, LoRA): the merged bf16 model alone is 16 GB; run.json asks for that and a margin."""
    assert lfx("render", str(REPO / "launch" / "ironman.yaml"), "-o", str(tmp_path / "run")).exit_code == 0
    need = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))["min_free_disk_gb"]
    assert 8.03e9 * 2 / 1e9 < need <= 8.03e9 * 2 / 1e9 * 1.3
