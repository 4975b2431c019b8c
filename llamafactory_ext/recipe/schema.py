"""The recipe, declared: LLaMA-Factory's arguments (typed from its dataclasses) plus our `launch` block,
with the rules that relate fields to each other as validators, each citing the LLaMA-Factory line that
would otherwise refuse the run at launch, after the GPUs are paid for."""

from __future__ import annotations

import functools
import re
import traceback
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

    gpus: PositiveInt = 1
    nodes: PositiveInt = 1
    zero_stage: Literal[0, 2, 3] = 3
    offload: StrictBool = False
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed"
    hub_repo: Optional[StrictStr] = None
    global_batch_size: Optional[PositiveInt] = None
    gpu_type: Optional[StrictStr] = None

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


LAUNCH_DEFAULTS = Launch().model_dump()
LAUNCHER_SET = ("deepspeed", "output_dir", "dataset_dir", "resume_from_checkpoint")  # train_sft.sh passes these
# option -> why it cannot run under DeepSpeed ZeRO-3: each one LLaMA-Factory 0.9.5 itself refuses, in
# llamafactory/hparams/parser.py (_verify_model_args / get_train_args, lines 369-413).
ZERO3_INCOMPATIBLE = {
    "predict_with_generate": "predict_with_generate is incompatible with DeepSpeed ZeRO-3",
    "pure_bf16": "pure_bf16 is incompatible with DeepSpeed ZeRO-3",
    "use_unsloth": "Unsloth is incompatible with DeepSpeed ZeRO-3",
    "use_kt": "KTransformers is incompatible with DeepSpeed ZeRO-3",
    "pissa_init": "PiSSA initialisation under ZeRO-3 needs scripts/pissa_init.py first",
}
# QLoRA under ZeRO-3: LLaMA-Factory loads a 4-bit bitsandbytes model without a device map there
# (llamafactory/model/model_utils/quantization.py, configure_quantization: "Only 4-bit quantized model
# can use fsdp+qlora"), and refuses HQQ and EETQ ("... is incompatible with DeepSpeed ZeRO-3 or FSDP").
ZERO3_QUANTIZATION = {"bnb": (4,), "hqq": (), "eetq": ()}
# llamafactory/hparams/parser.py, _verify_model_args (lines 186-202): refused with a quantized model.
QUANTIZED_INCOMPATIBLE = {
    "resize_vocab": "cannot resize embedding layers of a quantized model",
    "pissa_init": "PiSSA on a quantized model needs scripts/pissa_init.py first",
}


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
    def streaming_needs_steps(self):
        # llamafactory/hparams/parser.py:356-357: "Please specify `max_steps` in streaming mode."
        if self.streaming and (self.max_steps is None or self.max_steps == -1):
            raise FieldProblem("max_steps", "streaming datasets have no length: set max_steps (LLaMA-Factory refuses "
                               "streaming without it at launch: llamafactory/hparams/parser.py:357)")  # fmt: skip
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
    def launch_combinations(self):
        zero3 = self.launch.zero_stage == 3
        if self.export_dir:
            # Training never reads it: only `llamafactory-cli export` does (llamafactory/train/tuner.py, export_model).
            raise FieldProblem("export_dir", "training ignores it (no merged model would be written): remove it, "
                               "train, then `lfx merge` the output")  # fmt: skip
        bits = self.quantization_bit
        adapters = [a for a in comma_list(self.adapter_name_or_path) if a]
        if len(adapters) > 1 and (zero3 or bits is not None):
            # llamafactory/model/adapter.py, _setup_lora_tuning: "Cannot use multiple adapters in DeepSpeed ZeRO-3.";
            # parser.py:202 "Quantized model only accepts a single adapter."
            raise FieldProblem("adapter_name_or_path", "LLaMA-Factory takes a single adapter under "
                               f"{'DeepSpeed ZeRO-3' if zero3 else 'quantization'}; merge the earlier ones into the base "
                               "first (lfx merge)")  # fmt: skip
        if zero3:
            for key, why in ZERO3_INCOMPATIBLE.items():
                if getattr(self, key):
                    raise FieldProblem(key, why)
            method = str(self.quantization_method or "bnb")
            if bits is not None and bits not in ZERO3_QUANTIZATION.get(method, (bits,)):
                what = "only 4-bit bitsandbytes QLoRA" if method == "bnb" else f"no {method} quantization"
                raise FieldProblem("quantization_bit", f"LLaMA-Factory trains {what} under DeepSpeed ZeRO-3 (got "
                                   f"{bits}-bit {method}): use quantization_bit 4 or zero_stage 2")  # fmt: skip
        if bits is not None:
            for key, why in QUANTIZED_INCOMPATIBLE.items():
                if getattr(self, key):
                    raise FieldProblem(key, why)
            if self.adapter_name_or_path and self.create_new_adapter:
                raise FieldProblem("create_new_adapter", "cannot create a new adapter upon a quantized model")
            if (self.finetuning_type or "lora") not in ("lora", "oft"):
                raise FieldProblem("quantization_bit", "quantized training needs finetuning_type lora (QLoRA)")
        if self.bf16 and self.fp16:
            raise FieldProblem("fp16", "bf16 and fp16 are both set; choose one")
        gpu = gpu_table().get(self.launch.gpu_type or "")
        if gpu and (self.bf16 or self.pure_bf16) and not gpu["bf16"]:
            raise FieldProblem("bf16", f"{self.launch.gpu_type} has no bf16 support; use fp16: true (or another GPU type)")
        if (self.eval_strategy or "no") != "no" and not (self.val_size or self.eval_dataset):
            # llamafactory/hparams/parser.py:364 ("Please make sure eval_dataset be provided or val_size >1e-6")
            raise FieldProblem("eval_strategy", f"'{self.eval_strategy}' needs val_size or eval_dataset")
        return self

    @model_validator(mode="after")
    def llamafactory_post_init(self):
        """LLaMA-Factory's own refusals in its argument dataclasses' __post_init__ (data_args.py,
        finetuning_args.py), run on the recipe's values: the line it would die on at launch, cited."""
        from llamafactory.hparams import DataArguments, FinetuningArguments

        values = self.model_dump(exclude_unset=True)
        for cls in (DataArguments, FinetuningArguments):
            keys = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
            try:
                cls(**keys)
            except ValueError as err:
                frame = traceback.extract_tb(err.__traceback__)[-1]
                where = frame.filename.split("site-packages/")[-1]
                text = " ".join(str(err).split()).rstrip(".")
                field = next(iter(re.findall(r"`(\w+)`", text)), "")
                raise FieldProblem(field if field in values else "", f"{text} (LLaMA-Factory refuses it at launch: "
                                   f"{where}:{frame.lineno})") from None  # fmt: skip
        return self


@functools.cache
def recipe_model() -> type[BaseModel]:
    """The recipe schema: a field for every LLaMA-Factory argument, `launch`, and the rules above."""
    fields: dict[str, Any] = {name: (field_type(name, tp), None) for name, tp in argument_types().items()}
    fields["launch"] = (Launch, Launch())
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
