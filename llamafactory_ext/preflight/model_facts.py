"""Checks of a run against its model, without its weights: the model is built on the meta device
from its config.json (a local folder or the Hugging Face cache), so an 8B model costs a second and
no memory.

- `lora_target`, `additional_target`, `freeze_trainable_modules`, `freeze_extra_modules` name modules
  the model has (peft matches a LoRA target by module-name suffix and fails only when *no* name
  matches: a typo in one of several names would train less, silently);
- `cutoff_len` against the model's context length (`max_position_embeddings`), with LLaMA-Factory's
  own RoPE scaling taken into account;
- the architecture is one LLaMA-Factory can load (its loader picks one of four transformers Auto
  classes), and a pre-quantized model is not trained under ZeRO-3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import LfxError


@dataclass
class ModelFacts:
    model_type: str
    modules: dict[str, str]  # module name -> class name
    wrappable: set[str]  # modules whose type LoRA can wrap
    parameters: list[str]
    linear: list[str]  # what lora_target "all" expands to (LLaMA-Factory's find_all_linear_modules)
    max_positions: int | None
    absolute_positions: bool  # learned position embeddings: nothing can stretch them
    rope_scalable: bool  # LLaMA-Factory's configure_rope can enlarge the context
    quantization: str | None  # quant_method of a pre-quantized (PTQ) model


def load_config(recipe, name: str):
    """The model's config from a local folder or the cache; None when it is not here."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True, trust_remote_code=bool(recipe.args.get("trust_remote_code")),
                                          revision=recipe.args.get("model_revision") or "main",
                                          cache_dir=recipe.args.get("cache_dir"))  # fmt: skip
    except OSError:
        return None
    except (ValueError, KeyError) as err:  # a model_type this transformers does not know
        import transformers

        found = re.search(r"model type `([^`]+)`", str(err))
        what = f"model type '{found.group(1)}'" if found else f"its config ({' '.join(str(err).split())[:160]})"
        raise LfxError(f"{recipe.path}: field 'model_name_or_path': '{recipe.args['model_name_or_path']}' has an "
                       f"architecture transformers {transformers.__version__} cannot build: {what}") from None  # fmt: skip


def load_class(config):
    """The Auto class LLaMA-Factory's loader picks for this config (llamafactory/model/loader.py, load_model)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForTextToWaveform

    for cls in (AutoModelForImageTextToText, AutoModelForSeq2SeqLM, AutoModelForTextToWaveform, AutoModelForCausalLM):
        if type(config) in cls._model_mapping.keys():
            return cls
    return None


def model_facts(recipe, config) -> ModelFacts:
    import torch
    from llamafactory.model.model_utils.misc import find_all_linear_modules

    cls = load_class(config)
    if cls is None:
        raise LfxError(f"{recipe.path}: field 'model_name_or_path': architecture '{config.model_type}' "
                       f"({', '.join(getattr(config, 'architectures', None) or [])}) is not a model LLaMA-Factory can "
                       "train (no causal-LM, image-text, seq2seq or text-to-waveform class for it)")  # fmt: skip
    with torch.device("meta"):
        model = cls.from_config(config, trust_remote_code=bool(recipe.args.get("trust_remote_code")))
    from transformers.pytorch_utils import Conv1D

    modules = {name: type(module).__name__ for name, module in model.named_modules() if name}
    # Layer types peft's LoRA can wrap (peft.tuners.lora.layer, dispatch_default).
    layers = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d,
              torch.nn.MultiheadAttention, Conv1D)  # fmt: skip
    wrappable = {name for name, module in model.named_modules() if isinstance(module, layers)}
    text = getattr(config, "text_config", None) or config
    max_positions = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    absolute = any(isinstance(m, torch.nn.Embedding) and re.search(r"(^|\.)(wpe|embed_positions|position_embeddings)$", n)
                   for n, m in model.named_modules())  # fmt: skip
    quant = getattr(config, "quantization_config", None)
    quant_method = (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)) if quant else None
    return ModelFacts(
        model_type=str(config.model_type),
        modules=modules,
        wrappable=wrappable,
        parameters=[n for n, _ in model.named_parameters()],
        linear=sorted(find_all_linear_modules(model, bool(recipe.args.get("freeze_vision_tower", True)))),
        max_positions=int(max_positions) if max_positions else None,
        absolute_positions=absolute,
        rope_scalable=hasattr(config, "rope_scaling") and not absolute,
        quantization=str(getattr(quant_method, "value", quant_method)) if quant_method else None,
    )


def _matches(modules: dict[str, str], target: str) -> list[str]:
    """peft's rule for a list of target names: the module name is the target or ends with '.target'."""
    return [n for n in modules if n == target or n.endswith("." + target)]


