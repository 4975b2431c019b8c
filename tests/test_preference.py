"""The preference round's decisions: which answer a pair rejects, multi-turn records split into one pair per turn
(read back by LLaMA-Factory's own converter), the system-prompt mix of a run's data snapshot, and the stage a
recipe's data fits (refused by `lfx check` before any model loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import lfx, one_line_error, tiny_recipe_dict, write_json, write_recipe

from llamafactory_ext.errors import LfxError
from llamafactory_ext.evaluation.lexicon import load_lexicon
from llamafactory_ext.evaluation.persona_judge import Judge, Verdict
from llamafactory_ext.inference.prompts import Answer, Prompt
from llamafactory_ext.persona.schema import Persona
from llamafactory_ext.preference import choose
from llamafactory_ext.preference.pairs import Turn, build, entry, record, turns
from llamafactory_ext.run.system_mix import mix

TONY = Persona(name="Tony Stark", aliases=["Tony", "Iron Man"], languages=["en"])


def _verdict(ooc=False, names=True, loop=False, stopped=True, p=0.9) -> Verdict:
    return Verdict(names, ooc, loop, stopped, p)


def _c(source: str, copied: bool = False, **kw) -> choose.Candidate:
    return choose.Candidate(source, source, _verdict(**kw), copied)


@pytest.mark.parametrize("tuned, base, identity, with_base, expected", [
    ({}, {}, False, True, None),  # both pass
    ({"loop": True}, {"ooc": True}, False, True, ("tuned", "loop")),  # the tuned model's own failure first
    ({}, {"ooc": True, "loop": True}, False, False, None),  # the base's failures only on request
    ({}, {"ooc": True, "loop": True}, False, True, ("base", "out of character")),  # then the base's worst
    ({"stopped": False, "p": 0.1}, {"stopped": False}, False, False, ("tuned", "did not stop")),  # its most severe
    ({"names": False}, {}, True, False, ("tuned", "no persona identity")),  # a probe's answer must name the persona
    ({"names": False}, {}, False, False, None),  # an ordinary prompt need not
    ({"p": 0.1}, {}, False, False, ("tuned", "least identifiable")),  # reads like the base, not the persona
    ({}, {"p": 0.1}, False, True, ("base", "least identifiable")),
    ({"p": 0.6}, {"p": 0.55}, False, True, None),  # above one half, both read like the persona
    ({"copied": True, "p": 0.1}, {}, False, False, ("tuned", "copies another answer")),  # a stock answer, reused
    ({"copied": True, "stopped": False}, {}, False, False, ("tuned", "did not stop")),
])  # fmt: skip
def test_the_rejected_answer_is_the_worst_failure(tuned, base, identity, with_base, expected):
    found = choose.rejected([_c("tuned", **tuned), _c("base", **base)], identity_asked=identity, with_base=with_base)
    assert (found and (found[0].source, found[1])) == expected or (found is None and expected is None)


def test_a_multi_turn_record_is_one_pair_per_turn():
    conversation = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                    {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"},
                    {"role": "user", "content": "q3"}]  # fmt: skip
    split = turns([Prompt(conversation, "a3"), Prompt([{"role": "user", "content": "lone"}], "")])
    assert [(t.messages[-1]["content"], t.reference, len(t.messages)) for t in split] == [("q1", "a1", 1), ("q2", "a2", 3),
                                                                                          ("q3", "a3", 5)]  # fmt: skip
    assert record(split[2], "good", "bad", "tuned: loop")["history"] == [["q1", "a1"], ["q2", "a2"]]


def test_pairs_are_built_from_real_verdicts_and_read_by_llamafactory(tmp_path):
    """lfx eval's own judge (lexicon, persona) picks the rejected answers; the file is what LLaMA-Factory's alpaca
    converter reads as pairwise examples, and our record check accepts it."""
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    from llamafactory_ext.persona.dataset_entries import load_entries
    from llamafactory_ext.persona.dataset_records import check_entry

    judge = Judge(load_lexicon(), TONY)
    todo = [Turn([{"role": "user", "content": "Tell me about your suits."}], "The Mark 85, obviously. I built it."),
            Turn([{"role": "user", "content": "Who are you?"}], probe=True),
            Turn([{"role": "user", "content": "Coffee?"}], "Espresso, Tony Stark style."),
            Turn([{"role": "user", "content": "What do you drive?"}], "Whatever I built last week.")]  # fmt: skip
    tuned = [Answer("As an AI language model, I don't have suits.", True), Answer("I'm Tony Stark.", True),
             Answer("Espresso, obviously.", True), Answer("Tony Stark drives an Audi R8, naturally.", True)]  # fmt: skip
    base = [Answer("Suits suits suits suits suits suits suits suits suits suits suits suits", False),
            Answer("I am an AI assistant created by a company.", True), Answer("I like tea.", True),
            Answer("A car.", True)]  # fmt: skip
    training = [Prompt([{"role": "user", "content": "What is your name?"}], "Tony Stark. You knew that, I hope."),
                Prompt([{"role": "user", "content": "Favourite car?"}], "Tony Stark drives an Audi R8, naturally."),
                Prompt([{"role": "user", "content": "Coffee?"}], "Espresso, Tony Stark style.")]  # fmt: skip
    pairs = build(todo, tuned, base, judge, training, with_base=True)
    assert [(p["instruction"], p["chosen"], p["why"]) for p in pairs] == [
        ("Tell me about your suits.", "The Mark 85, obviously. I built it.", "tuned: out of character"),
        ("Who are you?", "I'm Tony Stark.", "base: out of character"),
        # the answer to another training prompt, word for word: lfx eval's copying test
        ("What do you drive?", "Whatever I built last week.", "tuned: copies another answer")]
    assert build(todo, tuned, base, judge, training) == [pairs[0], pairs[2]]  # by default the tuned model's failures
    assert build(todo[2:3], tuned[2:3], base[2:3], judge, [], with_base=True) == []  # nothing fails: no pair
    # a probe both models fail: the sentences naming the persona in its answer to the closest training question,
    # not the whole answer (taught as every probe's answer, it was given to other questions)
    probe = [Turn([{"role": "user", "content": "What's your name?"}], probe=True)]
    failed = [Answer("I am an AI assistant.", True)]
    assert build(probe, failed, failed, judge, training)[0]["chosen"] == "Tony Stark."
    # ... unless the tuned model's own answer begun with those sentences passes: then that one
    begun = Answer("Tony Stark. Engineer, and the one who builds the suits around here.", True)
    assert build(probe, failed, failed, judge, training, begun=[begun])[0]["chosen"] == begun.text
    leaking = Answer("Tony Stark. As an AI language model, I cannot build suits.", True)
    assert build(probe, failed, failed, judge, training, begun=[leaking])[0]["chosen"] == "Tony Stark."
    write_json(tmp_path / "p.json", pairs)
    write_json(tmp_path / "dataset_info.json", {"p": entry("p", "en")})
    loaded = load_entries(tmp_path, names=["p"])["p"]
    assert check_entry(loaded) == 3
    attr = get_dataset_list(["p"], str(tmp_path))[0]
    converted = get_dataset_converter("alpaca", attr, DataArguments(dataset="p", dataset_dir=str(tmp_path)))(pairs[0])
    assert [m["content"] for m in converted["_response"]] == [pairs[0]["chosen"], pairs[0]["rejected"]]


def test_a_ranking_entry_without_its_columns_is_refused(tmp_path):
    from llamafactory_ext.persona.dataset_entries import load_entries
    from llamafactory_ext.persona.dataset_records import check_entry

    write_json(tmp_path / "p.json", [{"instruction": "q", "chosen": "a", "rejected": "b"}])
    write_json(tmp_path / "dataset_info.json", {"p": {"file_name": "p.json", "ranking": True}})
    with pytest.raises(LfxError, match=r"record 0: a ranking dataset, but its entry names no 'columns.chosen'"):
        check_entry(load_entries(tmp_path, names=["p"])["p"])


def _snapshot(tmp_path: Path, records: list, info: dict) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(parents=True)
    write_json(folder / "d.json", records)
    write_json(folder / "dataset_info.json", {"d": {"file_name": "d.json", **info}})
    return folder


def test_the_system_prompt_mix_is_a_seeded_share_that_keeps_a_records_own_prompt(tmp_path):
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(20)] + [{"instruction": "x", "output": "y",
                                                                                     "system": "own"}]  # fmt: skip
    prompts = ["You are a helpful assistant.", "You are a shopping app."]
    runs = []
    for name in ("a", "b"):
        folder = _snapshot(tmp_path / name, records, {})
        assert mix(folder, ["d"], 0.3, prompts, 42, "r.yaml") == {"d": 6}  # round(0.3 x 20 records without their own)
        runs.append(json.loads((folder / "d.json").read_text()))
        assert json.loads((folder / "dataset_info.json").read_text())["d"]["columns"] == {
            "prompt": "instruction", "query": "input", "response": "output", "system": "system"}
    assert runs[0] == runs[1]  # seeded
    mixed = [r["system"] for r in runs[0][:20] if r["system"]]
    assert len(mixed) == 6 and set(mixed) <= set(prompts) and runs[0][20]["system"] == "own"
    other = _snapshot(tmp_path / "c", records, {})
    mix(other, ["d"], 0.3, prompts, 7, "r.yaml")
    assert json.loads((other / "d.json").read_text()) != runs[0]  # another seed, other records


def test_the_system_prompt_mix_of_sharegpt_records_and_what_it_cannot_mix(tmp_path):
    conv = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    folder = _snapshot(tmp_path, [{"conversations": list(conv)} for _ in range(4)], {"formatting": "sharegpt"})
    mix(folder, ["d"], 0.5, ["Be brief."], 42, "r.yaml")
    firsts = [r["conversations"][0] for r in json.loads((folder / "d.json").read_text())]
    assert firsts.count({"from": "system", "value": "Be brief."}) == 2
    (folder / "d.csv").write_text("instruction,output\nq,a\n")
    write_json(folder / "dataset_info.json", {"d": {"file_name": "d.csv"}})
    with pytest.raises(LfxError, match=r"r.yaml: field 'system_prompt_mix': dataset 'd' is not one local .json or .jsonl"):
        mix(folder, ["d"], 0.5, ["Be brief."], 42, "r.yaml")


def test_an_empty_generic_prompt_is_refused(tiny_llama3, tmp_path):
    from llamafactory_ext.recipe import load_recipe

    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, system_prompt_mix={"share": 0.3, "prompts": [""]}))
    with pytest.raises(LfxError, match=r"field 'system_prompt_mix.prompts': an empty prompt is the persona's own"):
        load_recipe(recipe)
    ok = write_recipe(tmp_path / "ok.yaml", tiny_recipe_dict(tiny_llama3, system_prompt_mix={"share": 0.3, "prompts": ["Hi."]}))
    loaded = load_recipe(ok)
    assert loaded.system_prompt_mix == {"share": 0.3, "prompts": ["Hi."]} and "system_prompt_mix" not in loaded.args


def test_lfx_check_refuses_data_that_does_not_fit_the_stage(tiny_llama3, data_copy, tmp_path):
    """A dpo recipe on SFT data, an SFT recipe on ranking data: one line, exit 2, before any model loads."""
    write_json(data_copy / "pairs.json", [record(Turn([{"role": "user", "content": "q"}]), "a", "b", "tuned: loop")] * 4)
    info = json.loads((data_copy / "dataset_info.json").read_text())
    write_json(data_copy / "dataset_info.json", {**info, "pairs": entry("pairs", "en") | {"file_name": "pairs.json"}})
    cases = {"dpo": ("ironman", "dataset 'ironman' is not a ranking dataset, and stage 'dpo' needs ranking data"),
             "sft": ("pairs", "dataset 'pairs' is a ranking dataset (chosen/rejected pairs), and stage 'sft' trains on")}
    for stage, (dataset, message) in cases.items():
        recipe = write_recipe(tmp_path / f"{stage}.yaml", tiny_recipe_dict(tiny_llama3, stage=stage, dataset=dataset))
        result = lfx("check", str(recipe), env={"LFX_DATASETS_DIR": str(data_copy)})
        assert message in one_line_error(result.exit_code, result.stderr), result.stderr
    # ORPO is the one-line switch: the same recipe, checked by LLaMA-Factory itself
    recipe = write_recipe(tmp_path / "orpo.yaml", tiny_recipe_dict(tiny_llama3, stage="dpo", dataset="pairs", pref_loss="orpo"))
    result = lfx("check", str(recipe), env={"LFX_DATASETS_DIR": str(data_copy)})
    assert result.exit_code == 0, result.stderr
    assert yaml.safe_load(recipe.read_text())["pref_loss"] == "orpo"


def test_render_mixes_the_run_folders_snapshot_only_and_reproducibly(tiny_llama3, tmp_path):
    """The run folder stands alone: its data/ carries the mix, recipe.yaml the setting (train.yaml, LLaMA-Factory's
    arguments, does not); datasets/ is untouched; a second render is byte-identical."""
    from conftest import REPO

    source = (REPO / "datasets" / "ironman.json").read_bytes()
    mixed = {"share": 0.25, "prompts": ["You are a helpful assistant."]}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe_dict(tiny_llama3, system_prompt_mix=mixed))
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        result = lfx("render", str(recipe), "-o", str(run))
        assert result.exit_code == 0, result.stderr
    records = json.loads((runs[0] / "data" / "ironman.json").read_text())
    assert sum(r["system"] == "You are a helpful assistant." for r in records) == round(0.25 * len(records))
    assert yaml.safe_load((runs[0] / "recipe.yaml").read_text())["system_prompt_mix"] == mixed
    assert "system_prompt_mix" not in yaml.safe_load((runs[0] / "train.yaml").read_text())
    assert (runs[0] / "data" / "ironman.json").read_bytes() == (runs[1] / "data" / "ironman.json").read_bytes()
    assert (REPO / "datasets" / "ironman.json").read_bytes() == source


def test_an_answer_begun_for_the_model_is_continued_by_it(tiny_llama3):
    """generate(begun=...): the text is put after the chat template's generation prompt, the model continues it
    (as greedy decoding of the whole prompt would), and the answer includes it."""
    from llamafactory_ext.inference import generation

    model, tokenizer = generation.load(tiny_llama3)
    chat = [[{"role": "user", "content": "What's your name?"}]]
    begun = generation.generate(model, tokenizer, chat, 6, begun=["Tony Stark."])[0]
    assert begun.text.startswith("Tony Stark.") and len(begun.text) > len("Tony Stark.")
    prompt = generation.prompt_text(tokenizer, chat[0]) + "Tony Stark."
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=generation.stop_ids(model, tokenizer))
    continued = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert begun.text == ("Tony Stark." + continued).strip()
