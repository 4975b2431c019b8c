"""Merge a LoRA adapter into its base model shard by shard: peak memory is one shard plus the adapter.

For each base safetensors shard: read it, add `scale * B @ A` (fp32, stored back in the base's dtype)
to the weights the adapter targets, write it, move on; shards the adapter does not touch are copied.
Everything goes to a temporary folder next to OUT that is renamed at the end, so an interrupted merge
never leaves a half model at OUT. The merged tokenizer carries the run's persona chat template and
`generation_config.json` lists the template's stop word among its eos ids.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LfxError
from .files import atomic_write_text, dump_json, read_json, readable
from .shards import DTYPE_BYTES, Header, ShardWriter, read_header, read_tensor, torch_dtype
from .tokenizer_files import write_persona_tokenizer, write_stop_ids

ADAPTER_CONFIG = "adapter_config.json"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
MERGE_RECORD = "lfx_merge.json"
PREFIX = "base_model.model."
# Base files that are weights (replaced by ours) or that describe the base and not the merge.
SKIP_BASE = re.compile(r".*\.(safetensors|bin|pt|pth|h5|msgpack|onnx|gguf)$|^(README\.md|\.gitattributes|" + re.escape(INDEX) + r")$")
# Run files worth keeping beside the merged weights (model card: loss plot, hyperparameters).
RUN_FILES = ("lfx_run.json", "training_loss.png", "trainer_log.jsonl", "all_results.json")
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
        from safetensors.torch import load_file

        state = load_file(str(weights_path))
    elif (path / "adapter_model.bin").is_file():
        weights_path = path / "adapter_model.bin"
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
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


def resolve_base(name: str) -> Path:
    """A local folder, or the Hub id in the local cache (downloaded when online)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not re.match(r"^[\w.-]+/[\w.-]+$", name):
        raise LfxError(f"base model '{name}': no such folder (pass --base PATH)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]))
    except Exception as err:  # offline and not cached, gated, missing...
        raise LfxError(f"base model '{name}': not a local folder and not available from the Hub cache "
                       f"({type(err).__name__}); pass --base PATH") from None  # fmt: skip


def base_weight_map(base: Path) -> dict[str, str]:
    """Weight name -> shard file name, from the index or the single model.safetensors."""
    if (base / INDEX).is_file():
        index = read_json(base / INDEX)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise LfxError(f"{base / INDEX}: field 'weight_map': missing or empty")
        for shard in sorted(set(weight_map.values())):
            if not (base / shard).is_file():
                raise LfxError(f"{base / shard}: missing shard listed in {INDEX}")
        return weight_map
    if (base / SINGLE).is_file():
        return {entry.name: SINGLE for entry in read_header(base / SINGLE).entries}
    if any(base.glob("*.bin")):
        raise LfxError(f"{base}: only PyTorch .bin weights; save the base with safe_serialization=True first")
    raise LfxError(f"{base}: no model.safetensors or {INDEX}")


def _base_shapes(base: Path, weight_map: dict[str, str], keys: set[str]) -> dict[str, tuple[int, ...]]:
    headers = {shard: read_header(base / shard) for shard in {weight_map[k] for k in keys}}
    return {key: headers[weight_map[key]].shape(key) for key in keys}


def _name(path_or_id: str) -> str:
    """The model's own name in a local path, a Hub id or a Hub cache snapshot path."""
    parts = Path(path_or_id.rstrip("/")).parts
    for part in parts:
        if part.startswith("models--"):
            return part.split("--")[-1].lower()
    return parts[-1].lower() if parts else ""


def check_match(adapter: Adapter, base: Path, base_arg: str | None, weight_map: dict[str, str]) -> None:
    """The adapter must have been trained on this base: same name, every target present with its shape."""
    recorded = adapter.base_name
    if base_arg and recorded and _name(base_arg) != _name(recorded) and Path(recorded).resolve() != base.resolve():
        raise LfxError(f"{adapter.path / ADAPTER_CONFIG}: field 'base_model_name_or_path': adapter was trained on "
                       f"'{recorded}', not '{base_arg}' (pass --ignore-base-name if it is the same model)")  # fmt: skip
    wanted = set(adapter.pairs) | set(adapter.full)
    missing = sorted(wanted - set(weight_map))
    if missing:
        raise LfxError(f"{adapter.path}: adapter does not match base {base}: weight '{missing[0]}' is not in the base "
                       f"({len(missing)} missing)")  # fmt: skip
    shapes = _base_shapes(base, weight_map, wanted)
    for key, pair in adapter.pairs.items():
        shape = tuple(adapter.full[key].shape) if key in adapter.full else shapes[key]
        if shape != pair.delta_shape:
            raise LfxError(f"{adapter.path}: adapter does not match base {base}: '{key}' is {list(shape)} in the "
                           f"base, the adapter's update is {list(pair.delta_shape)}")  # fmt: skip
    for key, tensor in adapter.full.items():
        resizable = key.endswith(("embed_tokens.weight", "lm_head.weight"))
        if tuple(tensor.shape) != shapes[key] and not (resizable and tuple(tensor.shape[1:]) == shapes[key][1:]):
            raise LfxError(f"{adapter.path}: adapter does not match base {base}: '{key}' is {list(shapes[key])} in the "
                           f"base, {list(tensor.shape)} in the adapter")  # fmt: skip


def _run_record(adapter_dir: Path) -> dict[str, Any]:
    """lfx_run.json from the adapter folder, or from the run folder above a checkpoint."""
    for folder in (adapter_dir, adapter_dir.parent):
        path = folder / "lfx_run.json"
        if path.is_file():
            record = read_json(path)
            return record if isinstance(record, dict) else {}
    return {}


def _merge_tensor(weight, pair: LoraPair):
    import torch

    merged = weight.to(torch.float32)
    delta = pair.b.to(torch.float32) @ pair.a.to(torch.float32)
    merged.add_(delta.T if pair.embedding else delta, alpha=pair.scale)
    return merged.to(weight.dtype)


def _layout(header: Header, adapter: Adapter) -> list[tuple[str, str, tuple[int, ...]]]:
    """Names, dtypes and shapes of the merged shard: the base's, with modules_to_save shapes."""
    return [(e.name, e.dtype, tuple(adapter.full[e.name].shape) if e.name in adapter.full else e.shape)
            for e in header.entries]  # fmt: skip


def _write_shard(src: Path, dst: Path, adapter: Adapter) -> int:
    """Stream one shard into `dst`, a tensor at a time, merging the adapter's updates; returns its bytes."""
    header = read_header(src)
    writer = ShardWriter(dst, _layout(header, adapter), {**header.metadata, "format": "pt"})
    try:
        with open(src, "rb") as f:
            for entry in header.entries:
                if entry.name in adapter.full:
                    tensor = adapter.full[entry.name].to(torch_dtype(entry.dtype))
                else:
                    tensor = read_tensor(f, header, entry)
                if entry.name in adapter.pairs:
                    tensor = _merge_tensor(tensor, adapter.pairs[entry.name])
                writer.write(entry.name, tensor)
                del tensor
    except BaseException:
        writer.abort()  # the error that stopped the writing surfaces, not a complaint about missing tensors
        raise
    writer.close()
    return writer.total


def _shard_bytes(base: Path, shard: str, adapter: Adapter) -> int:
    return sum(math.prod(shape) * DTYPE_BYTES[dtype] for _, dtype, shape in _layout(read_header(base / shard), adapter))


def plan_bytes(base: Path, weight_map: dict[str, str], adapter: Adapter) -> int:
    """Bytes the merged folder needs: the base's weights (resized by modules_to_save) and small files."""
    total = sum(_shard_bytes(base, shard, adapter) for shard in sorted(set(weight_map.values())))
    total += sum(p.stat().st_size for p in base.iterdir() if p.is_file() and not SKIP_BASE.match(p.name))
    return total


def merge(adapter_dir: str | Path, out_dir: str | Path, base_arg: str | None = None, *, force: bool = False,
          template: str | None = None, ignore_base_name: bool = False, progress: bool = True) -> Path:  # fmt: skip
    """Merge the LoRA adapter in `adapter_dir` into its base model and write the result to `out_dir`."""
    from tqdm.auto import tqdm

    adapter_path = Path(adapter_dir)
    out = Path(out_dir)
    clean_leftovers(out)
    if out.exists() and not force:
        raise LfxError(f"{out}: already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise LfxError(f"{out}: exists and is not a folder")
    adapter = load_adapter(adapter_path)
    base_name = base_arg or adapter.base_name
    if not base_name:
        raise LfxError(f"{adapter_path / ADAPTER_CONFIG}: field 'base_model_name_or_path': empty (pass --base)")
    base = resolve_base(base_name)
    for other, what in ((base, "base model"), (adapter_path, "adapter")):
        if out.resolve() == other.resolve() or out.resolve() in other.resolve().parents:
            raise LfxError(f"{out}: would overwrite the {what}; choose another output folder")
    weight_map = base_weight_map(base)
    check_match(adapter, base, None if ignore_base_name else base_arg, weight_map)
    record = _run_record(adapter_path)
    check_not_stacked(adapter_path, record)
    template = template or (record.get("template") or {}).get("name")

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    need = plan_bytes(base, weight_map, adapter)
    free = shutil.disk_usage(parent).free
    if free < need * 1.05:
        raise LfxError(f"{parent}: {free / 1e9:.1f} GB free, the merged model needs {need / 1e9:.1f} GB")

    tmp = parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for item in sorted(base.iterdir()):
            if item.is_file() and not SKIP_BASE.match(item.name):
                shutil.copyfile(item, tmp / item.name)
        touched = {weight_map[k] for k in (*adapter.pairs, *adapter.full)}
        shards = sorted(set(weight_map.values()))
        total = 0
        for shard in tqdm(shards, desc="merging shards", unit="shard", disable=not progress):
            if shard in touched:
                total += _write_shard(base / shard, tmp / shard, adapter)
            else:
                shutil.copyfile(base / shard, tmp / shard)
                total += _shard_bytes(base, shard, adapter)
        if (base / INDEX).is_file():
            index = read_json(base / INDEX)
            index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
            atomic_write_text(tmp / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n")
        _resize_vocab(tmp, adapter)
        # Tokenizer files and stop metadata any consumer reads (transformers 4 and 5, vLLM, llama.cpp, TGI).
        write_stop_ids(tmp, write_persona_tokenizer(tmp, base, template))
        for folder in (adapter_path, adapter_path.parent):
            for name in RUN_FILES:
                if (folder / name).is_file() and not (tmp / name).exists():
                    shutil.copyfile(folder / name, tmp / name)
        atomic_write_text(tmp / MERGE_RECORD, dump_json({
            "adapter": str(adapter_path.resolve()),
            "base_model": base_name,
            "template": template,
            "adapter_config": {k: adapter.config.get(k) for k in ("r", "lora_alpha", "use_rslora", "target_modules")},
        }))  # fmt: skip
        for item in tmp.iterdir():
            readable(item)
        if out.exists():
            old = parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # disk full, quota, file size limit
            raise LfxError(f"{out}: writing the merged model failed: {err.strerror} ({err.filename or tmp}); "
                           "nothing was written") from None  # fmt: skip
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_leftovers(out: Path) -> None:
    """Remove what a killed merge into `out` left (its temporary folder), and put back a previous OUT
    that a merge killed between its two renames had moved aside."""
    parent = out.resolve().parent
    for kind in ("partial", "old"):
        for path in parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


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
        raise LfxError(f"{adapter_path}: lfx_run.json: field 'adapter_name_or_path': this adapter was trained on the base with "
                       f"{', '.join(earlier)} merged into it first, so merging it alone into the base drops them: merge "
                       f"those first (lfx merge {earlier[0]} -o BASE2), then this one with --base BASE2")  # fmt: skip


def _resize_vocab(tmp: Path, adapter: Adapter) -> None:
    """modules_to_save may carry a resized embedding: the config must say so."""
    for key, tensor in adapter.full.items():
        if key.endswith("embed_tokens.weight") and (tmp / "config.json").is_file():
            config = read_json(tmp / "config.json")
            if config.get("vocab_size") != tensor.shape[0]:
                config["vocab_size"] = int(tensor.shape[0])
                atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
