"""A peft LoRA adapter read for merging: each module's saved tensors with the settings peft's own LoRA layer
gets for it (rank and alpha patterns, rsLoRA, fan_in_fan_out, DoRA), full replacements (modules_to_save),
and the refusals where base + adapter is not the trained model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json
from ..validation import comma_list

ADAPTER_CONFIG = "adapter_config.json"
PREFIX = "base_model.model."
UNSUPPORTED = {
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

# A module's tensors as peft saves them (peft.utils.save_and_load: the adapter name left out, DoRA's magnitude
# without its ".weight") -> their names in peft's LoRA layer for adapter "default".
LAYER_KEYS = {
    "lora_A.weight": "lora_A.default.weight",
    "lora_B.weight": "lora_B.default.weight",
    "lora_embedding_A": "lora_embedding_A.default",
    "lora_embedding_B": "lora_embedding_B.default",
    "lora_magnitude_vector": "lora_magnitude_vector.default.weight",
}
# The tensors with one row per output feature: a block of output features takes the same block of their rows.
PER_OUTPUT = ("lora_B.weight", "lora_embedding_B", "lora_magnitude_vector")
SAVED = re.compile(rf"(.+)\.({'|'.join(map(re.escape, LAYER_KEYS))})$")


@dataclass
class LoraModule:
    """One module's LoRA tensors (fp32, named as peft saves them) and the settings peft's layer gets for it."""

    module: str
    tensors: dict[str, Any]
    settings: dict[str, Any]  # r, lora_alpha, use_rslora, use_dora, fan_in_fan_out
    _layer: Any = field(default=None, repr=False, compare=False)  # peft's layer merged() reuses block to block

    @property
    def embedding(self) -> bool:
        return any(name.startswith("lora_embedding") for name in self.tensors)

    @property
    def a_b(self) -> tuple[str, str]:
        return ("lora_embedding_A", "lora_embedding_B") if self.embedding else ("lora_A.weight", "lora_B.weight")

    @property
    def out_axis(self) -> int:
        """The base weight's axis of output features: nn.Linear stores (out, in); nn.Embedding and transformers'
        Conv1D (fan_in_fan_out) store (in, out)."""
        return 1 if self.embedding or self.settings["fan_in_fan_out"] else 0

    @property
    def delta_shape(self) -> tuple[int, int]:
        """The shape of the base weight this module updates: (out, in), or (in, out) when out_axis is 1."""
        a, b = (self.tensors[name] for name in self.a_b)
        return (a.shape[1], b.shape[0]) if self.out_axis else (b.shape[0], a.shape[1])

    def layer(self, weight, rows: slice | None = None):
        """peft's own LoRA layer for this module around `weight` (the block `rows` of its output features), holding
        the adapter's tensors: its merge() leaves the merged block in get_base_layer().weight. Built on the meta
        device, then given the real tensors without a copy."""
        import torch
        from peft.tuners.lora import Embedding, Linear
        from transformers.pytorch_utils import Conv1D

        out_features, in_features = weight.shape[::-1] if self.out_axis else weight.shape
        with torch.device("meta"):
            if self.embedding:
                settings = {k: v for k, v in self.settings.items() if k != "fan_in_fan_out"}  # as peft's dispatch_default
                layer = Embedding(torch.nn.Embedding(in_features, out_features), "default", init_lora_weights=False, **settings)
            else:
                if self.settings["fan_in_fan_out"]:
                    base = Conv1D(out_features, in_features)
                    base.bias = None  # the merge never reads it
                else:
                    base = torch.nn.Linear(in_features, out_features, bias=False)
                layer = Linear(base, "default", init_lora_weights=False, **self.settings)
        state = {"base_layer.weight": weight}
        for name, tensor in self.tensors.items():
            state[LAYER_KEYS[name]] = tensor[rows] if rows is not None and name in PER_OUTPUT else tensor
        layer.load_state_dict(state, strict=True, assign=True)
        return layer

    def merged(self, weight, rows: slice):
        """`weight` (the block `rows` of the output features, fp32) with this module's update merged in by peft's own
        layer (its merge()): the layer is built once per module (layer() checked its tensors against the settings)
        and given each block's tensors, the same ones layer() would give it, without building it again."""
        import torch

        if self._layer is None:
            self._layer = self.layer(weight, rows)
        else:
            layer = self._layer
            params = {"base_layer.weight": weight}
            params.update({LAYER_KEYS[name]: self.tensors[name][rows] for name in PER_OUTPUT if name in self.tensors})
            for key, tensor in params.items():
                owner, _, attr = key.rpartition(".")
                setattr(layer.get_submodule(owner), attr, torch.nn.Parameter(tensor, requires_grad=False))
            layer.merged_adapters.clear()  # this block is not merged yet: merge() skips a merged adapter
        self._layer.merge()
        return self._layer.get_base_layer().weight


