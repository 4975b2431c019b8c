"""`lfx check`: a whole run validated in seconds, without a GPU and without training.

Bad input (recipe keys, types, ranges, incompatible options, datasets, templates, a model whose
tokenizer cannot be loaded) stops at the first problem with one line and exit status 2, as
everywhere else. Then, with the run's own tokenizer and template: token-length statistics and the
share of samples cut at `cutoff_len`, label sanity after LLaMA-Factory's own preprocessing and
collation, and duplicates. Those are warnings (exit 1 under --strict).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .datasets import dataset_names
from .errors import LfxError
from .recipe import Recipe, gpu_type, load_recipe

IGNORE_INDEX = -100
LABEL_SAMPLES = 16  # records per dataset run through LLaMA-Factory's processor and collator
# option -> why it cannot run under DeepSpeed ZeRO-3: each one LLaMA-Factory 0.9.5 itself refuses, in
# llamafactory/hparams/parser.py (_verify_model_args / get_train_args).
ZERO3_INCOMPATIBLE = {
    "predict_with_generate": "predict_with_generate is incompatible with DeepSpeed ZeRO-3",
    "pure_bf16": "pure_bf16 is incompatible with DeepSpeed ZeRO-3",
    "use_unsloth": "Unsloth is incompatible with DeepSpeed ZeRO-3",
    "use_kt": "KTransformers is incompatible with DeepSpeed ZeRO-3",
    "pissa_init": "PiSSA initialisation under ZeRO-3 needs scripts/pissa_init.py first",
}
# QLoRA under ZeRO-3: LLaMA-Factory loads a 4-bit bitsandbytes model without a device map there
# (llamafactory/model/model_utils/quantization.py, configure_quantization: "Only 4-bit quantized model
# can use fsdp+qlora"), and refuses HQQ and EETQ ("... is incompatible with DeepSpeed ZeRO-3 or FSDP").
ZERO3_QUANTIZATION = {"bnb": (4,), "hqq": (), "eetq": ()}
# LLaMA-Factory's parser (_verify_model_args) refuses these with a quantized model.
QUANTIZED_INCOMPATIBLE = {
    "resize_vocab": "cannot resize embedding layers of a quantized model",
    "pissa_init": "PiSSA on a quantized model needs scripts/pissa_init.py first",
}


@dataclass
class Finding:
    level: str  # "warning" or "note"
    where: str
    message: str


@dataclass
class LengthStats:
    dataset: str
    records: int
    prompt: dict[str, int]
    response: dict[str, int]
    total: dict[str, int]
    cut: int
    cut_share: float
    keeps_99: int  # the smallest cutoff_len that keeps 99% of samples whole


@dataclass
class Report:
    recipe: str
    model: str
    template: str
    cutoff_len: int
    findings: list[Finding] = field(default_factory=list)
    lengths: list[LengthStats] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)

    def warn(self, where: str, message: str) -> None:
        self.findings.append(Finding("warning", where, message))

    def note(self, where: str, message: str) -> None:
        self.findings.append(Finding("note", where, message))

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def check_combinations(recipe: Recipe, gpu: dict[str, Any] | None) -> None:
    where, args, launch = str(recipe.path), recipe.args, recipe.launch
    if args.get("export_dir"):
        # Training never reads it: only `llamafactory-cli export` does (llamafactory/train/tuner.py, export_model).
        raise LfxError(f"{where}: field 'export_dir': training ignores it (no merged model would be written): "
                       "remove it, train, then `lfx merge` the output")  # fmt: skip
    bits = args.get("quantization_bit")
    adapters = dataset_names(args.get("adapter_name_or_path"))
    if len(adapters) > 1 and (launch["zero_stage"] == 3 or bits is not None):
        # llamafactory/model/adapter.py, _setup_lora_tuning: "Cannot use multiple adapters in DeepSpeed ZeRO-3."
        raise LfxError(f"{where}: field 'adapter_name_or_path': LLaMA-Factory takes a single adapter under "
                       f"{'DeepSpeed ZeRO-3' if launch['zero_stage'] == 3 else 'quantization'}; merge the earlier ones "
                       "into the base first (lfx merge)")  # fmt: skip
    if launch["zero_stage"] == 3:
        for key, why in ZERO3_INCOMPATIBLE.items():
            if args.get(key):
                raise LfxError(f"{where}: field '{key}': {why}")
        method = str(args.get("quantization_method") or "bnb")
        if bits is not None and bits not in ZERO3_QUANTIZATION.get(method, (bits,)):
            what = "only 4-bit bitsandbytes QLoRA" if method == "bnb" else f"no {method} quantization"
            raise LfxError(f"{where}: field 'quantization_bit': LLaMA-Factory trains {what} under DeepSpeed ZeRO-3 "
                           f"(got {bits}-bit {method}): use quantization_bit 4 or zero_stage 2")  # fmt: skip
    if bits is not None:
        for key, why in QUANTIZED_INCOMPATIBLE.items():
            if args.get(key):
                raise LfxError(f"{where}: field '{key}': {why}")
        if args.get("adapter_name_or_path") and args.get("create_new_adapter"):
            raise LfxError(f"{where}: field 'create_new_adapter': cannot create a new adapter upon a quantized model")
        if args.get("finetuning_type", "lora") not in ("lora", "oft"):
            raise LfxError(f"{where}: field 'quantization_bit': quantized training needs finetuning_type lora (QLoRA)")
    if args.get("bf16") and args.get("fp16"):
        raise LfxError(f"{where}: field 'fp16': bf16 and fp16 are both set; choose one")
    if gpu and (args.get("bf16") or args.get("pure_bf16")) and not gpu["bf16"]:
        raise LfxError(f"{where}: field 'bf16': {gpu['name']} has no bf16 support; use fp16: true (or another GPU type)")
    if args.get("eval_strategy", "no") not in ("no", None) and not (args.get("val_size") or args.get("eval_dataset")):
        raise LfxError(f"{where}: field 'eval_strategy': '{args['eval_strategy']}' needs val_size or eval_dataset")
    if args.get("train_on_prompt") and args.get("template") and _efficient_eos(args["template"]):
        # llamafactory/data/template.py, get_template_and_fix_tokenizer
        raise LfxError(f"{where}: field 'train_on_prompt': template '{args['template']}' uses efficient_eos, "
                       "which LLaMA-Factory does not support with train_on_prompt")  # fmt: skip


def _efficient_eos(name: str) -> bool:
    from .templates import get_template

    return bool(get_template(name).efficient_eos)


def _model_where(recipe: Recipe) -> str:
    return f"{recipe.path}: field 'model_name_or_path'"


def model_path(recipe: Recipe) -> str:
    """The model as the run will load it: a local folder (relative to the repo or here) or a Hub id."""
    from .paths import REPO_ROOT

    name = str(recipe.args["model_name_or_path"])
    for candidate in (Path(name).expanduser(), REPO_ROOT / name):
        if candidate.is_dir():
            return str(candidate.resolve())
    looks_local = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_local:
        raise LfxError(f"{_model_where(recipe)}: '{name}' does not exist (no such folder)")
    return name


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
        raise LfxError(f"{_model_where(recipe)}: '{name}' is neither a local folder nor in the local Hugging Face cache "
                       f"({_offline_how()}); download it first (hf download {name} --include 'tokenizer*' 'config.json')") from None  # fmt: skip


def _offline_how() -> str:
    return "offline, so it cannot look further" if hub_offline() else "and it could not be downloaded"


def hub_offline() -> bool:
    return any(os.environ.get(k, "0") not in ("0", "", "false", "False") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


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


def check_family(recipe: Recipe, tokenizer, report: Report | None = None) -> None:
    """The template's chat format must be made of the model's own special tokens: a Llama-3 template on
    a Qwen model (or the reverse) would train a format the model never saw."""
    from .templates import get_template, register_templates

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


def load_tokenizer_and_template(recipe: Recipe, report: Report | None = None):
    """The run's tokenizer and its template, built exactly as training builds them: LLaMA-Factory's own
    get_template_and_fix_tokenizer (tool_format, default_system, enable_thinking, the tokenizer fixes),
    run on a private copy so that the shared registry entry stays as it was."""
    from llamafactory.data import template as lf_template

    from .templates import get_template

    tokenizer = load_tokenizer(recipe)
    check_family(recipe, tokenizer, report)
    name = recipe.args["template"]
    data_args = _data_args(recipe, ",".join(dataset_names(recipe.args["dataset"])))
    shared = lf_template.TEMPLATES[name]
    lf_template.TEMPLATES[name] = get_template(name)
    try:
        template = lf_template.get_template_and_fix_tokenizer(tokenizer, data_args)
    except ValueError as err:
        raise LfxError(f"{recipe.path}: field 'template': {err}") from None
    finally:
        lf_template.TEMPLATES[name] = shared
    return tokenizer, template


def _data_args(recipe: Recipe, dataset: str):
    from llamafactory.hparams import DataArguments

    from .paths import datasets_dir

    keys = {f for f in DataArguments.__dataclass_fields__ if f in recipe.args}
    kwargs = {k: copy.deepcopy(recipe.args[k]) for k in keys}
    kwargs.update(dataset=dataset, eval_dataset=None, dataset_dir=str(datasets_dir()), val_size=0.0, streaming=False)
    return DataArguments(**kwargs)


def aligned_records(recipe: Recipe, name: str, records: list | None = None) -> list[dict[str, Any]]:
    """Records of dataset `name` through LLaMA-Factory's own converter (_prompt, _response, _system...)."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list

    from .datasets import check_entry, countable_records, load_entries

    data_args = _data_args(recipe, name)
    attr = get_dataset_list([name], data_args.dataset_dir)[0]
    convert = get_dataset_converter(attr.formatting, attr, data_args)
    if records is None:  # `lfx plan`: records not validated yet, and unavailable ones are an error there
        entry = load_entries()[name]
        records = countable_records(entry, recipe.args.get("cache_dir"))
        check_entry(entry, records)
    out = [convert(record) for record in records]
    limit = recipe.args.get("max_samples")
    return out[:limit] if limit else out


