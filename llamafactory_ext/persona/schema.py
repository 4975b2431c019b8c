"""The declared shape of a persona's data: template files (templates/*.yaml) and dataset entries
(datasets/dataset_info.json, LLaMA-Factory's vocabulary plus our `lfx` key)."""

from __future__ import annotations

import os
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator

Text = Annotated[StrictStr, Field(pattern=r"\S")]  # a string with something in it


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --- template files ------------------------------------------------------------------------------

class SpecialSlot(Strict):
    """A slot of LLaMA-Factory's formatters that is not text: the tokenizer's bos/eos, or a named token."""

    special: Optional[Literal["bos_token", "eos_token"]] = None
    token: Optional[Text] = None

    @model_validator(mode="after")
    def one_kind(self):
        if (self.special is None) == (self.token is None):
            raise ValueError("a slot is a string, {special: bos_token|eos_token} or {token: TOKEN}")
        return self


Slot = Annotated[Union[StrictStr, SpecialSlot], Field(description="a string, {special: bos_token|eos_token} or {token: TOKEN}")]


class Formatter(Strict):
    slots: Annotated[list[Slot], Field(min_length=1)]


class TemplateOverrides(Strict):
    """Fields of llamafactory.data.template.Template a template file may override (tests check they exist there)."""

    format_user: Optional[Formatter] = None
    format_assistant: Optional[Formatter] = None
    format_system: Optional[Formatter] = None
    format_function: Optional[Formatter] = None
    format_observation: Optional[Formatter] = None
    format_prefix: Optional[Formatter] = None
    stop_words: Optional[list[Text]] = None
    thought_words: Optional[list[StrictStr]] = None
    tool_call_words: Optional[list[StrictStr]] = None
    efficient_eos: Optional[StrictBool] = None
    replace_eos: Optional[StrictBool] = None
    replace_jinja_template: Optional[StrictBool] = None
    enable_thinking: Optional[StrictBool] = None
    preserve_thinking: Optional[StrictBool] = None

    @model_validator(mode="after")
    def stop_word_for_eos(self):
        if self.replace_eos and self.stop_words is not None and not self.stop_words:
            raise ValueError("overrides.stop_words: replace_eos needs at least one stop word")
        return self


FORMATTER_FIELDS = tuple(n for n in TemplateOverrides.model_fields if n.startswith("format_"))


class Persona(Strict):
    """Who the template makes the model: `lfx eval` counts an answer to "who are you?" as in character when it
    names the persona (its name or an alias) and claims no other identity."""

    name: Text = Field(description="the persona's name as users know it, e.g. 'Tony Stark'")
    aliases: list[Text] = Field([], description="other names it answers to, in every language it speaks "
                                                "(e.g. 'Tony', 'Iron Man', '토니 스타크', '아이언맨')")  # fmt: skip
    languages: Annotated[list[Literal["ko", "en"]], Field(min_length=1)] = Field(
        description="the languages it answers in (ko, en): its identity is probed in each")

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class TemplateFile(Strict):
    """templates/NAME.yaml: a LLaMA-Factory base template, the persona's system prompt, overrides, and who the
    persona is."""

    name: Text
    base: Text
    description: StrictStr = ""
    default_system: StrictStr = ""
    overrides: TemplateOverrides = TemplateOverrides()
    persona: Optional[Persona] = Field(None, description="name, aliases and languages of the persona (lfx eval's identity)")

    @field_validator("overrides", mode="before")
    @classmethod
    def empty_overrides(cls, value):
        return {} if value is None else value


# --- dataset entries -------------------------------------------------------------------------------

SOURCE_KEYS = ("file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
FORMATTINGS = ("alpaca", "sharegpt", "openai")
# The languages a dataset's responses may be declared in (`lfx: {language: ...}`), each with the letters that are
# written in it (`lfx eval` counts them in an answer): a Korean persona writes Hangul, syllables and jamo, an
# English one Latin letters.
LANGUAGE_LETTERS = {"ko": r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]", "en": r"[A-Za-z]"}
LANGUAGES = tuple(LANGUAGE_LETTERS)


class Columns(Strict):
    """`columns` of a dataset_info entry: record field names (llamafactory/data/parser.py, DatasetAttr)."""

    prompt: Optional[Text] = None
    query: Optional[Text] = None
    response: Optional[Text] = None
    history: Optional[Text] = None
    messages: Optional[Text] = None
    system: Optional[Text] = None
    tools: Optional[Text] = None
    images: Optional[Text] = None
    videos: Optional[Text] = None
    audios: Optional[Text] = None
    chosen: Optional[Text] = None
    rejected: Optional[Text] = None
    kto_tag: Optional[Text] = None


class Tags(Strict):
    """`tags` of a sharegpt entry: the role and content keys and role names of its messages."""

    role_tag: Optional[Text] = None
    content_tag: Optional[Text] = None
    user_tag: Optional[Text] = None
    assistant_tag: Optional[Text] = None
    observation_tag: Optional[Text] = None
    function_tag: Optional[Text] = None
    system_tag: Optional[Text] = None


class LfxKeys(Strict):
    """Our key in an entry, which LLaMA-Factory ignores: JSON-output responses and the responses' language."""

    json_output: Union[StrictBool, dict[str, list]] = Field(False, description="true, false or {FIELD: [VALUES]}")
    language: Optional[Literal[LANGUAGES]] = None


class DatasetInfoEntry(Strict):
    """One entry of dataset_info.json in LLaMA-Factory's vocabulary (llamafactory/data/parser.py, DatasetAttr)."""

    file_name: Optional[Text] = None
    hf_hub_url: Optional[Text] = None
    ms_hub_url: Optional[Text] = None
    om_hub_url: Optional[Text] = None
    script_url: Optional[Text] = None
    cloud_file_name: Optional[Text] = None
    formatting: Literal["alpaca", "sharegpt", "openai"] = "alpaca"
    ranking: StrictBool = False
    subset: Optional[Text] = None
    split: Optional[Text] = None
    folder: Optional[Text] = None
    num_samples: Optional[Annotated[StrictInt, Field(gt=0)]] = None
    columns: Optional[Columns] = None
    tags: Optional[Tags] = None
    lfx: Optional[LfxKeys] = None

    @model_validator(mode="after")
    def has_source(self):
        if not any(getattr(self, key) for key in SOURCE_KEYS):
            raise ValueError("missing 'file_name' (or a hub url)")
        return self

    @field_validator("file_name")
    @classmethod
    def relative_inside_or_absolute(cls, value):
        # LLaMA-Factory joins it to dataset_dir (llamafactory/data/loader.py, _load_single_dataset: os.path.join,
        # so an absolute path is taken as it is, and `~` is not expanded); a run folder's snapshot copies the file
        # in and names it relative there (persona.registration).
        if value is None or os.path.isabs(value):
            return value
        if value.startswith("~"):
            raise ValueError(f"'{value}': LLaMA-Factory does not expand '~': give the absolute path, or one relative to "
                             "dataset_info.json")  # fmt: skip
        if os.path.normpath(value).split(os.sep)[0] == "..":
            raise ValueError(f"'{value}' leads outside the dataset folder (no '..'): put the file beside dataset_info.json "
                             "or give its absolute path")  # fmt: skip
        return value
