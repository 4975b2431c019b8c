"""Run recipes (launch/*.yaml): LLaMA-Factory arguments plus a `launch` block, validated before
anything is rendered or launched.

    preset: llama3-alpha-ko-8b      # optional, from launch/presets.yaml
    dataset: ironman
    ...                              # any LLaMA-Factory argument
    launch: {gpus: 2, nodes: 1, zero_stage: 3, offload: false, launcher: deepspeed,
             hub_repo: USER/NAME, global_batch_size: 32, gpu_type: A100-80GB-SXM}
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import read_yaml
from .paths import REPO_ROOT

PRESETS_FILE = REPO_ROOT / "launch" / "presets.yaml"
LAUNCH_DEFAULTS = {"gpus": 1, "nodes": 1, "zero_stage": 3, "offload": False, "launcher": "deepspeed",
                   "hub_repo": None, "global_batch_size": None, "gpu_type": None}  # fmt: skip
GPUS_FILE = REPO_ROOT / "launch" / "gpus.yaml"
LAUNCHERS = ("deepspeed", "torchrun")
ZERO_STAGES = (0, 2, 3)
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    args: dict[str, Any]  # LLaMA-Factory arguments
    launch: dict[str, Any]

    @property
    def deepspeed_config(self) -> Path:
        suffix = "_offload" if self.launch["offload"] else ""
        return REPO_ROOT / "deepspeed_configs" / f"ds_z{self.launch['zero_stage']}{suffix}_config.json"


def llamafactory_argument_types() -> dict[str, Any]:
    """Every argument LLaMA-Factory's parser accepts, with its type, from its own dataclasses."""
    import dataclasses
    import typing

    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    types: dict[str, Any] = {}
    for cls in (ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments, TrainingArguments):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            types.setdefault(f.name, hints.get(f.name, Any))
    return types


def llamafactory_argument_names() -> set[str]:
    return set(llamafactory_argument_types())


def _type_error(value: Any, tp: Any) -> str | None:
    """Why `value` does not fit the annotation `tp` (None when it does), the way HfArgumentParser reads it."""
    import enum
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return None
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # Union[SchedulerType, str]: the string must name a member
            choices = [m.value for e in enums for m in e]
            if value not in choices:
                hint = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
                return f"'{value}' is not one of the known values" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            return None
        errors = [_type_error(value, a) for a in args]
        return None if any(e is None for e in errors) else next(e for e in errors if e)
    if tp is type(None):
        return None if value is None else "expected null"
    if origin is typing.Literal:
        return None if value in args else f"{value!r} is not one of {', '.join(map(str, args))}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        return None if value in choices or isinstance(value, tp) else f"{value!r} is not one of {', '.join(map(str, choices))}"
    if tp is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if tp is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"expected an integer, got {value!r}"
    if tp is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            return f"expected a number, got the string {value!r} (YAML reads {value} as text: write {float(value):.1e})"
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else f"expected a number, got {value!r}"
    if tp is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple) or tp in (list, tuple):
        return None if isinstance(value, (list, tuple)) else f"expected a list, got {value!r}"
    if origin is dict or tp is dict:
        return None if isinstance(value, dict) else f"expected a mapping, got {value!r}"
    return None


# Arguments that must be positive (LLaMA-Factory would fail, loop forever or train nothing otherwise).
POSITIVE = ("learning_rate", "num_train_epochs", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
            "lora_rank", "lora_alpha", "save_steps", "logging_steps", "eval_steps", "max_samples")  # fmt: skip


def check_arguments(where: str, data: dict[str, Any]) -> None:
    """Types and ranges of LLaMA-Factory arguments, before anything starts."""
    types = llamafactory_argument_types()
    for key, value in data.items():
        error = _type_error(value, types[key])
        if error:
            raise LfxError(f"{where}: field '{key}': {error}")
    for key in POSITIVE:
        if key in data and data[key] is not None and data[key] <= 0:
            raise LfxError(f"{where}: field '{key}': must be positive, got {data[key]}")
    max_steps = data.get("max_steps")
    if max_steps is not None and (max_steps == 0 or max_steps < -1):
        raise LfxError(f"{where}: field 'max_steps': must be positive (or -1 for num_train_epochs), got {data['max_steps']}")
    for key in ("warmup_ratio", "lora_dropout"):
        if key in data and not 0 <= data[key] < 1:
            raise LfxError(f"{where}: field '{key}': must be in [0, 1), got {data[key]}")
    val = data.get("val_size")
    if val is not None and (val < 0 or (isinstance(val, float) and val >= 1)):
        raise LfxError(f"{where}: field 'val_size': a fraction in [0, 1) or a number of samples, got {val}")


