"""LLaMA-Factory judges a recipe's arguments itself, on this machine, before a GPU is paid for.

`judge` runs LLaMA-Factory's own `get_train_args` (its argument parsing, the dataclasses' __post_init__
checks, transformers' TrainingArguments checks, and the combination rules of llamafactory/hparams/parser.py)
on exactly the arguments a rank will get: the run's train.yaml plus what train_sft.sh adds (output_dir,
deepspeed, dataset_dir). It loads no model. It runs as one process of a distributed run (LLaMA-Factory
refuses anything else), on CPU with gloo, and as on the run's GPU: bf16 support is the target GPU's
(launch/gpus.yaml), not this machine's. A refusal becomes one line naming the field and citing the upstream
line that raised it.

A few rules LLaMA-Factory applies only later, after the model has loaded (its data loader, its adapter
setup, its quantization setup): they cannot be reached without a model, so each is declared once in
LATER_RULES with the upstream line it mirrors.
"""

from __future__ import annotations

import ast
import contextlib
import io
import linecache
import os
import re
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from ..errors import LfxError
from ..validation import comma_list


@dataclass(frozen=True)
class LaterRule:
    """A rule LLaMA-Factory applies after the model has loaded, declared here with the line it mirrors."""

    upstream: str
    # (args, dataset entries by name, ZeRO stage) -> (field, why) or None
    refuse: Callable[[dict[str, Any], dict[str, dict[str, Any]], int], tuple[str, str] | None]


def _data_stage(stage: str) -> str:
    # llamafactory/train/dpo/workflow.py:45 loads DPO data with get_dataset(..., stage="rm").
    return "rm" if stage in ("rm", "dpo") else stage


def _ranking_fits_stage(args: dict[str, Any], entries: dict[str, dict[str, Any]], zero_stage: int) -> tuple[str, str] | None:
    stage = str(args.get("stage", "sft"))
    wants_ranking = _data_stage(stage) == "rm"
    for key in ("dataset", "eval_dataset"):
        for name in comma_list(args.get(key)):
            ranking = bool(entries.get(name, {}).get("ranking", False))
            if ranking != wants_ranking:
                what = "a ranking dataset (chosen/rejected pairs)" if ranking else "not a ranking dataset"
                need = "needs ranking data (\"ranking\": true)" if wants_ranking else "trains on prompt/response data"
                return key, f"dataset '{name}' is {what}, and stage '{stage}' {need}"
    return None


def _one_adapter_under_zero3(args: dict[str, Any], entries: dict[str, dict[str, Any]], zero_stage: int) -> tuple[str, str] | None:
    adapters = [a for a in comma_list(args.get("adapter_name_or_path")) if a]
    if len(adapters) > 1 and zero_stage == 3:
        return "adapter_name_or_path", "cannot use multiple adapters in DeepSpeed ZeRO-3: merge the earlier ones into the base first (lfx merge)"
    return None


def _quantization_under_zero3(args: dict[str, Any], entries: dict[str, dict[str, Any]], zero_stage: int) -> tuple[str, str] | None:
    bits, method = args.get("quantization_bit"), str(args.get("quantization_method") or "bnb")
    if bits is None or zero_stage != 3:
        return None
    if method == "bnb" and bits != 4:
        return "quantization_bit", f"only 4-bit bitsandbytes QLoRA trains under DeepSpeed ZeRO-3 (got {bits}-bit): use 4 or zero_stage 2"
    if method in ("hqq", "eetq"):
        return "quantization_method", f"{method.upper()} quantization is incompatible with DeepSpeed ZeRO-3: use bnb or zero_stage 2"
    return None


LATER_RULES = (
    LaterRule("llamafactory/data/loader.py:178 (\"The dataset is not applicable in the current training stage.\")",
              _ranking_fits_stage),
    LaterRule("llamafactory/model/adapter.py:164 (\"Cannot use multiple adapters in DeepSpeed ZeRO-3.\")", _one_adapter_under_zero3),
    LaterRule("llamafactory/model/model_utils/quantization.py:188-212 (4-bit only; HQQ and EETQ refused under ZeRO-3)",
              _quantization_under_zero3),
)  # fmt: skip


