"""`lfx plan`: batch arithmetic, steps, per-GPU memory and cost of a run, before renting anything.

Model-state memory comes from DeepSpeed's own ZeRO estimators (for the trainable parameters) plus
the frozen 16-bit base that LoRA keeps (partitioned under ZeRO-3, replicated otherwise). Activations
are a rough estimate with gradient checkpointing (LLaMA-Factory's default). Time assumes
6 x params FLOPs per token for LoRA (8 x for full fine-tuning, both with recomputation) at 40%
of the GPU's dense bf16 throughput. Prices and GPU specs are data: launch/gpus.yaml.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import LfxError
from ..files import read_yaml
from ..models import cached_config
from ..paths import REPO_ROOT
from ..recipe import Recipe, gpu_type
from ..recipe.schema import GPUS_FILE

MODELS_FILE = REPO_ROOT / "launch" / "models.yaml"
MFU = 0.40
OVERHEAD_GB = 2.0  # CUDA context, NCCL buffers, allocator fragmentation
USABLE = 0.92  # of the card's memory
DISK_MARGIN = 1.2  # over the estimated outputs: tokenizer files, logs, a save in progress
UNKNOWN_MODEL_DISK_GB = 20  # checkpoints of an 8B LoRA run and its merged model, with room to spare
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Arch:
    params: float
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    source: str
    weight_bytes: int = 2  # a parameter's bytes in the model's own dtype (config.json's dtype), 16-bit when unknown


def architecture(recipe: Recipe) -> Arch:
    """From config.json (a local folder or the Hub cache), else from launch/models.yaml."""
    name = str(recipe.args["model_name_or_path"])
    found = cached_config(name, revision=recipe.args.get("model_revision"), cache_dir=recipe.args.get("cache_dir"))
    if found is not None:
        config, source = found
        config = config.get("text_config", config)
        keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not all(k in config for k in keys):
            raise LfxError(f"{source}: not a decoder config lfx plan understands (needs {', '.join(keys)})")
        arch = {k: int(config[k]) for k in keys}
        arch["num_key_value_heads"] = int(config.get("num_key_value_heads") or arch["num_attention_heads"])
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
        return Arch(params=_count(arch, bool(config.get("tie_word_embeddings"))), source=source,
                    weight_bytes=4 if dtype == "float32" else 2, **arch)  # fmt: skip
    models = read_yaml(MODELS_FILE)
    if name in models:
        return Arch(source=str(MODELS_FILE), **models[name])
    raise LfxError(f"{recipe.path}: field 'model_name_or_path': no config.json for '{name}' here (local folder or "
                   f"Hugging Face cache) and no entry in {MODELS_FILE.name}")  # fmt: skip


def _layer(a: dict[str, int]) -> int:
    """The parameters of one decoder layer: attention, MLP, two norms."""
    h, inter = a["hidden_size"], a["intermediate_size"]
    kv = h // a["num_attention_heads"] * a["num_key_value_heads"]
    return 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h


def _count(a: dict[str, int], tied: bool) -> float:
    h, layers, v = a["hidden_size"], a["num_hidden_layers"], a["vocab_size"]
    return float(v * h * (1 if tied else 2) + layers * _layer(a) + h)


def trainable_params(arch: Arch, args: dict[str, Any]) -> float:
    """What the run trains: every parameter (full), the decoder layers freeze_trainable_layers names (freeze:
    LLaMA-Factory's default 2, the last ones; negative counts the first ones), or the LoRA matrices."""
    kind = args.get("finetuning_type", "lora")
    if kind == "full":
        return arch.params
    if kind == "freeze":
        layers = min(abs(int(args.get("freeze_trainable_layers", 2))), arch.num_hidden_layers)
        return float(layers * _layer(asdict(arch)))
    return lora_params(arch, args)


def lora_params(arch: Arch, args: dict[str, Any]) -> float:
    h, inter = arch.hidden_size, arch.intermediate_size
    kv = h // arch.num_attention_heads * arch.num_key_value_heads
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
              "qkv_proj": (h, h + 2 * kv), "gate_up_proj": (h, 2 * inter)}  # fmt: skip
    from ..validation import comma_list

    target = comma_list(args.get("lora_target", "all"))
    names = LINEAR if target == ["all"] else [t for t in target if t in shapes]
    rank = int(args.get("lora_rank", 8))
    return float(arch.num_hidden_layers * sum(rank * sum(shapes[n]) for n in names))


