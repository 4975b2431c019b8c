"""Token lengths of a dataset as the run's template encodes them, and where LLaMA-Factory's
SupervisedDatasetProcessor cuts them at cutoff_len."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


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


def message_lengths(tokenizer, template, records: list[dict[str, Any]]) -> list[list[int]]:
    """Token count of every message of every record, exactly as the template encodes them, with the
    text pieces tokenized in one batch (the template encodes them one by one)."""
    from llamafactory.data.template import Template

    from ..persona.prompt_layout import message_elements

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