def check_later_rules(where: str, args: dict[str, Any], entries: dict[str, dict[str, Any]], zero_stage: int) -> None:
    for rule in LATER_RULES:
        found = rule.refuse(args, entries, zero_stage)
        if found:
            key, why = found
            raise LfxError(f"{where}: field '{key}': {why} (LLaMA-Factory refuses it after loading the model: {rule.upstream})")


def judge(where: str, args: dict[str, Any], deepspeed_config: Path, dataset_dir: Path, bf16_capable: bool) -> None:
    """LLaMA-Factory's get_train_args on the arguments a rank gets; LfxError naming the field on a refusal."""
    with tempfile.TemporaryDirectory(prefix="lfx-judge-") as out, _one_process_of_a_run(), _quiet():
        import llamafactory.hparams.parser as parser
        import transformers.training_args as training_args

        rank_args = {**args, "output_dir": out, "deepspeed": str(deepspeed_config), "dataset_dir": str(dataset_dir),
                     "ddp_backend": "gloo"}  # fmt: skip
        capable = mock.patch.object(training_args, "is_torch_bf16_gpu_available", return_value=bf16_capable)
        with capable, mock.patch.object(parser, "is_torch_bf16_gpu_available", return_value=bf16_capable):
            try:
                parser.get_train_args(rank_args)
            except ValueError as err:
                raise LfxError(refusal_line(where, err, set(args))) from None


def refusal_line(where: str, err: ValueError, written: set[str]) -> str:
    """`WHERE: field 'x': LLaMA-Factory's words (it refuses this at launch: FILE:LINE)`: the field is one the
    message names in backticks, else one the raising `if` tests, preferring what the recipe sets."""
    frame = traceback.extract_tb(err.__traceback__)[-1]
    text = " ".join(str(err).split()).rstrip(".")
    named = re.findall(r"`(\w+)`", text) + _tested_fields(frame.filename, frame.lineno)
    key = next((n for n in named if n in written), named[0] if named else "")
    location = frame.filename.split("site-packages/")[-1]
    field_part = f"field '{key}': " if key else ""
    return f"{where}: {field_part}{text} (LLaMA-Factory refuses it at launch: {location}:{frame.lineno})"


def _tested_fields(filename: str, lineno: int) -> list[str]:
    """The argument fields (`x_args.name`, `self.name`) that the `if` statements around a raise test."""
    try:
        tree = ast.parse("".join(linecache.getlines(filename)))
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and node.lineno <= lineno <= (node.end_lineno or node.lineno):
            for sub in ast.walk(node.test):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.attr not in found:
                    if sub.value.id == "self" or sub.value.id.endswith("_args"):
                        found.append(sub.attr)
    return found


@contextlib.contextmanager
def _one_process_of_a_run() -> Iterator[None]:
    """Rank 0 of a one-process gloo run, torn down after: LLaMA-Factory only judges arguments of a launched rank."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    saved = dict(os.environ)
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    try:
        yield
    finally:
        import torch.distributed as dist
        from accelerate.state import AcceleratorState, PartialState

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        PartialState._reset_state()
        AcceleratorState._reset_state(True)
        # TrainingArguments with a DeepSpeed config leave ZeRO-3 switched on for every later model load of this
        # process (transformers' global HfDeepSpeedConfig), and DeepSpeed keeps its backend to the group destroyed
        # above: a later load would call deepspeed.zero.Init and look for MPI.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        if "deepspeed.comm.comm" in sys.modules:
            sys.modules["deepspeed.comm.comm"].cdb = None
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """DeepSpeed prints its op builds and LLaMA-Factory its argument summary: not this command's output."""
    import logging

    loggers = ("llamafactory", "transformers", "DeepSpeed", "accelerate", "torch.utils.cpp_extension")
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
