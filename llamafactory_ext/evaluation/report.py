"""The eval report: eval.json (every answer with its scores per system), eval.md, eval.png, and the tables
the CLI and the model card show."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..files import add_written, atomic_write_text, dump_json
from ..inference.prompts import Answer as Reply
from .heldout import EvalSet
from .metrics import Answer, persona_chrf, summarize
from .targets import Target

SYSTEMS = ("base", "prompted", "tuned")
SAMPLES_IN_MD = 5


def report(target: Target, evalset: EvalSet, answers: dict[str, list[Reply]], max_new_tokens: int,
           url: str | None) -> dict[str, Any]:  # fmt: skip
    ceiling = persona_chrf([p.reference for p in evalset.prompts if p.reference], evalset.persona_answers)
    out: dict[str, Any] = {
        "config": {
            "model": str(target.path), "kind": target.kind, "base_model": str(target.base), "url": url,
            "prompts": evalset.source, "n": len(evalset.prompts), "persona_answers": len(evalset.persona_answers),
            "language": evalset.language, "system_prompt": target.system, "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            # The held-out references themselves scored as answers: what in-voice answers to new
            # questions reach, since persona chrF rewards reusing the training answers' wording.
            "reference_persona_chrf": None if ceiling is None else round(ceiling, 4),
        },
    }  # fmt: skip
    for name in SYSTEMS:
        items = [Answer(prompt=p.text, answer=a.text, reference=p.reference, stopped=a.stopped, dataset=p.dataset,
                        task=p.task, json_expected=p.json_expected)
                 for p, a in zip(evalset.prompts, answers[name])]  # fmt: skip
        out[name] = summarize(items, evalset.persona_answers, evalset.language)
    out["answers"] = [
        {"dataset": p.dataset, "task": p.task, "prompt": p.text, "reference": p.reference,
         **{name: {"text": answers[name][i].text, "stopped": answers[name][i].stopped} for name in SYSTEMS}}
        for i, p in enumerate(evalset.prompts)
    ]  # fmt: skip
    return out


# (key in eval.json, label, format) for the tables; shares are shown as percentages.
METRIC_ROWS = (("chrf", "chrF vs reference", "{:.1f}"), ("persona_chrf", "persona chrF (best vs training answers)", "{:.1f}"),
               ("stop_rate", "stop rate", "{:.0%}"), ("language_rate", "answers in the persona's language", "{:.0%}"),
               ("json_valid_rate", "valid JSON (JSON-output data)", "{:.0%}"),
               ("json_keys_match_rate", "JSON keys match the reference", "{:.0%}"),
               ("length_ratio", "length vs reference", "{:.2f}"), ("loop_rate", "answers with a repeated 4-gram loop", "{:.0%}"),
               ("mean_answer_chars", "mean answer chars", "{:.0f}"))  # fmt: skip
CHART_SCALE = {"chrf": 1, "persona_chrf": 1, "stop_rate": 100, "language_rate": 100, "json_valid_rate": 100}


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table(groups: dict[str, dict[str, Any]]) -> list[str]:
    names = list(groups)
    rows = [f"| metric | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for key, label, fmt in METRIC_ROWS:
        if any(groups[n].get(key) is not None for n in names):
            rows.append(f"| {label} | {' | '.join(_num(groups[n].get(key), fmt) for n in names)} |")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "(empty)"


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = ["# Persona evaluation", "",
             f"- tuned: `{cfg['model']}` ({cfg['kind']}{', served at ' + cfg['url'] if cfg['url'] else ''})",
             f"- base: `{cfg['base_model']}`; prompted = base + the persona system prompt",
             f"- prompts: {cfg['n']} ({cfg['prompts']}); persona chrF against {cfg['persona_answers']} training answers",
             f"- greedy decoding, up to {cfg['max_new_tokens']} new tokens; chrF is sacrebleu's sentence chrF (0-100), averaged",
             f"- persona chrF of the held-out reference answers themselves: {_num(cfg['reference_persona_chrf'], '{:.1f}')}",
             "", "## Overall", "", *overall_table(result)]  # fmt: skip
    for level in ("datasets", "tasks"):
        for group in result["base"][level]:
            lines += ["", f"## {level[:-1]} `{group}`", "", *_table({n: result[n][level][group] for n in SYSTEMS})]
    lines += ["", "## Answers side by side", "", "| prompt | reference | base | prompted | tuned |", "|---|---|---|---|---|"]
    for item in result["answers"][:SAMPLES_IN_MD]:
        cells = [_cell(item[n]["text"]) + ("" if item[n]["stopped"] else " *(cut at the limit)*") for n in SYSTEMS]
        lines.append(f"| {_cell(item['prompt'])} | {_cell(item['reference'])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    """Grouped bars of the main metrics (0-100) per system, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in CHART_SCALE if result["tuned"]["overall"].get(k) is not None]
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / len(SYSTEMS)
    for j, name in enumerate(SYSTEMS):
        values = [(result[name]["overall"].get(k) or 0) * CHART_SCALE[k] for k in metrics]
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=name)
    ax.set_xticks([i + width for i in range(len(metrics))], metrics)
    ax.set_ylim(0, 100)
    ax.set_ylabel("chrF / % of answers")
    ax.set_title(f"lfx eval: {result['config']['n']} held-out prompts")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", dump_json(result))
    atomic_write_text(out / "eval.md", markdown(result))
    tmp = out / ".eval.png.tmp.png"
    chart(result, tmp)
    tmp.replace(out / "eval.png")
    add_written(out, "lfx eval", ["eval.json", "eval.md", "eval.png"])  # a merged folder stays one lfx merge may replace
    return [out / "eval.json", out / "eval.md", out / "eval.png"]


def overall_table(result: dict[str, Any]) -> list[str]:
    """The overall metrics of base, prompted and tuned as Markdown table lines (CLI, eval.md, model card)."""
    return _table({n: result[n]["overall"] for n in SYSTEMS})


def summary(result: dict[str, Any], show: int, say: Callable[[str], None]) -> None:
    """The overall table, then the first `show` prompts answered by the prompted base and the tuned model."""
    for line in overall_table(result):
        say(line)
    for item in result["answers"][:show]:
        say(f"\n> {item['prompt']}")
        for name in ("prompted", "tuned"):
            cut = "" if item[name]["stopped"] else " [cut at the limit]"
            say(f"  {name + ' base' if name == 'prompted' else name:>13}: {item[name]['text']}{cut}")
