"""Reading a recipe (launch/*.yaml, or a run folder's recipe.yaml): file, `key=value` overrides and preset
merged, secrets refused, then validated against the declared schema, our templates and our datasets.

    preset: llama3-alpha-ko-8b      # optional, from launch/presets.yaml
    dataset: ironman
    ...                              # any LLaMA-Factory argument
    launch: {gpus: 2, nodes: 1, zero_stage: 3, offload: false, launcher: deepspeed,
             hub_repo: USER/NAME, global_batch_size: 32, gpu_type: A100-80GB-SXM}

Every command reads recipes through `load_recipe` (check, plan, render, train).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_json, read_yaml
from ..paths import REPO_ROOT
from ..persona.dataset_entries import dataset_names
from ..persona.templates import load_specs, without_system_prompt
from ..secrets import refuse as refuse_secrets
from ..validation import validate
from .schema import LAUNCH_DEFAULTS, OURS, gpu_table, ineffective, recipe_model
from .upstream_rules import check_later_rules

PRESETS_FILE = REPO_ROOT / "launch" / "presets.yaml"
RUN_RECIPE = "recipe.yaml"  # the resolved recipe in a rendered run folder


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    args: dict[str, Any]  # LLaMA-Factory arguments, as written (validated, not converted)
    launch: dict[str, Any]
    deepspeed_config: Path  # the run folder's ds_config.json for a rendered recipe, else ours for the stage
    system_prompt_mix: dict[str, Any] | None = None  # ours (recipe.schema.SystemPromptMix), applied by render
    # Settings that do nothing, or that a --preset replaced: shown by each command once the whole recipe has
    # passed (an error stays the one line it is).
    warnings: list[str] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        """Training and evaluation datasets, each once, in order."""
        return list(dict.fromkeys(dataset_names(self.args["dataset"]) + dataset_names(self.args.get("eval_dataset"))))


def stage_config(launch: dict[str, Any]) -> Path:
    """Our DeepSpeed config for the launch block's ZeRO stage and offload."""
    suffix = "_offload" if launch["offload"] else ""
    return REPO_ROOT / "deepspeed_configs" / f"ds_z{launch['zero_stage']}{suffix}_config.json"


