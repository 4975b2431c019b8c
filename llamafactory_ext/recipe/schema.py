"""The recipe, declared: LLaMA-Factory's arguments (typed from its dataclasses) plus our `launch` block, and
the rules that are ours (what the launcher sets, the launch shape, the stages lfx runs). LLaMA-Factory's own
combination rules are not copied here: `lfx check` runs LLaMA-Factory itself on the arguments
(recipe/upstream_rules.py)."""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
    field_validator,
    model_validator,
)

from ..files import read_yaml
from ..paths import REPO_ROOT
from ..validation import FieldProblem, comma_list, did_you_mean
from .arguments import argument_types, field_type

GPUS_FILE = REPO_ROOT / "launch" / "gpus.yaml"
PositiveInt = Annotated[StrictInt, Field(ge=1)]


@functools.cache
def gpu_table() -> dict[str, dict[str, Any]]:
    return read_yaml(GPUS_FILE)


class Launch(BaseModel):
    """How the run is launched: processes per node, nodes, DeepSpeed ZeRO stage, launcher, Hub repo."""

    model_config = ConfigDict(extra="forbid", strict=True)

    gpus: PositiveInt = Field(1, description="Training processes (GPUs) per node; `--gpus` of `lfx render` and `lfx plan` "
                              "overrides it.")
    nodes: PositiveInt = Field(1, description="Nodes; every node runs the same train_sft.sh (a cluster of another shape "
                               "is refused).")
    zero_stage: Literal[0, 2, 3] = Field(3, description="DeepSpeed ZeRO stage: picks deepspeed_configs/ds_zN_config.json "
                                         "for the run folder's ds_config.json.")
    offload: StrictBool = Field(False, description="Offload optimizer state and parameters to CPU memory (the `_offload` "
                                "config of the stage; not with ZeRO-0).")
    launcher: Literal["deepspeed", "torchrun"] = Field("deepspeed", description="The launcher train_sft.sh starts the "
                                                       "ranks with.")
    hub_repo: Optional[StrictStr] = Field(None, description="Hub repo USER/NAME that `UPLOAD=1` pushes to "
                                          "(HUB_REPO overrides it); checked by huggingface_hub's repo-id validator.")
    global_batch_size: Optional[PositiveInt] = Field(None, description="Sets gradient_accumulation_steps so that per-device "
                                                     "batch x processes x nodes x accumulation equals it (must divide).")
    gpu_type: Optional[StrictStr] = Field(None, description="A GPU type of launch/gpus.yaml: `lfx check` checks bf16 "
                                          "support on it, `lfx plan` fits memory and cost to it.")
    stop_pod_when_done: StrictBool = Field(False, description="On a RunPod pod, stop the pod when the run ends (after merge "
                                           "and upload, or after a failure); RUNPOD_STOP_WHEN_DONE=0/1 overrides it.")
    max_wall_time: Optional[StrictStr] = Field(None, description="On a RunPod pod, stop the pod this long after a start "
                                               "whatever the run is doing (e.g. 12h, 90m, 2d); LFX_MAX_WALL_TIME overrides it.")

    @field_validator("max_wall_time")
    @classmethod
    def wall_time_is_a_duration(cls, value):
        from ..pod import duration_seconds

        if value is not None and duration_seconds(value) is None:
            raise ValueError(f"'{value}' is not a duration (e.g. 12h, 90m, 2d, 3600s)")
        return value

    @field_validator("hub_repo")
    @classmethod
    def hub_repo_valid(cls, value):
        from ..hub import repo_id_problem

        problem = value and repo_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("gpu_type")
    @classmethod
    def gpu_known(cls, value):
        if value is not None and value not in gpu_table():
            raise ValueError(f"unknown GPU type '{value}'" + did_you_mean(value, gpu_table(), f" (known: {', '.join(gpu_table())})"))
        return value

    @model_validator(mode="after")
    def offload_needs_partitions(self):
        if self.offload and self.zero_stage == 0:
            raise FieldProblem("offload", "ZeRO-0 has nothing to offload (use zero_stage 2 or 3)")
        return self


class SystemPromptMix(BaseModel):
    """Ours: a share of the training records trained with another system prompt than the persona's (run/system_mix.py),
    so the persona holds when an application sends its own."""

    model_config = ConfigDict(extra="forbid", strict=True)

    share: Annotated[float, Field(gt=0, le=1)] = Field(description="the share of training records that get one of `prompts`")
    prompts: Annotated[list[StrictStr], Field(min_length=1)] = Field(description="system prompts used in place of the persona's")

    @field_validator("prompts")
    @classmethod
    def not_empty(cls, value):
        if any(not p.strip() for p in value):
            # llamafactory/data/template.py:144: `system = system or self.default_system`
            raise ValueError("an empty prompt is the persona's own to LLaMA-Factory (its template puts the default system "
                             "prompt in place of an empty one): give generic prompts, e.g. \"You are a helpful assistant.\"")
        return value


LAUNCH_DEFAULTS = Launch().model_dump()
OURS = ("launch", "system_prompt_mix")  # the recipe's keys that are not LLaMA-Factory arguments
LAUNCHER_SET = ("deepspeed", "output_dir", "dataset_dir", "resume_from_checkpoint")  # train_sft.sh passes these
# The stages lfx runs: each has its tested path through train_sft.sh, merge, eval and upload. dpo is the preference
# round after SFT (LLaMA-Factory's pref_loss: sigmoid DPO by default, `pref_loss: orpo` for ORPO; pref_beta, pref_ftx).
STAGES = ("sft", "dpo")


