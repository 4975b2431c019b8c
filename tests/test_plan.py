"""lfx plan: batch arithmetic, DeepSpeed's estimators, parameter counts, GPU table."""

from __future__ import annotations

import json
import math

from conftest import REPO, lfx, tiny_recipe_dict, write_recipe


def test_plan_of_the_seed_run_on_two_a100(tmp_path):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    result = lfx("plan", str(REPO / "launch" / "ironman.yaml"), "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert math.isclose(plan["params_b"], 8.03, rel_tol=1e-3)  # from launch/models.yaml (not cached here)
    assert plan["world_size"] == 2 and plan["global_batch"] == 4 * 4 * 2
    assert plan["steps_per_epoch"] == math.ceil(math.ceil(66 / 2) / 4) // 4 and plan["total_steps"] == 10 * plan["steps_per_epoch"]
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
