"""`lfx eval`: does the persona take? The run's held-out prompts answered three ways, side by side:

- base: the base model as shipped, through its own chat template;
- prompted: the base with the persona's system prompt (the prompt-engineering baseline of seed 001);
- tuned: the fine-tuned model (a merged folder or an adapter on its base) through its saved chat
  template, or an OpenAI-compatible endpoint serving it (`--url`, e.g. vLLM or `lfx serve`).

Greedy decoding, batched with left padding. Held-out prompts are the run's `val_size` split (the very
records LLaMA-Factory held out: its split is `datasets.Dataset.train_test_split(test_size, seed)` on
the concatenated records, reproduced here with the same call), its `eval_dataset`, or a prompts file.
Metrics are in llamafactory_ext.eval_metrics. Writes eval.json, eval.md and eval.png; every input is
checked before the first model loads, and nothing is written unless everything succeeded.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .datasets import ALPACA_DEFAULTS, SHAREGPT_DEFAULTS, load_entries
from .errors import LfxError
from .eval_metrics import Answer, persona_chrf, summarize
from .files import atomic_write_text, dump_json, read_json, read_jsonl
from .paths import datasets_dir

SYSTEMS = ("base", "prompted", "tuned")
RUN_RECORD = "lfx_run.json"
URL_CHECK_TIMEOUT_S = 10
URL_REQUEST_TIMEOUT_S = 300
SAMPLES_IN_MD = 5
# Architecture fields a --base must share with the tuned model.
SHAPE_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")  # fmt: skip


@dataclass
class Prompt:
    messages: list[dict[str, str]]
    reference: str = ""
    dataset: str = ""
    task: str | None = None
    json_expected: bool = False


@dataclass
class EvalSet:
    """What to answer and how to judge it."""

    prompts: list[Prompt]
    persona_answers: list[str] = field(default_factory=list)
    language: str | None = None
    source: str = ""


@dataclass
class Target:
    """The tuned model, its run record and the base it came from."""

    path: Path
    kind: str  # "merged" or "adapter"
    record: dict[str, Any]
    record_path: Path
    base: Path
    system: str


# --- where things are -------------------------------------------------------------------------

def find_model(path: str | Path) -> tuple[Path, str]:
    """A merged model folder or a LoRA adapter; a rendered run folder means its merged/ (else output/)."""
    path = Path(path)
    if not path.is_dir():
        raise LfxError(f"{path}: folder not found")
    for candidate in (path, path / "merged", path / "output"):
        if (candidate / "adapter_config.json").is_file():
            return candidate, "adapter"
        if (candidate / "config.json").is_file():
            return candidate, "merged"
    raise LfxError(f"{path}: neither a model folder (config.json), a LoRA adapter (adapter_config.json) nor a run folder")


def find_record(model: Path) -> tuple[dict[str, Any], Path]:
    for folder in (model, model.parent, model.parent / "output"):
        if (folder / RUN_RECORD).is_file():
            record = read_json(folder / RUN_RECORD)
            if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
                raise LfxError(f"{folder / RUN_RECORD}: field 'args': missing (not a run record of lfx)")
            return record, folder / RUN_RECORD
    raise LfxError(f"{model}: no {RUN_RECORD} here or in the run folder (evaluate a run's output or merged folder)")


def _config(folder: Path) -> dict[str, Any]:
    data = read_json(folder / "config.json")
    return data.get("text_config", data) if isinstance(data, dict) else {}


def check_base(model: Path, kind: str, base: Path, recorded_base: str) -> None:
    """The base must be the model the tuned one came from: the adapter's weights fit it and it has
    the architecture of the base the adapter recorded (when that is here), or the merged model's."""
    if not (base / "config.json").is_file():
        raise LfxError(f"--base: {base}: no config.json (not a model folder)")
    if kind == "adapter":
        from .merge import base_weight_map, check_match, load_adapter

        check_match(load_adapter(model), base, None, base_weight_map(base))
        recorded = Path(recorded_base)
        if not (recorded / "config.json").is_file():
            return  # a Hub id not cached here: the weight shapes above are what can be checked
        reference, what = _config(recorded), f"the adapter's base {recorded}"
    else:
        reference, what = _config(model), "the tuned model"
    shipped = _config(base)
    for key in SHAPE_FIELDS:
        if reference.get(key) != shipped.get(key):
            raise LfxError(f"--base: {base}: does not match {model}: field '{key}' is {shipped.get(key)!r} in the base, "
                           f"{reference.get(key)!r} in {what}")  # fmt: skip


