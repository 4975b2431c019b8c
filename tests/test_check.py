"""lfx check: exact token lengths, cut share, label sanity, duplicates, report formats, exit codes."""

from __future__ import annotations

import json

import pytest
from conftest import lfx, tiny_recipe_dict, write_json, write_recipe


@pytest.mark.parametrize("fixture,template", [("tiny_llama3", "llama3-persona"), ("tiny_qwen2", "qwen-persona")])
@pytest.mark.parametrize("dataset", ["ironman", "eco_multitask"])
def test_batched_token_lengths_equal_llamafactory_encoding(fixture, template, dataset, request, tmp_path):
    from llamafactory.data.processor import SupervisedDatasetProcessor

    from llamafactory_ext.check import _data_args, aligned_records, load_tokenizer_and_template, message_lengths, truncation
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
    processor = SupervisedDatasetProcessor(template=tmpl, tokenizer=tokenizer, processor=None, data_args=_data_args(recipe, dataset))
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
    recipe = write_recipe(tmp_path / "short.yaml", tiny_recipe_dict(tiny_llama3, dataset="ironman", cutoff_len=140))
    result = lfx("check", str(recipe), "--json")
    assert result.exit_code == 0, result.output  # warnings only
    report = json.loads(result.stdout)
    stats = report["lengths"][0]
    assert 0 < stats["cut"] < 66 and stats["cut_share"] == pytest.approx(stats["cut"] / 66)
    warning = next(f for f in report["findings"] if "cut at cutoff_len 140" in f["message"])
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
