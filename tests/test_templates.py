"""Persona templates: declared as data, registered into LLaMA-Factory, faithful to each family's
official chat format, and carried into the tokenizer's chat template."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import lfx, one_line_error, snapshot
from transformers import AutoTokenizer

import llamafactory_ext
from llamafactory_ext.persona.registration import get_template
from llamafactory_ext.persona.schema import TemplateOverrides
from llamafactory_ext.persona.templates import load_specs

IRONMAN_SYSTEM = (
    "당신은 아이언맨 토니 스타크 입니다. 토니 스타크의 말투로 답변해야 합니다. 토니 스타크의 말투를 반영하려면 "
    "재치, 자신감, 직설적 표현, 기술적 언급 등을 포함하는 것이 좋습니다. 모든 말은 한국어로 작성합니다."
)
CONVERSATION = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the arc reactor?"},
    {"role": "assistant", "content": "A palm-sized power plant. Next question."},
]


def test_llama3_persona_carries_the_seed_system_prompt_verbatim():
    spec = load_specs()["llama3-persona"]
    assert spec.base == "llama3"
    assert spec.default_system == IRONMAN_SYSTEM


def test_register_templates_adds_ours_to_llamafactory_registry_idempotently():
    from llamafactory.data.template import TEMPLATES

    builtin_llama3 = TEMPLATES["llama3"]
    first = llamafactory_ext.register_templates()
    second = llamafactory_ext.register_templates()
    assert first == second == ["llama3-persona", "qwen-persona", "smollm2-persona"]
    assert TEMPLATES["llama3"] is builtin_llama3  # the base is copied, never edited
    assert TEMPLATES["llama3"].default_system == ""
    assert TEMPLATES["llama3-persona"].default_system == IRONMAN_SYSTEM
    assert TEMPLATES["llama3-persona"].replace_jinja_template is True
    assert TEMPLATES["llama3-persona"].stop_words == ["<|eot_id|>"]
    assert TEMPLATES["qwen-persona"].stop_words == ["<|im_end|>"]


def test_get_template_returns_a_private_copy():
    """LLaMA-Factory sets fields on the template it is handed; that must not leak into the registry."""
    from llamafactory.data.template import TEMPLATES

    mine = get_template("llama3-persona")
    mine.default_system = "changed"
    assert TEMPLATES["llama3-persona"].default_system == IRONMAN_SYSTEM


def test_override_keys_are_fields_of_llamafactory_template():
    from llamafactory.data.template import Template

    fields = {f.name for f in dataclasses.fields(Template)}
    assert set(TemplateOverrides.model_fields) <= fields


@pytest.mark.parametrize(
    "family,name,fixture",
    [("llama3", "llama3-persona", "tiny_llama3"), ("qwen2", "qwen-persona", "tiny_qwen2")],
)
def test_persona_template_matches_official_chat_format(family, name, fixture, request):
    """System+user+assistant encodes to the same tokens as the family's official Instruct template
    (shipped in the tiny tokenizer, as in the real model)."""
    model_dir = request.getfixturevalue(fixture)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    official = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    official_ids = tokenizer(official, add_special_tokens=False)["input_ids"]

    template = get_template(name)
    template.fix_special_tokens(tokenizer)
    pairs = template.encode_multiturn(tokenizer, CONVERSATION[1:], system=CONVERSATION[0]["content"])
    ours = [tok for prompt, response in pairs for tok in prompt + response]
    assert tokenizer.decode(ours) == official
    assert ours == official_ids


@pytest.mark.parametrize("name,fixture", [("llama3-persona", "tiny_llama3"), ("qwen-persona", "tiny_qwen2")])
def test_jinja_written_into_tokenizer_puts_persona_in_prompt(name, fixture, request):
    """With replace_jinja_template, the tokenizer's chat template carries the persona system prompt,
    so one user message is enough, and it reproduces LLaMA-Factory's training prompt."""
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(fixture))
    llamafactory_ext.register_templates()
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))
    user = [{"role": "user", "content": "토니, 오늘 기분 어때요?"}]
    text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert template.default_system in text
    prompt_ids, _ = template.encode_oneturn(tokenizer, user + [{"role": "assistant", "content": "최고죠."}])
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == prompt_ids


def test_cli_lists_templates():
    result = lfx("templates", "list")
    assert result.exit_code == 0
    assert "llama3-persona" in result.output and "base=llama3" in result.output
    assert "qwen-persona" in result.output