def resolve_target(path: str | Path, base_arg: str | None) -> Target:
    from .merge import resolve_base

    model, kind = find_model(path)
    record, record_path = find_record(model)
    if kind == "adapter":
        recorded = str(read_json(model / "adapter_config.json").get("base_model_name_or_path") or "")
    else:
        recorded = str((read_json(model / "lfx_merge.json") if (model / "lfx_merge.json").is_file() else {}).get(
            "base_model") or record["args"].get("model_name_or_path") or "")  # fmt: skip
    base_arg = base_arg or recorded
    if not base_arg:
        raise LfxError(f"{record_path}: field 'args.model_name_or_path': missing (pass --base)")
    base = resolve_base(base_arg)
    check_base(model, kind, base, recorded)
    system = str((record.get("template") or {}).get("default_system") or "")
    if not system:
        raise LfxError(f"{record_path}: field 'template.default_system': the run's template has no persona system prompt")
    return Target(model, kind, record, record_path, base, system)


# --- what to ask --------------------------------------------------------------------------------

def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [n.strip() for n in value.split(",") if n.strip()]
    return [str(n).strip() for n in value]


def _json_rule_matches(rule: Any, record: dict) -> bool:
    if isinstance(rule, dict):
        return any(record.get(key) in values for key, values in rule.items())
    return bool(rule)


def record_prompt(where: str, record: Any, info: dict[str, Any], dataset: str = "") -> Prompt:
    """A dataset record (alpaca or sharegpt, the entry's columns) as the conversation up to the last
    user turn and the answer after it."""
    if not isinstance(record, dict):
        raise LfxError(f"{where}: expected an object, got {type(record).__name__}")
    rule = (info.get("lfx") or {}).get("json_output", False)
    task = record.get("task") if isinstance(record.get("task"), str) else None
    if info.get("formatting", "alpaca") == "alpaca":
        cols = {**ALPACA_DEFAULTS, **info.get("columns", {})}
        prompt = record.get(cols["prompt"])
        if not isinstance(prompt, str) or not prompt.strip():
            raise LfxError(f"{where}: field '{cols['prompt']}': expected non-empty text")
        query = record.get(cols["query"]) or ""
        messages: list[dict[str, str]] = []
        for pair in (record.get(cols["history"]) if "history" in cols else None) or []:  # only when declared
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages.append({"role": "user", "content": "\n".join(filter(None, [prompt, query]))})
        reference = record.get(cols["response"]) or ""
    else:
        cols = {**SHAREGPT_DEFAULTS, **info.get("columns", {}), **info.get("tags", {})}
        turns = record.get(cols["messages"])
        if not isinstance(turns, list) or not turns:
            raise LfxError(f"{where}: field '{cols['messages']}': expected a non-empty list of messages")
        roles = {cols["user_tag"]: "user", cols["assistant_tag"]: "assistant", cols["system_tag"]: "system"}
        messages = [{"role": roles.get(t.get(cols["role_tag"]), "user"), "content": str(t.get(cols["content_tag"], ""))}
                    for t in turns if isinstance(t, dict)]  # fmt: skip
        reference = ""
        if messages and messages[-1]["role"] == "assistant":
            reference = messages.pop()["content"]
        messages = [m for m in messages if m["role"] != "system"]
        if not messages or messages[-1]["role"] != "user":
            raise LfxError(f"{where}: field '{cols['messages']}': no user turn to answer")
    if not isinstance(reference, str):
        raise LfxError(f"{where}: reference answer: expected a string, got {type(reference).__name__}")
    return Prompt(messages, reference, dataset, task, bool(reference) and _json_rule_matches(rule, record))