def parse_overrides(where: str, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`key=value` words (values typed as LLaMA-Factory's CLI types them, with OmegaConf); `launch.gpus=2`
    reaches the launch block."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for word in overrides:
        key = word.split("=", 1)[0]
        if "=" not in word or not key or word.startswith("-"):
            raise LfxError(f"{where}: override '{word}' is not key=value (e.g. learning_rate=1e-4 or launch.gpus=2)")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise LfxError(f"{where}: overrides: {str(err).splitlines()[0]}") from None


def gpu_type(name: str, where: str = "--gpu-type") -> dict[str, Any]:
    """A row of launch/gpus.yaml (memory, bf16, TFLOPS, price)."""
    from ..validation import did_you_mean

    table = gpu_table()
    if name not in table:
        raise LfxError(f"{where}: unknown GPU type '{name}'" + did_you_mean(name, table, f" (known: {', '.join(table)})"))
    return {"name": name, **table[name]}


def _apply_preset(where: str, data: dict[str, Any], preset: str | None, warnings: list[str]) -> dict[str, Any]:
    """The recipe's own preset fills what the recipe leaves out; a preset named on the command line
    replaces the recipe's model (that is what it is asked for), with a warning naming what it replaced."""
    named = data.pop("preset", None)
    chosen = preset or named
    if chosen is None:
        return data
    presets = read_yaml(PRESETS_FILE)
    if chosen not in presets:
        from ..validation import did_you_mean

        raise LfxError(f"{where}: field 'preset': unknown preset '{chosen}'" +
                       did_you_mean(chosen, presets, f" (known: {', '.join(presets)})"))  # fmt: skip
    values = presets[chosen]
    refuse_secrets(f"{PRESETS_FILE}: preset '{chosen}'", values)
    if preset is None:
        return {**values, **data}
    replaced = [k for k in values if k in data and data[k] != values[k]]
    if replaced:
        warnings.append(f"{where}: --preset {preset} replaces {', '.join(replaced)} set in the recipe")
    return {**data, **values}


def load_recipe(path: str | Path, preset: str | None = None, launch: dict[str, Any] | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Recipe:  # fmt: skip
    """Read a recipe, apply its preset, and check it against LLaMA-Factory, our templates and datasets.

    `preset` and `launch` override the file's (the Makefile's MODEL=, GPUS=, STAGE=, LAUNCHER=), and so do
    `key=value` overrides (`launch.gpus=2` for the launch block)."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise LfxError(f"{where}: file not found")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise LfxError(f"{where}: expected a mapping, got {type(data).__name__}")
    refuse_secrets(where, data)
    extra = parse_overrides(where, overrides)
    refuse_secrets(f"{where}: override", extra)
    if isinstance(extra.get("launch"), dict) and isinstance(data.get("launch", {}), dict):
        extra["launch"] = {**data.get("launch", {}), **extra["launch"]}
    data = {**data, **extra}
    if launch:
        block = data.get("launch", {})
        data["launch"] = {**block, **launch} if isinstance(block, dict) else block
    own = set(data) - {"preset", *OURS}  # what the user wrote (a preset's defaults are not surprises)
    warnings: list[str] = []
    data = _apply_preset(where, data, preset, warnings)
    model = validate(recipe_model(), data, where)
    warnings += [f"{where}: {line}" for line in ineffective({k: v for k, v in data.items() if k not in OURS}, own)]
    block = {**LAUNCH_DEFAULTS, **model.launch.model_dump()}
    args = {k: v for k, v in data.items() if k not in OURS}
    mix = model.system_prompt_mix.model_dump() if model.system_prompt_mix else None
    if block["global_batch_size"]:
        per_device = args.get("per_device_train_batch_size", 8)
        args.setdefault("gradient_accumulation_steps", block["global_batch_size"] // (per_device * block["gpus"] * block["nodes"]))
    _check_registries(where, args, block["zero_stage"])
    spec = load_specs().get(args["template"])  # ours (a LLaMA-Factory built-in has no persona prompt to miss)
    if spec is not None and without_system_prompt(spec):
        warnings.append(without_system_prompt(spec))
    return Recipe(path=path, name=_run_name(path), args=args, launch=block,
                  deepspeed_config=_deepspeed_config(where, path, block), warnings=warnings, system_prompt_mix=mix)  # fmt: skip


def _check_registries(where: str, args: dict[str, Any], zero_stage: int) -> None:
    """The template and datasets exist (ours or LLaMA-Factory's), and fit the run's options."""
    from llamafactory.data.template import TEMPLATES

    from ..persona.dataset_entries import load_entries
    from ..persona.registration import get_template, register_templates

    ours = register_templates()
    if args["template"] not in TEMPLATES:
        raise LfxError(f"{where}: field 'template': unknown template '{args['template']}' (ours: {', '.join(ours)})")
    if args.get("train_on_prompt") and get_template(args["template"]).efficient_eos:
        # llamafactory/data/template.py, get_template_and_fix_tokenizer
        raise LfxError(f"{where}: field 'train_on_prompt': template '{args['template']}' uses efficient_eos, "
                       "which LLaMA-Factory does not support with train_on_prompt")  # fmt: skip
    entries = load_entries(names=dataset_names(args.get("dataset")) + dataset_names(args.get("eval_dataset")))
    for field_name in ("dataset", "eval_dataset"):
        for name in dataset_names(args.get(field_name)):
            if name not in entries:
                from ..validation import did_you_mean

                raise LfxError(f"{where}: field '{field_name}': unknown dataset '{name}'" +
                               did_you_mean(name, entries, "") + f" (known: {', '.join(sorted(entries))})")  # fmt: skip
    check_later_rules(where, args, {name: entry.info for name, entry in entries.items()}, zero_stage)


def _run_name(path: Path) -> str:
    """A recipe's run name: its file name, or for a run folder's recipe.yaml the name it was rendered from."""
    if path.name == RUN_RECIPE:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
        found = re.search(r"from (\S+?)\.ya?ml", first)
        if found:
            return found.group(1)
    return path.stem


def _deepspeed_config(where: str, path: Path, launch: dict[str, Any]) -> Path:
    """A rendered run folder checks and trains with its own ds_config.json; a source recipe with ours."""
    own = path.parent / "ds_config.json"
    if path.name != RUN_RECIPE or not own.is_file():
        return stage_config(launch)
    stage = (read_json(own).get("zero_optimization") or {}).get("stage", 0)
    if stage != launch["zero_stage"]:
        raise LfxError(f"{own}: zero_optimization.stage {stage} does not match launch.zero_stage "
                       f"{launch['zero_stage']} of {where} (re-render the run folder)")
    return own