def _short(names: list[str] | set[str], limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def finetuning_args(recipe):
    """LLaMA-Factory's FinetuningArguments of the recipe: lists split exactly as training splits them."""
    from llamafactory.hparams import FinetuningArguments

    keys = {f for f in FinetuningArguments.__dataclass_fields__ if f in recipe.args}
    try:
        return FinetuningArguments(**{k: recipe.args[k] for k in keys})
    except ValueError as err:
        raise LfxError(f"{recipe.path}: {' '.join(str(err).split())}") from None


def check_targets(recipe, facts: ModelFacts) -> None:
    where, model = recipe.path, recipe.args["model_name_or_path"]
    ft = finetuning_args(recipe)
    kind = ft.finetuning_type
    if kind in ("lora", "oft"):
        targets = facts.linear if ft.lora_target == ["all"] else ft.lora_target
        for target in targets:
            found = _matches(facts.modules, target)
            if not found:
                raise LfxError(f"{where}: field 'lora_target': '{target}' is not a module of model '{model}' "
                               f"(its linear layers: {_short(facts.linear)}; or 'all')")  # fmt: skip
            wrong = sorted({facts.modules[n] for n in found if n not in facts.wrappable})
            if wrong:  # peft refuses the whole model then ("Target module ... is not supported")
                raise LfxError(f"{where}: field 'lora_target': '{target}' names a {wrong[0]}, not a layer LoRA can "
                               f"wrap (its linear layers: {_short(facts.linear)})")  # fmt: skip
        for target in ft.additional_target or []:
            if not _matches(facts.modules, target):
                raise LfxError(f"{where}: field 'additional_target': '{target}' is not a module of model '{model}'")
    if kind == "freeze":
        # LLaMA-Factory's own sets (llamafactory/model/adapter.py, _setup_freeze_tuning), from parameter names.
        params = facts.parameters
        hidden = {n.split(".0.")[-1].split(".")[0] for n in params if ".0." in n}
        hidden |= {n.split(".1.")[-1].split(".")[0] for n in params if ".0." not in n and ".1." in n}
        outside = {n.split(".")[-2] for n in params if re.search(r"\.\d+\.", n) is None and "." in n}
        for name in ft.freeze_trainable_modules:
            if name != "all" and name not in hidden:
                raise LfxError(f"{where}: field 'freeze_trainable_modules': '{name}' is not a module of the layers of "
                               f"model '{model}' (choose from: {_short(hidden)}, all)")  # fmt: skip
        for name in ft.freeze_extra_modules or []:
            if name not in outside:
                raise LfxError(f"{where}: field 'freeze_extra_modules': '{name}' is not a module outside the layers "
                               f"of model '{model}' (choose from: {_short(outside)})")  # fmt: skip


def check_context(recipe, facts: ModelFacts, report) -> None:
    cutoff = int(recipe.args.get("cutoff_len", 2048))
    limit = facts.max_positions
    if not limit or cutoff <= limit:
        return
    where = f"{recipe.path}: field 'cutoff_len'"
    if facts.absolute_positions:
        raise LfxError(f"{where}: {cutoff} is beyond the {limit} positions of model '{recipe.args['model_name_or_path']}', "
                       "whose learned position embeddings no RoPE scaling can stretch")  # fmt: skip
    scaling = recipe.args.get("rope_scaling")
    if scaling and facts.rope_scalable:
        # llamafactory/model/model_utils/rope.py, configure_rope: factor ceil(cutoff_len / max_position_embeddings).
        report.note("field 'cutoff_len'", f"{cutoff} > the model's {limit} positions: rope_scaling {scaling} "
                    f"enlarges the context by {-(-cutoff // limit)}x")  # fmt: skip
        return
    if scaling:
        raise LfxError(f"{where}: {cutoff} is beyond the model's {limit} positions and this model does not support "
                       f"rope_scaling (LLaMA-Factory would ignore rope_scaling {scaling})")  # fmt: skip
    report.warn("field 'cutoff_len'", f"{cutoff} is beyond the model's context length {limit} "
                "(max_position_embeddings): samples longer than that train on positions the model never saw; "
                f"lower cutoff_len to {limit} or set rope_scaling: linear (or yarn, dynamic)")  # fmt: skip


def check_quantization(recipe, facts: ModelFacts) -> None:
    # llamafactory/model/model_utils/quantization.py, configure_quantization: "DeepSpeed ZeRO-3 or FSDP is
    # incompatible with PTQ-quantized models" (except mxfp4 and fp8, which it dequantizes).
    if facts.quantization and facts.quantization not in ("mxfp4", "fp8") and recipe.launch["zero_stage"] == 3:
        raise LfxError(f"{recipe.path}: field 'model_name_or_path': '{recipe.args['model_name_or_path']}' is a pre-quantized "
                       f"({facts.quantization}) model, which LLaMA-Factory does not train under DeepSpeed ZeRO-3: "
                       "use launch.zero_stage 2 or the unquantized model")  # fmt: skip


def check_model(recipe, name: str, report) -> ModelFacts | None:
    """Every model-aware check; a warning (and None) when the config is not available here."""
    config = load_config(recipe, name)
    if config is None:
        report.warn("field 'model_name_or_path'", f"no config.json for '{name}' here (offline or not cached): "
                    "lora_target and the context length are not checked")  # fmt: skip
        return None
    facts = model_facts(recipe, config)
    check_targets(recipe, facts)
    check_context(recipe, facts, report)
    check_quantization(recipe, facts)
    return facts