def message_lengths(tokenizer, template, records: list[dict[str, Any]]) -> list[list[int]]:
    """Token count of every message of every record, exactly as the template encodes them, with the
    text pieces tokenized in one batch (the template encodes them one by one)."""
    from llamafactory.data.template import Template

    from .templates import message_elements

    conversations = [r["_prompt"] + r["_response"][:1] for r in records]
    if type(template) is not Template or any(r["_tools"] for r in records):
        # Reasoning templates (thought handling, enable_thinking) and tools: the processor's own call.
        out = []
        for conv, record in zip(conversations, records):
            pairs = template.encode_multiturn(tokenizer, conv, record["_system"], record["_tools"] or None)
            out.append([len(ids) for pair in pairs for ids in pair])
        return out
    all_pieces = [message_elements(template, conv, r["_system"]) for conv, r in zip(conversations, records)]
    texts = sorted({e for pieces in all_pieces for elements in pieces for e in elements if isinstance(e, str) and e})
    counts: dict[str, int] = {}
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer behind a fast one
    for start in range(0, len(texts), 4096):  # chunks: only the lengths are kept, not the ids
        chunk = texts[start : start + 4096]
        if backend is not None:
            lengths_ = [len(e) for e in backend.encode_batch_fast(chunk, add_special_tokens=False)]
        else:
            lengths_ = [len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
        counts.update(zip(chunk, lengths_))
    has_bos, has_eos = tokenizer.bos_token_id is not None, tokenizer.eos_token_id is not None
    out = []
    for pieces in all_pieces:
        lengths = []
        for elements in pieces:
            n = 0
            for e in elements:
                if isinstance(e, str):
                    n += counts.get(e, 0)
                elif isinstance(e, dict):
                    n += 1
                elif "bos_token" in e:
                    n += has_bos
                elif "eos_token" in e:
                    n += has_eos
            lengths.append(n)
        out.append(lengths)
    return out


def truncation(lengths: list[int], cutoff_len: int, efficient_eos: bool) -> tuple[int, int, bool]:
    """(prompt tokens, response tokens, cut?) as LLaMA-Factory's SupervisedDatasetProcessor truncates."""
    from llamafactory.data.processor.processor_utils import infer_seqlen

    total = 1 if efficient_eos else 0
    prompt = response = 0
    cut = False
    pairs = [(lengths[i], lengths[i + 1] if i + 1 < len(lengths) else 0) for i in range(0, len(lengths), 2)]
    for source, target in pairs:
        prompt += source
        response += target
        if total >= cutoff_len:
            cut = True
            continue
        s, t = infer_seqlen(source, target, cutoff_len - total)
        cut |= (s, t) != (source, target)
        total += s + t
    return prompt, response, cut


def _percentiles(values: list[int]) -> dict[str, int]:
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": ordered[-1]}


def length_stats(name: str, lengths: list[list[int]], cutoff_len: int, efficient_eos: bool) -> LengthStats:
    rows = [truncation(lens, cutoff_len, efficient_eos) for lens in lengths]
    prompts, responses = [r[0] for r in rows], [r[1] for r in rows]
    totals = [p + r + efficient_eos for p, r in zip(prompts, responses)]
    cut = sum(r[2] for r in rows)
    return LengthStats(
        dataset=name,
        records=len(rows),
        prompt=_percentiles(prompts),
        response=_percentiles(responses),
        total=_percentiles(totals),
        cut=cut,
        cut_share=cut / len(rows),
        keeps_99=_percentiles(totals)["p99"],
    )


def label_sanity(recipe: Recipe, name: str, tokenizer, template, records: list[dict[str, Any]],
                 lengths: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    """A few records (the first ones and the longest ones, the likeliest to be cut) through
    LLaMA-Factory's SupervisedDatasetProcessor and its SFT collator. Record numbers are 0-based."""
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.data.processor import SupervisedDatasetProcessor

    longest = sorted(range(len(records)), key=lambda i: -sum(lengths[i]))[: LABEL_SAMPLES // 2]
    picked = sorted(set(range(min(LABEL_SAMPLES // 2, len(records)))) | set(longest))
    sample = [records[i] for i in picked]
    data_args = _data_args(recipe, name)
    processor = SupervisedDatasetProcessor(template=template, tokenizer=tokenizer, processor=None, data_args=data_args)
    batch = {key: [r[key] for r in sample] for key in sample[0]}
    encoded = processor.preprocess_dataset(batch)
    stop_ids = set(template.get_stop_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        stop_ids.add(tokenizer.eos_token_id)
    # The stop token ends the answer, but the assistant format may add more after it (ChatML's
    # "<|im_end|>\n"): it must be within that tail.
    suffix = template._convert_elements_to_ids(tokenizer, template.format_assistant.apply(content=""))
    tail = max(1, len(suffix) + bool(template.efficient_eos))
    all_masked, no_stop = [], []
    for i, labels in enumerate(encoded["labels"]):
        trained = [t for t in labels if t != IGNORE_INDEX]
        if not trained:
            all_masked.append(picked[i])
        elif not stop_ids & set(trained[-tail:]):
            no_stop.append(picked[i])
    collator = SFTDataCollatorWith4DAttentionMask(template=template, tokenizer=tokenizer, model=None,
                                                  label_pad_token_id=IGNORE_INDEX, pad_to_multiple_of=8)  # fmt: skip
    features = [{"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels, "images": [], "videos": [], "audios": []}
                for ids, labels in zip(encoded["input_ids"], encoded["labels"])]  # fmt: skip
    collated = collator(features)
    masked_by_pad = []
    for i, (ids, labels) in enumerate(zip(encoded["input_ids"], encoded["labels"])):
        trained = [j for j, t in enumerate(labels) if t != IGNORE_INDEX]
        stops = [j for j in trained[-tail:] if labels[j] in stop_ids]
        if stops and int(collated["labels"][i][stops[-1]]) == IGNORE_INDEX:
            masked_by_pad.append(picked[i])
    return {
        "dataset": name,
        "samples": len(sample),
        "all_masked": all_masked,
        "no_stop_token": no_stop,
        "stop_masked_after_collation": masked_by_pad,
        "pad_is_eos": tokenizer.pad_token_id is not None and tokenizer.pad_token_id == tokenizer.eos_token_id,
        "stop_tokens": sorted(tokenizer.convert_ids_to_tokens(sorted(stop_ids))),
    }


def _key(record: dict[str, Any], with_response: bool = True) -> tuple:
    turns = record["_prompt"] + (record["_response"] if with_response else [])
    return (record["_system"], tuple((m["role"], m["content"]) for m in turns), with_response)


def duplicates(report: Report, recipe: Recipe, data: dict[str, list[dict[str, Any]]]) -> None:
    where = str(recipe.path)
    for name, records in data.items():
        seen: dict[tuple, int] = {}
        answers: dict[tuple, set[tuple]] = {}
        for record in records:
            key = _key(record)
            seen[key] = seen.get(key, 0) + 1
            answers.setdefault(_key(record, False), set()).add(key)
        dup = sum(n - 1 for n in seen.values() if n > 1)
        conflicting = sum(1 for a in answers.values() if len(a) > 1)
        if dup:
            leak = " and can land on both sides of the val_size split (evaluation would see training data)" if recipe.args.get("val_size") else ""
            report.warn(f"dataset '{name}'", f"{dup} duplicated records (same system, prompt and response){leak}")
        if conflicting:
            report.warn(f"dataset '{name}'", f"{conflicting} prompts appear with different responses")
    evals = dataset_names(recipe.args.get("eval_dataset"))
    trains = [n for n in dataset_names(recipe.args["dataset"]) if n in data]
    if evals:
        train_keys = {_key(r) for n in trains for r in data[n]}
        for name in evals:
            overlap = sum(_key(r) in train_keys for r in data.get(name, []))
            if overlap:
                report.warn(where, f"eval_dataset '{name}': {overlap} records also in the training data")


def check(recipe_path: str | Path, *, preset: str | None = None, launch: dict | None = None,
          gpu: str | None = None, max_cut_share: float = 0.01, overrides: list[str] | tuple[str, ...] = ()) -> Report:  # fmt: skip
    """Run every check; raises LfxError on the first error, returns the report with warnings."""
    quiet_llamafactory()
    from .datasets import RecordsUnavailable, check_entry, load_entries, read_records, source_label

    recipe = load_recipe(recipe_path, preset, launch, overrides)
    gpu_row = gpu_type(gpu or recipe.launch["gpu_type"]) if (gpu or recipe.launch["gpu_type"]) else None
    check_combinations(recipe, gpu_row)
    cutoff = int(recipe.args.get("cutoff_len", 2048))
    report = Report(recipe=str(recipe.path), model=str(recipe.args["model_name_or_path"]),
                    template=recipe.args["template"], cutoff_len=cutoff)  # fmt: skip
    entries = load_entries()
    names = list(dict.fromkeys(dataset_names(recipe.args["dataset"]) + dataset_names(recipe.args.get("eval_dataset"))))
    raw = {}
    for name in names:
        try:
            raw[name] = read_records(entries[name], cache_dir=recipe.args.get("cache_dir"))
        except RecordsUnavailable as why:
            report.warn(f"dataset '{name}'", f"{why}: its records are not checked and its token statistics are skipped")
            continue
        check_entry(entries[name], raw[name])
    tokenizer, template = load_tokenizer_and_template(recipe, report)
    from .model_check import check_model

    check_model(recipe, model_path(recipe), report)
    data = {name: aligned_records(recipe, name, records) for name, records in raw.items()}
    for name, records in data.items():
        if not records:
            raise LfxError(f"{source_label(entries[name])}: dataset '{name}' has no records")
        lengths = message_lengths(tokenizer, template, records)
        stats = length_stats(name, lengths, cutoff, template.efficient_eos)
        report.lengths.append(stats)
        shortest_prompt = min(lens[0] for lens in lengths)
        if cutoff <= shortest_prompt:
            raise LfxError(f"{recipe.path}: field 'cutoff_len': {cutoff} is not above the shortest prompt of dataset "
                           f"'{name}' ({shortest_prompt} tokens with the template and system prompt): no response would be trained")  # fmt: skip
        if stats.cut_share > max_cut_share:
            report.warn(f"dataset '{name}'", f"{stats.cut_share:.1%} of samples ({stats.cut}/{stats.records}) are cut at "
                        f"cutoff_len {cutoff}; cutoff_len {_round_up(stats.keeps_99)} keeps 99%")  # fmt: skip
        labels = label_sanity(recipe, name, tokenizer, template, records, lengths)
        report.labels[name] = labels
        if labels["all_masked"]:
            report.warn(f"dataset '{name}'", f"records {labels['all_masked']}: every label is masked, nothing is trained")
        if labels["no_stop_token"]:
            report.warn(f"dataset '{name}'", f"records {labels['no_stop_token']}: the labels do not end with the stop "
                        f"token {labels['stop_tokens']} (cut at cutoff_len?): the model may not learn to stop")  # fmt: skip
        if labels["stop_masked_after_collation"]:
            report.warn(f"dataset '{name}'", f"records {labels['stop_masked_after_collation']}: the stop token is masked "
                        "after padding (pad token = eos): generation would never stop")  # fmt: skip
        if labels["pad_is_eos"]:
            report.note(f"dataset '{name}'", "pad token is the eos token; LLaMA-Factory pads labels with -100, so the "
                        "stop token stays trained (checked after collation)")  # fmt: skip
    duplicates(report, recipe, data)
    return report


def quiet_llamafactory() -> None:
    """LLaMA-Factory logs to stdout, which belongs to our reports (--json): send its lines to stderr,
    and keep only its errors (its notes on tokenizer fixes are in our report)."""
    import logging

    from llamafactory.extras.logging import get_logger

    get_logger("llamafactory")
    logging.getLogger("llamafactory").setLevel(logging.ERROR)
    for handler in logging.getLogger("llamafactory").handlers:
        if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _Stderr):
            handler.setStream(_Stderr())


class _Stderr:
    """Whatever sys.stderr is at the time of writing (click's test runner swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _round_up(n: int, step: int = 64) -> int:
    return int(math.ceil(n / step) * step)


def render_report(report: Report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(escape(f"{report.recipe}: model {report.model}, template {report.template}, cutoff_len {report.cutoff_len}"))
    table = Table(title="tokens per sample", title_justify="left")
    for col in ("dataset", "records", "part", "p50", "p95", "p99", "max", "cut", "99% fit in"):
        table.add_column(col, justify="left" if col in ("dataset", "part") else "right")
    for s in report.lengths:
        for part in ("prompt", "response", "total"):
            values = getattr(s, part)
            first = part == "prompt"
            table.add_row(s.dataset if first else "", str(s.records) if first else "", part,
                          *(str(values[k]) for k in ("p50", "p95", "p99", "max")),
                          f"{s.cut} ({s.cut_share:.1%})" if first else "", str(s.keeps_99) if first else "")  # fmt: skip
    console.print(table)
    for name, labels in report.labels.items():
        ok = not (labels["all_masked"] or labels["no_stop_token"] or labels["stop_masked_after_collation"])
        console.print(escape(f"labels of {name}: {labels['samples']} samples through LLaMA-Factory's processor and collator, "
                             f"stop tokens {', '.join(labels['stop_tokens'])}: {'ok' if ok else 'PROBLEMS (see warnings)'}"))  # fmt: skip
    for f in report.findings:
        style = "yellow" if f.level == "warning" else "dim"
        console.print(f"[{style}]{f.level}[/]: " + escape(f"{f.where}: {f.message}"))
    if not report.warnings:
        console.print("[green]ok[/]: no warnings")
