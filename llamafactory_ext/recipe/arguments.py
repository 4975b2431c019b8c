"""LLaMA-Factory's arguments as pydantic field types, read from its own argument dataclasses.

Every argument its parser accepts (model, data, finetuning, generating, training) becomes a field of the
recipe schema with the dataclass's type, strict (YAML's "1e-4" in quotes is text, not a number), an enum
as the literal values it accepts, and the ranges below where LLaMA-Factory would fail, loop or train
nothing. Arguments that LLaMA-Factory splits on commas (`split_arg` in data_args.py and
finetuning_args.py) also take a YAML list, as it does.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, StrictBool, StrictInt, StrictStr

# llamafactory/hparams/data_args.py and finetuning_args.py, __post_init__: split_arg(...) takes "a, b" or a list.
SPLIT_ARGS = ("dataset", "eval_dataset", "lora_target", "oft_target", "additional_target", "freeze_trainable_modules",
              "freeze_extra_modules", "galore_target", "apollo_target")  # fmt: skip
POSITIVE = ("learning_rate", "num_train_epochs", "cutoff_len", "per_device_train_batch_size", "gradient_accumulation_steps",
            "lora_rank", "lora_alpha", "save_steps", "logging_steps", "eval_steps", "max_samples")  # fmt: skip
UNIT_INTERVAL = ("warmup_ratio", "lora_dropout")  # [0, 1)


@functools.cache
def argument_types() -> dict[str, Any]:
    """Every argument LLaMA-Factory's parser accepts, with its dataclass annotation."""
    from llamafactory.hparams import DataArguments, FinetuningArguments, GeneratingArguments, ModelArguments, TrainingArguments

    found: dict[str, Any] = {}
    for cls in (ModelArguments, DataArguments, FinetuningArguments, GeneratingArguments, TrainingArguments):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            found.setdefault(f.name, hints.get(f.name, Any))
    return found


def _enum_literal(tp: type[enum.Enum]) -> Any:
    return Literal[tuple(m.value for m in tp)]


def _translate(tp: Any) -> Any:
    """A dataclass annotation as a strict pydantic type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return Any
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        rest = [a for a in args if a not in enums]
        if enums and str in rest:  # Union[SchedulerType, str]: the string must name a member
            rest.remove(str)
            members = [_enum_literal(e) for e in enums] + [_translate(a) for a in rest]
        else:
            members = [_translate(a) for a in args]
        return Union[tuple(members)] if len(members) > 1 else members[0]
    if tp is type(None):
        return type(None)
    if origin is typing.Literal:
        return tp
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_literal(tp)
    if tp is bool:
        return StrictBool
    if tp is int:
        return StrictInt
    if tp is float:
        return float  # strict: an int is a number, a string is not
    if tp is str:
        return StrictStr
    if origin in (list, tuple) or tp in (list, tuple):
        return list[_translate(args[0])] if args else list
    if origin is dict or tp is dict:
        return dict
    return Any  # torch.dtype, GenerationConfig, ParallelismConfig...: not written in a recipe as such


def field_type(name: str, tp: Any) -> Any:
    """The recipe field for LLaMA-Factory argument `name` (annotation `tp`): always optional in a recipe
    (a preset or LLaMA-Factory's default fills it), None only where LLaMA-Factory accepts None."""
    translated = _translate(tp)
    if name in SPLIT_ARGS:
        translated = Union[StrictStr, list[StrictStr]]
        translated = Optional[translated]
    if name in POSITIVE:
        translated = Annotated[translated, Field(gt=0)]
    elif name in UNIT_INTERVAL:
        translated = Annotated[translated, Field(ge=0, lt=1)]
    return translated


def accepts_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
