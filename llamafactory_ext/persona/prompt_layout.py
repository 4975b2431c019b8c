"""Conversations laid out as LLaMA-Factory's Template._encode lays them out: per message, the slots (text, special
tokens) a template produces, as text; `lfx templates show`."""

from __future__ import annotations

from ..errors import LfxError
from .registration import get_template
from .templates import describe_persona, load_specs


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
        from ..models import open_tokenizer

        tokenizer = open_tokenizer(tokenizer_path, "--tokenizer: not a tokenizer folder")
        template.fix_special_tokens(tokenizer)
    prompt, response = render_messages(template, SAMPLE_CONVERSATION, system, tokenizer)
    spec = load_specs().get(name)
    lines = [f"# template: {name}", f"# default system: {template.default_system or '(none)'}",
             f"# stop words: {', '.join(template.stop_words) or '(none)'}",
             f"# persona: {describe_persona(spec.persona) if spec else '(a LLaMA-Factory built-in: none)'}"]  # fmt: skip
    if tokenizer is not None:
        prompt_ids, response_ids = template.encode_oneturn(tokenizer, SAMPLE_CONVERSATION, system)
        lines.append(f"# tokens: prompt {len(prompt_ids)} (masked in labels), response {len(response_ids)}")
    return "\n".join([*lines, "# --- prompt (masked in labels) ---", prompt, "# --- response (trained) ---", response])
