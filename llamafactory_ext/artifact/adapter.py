"""A peft LoRA adapter read for merging: its A/B pairs with their scales (rank and alpha patterns, rsLoRA),
full replacements (modules_to_save), and the refusals where base + adapter is not the trained model."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json

ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
UNSUPPORTED = {
    "use_dora": "DoRA adapters (use peft's merge_and_unload)",
    "lora_bias": "LoRA bias terms",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices",
    "layer_replication": "layer replication",
    "use_qalora": "QA-LoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
}

# init_lora_weights values that leave the base weights as they are (peft.tuners.lora.layer, update_layer):
# PiSSA, CorDA and OLoRA subtract their initial B @ A from the base, LoftQ replaces it with a quantized
# residual, so merging into the original base would be wrong.
EXACT_INITS = (True, False, "gaussian", "eva", "orthogonal")


@dataclass
class LoraPair:
    module: str
    a: Any  # torch.Tensor (r, in) or, for embeddings, (r, num_embeddings)
    b: Any  # torch.Tensor (out, r)
    scale: float
    embedding: bool = False

    @property
    def delta_shape(self) -> tuple[int, int]:
        if self.embedding:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])


@dataclass
class Adapter:
    path: Path
    config: dict[str, Any]
    pairs: dict[str, LoraPair] = field(default_factory=dict)  # base weight key -> pair
    full: dict[str, Any] = field(default_factory=dict)  # base weight key -> replacement (modules_to_save)

    @property
    def base_name(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's own rule (peft.utils.other.get_pattern_key): a pattern matches a module name suffix."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def load_adapter(path: str | Path) -> Adapter:
    """Read a peft LoRA adapter folder and pair up its A/B matrices with their scales."""
    import torch

    path = Path(path)
    if not path.is_dir():
        raise LfxError(f"{path}: adapter folder not found")
    config_path = path / ADAPTER_CONFIG
    if not config_path.is_file():
        checkpoints = sorted(path.glob("checkpoint-*"))
        hint = f" (checkpoints inside: {', '.join(p.name for p in checkpoints)})" if checkpoints else ""
        raise LfxError(f"{config_path}: missing: not a LoRA adapter folder{hint}")
    config = read_json(config_path)
    if config.get("peft_type") != "LORA":
        raise LfxError(f"{config_path}: field 'peft_type': {config.get('peft_type')!r} is not LORA")
    for key, what in UNSUPPORTED.items():
        if config.get(key):
            raise LfxError(f"{config_path}: field '{key}': lfx merge does not support {what}")
    init = config.get("init_lora_weights", True)
    if init not in EXACT_INITS:
        raise LfxError(f"{config_path}: field 'init_lora_weights': {init!r} initialisation rewrote the base weights "
                       "when the adapter was created, so base + adapter is not the trained model; save the adapter "
                       "converted to plain LoRA (LLaMA-Factory: pissa_convert: true; peft: save_pretrained(..., "
                       "path_initial_model_for_weight_conversion=...)) and merge that")  # fmt: skip

    weights_path = path / "adapter_model.safetensors"
    if weights_path.is_file():
        from .shards import problem

        why = problem(weights_path)
        if why:
            raise LfxError(f"{weights_path}: {why}")
        from safetensors.torch import load_file

        state = load_file(str(weights_path))
    elif (path / "adapter_model.bin").is_file():
        weights_path = path / "adapter_model.bin"
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 (a cut or foreign pickle: the file to fix, named)
            raise LfxError(f"{weights_path}: cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    else:
        raise LfxError(f"{path}/adapter_model.safetensors: missing: the adapter has no weights file")

    adapter = Adapter(path=path, config=config)
    halves: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        if tensor.numel() == 0:
            raise LfxError(f"{weights_path}: tensor '{key}' is empty: a ZeRO-3 checkpoint saved without "
                           "stage3_gather_16bit_weights_on_model_save; merge the run's final output instead")  # fmt: skip
        name = key.removeprefix(PREFIX)
        match = re.match(r"(.+)\.(lora_A|lora_B)\.weight$|(.+)\.(lora_embedding_A|lora_embedding_B)$", name)
        if match:
            module = match.group(1) or match.group(3)
            part = match.group(2) or match.group(4)
            halves.setdefault(module, {})[part] = tensor
        elif ".lora_" in name or "lora_magnitude_vector" in name:
            raise LfxError(f"{weights_path}: tensor '{key}': unsupported LoRA tensor")
        else:
            # modules_to_save, or the embedding base layer peft saves beside its LoRA: a full replacement.
            adapter.full[name.replace(".base_layer.", ".")] = tensor

    rslora = bool(config.get("use_rslora"))
    for module, parts in sorted(halves.items()):
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if a_key not in parts or b_key not in parts:
            missing = b_key if a_key in parts else a_key
            raise LfxError(f"{weights_path}: module '{module}': {missing} is missing")
        a, b = parts[a_key], parts[b_key]
        rank = a.shape[0]
        if b.shape[1] != rank:
            raise LfxError(f"{weights_path}: module '{module}': A has rank {rank}, B has {b.shape[1]}")
        expected = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r", rank))
        if expected != rank:
            raise LfxError(f"{config_path}: module '{module}': rank {expected} in the config, {rank} in the weights")
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        if config.get("fan_in_fan_out") and not embedding:
            a, b = b.T.contiguous(), a.T.contiguous()  # store as W.T += scale * A.T @ B.T
        adapter.pairs[f"{module}.weight"] = LoraPair(module, a, b, scale, embedding)
    if not adapter.pairs and not adapter.full:
        raise LfxError(f"{weights_path}: no LoRA weights found")
    return adapter


def stacked_adapters(record: dict[str, Any]) -> list[str]:
    """The adapters LLaMA-Factory merged into the base in memory before training this one
    (llamafactory/model/adapter.py, _setup_lora_tuning: every adapter_name_or_path but the last, which it
    resumes, or all of them with create_new_adapter; none are merged under ZeRO-3 or quantization)."""
    args = record.get("args") or {}
    value = args.get("adapter_name_or_path")
    adapters = [a.strip() for a in value.split(",") if a.strip()] if isinstance(value, str) else list(value or [])
    mergeable = record.get("zero_stage") != 3 and not args.get("quantization_bit") and not args.get("use_unsloth")
    return adapters if args.get("create_new_adapter") and mergeable else adapters[:-1]


def check_not_stacked(adapter_path: Path, record: dict[str, Any]) -> None:
    earlier = stacked_adapters(record)
    if earlier:
        raise LfxError(f"{adapter_path}: lfx_run.json: field 'args.adapter_name_or_path': this adapter was trained on the base with "
                       f"{', '.join(earlier)} merged into it first, so merging it alone into the base drops them: merge "
                       f"those first (lfx merge {earlier[0]} -o BASE2), then this one with --base BASE2")  # fmt: skip