def dataset_records(name: str, args: dict[str, Any], where: str) -> tuple[list[dict], dict[str, Any]]:
    """The records of dataset `name` as the run read them (its dataset_dir first, then datasets/),
    with our entry (lfx keys) when we declare the dataset."""
    ours = load_entries()
    folders = [Path(args["dataset_dir"])] if args.get("dataset_dir") else []
    folders.append(datasets_dir())
    for folder in folders:
        info_path = folder / "dataset_info.json"
        if not info_path.is_file():
            continue
        infos = read_json(info_path)
        if name not in infos:
            continue
        info = {**infos[name], **({"lfx": ours[name].info.get("lfx", {})} if name in ours else {})}
        if "file_name" not in info:
            raise LfxError(f"{info_path}: dataset '{name}': not a local file (pass --prompts)")
        path = folder / info["file_name"]
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            records = read_json(path)
        if not isinstance(records, list):
            raise LfxError(f"{path}: expected a JSON list of records")
        if args.get("max_samples"):
            records = records[: int(args["max_samples"])]
        return records, info
    raise LfxError(f"{where}: field 'args.dataset': dataset '{name}' not found in the run's dataset_dir or datasets/")


def _language(infos: list[dict[str, Any]]) -> str | None:
    declared = {(i.get("lfx") or {}).get("language") for i in infos}
    return declared.pop() if len(declared) == 1 else None


def held_out(record: dict[str, Any], record_path: Path) -> EvalSet:
    """The run's held-out prompts (val_size split or eval_dataset) and its training answers."""
    args = record["args"]
    where = str(record_path)
    val_size = float(args.get("val_size") or 0)
    evals = _names(args.get("eval_dataset"))
    if val_size <= 1e-6 and not evals:
        raise LfxError(f"{where}: field 'args.val_size': the run has no held-out split (no val_size or "
                       f"eval_dataset); pass --prompts FILE")  # fmt: skip
    if args.get("streaming"):
        raise LfxError(f"{where}: field 'args.streaming': the streamed split is not reproducible here; pass --prompts FILE")
    if args.get("mix_strategy", "concat") != "concat":
        raise LfxError(f"{where}: field 'args.mix_strategy': only 'concat' splits are reproduced; pass --prompts FILE")
    train, infos = [], []
    for name in _names(args.get("dataset")):
        records, info = dataset_records(name, args, where)
        infos.append(info)
        train += [record_prompt(f"{name}: record {i}", r, info, name) for i, r in enumerate(records)]
    if evals:
        test = []
        for name in evals:
            records, info = dataset_records(name, args, where)
            infos.append(info)
            test += [record_prompt(f"{name}: record {i}", r, info, name) for i, r in enumerate(records)]
        source = f"eval_dataset {', '.join(evals)}"
    else:
        from datasets import Dataset

        # LLaMA-Factory's split_dataset: train_test_split(test_size=val_size, seed=training seed).
        size = int(val_size) if val_size > 1 else val_size
        split = Dataset.from_dict({"i": list(range(len(train)))}).train_test_split(test_size=size, seed=int(args.get("seed", 42)))
        test = [train[i] for i in split["test"]["i"]]
        train = [train[i] for i in split["train"]["i"]]
        source = f"val_size {args['val_size']} split of {args.get('dataset')} (seed {int(args.get('seed', 42))})"
    return EvalSet(test, [p.reference for p in train if p.reference], _language(infos), source)