def samples(recipe: Recipe) -> int:
    """The training samples of a run: each dataset's records as LLaMA-Factory takes them (num_samples, then
    max_samples), less its val_size split."""
    from ..persona.dataset_entries import dataset_names, load_entries
    from ..persona.dataset_records import countable_records, taken, val_split

    names = dataset_names(recipe.args["dataset"])
    entries = load_entries(names=names)
    max_samples = recipe.args.get("max_samples")
    total = sum(taken(entries[n], len(countable_records(entries[n], recipe.args.get("cache_dir"))), max_samples) for n in names)
    train, _ = val_split(total, recipe.args.get("val_size"), int(recipe.args.get("seed", 42)), f"{recipe.path}: field 'val_size'")
    return len(train)


def gpu_memory_gb(arch: Arch, recipe: Recipe, gpus_per_node: int, nodes: int, tokens: int) -> dict[str, float]:
    """Per-GPU memory: model states (DeepSpeed's estimators) + frozen base + activations + overhead."""
    import contextlib
    import sys

    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed announces its accelerator on stdout
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    args, launch = recipe.args, recipe.launch
    trainable = trainable_params(arch, args)
    kind = args.get("finetuning_type", "lora")
    frozen = {"full": 0.0, "freeze": arch.params - trainable}.get(kind, arch.params)  # LoRA: the whole base
    world = gpus_per_node * nodes
    offload = launch["offload"]
    bits = args.get("quantization_bit")
    frozen_bytes = frozen * (bits / 8 if bits else 2)
    largest = arch.vocab_size * arch.hidden_size
    if launch["zero_stage"] == 3:
        _, states, _ = estimate_zero3_model_states_mem_needs(int(trainable), int(largest), gpus_per_node, nodes,
                                                             cpu_offload=offload, cpu_offload_params=offload,
                                                             additional_buffer_factor=1.0)  # fmt: skip
        base = 0.0 if offload else frozen_bytes / world
    else:
        stage_world = world if launch["zero_stage"] == 2 else 1
        _, states = estimate_zero2_model_states_mem_needs(int(trainable), stage_world, 1, cpu_offload=offload,
                                                          additional_buffer_factor=1.0)  # fmt: skip
        base = frozen_bytes
    batch = int(args.get("per_device_train_batch_size", 8))
    h, inter, layers = arch.hidden_size, arch.intermediate_size, arch.num_hidden_layers
    acts = batch * tokens * (2 * h * layers + 2 * (12 * h + 6 * inter) + 8 * arch.vocab_size)
    return {"model_states_gb": states / 1e9, "frozen_base_gb": base / 1e9, "activations_gb": acts / 1e9,
            "overhead_gb": OVERHEAD_GB, "total_gb": (states + base + acts) / 1e9 + OVERHEAD_GB}  # fmt: skip


