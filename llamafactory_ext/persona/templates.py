"""Persona chat templates declared as YAML in templates/, registered into LLaMA-Factory's registry.

A template file names a LLaMA-Factory base template, a default system prompt and overrides of the
base's fields. Loading and validating the files needs no torch; `register_templates` imports
LLaMA-Factory and adds a derived copy of the base under the file's name.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import read_yaml
from ..paths import templates_dir
from ..secrets import refuse as refuse_secrets
from ..validation import validate
from .schema import FORMATTER_FIELDS, TemplateFile

# Names this package put into LLaMA-Factory's registry, so re-registering replaces only our own.
_REGISTERED: set[str] = set()


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    base: str
    path: Path
    default_system: str = ""
    description: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


def load_spec(path: str | Path) -> TemplateSpec:
    """Read and validate one template file (schema: persona.schema.TemplateFile)."""
    path = Path(path)
    data = read_yaml(path)
    refuse_secrets(str(path), data, allow_keys=("token",))  # a slot's {token: <|eot_id|>} names a special token
    spec = validate(TemplateFile, data, str(path), missing={"name": " (the template's name, its file name)",
                                                           "base": " (a LLaMA-Factory built-in template)"})  # fmt: skip
    if path.stem != spec.name:
        raise LfxError(f"{path}: field 'name': '{spec.name}' must match the file name '{path.stem}'")
    return TemplateSpec(name=spec.name, base=spec.base, path=path, default_system=spec.default_system,
                        description=spec.description, overrides=spec.overrides.model_dump(exclude_none=True))  # fmt: skip


def load_specs(directory: str | Path | None = None) -> dict[str, TemplateSpec]:
    """All template files in `directory` (default: templates/), by name."""
    directory = Path(directory) if directory else templates_dir()
    if not directory.is_dir():
        raise LfxError(f"{directory}: template folder not found")
    specs: dict[str, TemplateSpec] = {}
    for path in sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml")):
        spec = load_spec(path)
        specs[spec.name] = spec
    return specs


def _formatter(value: dict):
    from llamafactory.data.formatter import EmptyFormatter, StringFormatter

    slots: list = []
    for slot in value["slots"]:
        if isinstance(slot, str):
            slots.append(slot)
        elif "special" in slot:
            slots.append({slot["special"]})
        else:
            slots.append({"token": slot["token"]})
    has_content = any(isinstance(s, str) and "{{content}}" in s for s in slots)
    return StringFormatter(slots=slots) if has_content else EmptyFormatter(slots=slots)


def build_template(spec: TemplateSpec, registry: dict):
    """A LLaMA-Factory Template: a deep copy of the base with the spec's fields applied."""
    if spec.base not in registry or spec.base in _REGISTERED:
        known = sorted(n for n in registry if n not in _REGISTERED)
        raise LfxError(
            f"{spec.path}: field 'base': unknown LLaMA-Factory template '{spec.base}' "
            f"(e.g. {', '.join(n for n in known if n.startswith(('llama', 'qwen', 'mistral', 'phi')))})"
        )
    changes: dict[str, Any] = {"default_system": spec.default_system}
    for key, value in spec.overrides.items():
        if key in FORMATTER_FIELDS:
            value = _formatter(value)
        elif key in ("thought_words", "tool_call_words"):
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(copy.deepcopy(registry[spec.base]), **changes)


def register_templates(directory: str | Path | None = None) -> list[str]:
    """Register every template in `directory` (default: templates/) into LLaMA-Factory.

    Returns their names. Calling it again replaces our own entries and never a built-in one.
    """
    from llamafactory.data.template import TEMPLATES

    specs = load_specs(directory)
    built = {}
    for name, spec in specs.items():
        if name in TEMPLATES and name not in _REGISTERED:
            raise LfxError(f"{spec.path}: field 'name': '{name}' is a LLaMA-Factory built-in template")
        built[name] = build_template(spec, TEMPLATES)
    TEMPLATES.update(built)
    _REGISTERED.update(built)
    return sorted(built)


def known_names() -> set[str]:
    """Every template name a run may use, without importing LLaMA-Factory (seconds of imports): ours, and
    LLaMA-Factory's built-ins as its template module registers them (`register_template(name="...")` at the
    top level of llamafactory/data/template.py); the registry itself when that source cannot be read."""
    import importlib.util
    import re

    ours = set(load_specs())
    spec = importlib.util.find_spec("llamafactory")
    source = Path(spec.origin).parent / "data" / "template.py" if spec and spec.origin else None
    try:
        builtins = set(re.findall(r'^register_template\(\n\s+name="([^"]+)"', source.read_text(encoding="utf-8"), re.M))
    except (OSError, AttributeError):
        builtins = set()
    if not builtins:
        from llamafactory.data.template import TEMPLATES

        register_templates()
        return set(TEMPLATES)
    return ours | builtins