def _positive_int(where: str, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LfxError(f"{where}: field '{key}': expected a positive integer, got {value!r}")
    return value


def _check_launch(where: str, block: Any) -> dict[str, Any]:
    if not isinstance(block, dict):
        raise LfxError(f"{where}: field 'launch': expected a mapping, got {type(block).__name__}")
    for key in block:
        if key not in LAUNCH_DEFAULTS:
            hint = difflib.get_close_matches(key, list(LAUNCH_DEFAULTS), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else f" (allowed: {', '.join(LAUNCH_DEFAULTS)})"
            raise LfxError(f"{where}: unknown key 'launch.{key}'{extra}")
    launch = {**LAUNCH_DEFAULTS, **block}
    _positive_int(where, "launch.gpus", launch["gpus"])
    _positive_int(where, "launch.nodes", launch["nodes"])
    if launch["zero_stage"] not in ZERO_STAGES or isinstance(launch["zero_stage"], bool):
        raise LfxError(f"{where}: field 'launch.zero_stage': {launch['zero_stage']!r} is not one of 0, 2, 3")
    if not isinstance(launch["offload"], bool):
        raise LfxError(f"{where}: field 'launch.offload': expected true or false")
    if launch["offload"] and launch["zero_stage"] == 0:
        raise LfxError(f"{where}: field 'launch.offload': ZeRO-0 has nothing to offload (use zero_stage 2 or 3)")
    if launch["launcher"] not in LAUNCHERS:
        raise LfxError(f"{where}: field 'launch.launcher': '{launch['launcher']}' is not one of {', '.join(LAUNCHERS)}")
    if launch["hub_repo"] is not None and not (isinstance(launch["hub_repo"], str) and REPO_ID.match(launch["hub_repo"])):
        raise LfxError(f"{where}: field 'launch.hub_repo': '{launch['hub_repo']}' is not USER/NAME")
    if launch["global_batch_size"] is not None:
        _positive_int(where, "launch.global_batch_size", launch["global_batch_size"])
    if launch["gpu_type"] is not None:
        gpu_type(launch["gpu_type"], f"{where}: field 'launch.gpu_type'")
    return launch


def gpu_type(name: str, where: str = "--gpu-type") -> dict[str, Any]:
    """A row of launch/gpus.yaml (memory, bf16, TFLOPS, price)."""
    table = read_yaml(GPUS_FILE)
    if name not in table:
        hint = difflib.get_close_matches(str(name), list(table), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(table)})"
        raise LfxError(f"{where}: unknown GPU type '{name}'{extra}")
    return {"name": name, **table[name]}


def _check_batch(where: str, args: dict[str, Any], launch: dict[str, Any]) -> None:
    per_device = _positive_int(where, "per_device_train_batch_size", args.get("per_device_train_batch_size", 8))
    world = launch["gpus"] * launch["nodes"]
    if "gradient_accumulation_steps" in args:
        _positive_int(where, "gradient_accumulation_steps", args["gradient_accumulation_steps"])
    wanted = launch["global_batch_size"]
    if wanted is None:
        return
    if wanted % (per_device * world):
        raise LfxError(
            f"{where}: field 'launch.global_batch_size': {wanted} does not divide into "
            f"per_device_train_batch_size {per_device} x {world} GPUs"
        )
    accumulation = wanted // (per_device * world)
    if args.setdefault("gradient_accumulation_steps", accumulation) != accumulation:
        raise LfxError(
            f"{where}: field 'launch.global_batch_size': {wanted} needs gradient_accumulation_steps {accumulation} "
            f"with {per_device} per device x {world} GPUs, not {args['gradient_accumulation_steps']}"
        )


def load_recipe(path: str | Path, preset: str | None = None, launch: dict[str, Any] | None = None) -> Recipe:
    """Read a recipe, apply its preset, and check it against LLaMA-Factory, our templates and datasets.

    `preset` and `launch` override the file's (the Makefile's MODEL=, GPUS=, STAGE=, LAUNCHER=).
    """
    from .datasets import load_entries
    from .train import _names

    path = Path(path)
    where = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise LfxError(f"{where}: expected a mapping, got {type(data).__name__}")
    data = dict(data)
    block = data.pop("launch", {})
    launch = _check_launch(where, {**block, **(launch or {})} if isinstance(block, dict) else block)
    preset_name = preset or data.pop("preset", None)
    data.pop("preset", None)
    if preset_name is not None:
        presets = read_yaml(PRESETS_FILE)
        if preset_name not in presets:
            raise LfxError(f"{where}: field 'preset': unknown preset '{preset_name}' (known: {', '.join(presets)})")
        data = {**presets[preset_name], **data}

    known = llamafactory_argument_names()
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise LfxError(f"{where}: unknown key '{key}': not a LLaMA-Factory argument{extra}")
    check_arguments(where, data)
    for key in ("model_name_or_path", "dataset", "template"):
        if not data.get(key):
            raise LfxError(f"{where}: missing '{key}' (or a preset that sets it)")
    for key in ("deepspeed", "output_dir", "dataset_dir"):
        if key in data:
            raise LfxError(f"{where}: field '{key}': set by the launcher, remove it (use launch.zero_stage)")
    if data.get("save_only_model"):
        raise LfxError(f"{where}: field 'save_only_model': checkpoints without optimizer state cannot resume; "
                       "train_sft.sh resumes from the newest checkpoint (remove it)")
    if data.get("overwrite_output_dir"):
        raise LfxError(f"{where}: field 'overwrite_output_dir': would discard the checkpoints train_sft.sh "
                       "resumes from (remove it; delete the output folder to start over)")
    _check_batch(where, data, launch)

    from llamafactory.data.template import TEMPLATES

    from .templates import register_templates

    ours = register_templates()
    if data["template"] not in TEMPLATES:
        raise LfxError(f"{where}: field 'template': unknown template '{data['template']}' (ours: {', '.join(ours)})")
    entries = load_entries()
    for key in ("dataset", "eval_dataset"):
        for name in _names(data.get(key)):
            if name not in entries:
                raise LfxError(f"{where}: field '{key}': unknown dataset '{name}' (known: {', '.join(sorted(entries))})")
    return Recipe(path=path, name=path.stem, args=data, launch=launch)
