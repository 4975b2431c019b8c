"""SFT and SFT+preference side by side: two `lfx eval` reports (eval.json) of the same held-out split, every metric of
the tuned model under its own persona prompt, under the generic system prompt, and at turn 3, with the
generic-prompt drop in identifiability (the goal of the system-prompt switch: at most half of SFT's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..evaluation.report import METRIC_ROWS
from ..files import read_json


def _report(path: str | Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or "tuned" not in data or "config" not in data:
        raise LfxError(f"{path}: not an eval.json of lfx eval (no 'tuned' scores)")
    return data


def _overall(report: dict[str, Any], condition: str) -> dict[str, Any] | None:
    if condition == "tuned":
        return report["tuned"]["overall"]
    found = (report.get("conditions") or {}).get(condition)
    return found["overall"] if found else None


def _cell(scores: dict[str, Any] | None, key: str, fmt: str) -> str:
    value = (scores or {}).get(key)
    return "-" if value is None else fmt.format(value)


def markdown(first: str | Path, second: str | Path, labels: tuple[str, str] = ("SFT", "SFT+preference")) -> str:
    a, b = _report(first), _report(second)
    if a["config"].get("prompts") != b["config"].get("prompts"):
        raise LfxError(f"{second}: evaluated on '{b['config'].get('prompts')}', {first} on '{a['config'].get('prompts')}': "
                       "not the same held-out prompts")  # fmt: skip
    lines = ["# SFT and SFT+preference, side by side", "",
             f"- {labels[0]}: `{a['config'].get('model')}`; {labels[1]}: `{b['config'].get('model')}`",
             (f"- prompts: {a['config'].get('prompts')} ({a['config'].get('n')}); greedy, up to "
              f"{a['config'].get('max_new_tokens')} / {b['config'].get('max_new_tokens')} new tokens"), ""]  # fmt: skip
    for condition, title in (("tuned", "own persona prompt"), ("tuned_generic", "generic system prompt"),
                             ("tuned_turn3", "turn 3")):  # fmt: skip
        sa, sb = _overall(a, condition), _overall(b, condition)
        if sa is None and sb is None:
            continue
        lines += [f"## {title}", "", f"| metric | {labels[0]} | {labels[1]} |", "|---|---|---|"]
        for key, label, fmt in METRIC_ROWS:
            if (sa or {}).get(key) is not None or (sb or {}).get(key) is not None:
                lines.append(f"| {label} | {_cell(sa, key, fmt)} | {_cell(sb, key, fmt)} |")
        lines.append("")
    drops = [(r.get("robustness") or {}).get("generic", {}).get("identifiability") for r in (a, b)]
    if None not in drops:
        lines += [(f"- identifiability drop under the generic system prompt: {labels[0]} {drops[0]:+.2f}, "
                   f"{labels[1]} {drops[1]:+.2f}"), ""]  # fmt: skip
    return "\n".join(lines)
