"""Merge a LoRA adapter into its base model shard by shard: peak memory is one shard plus the adapter.

For each base safetensors shard: read it, merge the adapter into the weights it targets with peft's own LoRA
layer (fp32, stored back in the base's dtype), write it, move on; shards the adapter does not touch are copied.
Everything goes to a temporary folder next to OUT that is renamed at the end, so an interrupted merge
never leaves a half model at OUT. The merged tokenizer carries the run's persona chat template and
`generation_config.json` lists the template's stop word among its eos ids; the run's record, plots and
evaluation come along (the run being merged, never the base's when the base is itself a merged model).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from .. import record as run_record
from ..errors import LfxError
from ..files import atomic_write_text, check_replaceable, dump_json, read_json, refuse_overwrite, staged_folder
from ..models import resolve
from .adapter import ADAPTER_CONFIG, Adapter, LoraModule, check_not_stacked, load_adapter
from .shards import DTYPE_BYTES, Header, ShardWriter, read_header, read_into, torch_dtype
from .tokenizer_files import PERSONA_RECORD, recorded_persona_tokenizer, write_persona_tokenizer, write_stop_ids

COMMAND = "lfx merge"  # what its output folder's marker names: --force replaces only a folder it wrote
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
BLOCK = 2**20  # weights merged at a time: 4 MiB in fp32, whose temporaries stay in the CPU's cache
# Base files that are weights (replaced by ours), that describe the base and not the merge, or that belong
# to the run the base came from (a merged base carries its own run's record, plots and evaluation).
SKIP_BASE = re.compile(r".*\.(safetensors|bin|pt|pth|h5|msgpack|onnx|gguf)$|^(README\.md|\.gitattributes|"
                       + "|".join(re.escape(n) for n in (INDEX, run_record.MERGE_RECORD, PERSONA_RECORD, *run_record.RUN_FILES))
                       + r")$")  # fmt: skip


def resolve_base(name: str, record: dict[str, Any] | None = None, where: str = "base model") -> Path:
    """The base model folder: a local folder, or the Hub id with the run's model_revision and cache_dir."""
    args = (record or {}).get("args") or {}
    return resolve(name, where, revision=args.get("model_revision"), cache_dir=args.get("cache_dir"),
                   hint=" (pass --base PATH)")  # fmt: skip


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