@dataclass
class Adapter:
    path: Path
    config: dict[str, Any]
    pairs: dict[str, LoraModule] = field(default_factory=dict)  # base weight key -> its LoRA module
    full: dict[str, Any] = field(default_factory=dict)  # base weight key -> replacement (modules_to_save)

    @property
    def base_name(self) -> str:
        return str(self.config.get("base_model_name_or_path") or "")


def load_adapter(path: str | Path) -> Adapter:
    """Read a peft LoRA adapter folder: each module's tensors with the settings peft's layer gets for it."""
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

    settings = _peft_settings(config, config_path)
    adapter = Adapter(path=path, config=config)
    saved: dict[str, dict[str, Any]] = {}
    for key, tensor in state.items():
        if tensor.numel() == 0:
            raise LfxError(f"{weights_path}: tensor '{key}' is empty: a ZeRO-3 checkpoint saved without "
                           "stage3_gather_16bit_weights_on_model_save; merge the run's final output instead")  # fmt: skip
        name = key.removeprefix(PREFIX)
        match = SAVED.match(name)
        if match:
            saved.setdefault(match.group(1), {})[match.group(2)] = tensor.to(torch.float32)
        elif ".lora_" in name:
            raise LfxError(f"{weights_path}: tensor '{key}': unsupported LoRA tensor")
        else:
            # modules_to_save, or the embedding base layer peft saves beside its LoRA: a full replacement.
            adapter.full[name.replace(".base_layer.", ".")] = tensor

    for module, tensors in sorted(saved.items()):
        lora = LoraModule(module, tensors, settings(module))
        missing = [name for name in lora.a_b if name not in tensors]
        if missing:
            raise LfxError(f"{weights_path}: module '{module}': {missing[0]} is missing")
        try:  # peft's layer, on the meta device, checks that the tensors fit the settings
            lora._layer = lora.layer(torch.empty(lora.delta_shape, device="meta"))  # merged() gives it each block
        except RuntimeError as err:
            why = re.sub(r"^Error\(s\) in loading state_dict for \w+: ", "", " ".join(str(err).split()))
            raise LfxError(f"{weights_path}: module '{module}': does not fit peft's LoRA layer for {ADAPTER_CONFIG} "
                           f"(r={lora.settings['r']}, use_dora={lora.settings['use_dora']}): {why}") from None  # fmt: skip
        adapter.pairs[f"{module}.weight"] = lora
    if not adapter.pairs and not adapter.full:
        raise LfxError(f"{weights_path}: no LoRA weights found")
    return adapter


def _peft_settings(config: dict[str, Any], config_path: Path):
    """The settings peft gives each module's LoRA layer (peft.tuners.lora.model, LoraModel._create_and_replace):
    the config read by peft's LoraConfig, rank and alpha looked up with peft's get_pattern_key."""
    from peft import LoraConfig
    from peft.utils.other import get_pattern_key

    try:
        lora_config = LoraConfig.from_peft_type(**config)
    except (TypeError, ValueError) as err:
        raise LfxError(f"{config_path}: peft cannot read it: {' '.join(str(err).split())}") from None
    ranks, alphas = lora_config.rank_pattern or {}, lora_config.alpha_pattern or {}

    def settings(module: str) -> dict[str, Any]:
        return {"r": ranks.get(get_pattern_key(ranks.keys(), module), lora_config.r),
                "lora_alpha": alphas.get(get_pattern_key(alphas.keys(), module), lora_config.lora_alpha),
                "use_rslora": lora_config.use_rslora, "use_dora": lora_config.use_dora,
                "fan_in_fan_out": lora_config.fan_in_fan_out}  # fmt: skip

    return settings


def stacked_adapters(record: dict[str, Any]) -> list[str]:
    """The adapters LLaMA-Factory merged into the base in memory before training this one
    (llamafactory/model/adapter.py, _setup_lora_tuning: every adapter_name_or_path but the last, which it
    resumes, or all of them with create_new_adapter; none are merged under ZeRO-3 or quantization)."""
    args = record.get("args") or {}
    adapters = [a for a in comma_list(args.get("adapter_name_or_path")) if a]
    mergeable = record.get("zero_stage") != 3 and not args.get("quantization_bit") and not args.get("use_unsloth")
    return adapters if args.get("create_new_adapter") and mergeable else adapters[:-1]


def check_not_stacked(adapter_path: Path, record: dict[str, Any]) -> None:
    earlier = stacked_adapters(record)
    if earlier:
        raise LfxError(f"{adapter_path}: lfx_run.json: field 'args.adapter_name_or_path': this adapter was trained on the base with "
                       f"{', '.join(earlier)} merged into it first, so merging it alone into the base drops them: merge "
                       f"those first (lfx merge {earlier[0]} -o BASE2), then this one with --base BASE2")  # fmt: skip
