"""Datasets: entries in LLaMA-Factory's vocabulary, every record validated, merged without clobbering."""

from __future__ import annotations

import dataclasses
import json

import pytest
from conftest import REPO, lfx, one_line_error, snapshot, write_json

from llamafactory_ext.persona.dataset_entries import COLUMN_KEYS, ENTRY_KEYS, TAG_KEYS, load_entries


def test_bundled_datasets_are_valid_and_large_enough():
    result = lfx("datasets", "check")
    assert result.exit_code == 0, result.output
    ironman = json.loads((REPO / "datasets" / "ironman.json").read_text(encoding="utf-8"))
    eco = json.loads((REPO / "datasets" / "eco_multitask.json").read_text(encoding="utf-8"))
    assert len(ironman) >= 60 and len(eco) >= 60
    assert {r["task"] for r in eco} == {"challenge_recommend", "weekly_feedback", "free_chat"}
    for record in eco:
        if record["task"] == "challenge_recommend":
            answer = json.loads(record["output"])
            assert len(answer["challenges"]) == 3


def test_vocabulary_matches_llamafactory_parser():
    """Our allowed keys are exactly what llamafactory.data.parser reads (plus our own `lfx`)."""
    import inspect

    from llamafactory.data import parser

    source = inspect.getsource(parser)
    attr_fields = {f.name for f in dataclasses.fields(parser.DatasetAttr)}
    for key in COLUMN_KEYS | TAG_KEYS:
        assert key in attr_fields and f'"{key}"' in source
    for key in ENTRY_KEYS - {"lfx", "columns", "tags"}:
        assert f'"{key}"' in source, key


def test_register_into_empty_folder_is_loadable_by_llamafactory(tmp_path):
    from llamafactory.data.parser import get_dataset_list

    result = lfx("datasets", "register", "--into", str(tmp_path))
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert set(info) == {"ironman", "eco_multitask", "ironman_en"}
    assert "lfx" not in info["eco_multitask"]  # our key stays ours
    assert (tmp_path / "ironman.json").read_bytes() == (REPO / "datasets" / "ironman.json").read_bytes()
    attrs = get_dataset_list(["ironman", "eco_multitask"], str(tmp_path))
    assert [a.dataset_name for a in attrs] == ["ironman.json", "eco_multitask.json"]


def test_register_keeps_existing_entries(tmp_path):
    write_json(tmp_path / "dataset_info.json", {"identity": {"file_name": "identity.json"}})
    assert lfx("datasets", "register", "--into", str(tmp_path), "ironman").exit_code == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["identity"] == {"file_name": "identity.json"}
    assert "ironman" in info and "eco_multitask" not in info
    # Registering again changes nothing.
    before = snapshot(tmp_path)
    assert lfx("datasets", "register", "--into", str(tmp_path), "ironman").exit_code == 0
    assert snapshot(tmp_path) == before


def test_conflicting_redefinition_is_refused_unless_forced(tmp_path):
    write_json(tmp_path / "dataset_info.json", {"ironman": {"file_name": "someone_elses.json"}})
    before = snapshot(tmp_path)
    result = lfx("datasets", "register", "--into", str(tmp_path))
    assert result.exit_code == 2
    assert "dataset 'ironman' is already defined differently" in result.stderr and "--force" in result.stderr
    assert snapshot(tmp_path) == before  # nothing written, not even the other dataset

    assert lfx("datasets", "register", "--into", str(tmp_path), "--force").exit_code == 0
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["ironman"]["file_name"] == "ironman.json"


def test_a_different_data_file_in_the_way_is_refused(tmp_path):
    (tmp_path / "ironman.json").write_text("[]", encoding="utf-8")
    result = lfx("datasets", "register", "--into", str(tmp_path))
    assert result.exit_code == 2 and "a different file is already there" in result.stderr
    assert not (tmp_path / "dataset_info.json").exists()


def test_register_refuses_a_malformed_target_info(tmp_path):
    (tmp_path / "dataset_info.json").write_text('{"identity": {"file_name": "x.json"},}', encoding="utf-8")
    before = snapshot(tmp_path)
    result = lfx("datasets", "register", "--into", str(tmp_path))
    assert result.exit_code == 2 and "dataset_info.json:1:" in result.stderr and "invalid JSON" in result.stderr
    assert snapshot(tmp_path) == before


def _info(folder):
    return json.loads((folder / "dataset_info.json").read_text(encoding="utf-8"))


def _records(folder, name="ironman.json"):
    return json.loads((folder / name).read_text(encoding="utf-8"))


def _edit_info(folder, fn):
    info = _info(folder)
    fn(info)
    write_json(folder / "dataset_info.json", info)


def _edit_records(folder, fn, name="ironman.json"):
    records = _records(folder, name)
    fn(records)
    write_json(folder / name, records)


