"""`lfx check`: a whole run validated in seconds, without a GPU and without training.

Bad input (recipe keys, types, ranges, incompatible options, datasets, templates, a model whose
tokenizer cannot be loaded) stops at the first problem with one line and exit status 2, as
everywhere else. Then, with the run's own tokenizer and template: token-length statistics and the
share of samples cut at `cutoff_len`, label sanity after LLaMA-Factory's own preprocessing and
collation, and duplicates. Those are warnings (exit 1 under --strict).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..persona.dataset_entries import dataset_names
from ..recipe import load_recipe
from .encoding import aligned_records, load_tokenizer_and_template, model_path
from .labels import duplicates, label_sanity
from .lengths import LengthStats, length_stats, message_lengths


@dataclass
class Finding:
    level: str  # "warning" or "note"
    where: str
    message: str


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


def check(recipe_path: str | Path, *, preset: str | None = None, launch: dict | None = None,
          gpu: str | None = None, max_cut_share: float = 0.01, overrides: list[str] | tuple[str, ...] = ()) -> Report:  # fmt: skip
    """Run every check; raises LfxError on the first error, returns the report with warnings."""
    quiet_llamafactory()
    from ..persona.dataset_entries import load_entries
    from ..persona.dataset_records import RecordsUnavailable, check_entry, read_records, source_label

    recipe = load_recipe(recipe_path, preset, {**(launch or {}), **({"gpu_type": gpu} if gpu else {})}, overrides)
    judge_arguments(recipe)
    cutoff = int(recipe.args.get("cutoff_len", 2048))
    report = Report(recipe=str(recipe.path), model=str(recipe.args["model_name_or_path"]),
                    template=recipe.args["template"], cutoff_len=cutoff)  # fmt: skip
    for line in recipe.warnings:
        where, _, message = line.partition(": ")
        report.warn(where, message)
    names = recipe.datasets
    entries = load_entries(names=names)
    raw = {}
    for name in names:
        try:
            raw[name] = read_records(entries[name], cache_dir=recipe.args.get("cache_dir"))
        except RecordsUnavailable as why:
            report.warn(f"dataset '{name}'", f"{why}: its records are not checked and its token statistics are skipped")
            continue
        check_entry(entries[name], raw[name])
    check_split(recipe, {name: len(records) for name, records in raw.items()}, entries)
    tokenizer, template = load_tokenizer_and_template(recipe, report)
    from .model_facts import check_model

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
        label_findings(report, name, label_sanity(recipe, name, tokenizer, template, records, lengths))
    duplicates(report, recipe, data)
    return report


def judge_arguments(recipe) -> None:
    """LLaMA-Factory's own argument checks on the arguments a rank gets, as on the run's GPU type."""
    from ..paths import datasets_dir
    from ..recipe import gpu_type
    from ..recipe.upstream_rules import judge

    bf16 = gpu_type(recipe.launch["gpu_type"])["bf16"] if recipe.launch.get("gpu_type") else True
    judge(str(recipe.path), recipe.args, recipe.deepspeed_config, datasets_dir(), bf16)


def label_findings(report: Report, name: str, labels: dict[str, Any]) -> None:
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


def check_split(recipe, counts: dict[str, int], entries: dict) -> None:
    """LLaMA-Factory's val_size split run on the run's record count (persona.dataset_records.val_split): a count
    above the data, or a fraction that leaves no training record, fails there at launch."""
    from ..persona.dataset_records import taken, val_split

    train = [n for n in dataset_names(recipe.args["dataset"]) if n in counts]
    if len(train) < len(dataset_names(recipe.args["dataset"])):
        return
    total = sum(taken(entries[name], counts[name], recipe.args.get("max_samples")) for name in train)
    val_split(total, recipe.args.get("val_size"), int(recipe.args.get("seed", 42)), f"{recipe.path}: field 'val_size'")


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



def run(recipe: str, overrides: tuple[str, ...], preset: str | None, gpu: str | None, max_cut: float, as_json: bool,
        strict: bool, echo) -> int:  # fmt: skip
    """`lfx check`: the report on stdout (a table, or JSON); exit status 1 for warnings under --strict."""
    report = check(recipe, preset=preset, gpu=gpu, max_cut_share=max_cut, overrides=overrides)
    if as_json:
        echo(report.to_json())
    else:
        from rich.console import Console

        render_report(report, Console(highlight=False))
    return 1 if strict and report.warnings else 0
