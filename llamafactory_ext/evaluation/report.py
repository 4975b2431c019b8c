"""The eval report: eval.json (every answer with its scores per system and condition), eval.md, eval.png, and the
tables the CLI and the model card show."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..files import add_written, atomic_write_text, dump_json
from ..inference.prompts import Answer as Reply
from . import judging
from .conditions import Variant
from .heldout import EvalSet
from .metrics import persona_chrf, summarize
from .targets import Target

SYSTEMS = ("base", "prompted", "tuned")
SAMPLES_IN_MD = 5
DROPS = ("identity_rate", "identifiability")  # the figures of system-prompt robustness and of turn 3
# How each condition compares: (key in eval.json, the variant it is measured against, the variant).
COMPARISONS = {"robustness": (("generic", "tuned", "tuned_generic"), ("app", "tuned", "tuned_app")),
               "turns": (("tuned", "tuned", "tuned_turn3"),)}  # fmt: skip


def _reply(reply: Reply, verdict, item=None) -> dict[str, Any]:
    out: dict[str, Any] = {"text": reply.text, "stopped": reply.stopped, "out_of_character": verdict.out_of_character}
    if verdict.names_persona is not None:
        out["names_persona"] = verdict.names_persona
    if verdict.persona_probability is not None:
        out["persona_probability"] = round(verdict.persona_probability, 4)
    if item is not None and item.copied is not None:
        out["copied"] = item.copied
    return out


def report(target: Target, evalset: EvalSet, variants: list[Variant], probes: list[str], answers: dict[str, list[Reply]],
           judges: judging.Judges, max_new_tokens: int, url: str | None) -> dict[str, Any]:  # fmt: skip
    ceiling = persona_chrf([p.reference for p in evalset.prompts if p.reference], evalset.persona_answers)
    app = next((v.system for v in variants if v.key == "tuned_app"), None)
    out: dict[str, Any] = {
        "config": {
            "model": str(target.path), "kind": target.kind, "base_model": str(target.base), "url": url,
            "prompts": evalset.source, "data": evalset.data, "n": len(evalset.prompts),
            "persona_answers": len(evalset.persona_answers), "language": evalset.language, "system_prompt": target.system,
            "app_system_prompt": app, "max_new_tokens": max_new_tokens, "decoding": "greedy",
            # The held-out references themselves scored as answers: what in-voice answers to new
            # questions reach, since persona chrF rewards reusing the training answers' wording.
            "reference_persona_chrf": None if ceiling is None else round(ceiling, 4),
            "persona": target.persona.model_dump() if target.persona else None, "probes": probes,
            **judges.config, "skipped": judges.skipped,
        },
        "conditions": {},
    }  # fmt: skip
    rows = [{"dataset": p.dataset, "task": p.task, "prompt": p.text, "reference": p.reference} for p in evalset.prompts]
    probe_rows: list[dict[str, Any]] = [{"prompt": q} for q in probes]
    for v in variants:
        items, verdicts = judging.judged(judges, evalset.prompts, answers[v.key])
        scores = summarize(items, evalset.persona_answers, evalset.language)
        probe_replies = answers[f"{v.key} probes"]
        probe_verdicts = judges.judge.verdicts([r.text for r in probe_replies], [r.stopped for r in probe_replies])
        identity = judging.identity_rate(probe_verdicts)
        if identity is not None:
            scores["overall"] |= {"identity_rate": round(identity, 4), "identity_n": len(probe_verdicts)}
        if v.key in SYSTEMS:
            out[v.key] = scores
        else:
            out["conditions"][v.key] = {"label": v.label, "system_prompt": v.system, "turn": 3 if v.turn3 else 1,
                                        "overall": scores["overall"]}  # fmt: skip
        for row, reply, verdict, item in zip(rows, answers[v.key], verdicts, items):
            row[v.key] = _reply(reply, verdict, item)
        for row, reply, verdict in zip(probe_rows, probe_replies, probe_verdicts):
            row[v.key] = _reply(reply, verdict)
    for section, comparisons in COMPARISONS.items():
        out[section] = {name: {key: _drop(overall(out, before), overall(out, after), key) for key in DROPS}
                        for name, before, after in comparisons if after in out["conditions"]}  # fmt: skip
    out["answers"], out["probe_answers"] = rows, probe_rows
    return out


def overall(result: dict[str, Any], key: str) -> dict[str, Any]:
    """The overall scores of a system (base, prompted, tuned) or a condition (tuned_generic, ...)."""
    return (result[key] if key in SYSTEMS else result["conditions"][key])["overall"]


def _drop(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    if before.get(key) is None or after.get(key) is None:
        return None
    return round(before[key] - after[key], 4)


# (key in eval.json, label, format) for the tables; shares are shown as percentages.
METRIC_ROWS = (("chrf", "chrF vs reference", "{:.1f}"), ("persona_chrf", "persona chrF (best vs training answers)", "{:.1f}"),
               ("identity_rate", "identity: probes answered as the persona", "{:.0%}"),
               ("out_of_character_rate", "answers out of character (assistant leaks)", "{:.0%}"),
               ("identifiability", "identifiability: mean P(persona)", "{:.2f}"),
               ("copying_rate", "answers copying training answers", "{:.0%}"),
               ("speech_level_rate", "sentences at the persona's speech level", "{:.0%}"),
               ("stop_rate", "stop rate", "{:.0%}"), ("language_rate", "answers in the persona's language", "{:.0%}"),
               ("json_valid_rate", "valid JSON (JSON-output data)", "{:.0%}"),
               ("json_keys_match_rate", "JSON keys match the reference", "{:.0%}"),
               ("length_ratio", "length vs reference", "{:.2f}"), ("loop_rate", "answers with a repeated 4-gram loop", "{:.0%}"),
               ("mean_answer_chars", "mean answer chars", "{:.0f}"))  # fmt: skip
CONDITION_ROWS = ("persona_chrf", "identity_rate", "out_of_character_rate", "identifiability", "copying_rate",
                  "speech_level_rate", "stop_rate", "loop_rate")  # fmt: skip
CHART_SCALE = {"chrf": 1, "persona_chrf": 1, "stop_rate": 100, "language_rate": 100, "json_valid_rate": 100,
               "identity_rate": 100, "identifiability": 100}  # fmt: skip


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table(groups: dict[str, dict[str, Any]], keys: tuple[str, ...] | None = None) -> list[str]:
    names = list(groups)
    rows = [f"| metric | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
    for key, label, fmt in METRIC_ROWS:
        if (keys is None or key in keys) and any(groups[n].get(key) is not None for n in names):
            rows.append(f"| {label} | {' | '.join(_num(groups[n].get(key), fmt) for n in names)} |")
    return rows


def condition_tables(result: dict[str, Any]) -> list[str]:
    """System-prompt robustness (the tuned model under its own, a generic and the app's system prompt) and turn 3
    (the tuned model at turns 1 and 3), as Markdown lines."""
    cond = result.get("conditions") or {}
    lines: list[str] = []
    columns = {"own persona prompt": "tuned", "generic prompt": "tuned_generic", "app prompt": "tuned_app"}
    groups = {label: overall(result, key) for label, key in columns.items() if key == "tuned" or key in cond}
    if len(groups) > 1:
        lines += ["## System-prompt robustness (tuned)", "", f"- generic: \"{cond['tuned_generic']['system_prompt']}\"",
                  *([f"- app: \"{cond['tuned_app']['system_prompt']}\""] if "tuned_app" in cond else []),
                  *_drop_lines(result["robustness"], "own persona prompt"), "", *_table(groups, CONDITION_ROWS), ""]  # fmt: skip
    columns = {"tuned, turn 1": "tuned", "tuned, turn 3": "tuned_turn3"}
    if "tuned_turn3" in cond:
        groups = {label: overall(result, key) for label, key in columns.items()}
        lines += ["## Turn 3 (after two other held-out exchanges)", "", *_drop_lines(result["turns"], "turn 1"), "",
                  *_table(groups, CONDITION_ROWS), ""]  # fmt: skip
    return lines


def _drop_lines(drops: dict[str, dict[str, Any]], against: str) -> list[str]:
    return [f"- drop vs {against}, {name}: identity {_num(d['identity_rate'], '{:+.0%}')}, identifiability "
            f"{_num(d['identifiability'], '{:+.2f}')}" for name, d in drops.items()]  # fmt: skip


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "(empty)"


def _config_lines(cfg: dict[str, Any]) -> list[str]:
    data = cfg.get("data") or {}
    where = f"`{data.get('path')}`" + (f" ({data['kind']}, relative to the {data['relative_to']})" if data.get("relative_to") else
                                         f" ({data.get('kind')})")  # fmt: skip
    lines = [f"- data: {where}"]
    if cfg.get("prompts_beyond_context"):
        lines.append(f"- left out: {cfg['prompts_beyond_context']} held-out prompts too long for the run's context")
    ident = cfg.get("identifiability")
    if ident:
        lines.append(f"- identifiability: {ident['model']} on {ident['features']}, {ident['persona_answers']} persona training "
                     f"answers vs {ident['base_answers']} base answers to the same prompts; cross-validated AUC "
                     f"{ident['auc']:.2f} ({ident['folds']} folds)")  # fmt: skip
    if cfg.get("persona"):
        lines.append(f"- persona: {cfg['persona']['name']} ({', '.join(cfg['persona']['aliases'])}); {len(cfg['probes'])} "
                     "identity probes")  # fmt: skip
    if cfg.get("copying"):
        copy = cfg["copying"]
        lines.append(f"- copying: at least {copy['threshold']:.0%} of an answer in {copy['window_chars']}-character stretches of "
                     "training answers to other prompts")  # fmt: skip
    if cfg.get("speech_level"):
        lines.append(f"- speech level: the training answers' dominant level is {cfg['speech_level']['dominant']}")
    for metric, why in (cfg.get("skipped") or {}).items():
        lines.append(f"- skipped {metric}: {why}")
    return lines


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = ["# Persona evaluation", "",
             f"- tuned: `{cfg['model']}` ({cfg['kind']}{', served at ' + cfg['url'] if cfg['url'] else ''})",
             f"- base: `{cfg['base_model']}`; prompted = base + the persona system prompt",
             f"- prompts: {cfg['n']} ({cfg['prompts']}); persona chrF against {cfg['persona_answers']} training answers",
             f"- greedy decoding, up to {cfg['max_new_tokens']} new tokens within the run's context of {cfg.get('context')} "
             "tokens (cutoff_len); chrF is sacrebleu's sentence chrF (0-100), averaged",
             f"- persona chrF of the held-out reference answers themselves: {_num(cfg['reference_persona_chrf'], '{:.1f}')}",
             *_config_lines(cfg), "", "## Overall", "", *overall_table(result), "", *condition_tables(result)]  # fmt: skip
    for level in ("datasets", "tasks"):
        for group in result["base"][level]:
            lines += [f"## {level[:-1]} `{group}`", "", *_table({n: result[n][level][group] for n in SYSTEMS}), ""]
    lines += ["## Answers side by side", "", "| prompt | reference | base | prompted | tuned |", "|---|---|---|---|---|"]
    for item in result["answers"][:SAMPLES_IN_MD]:
        cells = [_cell(item[n]["text"]) + ("" if item[n]["stopped"] else " *(cut at the limit)*") for n in SYSTEMS]
        lines.append(f"| {_cell(item['prompt'])} | {_cell(item['reference'])} | {' | '.join(cells)} |")
    if result.get("probe_answers"):
        keys = [k for k in ("prompted", "tuned", "tuned_generic") if k in result["probe_answers"][0]]
        lines += ["", "## Identity probes", "", f"| probe | {' | '.join(keys)} |", "|---|" + "---|" * len(keys)]
        for item in result["probe_answers"]:
            cells = [_cell(item[k]["text"] + _marks(item[k], True)) for k in keys]
            lines.append(f"| {_cell(item['prompt'])} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _marks(reply: dict[str, Any], probe: bool = False) -> str:
    marks = [m for m, on in (("names the persona", probe and reply.get("names_persona")),
                             ("out of character", reply.get("out_of_character")), ("copied", reply.get("copied")),
                             ("cut at the limit", not reply["stopped"])) if on]  # fmt: skip
    if reply.get("persona_probability") is not None:
        marks.append(f"P(persona) {reply['persona_probability']:.2f}")
    return f" [{', '.join(marks)}]" if marks else ""


def chart(result: dict[str, Any], path: Path) -> None:
    """Grouped bars of the main metrics (0-100) per system, and, beside them, the tuned model's identity and
    identifiability under each condition, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = ["tuned", *result.get("conditions", {})]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(12, 4), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    metrics = [k for k in CHART_SCALE if result["tuned"]["overall"].get(k) is not None]
    width = 0.8 / len(SYSTEMS)
    for j, name in enumerate(SYSTEMS):
        values = [(result[name]["overall"].get(k) or 0) * CHART_SCALE[k] for k in metrics]
        ax.bar([i + j * width for i in range(len(metrics))], values, width, label=name)
    ax.set_xticks([i + width for i in range(len(metrics))], metrics, rotation=20, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("chrF / % of answers")
    ax.set_title(f"lfx eval: {result['config']['n']} held-out prompts")
    ax.legend()
    shown = [k for k in DROPS if any(overall(result, c).get(k) is not None for c in conditions)]
    width = 0.8 / max(len(shown), 1)
    for j, key in enumerate(shown):
        values = [(overall(result, c).get(key) or 0) * 100 for c in conditions]
        side.bar([i + j * width for i in range(len(conditions))], values, width, label=key)
    side.set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(conditions))],
                    [c.replace("tuned_", "") for c in conditions], rotation=20, fontsize=8)  # fmt: skip
    side.set_ylim(0, 100)
    side.set_title("tuned under other conditions")
    if shown:
        side.legend(fontsize=8)
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
    """The overall and condition tables, then the first `show` prompts and identity probes answered by the prompted
    base and the tuned model (with what each answer shows)."""
    for line in [*overall_table(result), "", *condition_tables(result)]:
        say(line)
    labels = {"prompted": "prompted base", "tuned": "tuned", "tuned_generic": "tuned, generic"}
    for items, names, probe in ((result["answers"][:show], ("prompted", "tuned"), False),
                                (result.get("probe_answers", [])[:show], tuple(labels), True)):  # fmt: skip
        for item in items:
            say(f"\n> {item['prompt']}")
            for name in (n for n in names if n in item):
                say(f"  {labels[name]:>14}: {item[name]['text']}{_marks(item[name], probe)}")