def _merge_tensor(weight, lora: LoraModule, buffers: dict):
    """Merge `lora` into `weight` in place with peft's own LoRA layer (its merge(): get_delta_weight with the
    rsLoRA scaling and fan_in_fan_out, DoRA's magnitude), in fp32, stored back in the weight's dtype. A block of
    output features at a time: each one's merged values depend only on its own rows of B and of the magnitude,
    and blocks of a few MB bound the fp32 work whatever the tensor's size (and reuse the same memory: the fp32
    copy of each block goes into one buffer of `buffers`)."""
    import torch

    axis = lora.out_axis
    size = weight.shape[axis]
    step = max(1, BLOCK * size // weight.numel())
    with torch.no_grad():
        for start in range(0, size, step):
            block = weight.narrow(axis, start, min(step, size - start))
            if block.dtype == torch.float32:
                work = block  # as block.to(torch.float32) gives it: merged in place
            else:
                work = _buffer(buffers, torch.float32, block.numel()).view(block.shape).copy_(block)
            block.copy_(lora.merged(work, slice(start, start + block.shape[axis])))
    return weight


def _buffer(buffers: dict, dtype, numel: int):
    """The first `numel` elements of the buffer of `dtype` in `buffers`, grown when too small: memory reused from
    tensor to tensor and block to block, whose pages are faulted in once instead of once per allocation."""
    import torch

    if dtype not in buffers or buffers[dtype].numel() < numel:
        buffers.pop(dtype, None)
        buffers[dtype] = torch.empty(numel, dtype=dtype)
    return buffers[dtype][:numel]


def _layout(header: Header, adapter: Adapter) -> list[tuple[str, str, tuple[int, ...]]]:
    """Names, dtypes and shapes of the merged shard: the base's, with modules_to_save shapes."""
    return [(e.name, e.dtype, tuple(adapter.full[e.name].shape) if e.name in adapter.full else e.shape)
            for e in header.entries]  # fmt: skip


def _write_shard(src: Path, dst: Path, adapter: Adapter) -> int:
    """Stream one shard into `dst`, a tensor at a time, merging the adapter's updates; returns its bytes.

    The shard is never mapped (safe_open's get_tensor maps it, and every page of a mapped tensor costs a page
    fault, and one more, copy-on-write, when it is merged in place): the tensors to merge are read into one buffer
    reused from tensor to tensor, the others are copied into `dst` by the kernel without entering the process."""
    import torch

    header = read_header(src)
    writer = ShardWriter(dst, _layout(header, adapter), {**header.metadata, "format": "pt"})
    buffers: dict = {}
    try:
        with open(src, "rb", buffering=0) as file:
            for entry in header.entries:
                if entry.name in adapter.full:
                    tensor = adapter.full[entry.name].to(torch_dtype(entry.dtype), copy=True)  # merged in place
                elif entry.name in adapter.pairs:
                    tensor = read_into(file, entry, _buffer(buffers, torch.uint8, entry.nbytes))
                else:
                    writer.copy(file, entry)
                    continue
                if entry.name in adapter.pairs:
                    tensor = _merge_tensor(tensor, adapter.pairs[entry.name], buffers)
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
    refuse_overwrite(out, [adapter_path], "merged model")
    check_replaceable(out, COMMAND, force)
    adapter = load_adapter(adapter_path)
    record, record_path = run_record.load(adapter_path, required=False)
    check_not_stacked(adapter_path, record)
    template = template or (record.get("template") or {}).get("name")
    base_name = base_arg or adapter.base_name
    if not base_name:
        raise LfxError(f"{adapter_path / ADAPTER_CONFIG}: field 'base_model_name_or_path': empty (pass --base)")
    run_folder = record_path.parent if record_path else adapter_path
    # The persona tokenizer training wrote for this template and base, copied as it is; else it is built again
    # from the template, whose name is checked here: an unknown one stops before any shard is written.
    recorded = recorded_persona_tokenizer(run_folder, template, base_name)
    if template and not recorded:
        from ..persona.registration import check_name

        check_name(template, "--template")
    base = resolve_base(base_name, record, f"{adapter_path / ADAPTER_CONFIG}: field 'base_model_name_or_path'")
    refuse_overwrite(out, [base, adapter_path], "merged model")
    weight_map = base_weight_map(base)
    check_match(adapter, base, None if ignore_base_name else base_arg, weight_map)

    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    need = plan_bytes(base, weight_map, adapter)
    free = shutil.disk_usage(parent).free
    if free < need * 1.05:
        raise LfxError(f"{parent}: {free / 1e9:.1f} GB free, the merged model needs {need / 1e9:.1f} GB")

    with staged_folder(out, COMMAND, force) as tmp:
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
        args = record.get("args") or {}
        if recorded:  # the persona tokenizer training wrote for this template and base: the same files
            files, stop_ids = recorded
            for name in files:
                shutil.copyfile(run_folder / name, tmp / name)
        else:
            stop_ids = write_persona_tokenizer(tmp, base, template, args.get("model_revision"), args.get("cache_dir"))
        write_stop_ids(tmp, stop_ids)
        for folder in dict.fromkeys((adapter_path, run_folder)):  # this run's files, never the base's
            for name in run_record.RUN_FILES:
                if (folder / name).is_file() and not (tmp / name).exists():
                    shutil.copyfile(folder / name, tmp / name)
        atomic_write_text(tmp / run_record.MERGE_RECORD, dump_json({
            "adapter": str(adapter_path.resolve()),
            "base_model": base_name,
            "template": template,
            "adapter_config": {k: adapter.config.get(k) for k in ("r", "lora_alpha", "use_rslora", "target_modules")},
        }))  # fmt: skip
    return out


def _resize_vocab(tmp: Path, adapter: Adapter) -> None:
    """modules_to_save may carry a resized embedding: the config must say so."""
    for key, tensor in adapter.full.items():
        if key.endswith("embed_tokens.weight") and (tmp / "config.json").is_file():
            config = read_json(tmp / "config.json")
            if config.get("vocab_size") != tensor.shape[0]:
                config["vocab_size"] = int(tensor.shape[0])
                atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")

