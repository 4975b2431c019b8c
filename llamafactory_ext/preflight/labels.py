"""Labels as training will see them (LLaMA-Factory's processor and collator on a few records: is the
answer trained, does it end with the stop token), and duplicated or conflicting records."""

from __future__ import annotations

from typing import Any

from ..persona.dataset_entries import dataset_names
from ..recipe import Recipe
from .encoding import lf_data_args

IGNORE_INDEX = -100
LABEL_SAMPLES = 16  # records per dataset run through LLaMA-Factory's processor and collator


def label_sanity(recipe: Recipe, name: str, tokenizer, template, records: list[dict[str, Any]],
                 lengths: list[list[int]]) -> dict[str, Any]:  # fmt: skip
    """A few records (the first ones and the longest ones, the likeliest to be cut) through
    LLaMA-Factory's SupervisedDatasetProcessor and its SFT collator. Record numbers are 0-based."""
    from llamafactory.data.collator import SFTDataCollatorWith4DAttentionMask
    from llamafactory.data.processor import SupervisedDatasetProcessor

    longest = sorted(range(len(records)), key=lambda i: -sum(lengths[i]))[: LABEL_SAMPLES // 2]
    picked = sorted(set(range(min(LABEL_SAMPLES // 2, len(records)))) | set(longest))
    # A ranking record (DPO) holds [chosen, rejected]: its chosen answer, encoded as LLaMA-Factory's pairwise
    # processor encodes each side (the same template encoding), is what must be trained and end with the stop token.
    sample = [{**records[i], "_response": records[i]["_response"][:1]} for i in picked]
    data_args = lf_data_args(recipe, name)
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


def duplicates(report, recipe: Recipe, data: dict[str, list[dict[str, Any]]]) -> None:
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
