"""The run's tokenizer and chat template built exactly as training builds them (LLaMA-Factory's own
get_template_and_fix_tokenizer, on a private copy of the template), whether the template fits the model's
family, and dataset records through LLaMA-Factory's own converter."""

from __future__ import annotations

import copy
import re
from typing import Any

from ..errors import LfxError
from ..hub import offline
from ..models import checked_name
from ..persona.dataset_entries import dataset_names
from ..recipe import Recipe


def model_path(recipe: Recipe) -> str:
    """The model as the run will load it: a local folder (relative to the repo or here) or a Hub id."""
    return checked_name(str(recipe.args["model_name_or_path"]), f"{recipe.path}: field 'model_name_or_path'")


def load_tokenizer(recipe: Recipe):
    """The run's tokenizer as LLaMA-Factory loads it (local folder or the Hugging Face cache)."""
    from llamafactory.hparams import ModelArguments
    from llamafactory.model import load_tokenizer as lf_load_tokenizer

    name = model_path(recipe)
    model_keys = {f for f in ModelArguments.__dataclass_fields__ if f in recipe.args}
    model_args = ModelArguments(**{k: recipe.args[k] for k in model_keys if k != "model_name_or_path"}, model_name_or_path=name)
    try:
        return lf_load_tokenizer(model_args)["tokenizer"]
    except OSError:
        how = "offline, so it cannot look further" if offline() else "and it could not be downloaded"
        raise LfxError(f"{recipe.path}: field 'model_name_or_path': '{name}' is neither a local folder nor in the local "
                       f"Hugging Face cache ({how}); download it first (hf download {name} --include 'tokenizer*' "
                       "'config.json')") from None  # fmt: skip


# Special markers in a template's text slots: <|start_header_id|>, <|im_start|>, <|eot_id|> ...
MARKER = re.compile(r"<\|[^<>|\s]+\|>")


def template_markers(template) -> tuple[list[str], list[str]]:
    """(markers the chat format is made of, extra stop words): the formatters' special markers and
    the first stop word (the eos with replace_eos), then the other stop words."""
    required: list[str] = []
    for attr in ("format_prefix", "format_system", "format_user", "format_assistant", "format_observation", "format_function"):
        for slot in getattr(getattr(template, attr, None), "slots", None) or []:
            if isinstance(slot, str):
                required += MARKER.findall(slot)
            elif isinstance(slot, dict) and slot.get("token"):
                required.append(slot["token"])
    stops = list(template.stop_words)
    required += stops[:1]
    return list(dict.fromkeys(required)), [w for w in stops[1:] if w not in required]


def split_markers(tokenizer, markers: list[str]) -> list[str]:
    """The markers that are not one token of `tokenizer` (LLaMA-Factory would split them into pieces,
    or add them as new untrained tokens)."""
    vocab = tokenizer.get_vocab()
    return [m for m in markers if m not in vocab or len(tokenizer.encode(m, add_special_tokens=False)) != 1]


def check_family(recipe: Recipe, tokenizer, report=None) -> None:
    """The template's chat format must be made of the model's own special tokens: a Llama-3 template on
    a Qwen model (or the reverse) would train a format the model never saw."""
    from ..persona.registration import get_template, register_templates

    name = recipe.args["template"]
    required, extra = template_markers(get_template(name))
    split = split_markers(tokenizer, required)
    model = recipe.args["model_name_or_path"]
    if split:
        fits = [t for t in register_templates() if t != name and not split_markers(tokenizer, template_markers(get_template(t))[0])]
        hint = f"; templates that fit this model: {', '.join(fits)}" if fits else ""
        raise LfxError(f"{recipe.path}: field 'template': template '{name}' uses {', '.join(repr(m) for m in split)}: "
                       f"not single tokens of model '{model}' (a template of another model family?){hint}")  # fmt: skip
    missing = split_markers(tokenizer, extra)
    if missing and report is not None:
        report.warn("field 'template'", f"stop words {', '.join(missing)} of template '{name}' are not tokens of "
                    f"model '{model}': LLaMA-Factory adds them as new, untrained tokens")  # fmt: skip


def load_tokenizer_and_template(recipe: Recipe, report=None):
    """The run's tokenizer and its template, built exactly as training builds them: LLaMA-Factory's own
    get_template_and_fix_tokenizer (tool_format, default_system, enable_thinking, the tokenizer fixes),
    run on a private copy so that the shared registry entry stays as it was."""
    from llamafactory.data import template as lf_template

    from ..persona.registration import get_template

    tokenizer = load_tokenizer(recipe)
    check_family(recipe, tokenizer, report)
    name = recipe.args["template"]
    data_args = lf_data_args(recipe, ",".join(dataset_names(recipe.args["dataset"])))
    shared = lf_template.TEMPLATES[name]
    lf_template.TEMPLATES[name] = get_template(name)
    try:
        template = lf_template.get_template_and_fix_tokenizer(tokenizer, data_args)
    except ValueError as err:
        raise LfxError(f"{recipe.path}: field 'template': {err}") from None
    finally:
        lf_template.TEMPLATES[name] = shared
    return tokenizer, template


def lf_data_args(recipe: Recipe, dataset: str):
    from llamafactory.hparams import DataArguments

    from ..paths import datasets_dir

    keys = {f for f in DataArguments.__dataclass_fields__ if f in recipe.args}
    kwargs = {k: copy.deepcopy(recipe.args[k]) for k in keys}
    kwargs.update(dataset=dataset, eval_dataset=None, dataset_dir=str(datasets_dir()), val_size=0.0, streaming=False)
    return DataArguments(**kwargs)


def aligned_records(recipe: Recipe, name: str, records: list | None = None) -> list[dict[str, Any]]:
    """Records of dataset `name` through LLaMA-Factory's own converter (_prompt, _response, _system...)."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list

    from ..persona.dataset_entries import load_entries
    from ..persona.dataset_records import check_entry, countable_records

    data_args = lf_data_args(recipe, name)
    attr = get_dataset_list([name], data_args.dataset_dir)[0]
    convert = get_dataset_converter(attr.formatting, attr, data_args)
    if records is None:  # `lfx plan`: records not validated yet, and unavailable ones are an error there
        entry = load_entries(names=[name])[name]
        records = countable_records(entry, recipe.args.get("cache_dir"))
        check_entry(entry, records)
    out = [convert(record) for record in records]
    limit = recipe.args.get("max_samples")
    return out[:limit] if limit else out
