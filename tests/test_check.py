"""lfx check: exact token lengths, cut share, label sanity, duplicates, report formats, exit codes."""

from __future__ import annotations

import json

import pytest
from conftest import lfx, tiny_recipe_dict, write_json, write_recipe


@pytest.mark.parametrize("fixture,template", [("tiny_llama3", "llama3-persona"), ("tiny_qwen2", "qwen-persona")])
@pytest.mark.parametrize("dataset", ["ironman", "eco_multitask"])
def test_batched_token_lengths_equal_llamafactory_encoding(fixture, template, dataset, request, tmp_path):
    from llamafactory.data.processor import SupervisedDatasetProcessor

    from llamafactory_ext.preflight.encoding import aligned_records, lf_data_args, load_tokenizer_and_template
    from llamafactory_ext.preflight.lengths import message_lengths, truncation
    from llamafactory_ext.recipe import load_recipe

    model = request.getfixturevalue(fixture)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(model, template=template, dataset=dataset, cutoff_len=160)))
    tokenizer, tmpl = load_tokenizer_and_template(recipe)
    records = aligned_records(recipe, dataset)
    lengths = message_lengths(tokenizer, tmpl, records)
    for record, lens in zip(records, lengths):
        encoded = tmpl._encode(tokenizer, record["_prompt"] + record["_response"], record["_system"], None)
        assert lens == [len(ids) for ids in encoded]
    # ... and the truncation model agrees with LLaMA-Factory's own processor at cutoff_len 160.
    processor = SupervisedDatasetProcessor(template=tmpl, tokenizer=tokenizer, processor=None, data_args=lf_data_args(recipe, dataset))
    out = processor.preprocess_dataset({k: [r[k] for r in records] for k in records[0]})
    for lens, ids in zip(lengths, out["input_ids"]):
        prompt, response, cut = truncation(lens, 160, tmpl.efficient_eos)
        assert cut == (len(ids) < prompt + response)


def test_clean_run_reports_lengths_and_labels_and_exits_0(tiny_llama3, tmp_path):
    recipe = write_recipe(tmp_path / "ok.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman,eco_multitask", cutoff_len=1024))
    result = lfx("check", str(recipe), "--json", "--strict")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["dataset"] for s in report["lengths"]] == ["ironman", "eco_multitask"]
    ironman = report["lengths"][0]
    assert ironman["records"] == 66 and ironman["cut"] == 0
    assert ironman["total"]["p50"] <= ironman["total"]["p95"] <= ironman["total"]["p99"] <= ironman["total"]["max"]
    labels = report["labels"]["ironman"]
    assert labels["stop_tokens"] == ["<|eot_id|>"] and not (labels["all_masked"] or labels["no_stop_token"])
    assert 8 <= report["labels"]["eco_multitask"]["samples"] <= 16
    text = lfx("check", str(recipe))
    assert text.exit_code == 0 and "tokens per sample" in text.stdout and "ok: no warnings" in text.stdout


def test_samples_cut_at_cutoff_len_are_counted_with_a_suggestion(tiny_llama3, tmp_path):
    recipe = write_recipe(tmp_path / "short.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman", cutoff_len=175))
    result = lfx("check", str(recipe), "--json")
    assert result.exit_code == 0, result.output  # warnings only
    report = json.loads(result.stdout)
    stats = report["lengths"][0]
    assert 0 < stats["cut"] < 66 and stats["cut_share"] == pytest.approx(stats["cut"] / 66)
    warning = next(f for f in report["findings"] if "cut at cutoff_len 175" in f["message"])
    assert f"cutoff_len {-(-stats['keeps_99'] // 64) * 64} keeps 99%" in warning["message"]
    assert f"{stats['cut_share']:.1%} of samples ({stats['cut']}/66)" in warning["message"]
    assert lfx("check", str(recipe), "--strict").exit_code == 1


def test_a_template_without_stop_token_in_labels_is_flagged(tiny_llama3, templates_copy, tmp_path):
    (templates_copy / "llama3-nostop.yaml").write_text(
        "name: llama3-nostop\nbase: llama3\noverrides:\n  format_assistant: {slots: ['{{content}}']}\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, template="llama3-nostop"))
    result = lfx("check", str(recipe), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert len(report["labels"]["ironman"]["no_stop_token"]) == report["labels"]["ironman"]["samples"] >= 8
    assert lfx("check", str(recipe), "--strict").exit_code == 1


def test_duplicates_and_val_split_leak_are_reported(tiny_llama3, data_copy, tmp_path):
    records = json.loads((data_copy / "ironman.json").read_text(encoding="utf-8"))
    records += [dict(records[0]), dict(records[1], output="다른 대답입니다.")]
    write_json(data_copy / "ironman.json", records)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, val_size=0.1))
    report = json.loads(lfx("check", str(recipe), "--json").stdout)
    messages = [f["message"] for f in report["findings"]]
    assert any("1 duplicated records" in m and "val_size split" in m for m in messages)
    assert any("1 prompts appear with different responses" in m for m in messages)