class RecipeRules(BaseModel):
    """Cross-field rules of a recipe; the fields themselves are LLaMA-Factory's (see recipe_model)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    unknown_key_note: ClassVar[str] = ": not a LLaMA-Factory argument"

    @model_validator(mode="after")
    def required_and_launcher_owned(self):
        for key in ("model_name_or_path", "dataset", "template"):
            if not getattr(self, key):
                raise FieldProblem("", f"missing '{key}' (or a preset that sets it)")
        for key in LAUNCHER_SET:
            if getattr(self, key) is not None:
                how = {"deepspeed": "use launch.zero_stage", "resume_from_checkpoint": "train_sft.sh resumes from the newest "
                       "complete checkpoint itself"}.get(key, "train_sft.sh sets it for the run's own folder")  # fmt: skip
                raise FieldProblem(key, f"set by the launcher, remove it ({how})")
        if self.save_only_model:
            raise FieldProblem("save_only_model", "checkpoints without optimizer state cannot resume; train_sft.sh "
                               "resumes from the newest checkpoint (remove it)")  # fmt: skip
        if self.overwrite_output_dir:
            raise FieldProblem("overwrite_output_dir", "would discard the checkpoints train_sft.sh resumes from "
                               "(remove it; `train_sft.sh --fresh` starts over)")  # fmt: skip
        return self

    @model_validator(mode="after")
    def dataset_lists(self):
        # llamafactory/hparams/data_args.py:153: "a, b," splits into ["a", "b", ""], and the empty name is
        # then "Undefined dataset  in dataset_info.json" (llamafactory/data/parser.py:126) at launch.
        for key in ("dataset", "eval_dataset"):
            if any(not n for n in comma_list(getattr(self, key))):
                raise FieldProblem(key, f"{getattr(self, key)!r} has an empty dataset name (a stray comma?)")
        return self

    @model_validator(mode="after")
    def ranges(self):
        if self.max_steps is not None and (self.max_steps == 0 or self.max_steps < -1):
            raise FieldProblem("max_steps", f"must be positive (or -1 for num_train_epochs), got {self.max_steps}")
        val = self.val_size
        if val is not None and (val < 0 or (isinstance(val, float) and not val.is_integer() and val >= 1)):
            raise FieldProblem("val_size", f"a fraction in [0, 1) or a number of samples, got {val}")
        return self

    @model_validator(mode="after")
    def launch_batch(self):
        launch = self.launch
        per_device = self.per_device_train_batch_size or 8
        world = launch.gpus * launch.nodes
        wanted = launch.global_batch_size
        if wanted is None:
            return self
        if wanted % (per_device * world):
            raise FieldProblem("launch.global_batch_size", f"{wanted} does not divide into per_device_train_batch_size "
                               f"{per_device} x {world} GPUs")  # fmt: skip
        accumulation = wanted // (per_device * world)
        if self.gradient_accumulation_steps not in (None, accumulation):
            raise FieldProblem("launch.global_batch_size", f"{wanted} needs gradient_accumulation_steps {accumulation} with "
                               f"{per_device} per device x {world} GPUs, not {self.gradient_accumulation_steps}")  # fmt: skip
        return self

    @model_validator(mode="after")
    def what_lfx_runs(self):
        """Our own rules (LLaMA-Factory judges its arguments itself in `lfx check`: recipe/upstream_rules.py)."""
        stage = self.stage or "sft"
        if stage not in STAGES:
            raise FieldProblem("stage", f"'{stage}' is not a stage lfx runs (it runs: {', '.join(STAGES)})")
        if self.export_dir:
            # Training never reads it: only `llamafactory-cli export` does (llamafactory/train/tuner.py, export_model).
            raise FieldProblem("export_dir", "training ignores it (no merged model would be written): remove it, "
                               "train, then `lfx merge` the output")  # fmt: skip
        gpu = gpu_table().get(self.launch.gpu_type or "")
        if gpu and (self.bf16 or self.pure_bf16) and not gpu["bf16"]:
            raise FieldProblem("bf16", f"{self.launch.gpu_type} has no bf16 support; use fp16: true (or another GPU type)")
        return self


@functools.cache
def recipe_model() -> type[BaseModel]:
    """The recipe schema: a field for every LLaMA-Factory argument, `launch`, and the rules above."""
    fields: dict[str, Any] = {name: (field_type(name, tp), None) for name, tp in argument_types().items()}
    fields["launch"] = (Launch, Launch())
    fields["system_prompt_mix"] = (Optional[SystemPromptMix], None)
    return create_model("Recipe", __base__=RecipeRules, **fields)


def ineffective(args: dict[str, Any], own: set[str]) -> list[str]:
    """Settings the user wrote (`own`) that will not do what they say (each `field 'x': why`): warnings."""
    found = []
    strategy = str(args.get("save_strategy", "steps"))
    if strategy == "no":
        for key in ("save_steps", "save_total_limit"):
            if key in own:
                found.append(f"field '{key}': save_strategy is \"no\": no checkpoint is saved, so {key} does nothing "
                             "(and a stopped run cannot resume)")  # fmt: skip
    if "eval_steps" in own and str(args.get("eval_strategy", "no")) == "no":
        found.append("field 'eval_steps': eval_strategy is \"no\", so nothing is evaluated during training (set "
                     "eval_strategy: steps)")  # fmt: skip
    if args.get("max_steps") not in (None, -1) and "num_train_epochs" in own:
        found.append(f"field 'num_train_epochs': max_steps {args['max_steps']} decides the length; num_train_epochs "
                     "is ignored")  # fmt: skip
    if args.get("finetuning_type", "lora") not in ("lora", "oft"):
        lora = [k for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_rslora", "use_dora") if k in own]
        if lora:
            found.append(f"field '{lora[0]}': finetuning_type is {args.get('finetuning_type')}: the LoRA settings "
                         f"({', '.join(lora)}) do nothing")  # fmt: skip
    return found