@dataclass
class Plan:
    recipe: str
    model: str
    params_b: float
    trainable_params_m: float
    samples: int
    world_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    tokens_per_sample: int
    tokens_source: str
    gpu_type: str
    memory: dict[str, float]
    disk: dict[str, float]
    fits: bool
    smallest_fitting_gpus: int | None
    hours: float
    cost_usd: float
    options: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _steps(n: int, per_device: int, accumulation: int, world: int, args: dict[str, Any]) -> tuple[int, int, int]:
    """(optimizer steps per epoch, in all, of warm-up) as the trainer counts them. Each rank's dataloader holds
    ceil(n / world) samples in batches of per_device (accelerate shards the batches: ceil(n / (per_device x world))
    a rank, the last one short); transformers' Trainer.set_initial_training_values (trainer.py) makes an epoch
    `len // accumulation + (len % accumulation > 0)` steps, at least 1, and the run max_steps or
    ceil(num_train_epochs x that); warm-up is TrainingArguments.get_warmup_steps of warmup_steps (or
    warmup_ratio, which transformers 5 reads as warmup_steps)."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    batches = math.ceil(n / (per_device * world))
    steps_per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    max_steps = args.get("max_steps") or -1
    total = max_steps if max_steps > 0 else math.ceil(float(args.get("num_train_epochs", 3.0)) * steps_per_epoch)
    warmup = args["warmup_ratio"] if args.get("warmup_ratio") is not None else args.get("warmup_steps") or 0
    return steps_per_epoch, total, TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=warmup), total)


def _checkpoints(args: dict[str, Any], total: int, steps_per_epoch: int) -> int:
    """How many checkpoints a run keeps on disk at its end, as transformers saves them: every save_steps (a
    fraction < 1 of the run's steps) and at the last step, or every epoch; save_total_limit keeps the newest."""
    from transformers import TrainingArguments

    defaults = TrainingArguments.__dataclass_fields__
    strategy = str(args.get("save_strategy") or defaults["save_strategy"].default)
    if strategy == "no":
        return 0
    if strategy == "epoch":
        count = math.ceil(total / steps_per_epoch)
    else:
        every = float(args.get("save_steps") or defaults["save_steps"].default)
        every = math.ceil(total * every) if every < 1 else int(every)
        count = math.ceil(total / every)
    limit = args.get("save_total_limit")
    return min(count, int(limit)) if limit else count


def disk_gb(arch: Arch, args: dict[str, Any], total: int, steps_per_epoch: int) -> dict[str, float]:
    """What a run leaves on its output volume: its checkpoints, its final adapter (or model) and, for LoRA, the
    merged model. A checkpoint holds the weights (a LoRA adapter in fp32, as LLaMA-Factory upcasts trainable
    parameters; else the whole model in its own dtype) and DeepSpeed's optimizer states (fp32 master weights and
    Adam's two moments: 12 bytes a trainable parameter); tokenizer files and logs are left to the margin."""
    trainable = trainable_params(arch, args)
    lora = args.get("finetuning_type", "lora") == "lora"
    weights = trainable * 4 if lora else arch.params * arch.weight_bytes
    count = _checkpoints(args, total, steps_per_epoch)
    checkpoint = weights + 12 * trainable
    merged = arch.params * arch.weight_bytes if lora else 0.0
    return {"checkpoints": count, "checkpoint_gb": checkpoint / 1e9, "output_gb": weights / 1e9, "merged_gb": merged / 1e9,
            "total_gb": (count * checkpoint + weights + merged) / 1e9}  # fmt: skip


def min_free_disk_gb(recipe: Recipe) -> int:
    """train_sft.sh's free-disk check (run.json's min_free_disk_gb): the run's outputs (disk_gb) and a fifth
    more, in whole GB; UNKNOWN_MODEL_DISK_GB when the model's size is not known here."""
    try:
        arch = architecture(recipe)
    except LfxError:
        return UNKNOWN_MODEL_DISK_GB
    args = recipe.args
    world = recipe.launch["nodes"] * recipe.launch["gpus"]
    per_device = int(args.get("per_device_train_batch_size", 8))
    accumulation = int(args.get("gradient_accumulation_steps", 1))
    try:
        n = samples(recipe)
    except LfxError:  # a Hub dataset not downloaded here: the count of checkpoints is not known
        one = disk_gb(arch, {**args, "save_strategy": "steps", "save_steps": 1, "max_steps": 1}, 1, 1)
        return max(UNKNOWN_MODEL_DISK_GB, math.ceil(one["total_gb"] * DISK_MARGIN))
    steps_per_epoch, total, _ = _steps(n, per_device, accumulation, world, args)
    return max(1, math.ceil(disk_gb(arch, args, total, steps_per_epoch)["total_gb"] * DISK_MARGIN))


def _hours(arch: Arch, recipe: Recipe, total_steps: int, global_batch: int, tokens: int, gpu: dict, world: int) -> float:
    full = recipe.args.get("finetuning_type", "lora") == "full"
    per_token = 8 if full else 6
    if recipe.args.get("stage") == "dpo":  # both answers of a pair, and the reference model's forward pass over them
        reference = 0 if recipe.args.get("pref_loss", "sigmoid") in ("orpo", "simpo") else 2
        per_token = 2 * (per_token + reference)
    flops = per_token * arch.params * tokens * global_batch * total_steps
    return flops / (world * gpu["tflops"] * 1e12 * MFU) / 3600


def estimate(recipe: Recipe, *, gpu: str | None = None, tokens: int | None = None, tokens_source: str | None = None) -> Plan:
    """The plan of a loaded recipe; `tokens` is the mean tokens per sample when known (else cutoff_len)."""
    arch = architecture(recipe)
    chosen = gpu_type(gpu or recipe.launch["gpu_type"] or "A100-80GB-SXM")
    args = recipe.args
    cutoff = int(args.get("cutoff_len", 2048))
    if tokens is None:
        tokens, tokens_source = cutoff, "cutoff_len (upper bound; the tokenizer is not available here)"
    n = samples(recipe)
    per_device = int(args.get("per_device_train_batch_size", 8))
    accumulation = int(args.get("gradient_accumulation_steps", 1))
    nodes, per_node = recipe.launch["nodes"], recipe.launch["gpus"]
    world = nodes * per_node
    steps_per_epoch, total, warmup = _steps(n, per_device, accumulation, world, args)
    global_batch = per_device * accumulation * world
    memory = gpu_memory_gb(arch, recipe, per_node, nodes, cutoff)
    fits = memory["total_gb"] <= chosen["memory_gb"] * USABLE
    table = read_yaml(GPUS_FILE)
    options = []
    for name, row in table.items():
        row = {"name": name, **row}
        count = next((c for c in (1, 2, 4, 8) if gpu_memory_gb(arch, recipe, c, 1, cutoff)["total_gb"] <= row["memory_gb"] * USABLE), None)
        if count is None:
            options.append({"gpu_type": name, "gpus": None})
            continue
        s_epoch, s_total, _ = _steps(n, per_device, accumulation, count, args)
        hours = _hours(arch, recipe, s_total, per_device * accumulation * count, tokens, row, count)
        options.append({"gpu_type": name, "gpus": count, "bf16": row["bf16"], "hours": hours,
                        "cost_usd": hours * count * row["usd_per_hour"]})  # fmt: skip
    smallest = next((o["gpus"] for o in options if o["gpu_type"] == chosen["name"]), None)
    hours = _hours(arch, recipe, total, global_batch, tokens, chosen, world)
    return Plan(
        recipe=str(recipe.path), model=str(args["model_name_or_path"]), params_b=arch.params / 1e9,
        trainable_params_m=trainable_params(arch, args) / 1e6,
        samples=n, world_size=world, global_batch=global_batch, steps_per_epoch=steps_per_epoch, total_steps=total,
        warmup_steps=warmup, tokens_per_sample=tokens, tokens_source=tokens_source or "", gpu_type=chosen["name"],
        memory=memory, disk=disk_gb(arch, args, total, steps_per_epoch), fits=fits, smallest_fitting_gpus=smallest, hours=hours,
        cost_usd=hours * world * chosen["usd_per_hour"], options=options,
    )  # fmt: skip


def render_plan(p: Plan, console, bf16: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(escape(f"{p.recipe}: {p.model} ({p.params_b:.2f}B parameters, {p.trainable_params_m:.1f}M trainable)"))
    console.print(f"samples {p.samples}, {p.world_size} GPUs, global batch {p.global_batch}, "
                  f"{p.steps_per_epoch} steps/epoch, {p.total_steps} steps, {p.warmup_steps} warmup")  # fmt: skip
    m = p.memory
    console.print(f"per-GPU memory on {p.gpu_type}: model states {m['model_states_gb']:.1f} GB + frozen base "
                  f"{m['frozen_base_gb']:.1f} GB + activations {m['activations_gb']:.1f} GB + overhead "
                  f"{m['overhead_gb']:.1f} GB = {m['total_gb']:.1f} GB: " + ("fits" if p.fits else "[red]does not fit[/]"))  # fmt: skip
    d = p.disk
    merged = f" + merged model {d['merged_gb']:.2f} GB" if d["merged_gb"] else ""
    console.print(f"disk for the outputs: {d['checkpoints']} checkpoint(s) x {d['checkpoint_gb']:.2f} GB + final "
                  f"{d['output_gb']:.2f} GB{merged} = {d['total_gb']:.2f} GB")  # fmt: skip
    console.print(escape(f"time ~{p.hours:.2f} h, cost ~${p.cost_usd:.2f} (tokens/sample: {p.tokens_per_sample}, "
                         f"from {p.tokens_source})"))  # fmt: skip
    table = Table(title="cheapest fit per GPU type (one node)", title_justify="left")
    for col in ("GPU type", "GPUs", "hours", "cost USD"):
        table.add_column(col, justify="left" if col == "GPU type" else "right")
    usable = [o for o in p.options if o["gpus"] and (o["bf16"] or not bf16)]
    cheapest = min(usable, key=lambda o: o["cost_usd"], default=None)
    for o in sorted(p.options, key=lambda o: (o["gpus"] is None, o.get("cost_usd", 0))):
        if o["gpus"] is None:
            table.add_row(o["gpu_type"], "does not fit", "", "")
            continue
        mark = " (cheapest)" if o is cheapest else "" if o["bf16"] or not bf16 else " (no bf16)"
        table.add_row(o["gpu_type"] + mark, str(o["gpus"]), f"{o['hours']:.2f}", f"{o['cost_usd']:.2f}")
    console.print(table)


def mean_tokens(recipe: Recipe) -> tuple[int | None, str | None]:
    """Mean tokens per sample (capped at cutoff_len) with the run's tokenizer, when it is available here."""
    from ..persona.dataset_entries import dataset_names
    from .encoding import aligned_records, load_tokenizer_and_template
    from .lengths import message_lengths

    try:
        tokenizer, template = load_tokenizer_and_template(recipe)
    except LfxError:
        return None, None
    cutoff = int(recipe.args.get("cutoff_len", 2048))
    totals = [min(sum(lens), cutoff) for name in dataset_names(recipe.args["dataset"])
              for lens in message_lengths(tokenizer, template, aligned_records(recipe, name))]  # fmt: skip
    return int(sum(totals) / len(totals)), "the datasets, with the run's tokenizer and template"


def run(recipe_path: str, overrides: tuple[str, ...], gpus: int | None, gpu: str | None, as_json: bool, echo) -> None:
    """`lfx plan`: the plan on stdout (a table, or JSON)."""
    import json

    from ..recipe import load_recipe
    from .check import quiet_llamafactory

    quiet_llamafactory()
    recipe = load_recipe(recipe_path, None, {"gpus": gpus} if gpus else None, overrides)
    tokens, source = mean_tokens(recipe)
    result = estimate(recipe, gpu=gpu, tokens=tokens, tokens_source=source)
    for line in recipe.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if as_json:
        echo(json.dumps(result.to_dict(), indent=2))
    else:
        from rich.console import Console

        render_plan(result, Console(highlight=False), bool(recipe.args.get("bf16")))