def test_check_does_not_need_a_gpu_or_write_anything(tiny_llama3, tmp_path):
    from conftest import snapshot

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3))
    before = snapshot(tmp_path)
    assert lfx("check", str(recipe)).exit_code == 0
    assert snapshot(tmp_path) == before


def test_check_leaves_the_process_as_it_found_it(tiny_llama3, tmp_path):
    """LLaMA-Factory judges a ZeRO-3 rank's arguments in this process: afterwards a model loads as before
    (not inside deepspeed.zero.Init, which would look for MPI), and no process group or launch variable is left."""
    import os

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    environ = dict(os.environ)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, launch={"zero_stage": 3}))
    assert lfx("check", str(recipe)).exit_code == 0
    assert not is_deepspeed_zero3_enabled() and not dist.is_initialized() and dict(os.environ) == environ
    model = AutoModelForCausalLM.from_pretrained(tiny_llama3)
    assert not hasattr(next(model.parameters()), "ds_id")  # a plain tensor, not a ZeRO-3 partition


def _add_entry(folder, name: str, entry: dict) -> None:
    info = json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))
    info[name] = entry
    write_json(folder / "dataset_info.json", info)


def _variant(kind: str, d) -> dict:
    """Dataset 'extra' in another valid shape LLaMA-Factory reads; returns its dataset_info entry."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = json.loads((d / "ironman.json").read_text(encoding="utf-8"))[:12]
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    turns = [[{"from": "human", "value": r["instruction"]}, {"from": "gpt", "value": r["output"]}] for r in records]
    if kind == "jsonl":
        (d / "extra.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return {"file_name": "extra.jsonl", "columns": columns}
    if kind == "csv":
        import csv

        with open(d / "extra.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows(records)  # empty `input` cells come back as None: accepted, as LLaMA-Factory does
        return {"file_name": "extra.csv", "columns": columns}
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(records), d / "extra.parquet")
        return {"file_name": "extra.parquet", "columns": columns}
    if kind == "jsonl_folder":
        (d / "extra").mkdir()
        for i in (0, 1):
            (d / "extra" / f"part-{i}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[i::2]), encoding="utf-8")
        return {"file_name": "extra", "columns": columns}
    if kind == "sharegpt":
        write_json(d / "extra.json", [{"conversations": t} for t in turns])
        return {"file_name": "extra.json", "formatting": "sharegpt"}
    if kind == "openai":
        messages = [[{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]} for m in t] for t in turns]
        write_json(d / "extra.json", [{"messages": [{"role": "system", "content": "짧게."}, *m]} for m in messages])
        return {"file_name": "extra.json", "formatting": "openai", "columns": {"messages": "messages"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "jsonl_folder", "sharegpt", "openai"])
def test_valid_dataset_variants_are_accepted(kind, tiny_llama3, data_copy, tmp_path):
    from conftest import snapshot

    _add_entry(data_copy, "extra", _variant(kind, data_copy))
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman,  extra", eval_dataset=" ironman"))
    before = snapshot(data_copy)
    result = lfx("check", str(recipe), "--json")
    assert result.exit_code == 0, result.output
    lengths = {s["dataset"]: s for s in json.loads(result.stdout)["lengths"]}
    assert lengths["extra"]["records"] == 12 and lengths["ironman"]["records"] == 66
    assert snapshot(data_copy) == before
    assert lfx("plan", str(recipe), "--json").exit_code == 0
    target = tmp_path / "target"  # a run folder's data/: the entry and every file of it (a folder too) copied
    assert lfx("datasets", "register", "--into", str(target), "extra").exit_code == 0
    copied = snapshot(target)
    ours = {k: v for k, v in copied.items() if k not in ("dataset_info.json", ".lfx_written")}  # the folder's info and marker
    assert {k: v for k, v in snapshot(data_copy).items() if k.startswith("extra")} == ours


def test_hub_dataset_offline_and_not_cached_is_one_warning(tiny_llama3, data_copy, tmp_path):
    _add_entry(data_copy, "hub", {"hf_hub_url": "nobody/not-cached-dataset"})
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman, hub"))
    result = lfx("check", str(recipe), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    warnings = [f for f in report["findings"] if f["level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["where"] == "dataset 'hub'"
    assert "not in the local Hugging Face datasets cache and the Hub is offline" in warnings[0]["message"]
    assert [s["dataset"] for s in report["lengths"]] == ["ironman"]  # token statistics skipped for it
    assert lfx("check", str(recipe), "--strict").exit_code == 1


def test_hub_dataset_in_the_cache_is_checked_fully(tiny_llama3, data_copy, tmp_path):
    from test_bad_inputs import _cached_hub_dataset

    records = json.loads((data_copy / "ironman.json").read_text(encoding="utf-8"))[:20]
    _cached_hub_dataset(tmp_path / "cache", "someone/ironman-ko", records)
    _add_entry(data_copy, "hub", {"hf_hub_url": "someone/ironman-ko", "columns": {"prompt": "instruction", "query": "input", "response": "output"}})
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, dataset="hub", cache_dir=str(tmp_path / "cache")))
    result = lfx("check", str(recipe), "--json", "--strict")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["lengths"][0]["records"] == 20 and report["labels"]["hub"]["samples"] >= 8


def test_cutoff_len_beyond_the_context_length_warns_with_both_numbers(tiny_llama3, tmp_path):
    limit = json.loads((tiny_llama3 / "config.json").read_text())["max_position_embeddings"]
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, cutoff_len=limit * 4))
    report = json.loads(lfx("check", str(recipe), "--json").stdout)
    warning = next(f for f in report["findings"] if f["where"] == "field 'cutoff_len'")
    assert warning["level"] == "warning" and f"{limit * 4} is beyond the model's context length {limit}" in warning["message"]
    scaled = write_recipe(tmp_path / "s.yaml", tiny_recipe_dict(tiny_llama3, cutoff_len=limit * 4, rope_scaling="linear"))
    result = lfx("check", str(scaled), "--json", "--strict")
    assert result.exit_code == 0, result.output  # LLaMA-Factory's configure_rope covers it: a note
    assert any("enlarges the context by 4x" in f["message"] for f in json.loads(result.stdout)["findings"])


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_reasoning_template_lengths_equal_llamafactory_encode_multiturn(enable_thinking, tiny_qwen2, tmp_path):
    """qwen3 is a ReasoningTemplate: its encode_multiturn adds the empty thought LLaMA-Factory trains on."""
    import copy

    from llamafactory.data.template import TEMPLATES, get_template_and_fix_tokenizer
    from transformers import AutoTokenizer

    from llamafactory_ext.preflight.encoding import aligned_records, lf_data_args, load_tokenizer_and_template
    from llamafactory_ext.preflight.lengths import message_lengths
    from llamafactory_ext.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_qwen2, template="qwen3", enable_thinking=enable_thinking)))
    tokenizer, tmpl = load_tokenizer_and_template(recipe)
    assert type(tmpl).__name__ == "ReasoningTemplate" and tmpl.enable_thinking is enable_thinking
    records = aligned_records(recipe, "ironman")
    lengths = message_lengths(tokenizer, tmpl, records)
    # LLaMA-Factory's own build, on its own tokenizer and a copy of its registry entry
    shared = TEMPLATES["qwen3"]
    TEMPLATES["qwen3"] = copy.deepcopy(shared)
    try:
        theirs_tok = AutoTokenizer.from_pretrained(str(tiny_qwen2))
        theirs = get_template_and_fix_tokenizer(theirs_tok, lf_data_args(recipe, "ironman"))
    finally:
        TEMPLATES["qwen3"] = shared
    for record, lens in zip(records, lengths):
        pairs = theirs.encode_multiturn(theirs_tok, record["_prompt"] + record["_response"], record["_system"], None)
        assert lens == [len(ids) for pair in pairs for ids in pair]


def test_tool_format_and_default_system_are_applied_as_training_applies_them(tiny_qwen2, tmp_path):
    from llamafactory.data.template import TEMPLATES

    from llamafactory_ext.preflight.encoding import load_tokenizer_and_template
    from llamafactory_ext.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_qwen2, template="qwen-persona", tool_format="glm4",
                                                                           default_system="짧게 답하세요.")))  # fmt: skip
    _, tmpl = load_tokenizer_and_template(recipe)
    assert type(tmpl.format_tools.tool_utils).__name__ == "GLM4ToolUtils" and tmpl.default_system == "짧게 답하세요."
    shared = TEMPLATES["qwen-persona"]  # LLaMA-Factory's registry entry is untouched
    assert shared.default_system != "짧게 답하세요." and type(shared.format_tools.tool_utils).__name__ != "GLM4ToolUtils"