def read_prompts_file(path: str | Path) -> list[Prompt]:
    """Prompts from a text file (one per line), a JSON list (strings or alpaca/sharegpt records) or
    JSON Lines. Records may carry the reference answer (`output`) and `dataset`/`task`."""
    path = Path(path)
    if not path.is_file():
        raise LfxError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        items = read_jsonl(path)
    elif path.suffix == ".json":
        items = read_json(path)
        if not isinstance(items, list):
            raise LfxError(f"{path}: expected a JSON list of prompts, got {type(items).__name__}")
    else:
        try:
            items = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as err:
            raise LfxError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    entries = load_entries()
    prompts = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise LfxError(f"{path}: record {i}: empty prompt")
            prompts.append(Prompt([{"role": "user", "content": item.strip()}], dataset=path.stem))
            continue
        dataset = item.get("dataset") if isinstance(item, dict) and isinstance(item.get("dataset"), str) else None
        info = entries[dataset].info if dataset in entries else {}
        if isinstance(item, dict) and not info and ("conversations" in item or "messages" in item):
            info = {"formatting": "sharegpt"} if "conversations" in item else {
                "formatting": "sharegpt", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                         "system_tag": "system"}}  # fmt: skip
        prompts.append(record_prompt(f"{path}: record {i}", item, info, dataset or path.stem))
    if not prompts:
        raise LfxError(f"{path}: no prompts")
    return prompts


# --- answering ----------------------------------------------------------------------------------

def conversations(system_name: str, prompts: list[Prompt], persona_system: str) -> list[list[dict[str, str]]]:
    if system_name == "prompted":
        return [[{"role": "system", "content": persona_system}, *p.messages] for p in prompts]
    return [list(p.messages) for p in prompts]


def load_model(path: Path):
    """(model, tokenizer) for generation: bf16 on a GPU, fp32 on CPU; left padding for batches."""
    import torch
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16 if cuda else torch.float32)
    model.to("cuda" if cuda else "cpu").eval()
    return model, load_tokenizer(path)


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if not tokenizer.chat_template:
        raise LfxError(f"{path}: the tokenizer has no chat template")
    tokenizer.padding_side = "left"
    return tokenizer


