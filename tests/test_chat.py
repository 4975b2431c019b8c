"""lfx chat and lfx compare on the tiny merged model and its adapter (real transformers generate)."""

from __future__ import annotations

import json

from conftest import lfx


def _answers(output: str) -> list[str]:
    return [line.removeprefix("assistant> ") for line in output.splitlines() if line.startswith("assistant> ")]


def test_chat_uses_the_persona_template_and_the_adapter_answers_like_the_merged_model(merged_ironman, ironman_run):
    args = ["-m", "토니, 자기소개 해줘", "-m", "슈트는 몇 벌이야?", "--max-new-tokens", "12"]
    merged = lfx("chat", str(merged_ironman), *args, "--show-prompt")
    assert merged.exit_code == 0, merged.output
    assert "토니 스타크의 말투로 답변해야 합니다" in merged.stdout  # the persona system prompt is in the prompt
    assert merged.stdout.count("<|start_header_id|>assistant<|end_header_id|>") == 2 + 1  # turn 2 carries turn 1
    adapter = lfx("chat", str(ironman_run["adapter"]), *args)
    assert adapter.exit_code == 0, adapter.output
    assert len(_answers(merged.stdout)) == 2 and _answers(adapter.stdout) == _answers(merged.stdout)  # greedy, fp32


def test_compare_writes_a_markdown_before_after_table(merged_ironman, ironman_run, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"instruction": "토니, 자기소개 해줘", "input": ""}, "아크 원자로는 | 뭐야?"], ensure_ascii=False))
    out = tmp_path / "compare.md"
    base = ironman_run["config"]["model_name_or_path"]
    result = lfx("compare", "--before", base, "--after", str(merged_ironman), "--prompts", str(prompts),
                 "-o", str(out), "--max-new-tokens", "8")  # fmt: skip
    assert result.exit_code == 0, result.output
    table = out.read_text(encoding="utf-8")
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert len(rows) == 2 and rows[0].startswith("| 1 | 토니, 자기소개 해줘 |")
    assert "아크 원자로는 \\| 뭐야?" in rows[1] and all(row.count(" | ") >= 3 for row in rows)


def test_chat_and_compare_bad_input(tmp_path):
    result = lfx("chat", str(tmp_path))
    assert result.exit_code == 2 and "neither a model folder" in result.stderr
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    result = lfx("compare", "--before", str(tmp_path), "--after", str(tmp_path), "--prompts", str(empty))
    assert result.exit_code == 2 and "prompts.txt: no prompts" in result.stderr


def test_chat_url_bad_input():
    import socket

    result = lfx("chat")
    assert result.exit_code == 2 and "give MODEL_OR_ADAPTER or --url" in result.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = lfx("chat", "--url", f"http://127.0.0.1:{port}/v1", "-m", "hi")
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "is the server up (lfx serve)?" in result.stderr
