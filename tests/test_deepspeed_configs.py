"""Every DeepSpeed config parses through DeepSpeed's own config parser after the HF Trainer fills its "auto"s."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

CONFIGS = sorted((REPO / "deepspeed_configs").glob("*.json"))
STAGES = {"ds_z0": 0, "ds_z2": 2, "ds_z2_offload": 2, "ds_z3": 3, "ds_z3_offload": 3}


def test_all_stages_are_shipped():
    assert {p.name.removesuffix("_config.json") for p in CONFIGS} == set(STAGES)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses_with_deepspeed(path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(REPO / "runs" / "unused"), per_device_train_batch_size=4,
                             gradient_accumulation_steps=4, report_to="none")  # fmt: skip
    hf = HfTrainerDeepSpeedConfig(json.loads(path.read_text()))
    hf.trainer_config_process(args)
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        hf.fill_match(f"zero_optimization.{key}", 4096)  # model-size autos, filled by the Trainer at init
    config = DeepSpeedConfig(hf.config)
    stage = STAGES[path.name.removesuffix("_config.json")]
    assert config.zero_optimization_stage == stage
    assert config.train_batch_size == 16
    if stage == 3:
        assert config.zero_config.gather_16bit_weights_on_model_save is True
    offload = "offload" in path.name
    assert (config.zero_config.offload_optimizer is not None) == offload