def stop_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def generate_answers(model, tokenizer, convs: list[list[dict[str, str]]], max_new_tokens: int,
                     batch_size: int = 16) -> list[tuple[str, bool]]:  # fmt: skip
    """Greedy answers, `batch_size` conversations at a time (left padding; similar lengths batched
    together); each with whether it ended on a stop token."""
    import torch

    eos = stop_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:  # base tokenizers often have none; left padding is masked anyway
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
    pad = tokenizer.pad_token_id
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in convs]
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    results: list[tuple[str, bool]] = [("", False)] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([texts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                 pad_token_id=pad, temperature=None, top_p=None, top_k=None)  # fmt: skip
        for row, i in zip(out[:, enc["input_ids"].shape[1] :].tolist(), chunk):
            end = next((j for j, t in enumerate(row) if t in eos), None)
            text = tokenizer.decode(row if end is None else row[:end], skip_special_tokens=True).strip()
            results[i] = (text, end is not None)
    return results


def endpoint(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _http(url: str, payload: dict | None, timeout: float) -> dict:
    data = json.dumps(payload).encode("utf-8") if payload is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (user-given URL)
        return json.loads(response.read().decode("utf-8"))


def check_url(url: str) -> str:
    """The model id the endpoint serves; one line when it does not answer within the bound."""
    try:
        models = _http(f"{endpoint(url)}/models", None, URL_CHECK_TIMEOUT_S)
        return str(models["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        reason = getattr(err, "reason", None) or err
        raise LfxError(f"--url {url}: no OpenAI-compatible server answers at {endpoint(url)}/models "
                       f"within {URL_CHECK_TIMEOUT_S} s ({reason})") from None  # fmt: skip


def remote_answers(url: str, model_id: str, convs: list[list[dict[str, str]]], max_new_tokens: int) -> list[tuple[str, bool]]:
    """Greedy answers from an OpenAI-compatible chat endpoint; stopped when finish_reason is 'stop'."""
    results = []
    for i, conv in enumerate(convs):
        payload = {"model": model_id, "messages": conv, "max_tokens": max_new_tokens, "temperature": 0}
        try:
            choice = _http(f"{endpoint(url)}/chat/completions", payload, URL_REQUEST_TIMEOUT_S)["choices"][0]
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
            raise LfxError(f"--url {url}: prompt {i}: no answer within {URL_REQUEST_TIMEOUT_S} s "
                           f"({getattr(err, 'reason', None) or err})") from None  # fmt: skip
        results.append(((choice["message"].get("content") or "").strip(), choice.get("finish_reason") == "stop"))
    return results


# --- the report ---------------------------------------------------------------------------------

def evaluate(path: str | Path, base: str | None = None, prompts_file: str | None = None, url: str | None = None,
             max_new_tokens: int = 128, batch_size: int = 16, progress: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """The eval report (what eval.json holds)."""
    say = progress or (lambda _msg: None)
    target = resolve_target(path, base)
    if prompts_file is None:
        evalset = held_out(target.record, target.record_path)
    else:
        prompts = read_prompts_file(prompts_file)
        try:  # persona answers: the training split when the run has one, else every training record
            split = held_out(target.record, target.record_path)
            persona, language = split.persona_answers, split.language
        except LfxError:
            persona, language = training_answers(target.record, target.record_path)
        evalset = EvalSet(prompts, persona, language, f"prompts file {prompts_file}")
    if not evalset.prompts:
        raise LfxError(f"{target.record_path}: the held-out split is empty")
    model_id = check_url(url) if url else None

    answers: dict[str, list[tuple[str, bool]]] = {}
    say(f"loading base model {target.base}")
    model, tokenizer = load_model(target.base)
    for name in ("base", "prompted"):
        say(f"answering {len(evalset.prompts)} prompts: {name}")
        answers[name] = generate_answers(model, tokenizer, conversations(name, evalset.prompts, target.system),
                                         max_new_tokens, batch_size)  # fmt: skip
    convs = conversations("tuned", evalset.prompts, target.system)
    if url:
        del model
        say(f"answering {len(convs)} prompts: tuned, served at {url}")
        answers["tuned"] = remote_answers(url, model_id, convs, max_new_tokens)
    else:
        if target.kind == "adapter":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(target.path)).eval()
            tokenizer = load_tokenizer(target.path if (target.path / "tokenizer_config.json").is_file() else target.base)
        else:
            del model
            model, tokenizer = load_model(target.path)
        say(f"answering {len(convs)} prompts: tuned")
        answers["tuned"] = generate_answers(model, tokenizer, convs, max_new_tokens, batch_size)
    return report(target, evalset, answers, max_new_tokens, url)


def training_answers(record: dict[str, Any], record_path: Path) -> tuple[list[str], str | None]:
    """Every answer of the run's training datasets, and their declared language."""
    answers, infos = [], []
    for name in _names(record["args"].get("dataset")):
        records, info = dataset_records(name, record["args"], str(record_path))
        infos.append(info)
        prompts = [record_prompt(f"{name}: record {i}", r, info, name) for i, r in enumerate(records)]
        answers += [p.reference for p in prompts if p.reference]
    return answers, _language(infos)


def report(target: Target, evalset: EvalSet, answers: dict[str, list[tuple[str, bool]]], max_new_tokens: int,
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
        items = [Answer(prompt=p.messages[-1]["content"], answer=a, reference=p.reference, stopped=s, dataset=p.dataset,
                        task=p.task, json_expected=p.json_expected)
                 for p, (a, s) in zip(evalset.prompts, answers[name])]  # fmt: skip
        out[name] = summarize(items, evalset.persona_answers, evalset.language)
    out["answers"] = [
        {"dataset": p.dataset, "task": p.task, "prompt": p.messages[-1]["content"], "reference": p.reference,
         **{name: {"text": answers[name][i][0], "stopped": answers[name][i][1]} for name in SYSTEMS}}
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
    return [out / "eval.json", out / "eval.md", out / "eval.png"]


def overall_table(result: dict[str, Any]) -> list[str]:
    """The overall metrics of base, prompted and tuned as Markdown table lines (CLI, eval.md, model card)."""
    return _table({n: result[n]["overall"] for n in SYSTEMS})