def check_name(name: str, where: str) -> None:
    """LfxError naming `where` unless `name` is a template a run may use (see known_names)."""
    if name not in known_names():
        from ..validation import did_you_mean

        ours = sorted(load_specs())
        raise LfxError(f"{where}: unknown template '{name}'" + did_you_mean(name, known_names(), "") +
                       f" (ours: {', '.join(ours)}; or any LLaMA-Factory built-in)")  # fmt: skip


def get_template(name: str):
    """A private copy of a registered template (LLaMA-Factory mutates the shared ones)."""
    from llamafactory.data.template import TEMPLATES

    register_templates()
    if name not in TEMPLATES:
        ours = sorted(_REGISTERED)
        raise LfxError(f"unknown template '{name}' (ours: {', '.join(ours)}; or any LLaMA-Factory built-in)")
    return copy.deepcopy(TEMPLATES[name])


def slot_text(elements: list, tokenizer) -> str:
    """LLaMA-Factory formatter output as text: strings, {"token": t}, {"bos_token"}/{"eos_token"} sets (shown as
    {{bos_token}} without a tokenizer)."""
    out = []
    for elem in elements:
        if isinstance(elem, str):
            out.append(elem)
        elif isinstance(elem, dict):
            out.append(elem.get("token", ""))
        elif isinstance(elem, set):
            name = "bos_token" if "bos_token" in elem else "eos_token"
            if tokenizer is None:
                out.append("{{" + name + "}}")
            elif getattr(tokenizer, f"{name}_id") is not None:
                out.append(getattr(tokenizer, name))
    return "".join(out)


def message_elements(template, messages: list[dict[str, str]], system: str | None = None) -> list[list]:
    """Per message, the slots LLaMA-Factory's Template._encode turns into token ids (no tools)."""
    system = system or template.default_system
    out = []
    for i, message in enumerate(messages):
        elements: list = []
        if i == 0:
            elements += template.format_prefix.apply()
            if system:
                elements += template.format_system.apply(content=system)
        role, content = message["role"], message["content"]
        if role == "user":
            elements += template.format_user.apply(content=content, idx=str(i // 2))
        elif role == "assistant":
            elements += template.format_assistant.apply(content=content)
        elif role == "observation":
            elements += template.format_observation.apply(content=content)
        elif role == "function":
            elements += template.format_function.apply(content=content, thought_words=template.thought_words,
                                                        tool_call_words=template.tool_call_words)  # fmt: skip
        else:
            raise LfxError(f"render: unsupported role '{role}' in message {i}")
        out.append(elements)
    return out


def render_messages(template, messages: list[dict[str, str]], system: str | None = None, tokenizer=None) -> list[str]:
    """The text of each message as LLaMA-Factory's Template._encode lays it out.

    Without a tokenizer, special-token slots show as {{bos_token}} / {{eos_token}}.
    """
    return [slot_text(elements, tokenizer) for elements in message_elements(template, messages, system)]


SAMPLE_CONVERSATION = [
    {"role": "user", "content": "토니, 소코비아 협정에 대해 어떻게 생각하나요?"},
    {"role": "assistant", "content": "서명했죠. 고삐가 필요하다는 건 인정하니까요."},
]


def show(name: str, tokenizer_path: str | None = None, system: str | None = None) -> str:
    """`lfx templates show`: the prompt NAME builds for a sample conversation (token counts with a tokenizer)."""
    template = get_template(name)
    tokenizer = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise LfxError(f"{tokenizer_path}: --tokenizer: not a tokenizer folder ({type(err).__name__}: "
                           f"{' '.join(str(err).split())[:160]})") from None  # fmt: skip
        template.fix_special_tokens(tokenizer)
    prompt, response = render_messages(template, SAMPLE_CONVERSATION, system, tokenizer)
    lines = [f"# template: {name}", f"# default system: {template.default_system or '(none)'}",
             f"# stop words: {', '.join(template.stop_words) or '(none)'}"]  # fmt: skip
    if tokenizer is not None:
        prompt_ids, response_ids = template.encode_oneturn(tokenizer, SAMPLE_CONVERSATION, system)
        lines.append(f"# tokens: prompt {len(prompt_ids)} (masked in labels), response {len(response_ids)}")
    return "\n".join([*lines, "# --- prompt (masked in labels) ---", prompt, "# --- response (trained) ---", response])