def test_templates_declare_who_the_persona_is_and_the_cli_shows_it(templates_copy):
    """The bundled templates' persona: Tony Stark, by the names the datasets' answers use (ironman: 토니, 아이언맨;
    ironman_en: Tony Stark, Iron Man), in the language each answers in."""
    specs = load_specs()
    assert specs["smollm2-persona"].persona.name == "Tony Stark" and specs["smollm2-persona"].persona.languages == ["en"]
    for name in ("llama3-persona", "qwen-persona"):
        persona = specs[name].persona
        assert persona.name == "토니 스타크" and {"토니", "아이언맨", "Tony Stark"} <= set(persona.aliases)
        assert persona.languages == ["ko"]
    (templates_copy / "mistral-yoda.yaml").write_text("name: mistral-yoda\nbase: mistral\n", encoding="utf-8")
    lines = lfx("templates", "list").output.splitlines()
    smollm2 = lines.index(next(line for line in lines if line.startswith("smollm2-persona")))
    assert lines[smollm2 + 1].strip() == "persona: Tony Stark (also Tony, Iron Man, Ironman, Mr. Stark; languages en)"
    yoda = lines.index(next(line for line in lines if line.startswith("mistral-yoda")))
    assert lines[yoda + 1].strip() == "persona: none declared (no persona: block; lfx eval skips its identity metric)"
    shown = lfx("templates", "show", "qwen-persona")
    assert shown.exit_code == 0 and "# persona: 토니 스타크 (also 토니, 아이언맨" in shown.output


def test_cli_show_renders_sample_prompt_with_real_tokens(tiny_llama3):
    result = lfx("templates", "show", "llama3-persona", "--tokenizer", str(tiny_llama3))
    assert result.exit_code == 0, result.output
    assert "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + IRONMAN_SYSTEM in result.output
    assert "<|start_header_id|>assistant<|end_header_id|>" in result.output
    assert "# tokens: prompt" in result.output


def test_adding_a_persona_is_adding_a_file(templates_copy):
    (templates_copy / "mistral-yoda.yaml").write_text(
        "name: mistral-yoda\nbase: mistral\ndefault_system: Speak like Yoda, you must.\n", encoding="utf-8"
    )
    names = llamafactory_ext.register_templates()
    assert "mistral-yoda" in names
    assert get_template("mistral-yoda").default_system == "Speak like Yoda, you must."


BAD_TEMPLATES = [
    ("typo_key", "name: bad\nbase: llama3\ndefault_sytem: hi\n", "unknown key 'default_sytem'"),
    ("missing_base", "name: bad\ndefault_system: hi\n", "missing 'base'"),
    ("bad_yaml", "name: bad\nbase: [llama3\n", "invalid YAML"),
    ("wrong_type", "name: bad\nbase: llama3\noverrides:\n  replace_eos: 'yes'\n", "field 'overrides.replace_eos': expected true or false"),
    ("unknown_override", "name: bad\nbase: llama3\noverrides:\n  stop_word: ['x']\n", "unknown key 'overrides.stop_word' (did you mean 'stop_words'?)"),
    ("name_mismatch", "name: other\nbase: llama3\n", "must match the file name"),
    ("persona_without_name", "name: bad\nbase: llama3\npersona:\n  aliases: [Tony]\n  languages: [en]\n",
     "missing 'persona.name'"),
    ("persona_language", "name: bad\nbase: llama3\npersona:\n  name: Tony Stark\n  languages: [english]\n",
     "field 'persona.languages[0]': 'english' is not one of ko, en"),
    ("persona_alias_typo", "name: bad\nbase: llama3\npersona:\n  name: Tony Stark\n  alias: [Tony]\n  languages: [en]\n",
     "unknown key 'persona.alias' (did you mean 'aliases'?)"),
    ("empty", "", "file is empty"),
]


@pytest.mark.parametrize("case,text,message", BAD_TEMPLATES, ids=[c[0] for c in BAD_TEMPLATES])
def test_bad_template_file_is_one_clear_line_and_exit_2(case, text, message, templates_copy):
    (templates_copy / "bad.yaml").write_text(text, encoding="utf-8")
    before = snapshot(templates_copy)
    result = lfx("templates", "list")
    assert "bad.yaml" in one_line_error(result.exit_code, result.stderr, message)
    assert snapshot(templates_copy) == before


def test_unknown_base_template_lists_what_exists(templates_copy):
    (templates_copy / "bad.yaml").write_text("name: bad\nbase: llama99\n", encoding="utf-8")
    result = lfx("templates", "show", "bad")
    assert result.exit_code == 2
    assert "unknown LLaMA-Factory template 'llama99'" in result.stderr and "llama3" in result.stderr


def test_unknown_template_name_lists_ours():
    result = lfx("templates", "show", "llama3-persnoa")
    assert result.exit_code == 2
    assert "unknown template 'llama3-persnoa'" in result.stderr
    assert "llama3-persona" in result.stderr and "qwen-persona" in result.stderr


def test_persona_name_may_not_shadow_a_builtin(templates_copy):
    (templates_copy / "llama3.yaml").write_text("name: llama3\nbase: llama3\n", encoding="utf-8")
    result = lfx("templates", "show", "llama3")
    assert result.exit_code == 2
    assert "is a LLaMA-Factory built-in template" in result.stderr