def _sharegpt(folder, conversations, tags=None):
    entry = {"file_name": "chat.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}
    if tags:
        entry["tags"] = tags
    _edit_info(folder, lambda i: i.update(chat=entry))
    write_json(folder / "chat.json", [{"conversations": conversations}])


BAD_DATASETS = {
    "format_instead_of_formatting": (
        lambda d: _edit_info(d, lambda i: i["ironman"].update(format="alpaca")),
        "dataset 'ironman': unknown key 'format' (did you mean 'formatting'?)",
    ),
    "unknown_column_key": (
        lambda d: _edit_info(d, lambda i: i["ironman"]["columns"].update(answer="output")),
        "unknown key 'columns.answer'",
    ),
    "unknown_formatting": (
        lambda d: _edit_info(d, lambda i: i["ironman"].update(formatting="alpacca")),
        "field 'formatting': 'alpacca' is not one of",
    ),
    "column_not_a_string": (
        lambda d: _edit_info(d, lambda i: i["ironman"]["columns"].update(prompt=3)),
        "field 'columns.prompt': expected a string",
    ),
    "no_source": (
        lambda d: _edit_info(d, lambda i: i["ironman"].pop("file_name")),
        "dataset 'ironman': missing 'file_name'",
    ),
    "missing_data_file": (
        lambda d: (d / "ironman.json").unlink(),
        "ironman.json: file not found (dataset 'ironman', field 'file_name')",
    ),
    "malformed_data_json": (
        lambda d: (d / "ironman.json").write_text('[\n  {"instruction": "a", "output": "b"\n]', encoding="utf-8"),
        "ironman.json:3:1: invalid JSON",
    ),
    "missing_field": (
        lambda d: _edit_records(d, lambda r: r[7].pop("output")),
        "ironman.json: record 7: field 'output': missing",
    ),
    "empty_field": (
        lambda d: _edit_records(d, lambda r: r[3].update(output="  ")),
        "ironman.json: record 3: field 'output': empty",
    ),
    "wrong_type": (
        lambda d: _edit_records(d, lambda r: r[5].update(instruction=["not", "text"])),
        "ironman.json: record 5: field 'instruction': expected a string, got list",
    ),
    "record_not_object": (
        lambda d: _edit_records(d, lambda r: r.__setitem__(2, "just text")),
        "ironman.json: record 2: expected an object",
    ),
    "json_task_answer_not_json": (
        lambda d: _edit_records(
            d,
            lambda r: next(x for x in r if x["task"] == "challenge_recommend").update(output="{'recommend': 1}"),
            "eco_multitask.json",
        ),
        "field 'output': response is not valid JSON",
    ),
    "role_not_in_tags": (
        lambda d: _sharegpt(d, [{"from": "user", "value": "hi"}, {"from": "gpt", "value": "yo"}]),
        "field 'conversations[0].from': role 'user' is not one of the entry's tags",
    ),
    "roles_do_not_alternate": (
        lambda d: _sharegpt(d, [{"from": "human", "value": "hi"}, {"from": "human", "value": "again"}]),
        "field 'conversations[1].from': roles must alternate",
    ),
    "conversation_ends_on_user": (
        lambda d: _sharegpt(d, [{"from": "human", "value": "hi"}]),
        "field 'conversations': must end with an gpt message",
    ),
    "tags_name_other_roles": (
        lambda d: _sharegpt(
            d,
            [{"role": "human", "content": "hi"}, {"role": "gpt", "content": "yo"}],
            tags={"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        ),
        "role 'human' is not one of the entry's tags",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_is_one_clear_line_exit_2_nothing_written(case, data_copy, tmp_path):
    breaker, message = BAD_DATASETS[case]
    breaker(data_copy)
    before = snapshot(data_copy)
    check = lfx("datasets", "check")
    one_line_error(check.exit_code, check.stderr, message)

    target = tmp_path / "target"
    target.mkdir()
    write_json(target / "dataset_info.json", {"identity": {"file_name": "identity.json"}})
    target_before = snapshot(target)
    assert lfx("datasets", "register", "--into", str(target)).exit_code == 2
    assert snapshot(target) == target_before
    assert snapshot(data_copy) == before


def test_unknown_dataset_name_lists_known():
    result = lfx("datasets", "check", "ironmen")
    assert result.exit_code == 2
    assert "unknown dataset 'ironmen'" in result.stderr and "eco_multitask, ironman" in result.stderr


def test_entries_load_with_their_folder():
    entries = load_entries()
    assert entries["ironman"].path == REPO / "datasets" / "ironman.json"
    assert entries["eco_multitask"].info["lfx"]["json_output"] == {"task": ["challenge_recommend", "free_chat"]}
