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

    special: Optional[Literal["bos_token", "eos_token"]] = Field(None, description="The tokenizer's bos or eos token.")
    token: Optional[Text] = Field(None, description="A special token by its text, e.g. '<|eot_id|>'.")

    @model_validator(mode="after")
    def one_kind(self):
        if (self.special is None) == (self.token is None):
            raise ValueError("a slot is a string, {special: bos_token|eos_token} or {token: TOKEN}")
        return self


Slot = Annotated[Union[StrictStr, SpecialSlot], Field(description="a string, {special: bos_token|eos_token} or {token: TOKEN}")]


class Formatter(Strict):
    slots: Annotated[list[Slot], Field(min_length=1)] = Field(description="What the formatter writes, in order: strings "
                                                              "with `{{content}}`, and special slots.")


class TemplateOverrides(Strict):
    """Fields of llamafactory.data.template.Template a template file may override (tests check they exist there)."""

    format_user: Optional[Formatter] = Field(None, description="How a user turn is written: `{slots: [...]}`.")
    format_assistant: Optional[Formatter] = Field(None, description="How an assistant turn is written.")
    format_system: Optional[Formatter] = Field(None, description="How the system prompt is written.")
    format_function: Optional[Formatter] = Field(None, description="How a tool call is written.")
    format_observation: Optional[Formatter] = Field(None, description="How a tool result is written.")
    format_prefix: Optional[Formatter] = Field(None, description="What opens every conversation (e.g. the bos token).")
    stop_words: Optional[list[Text]] = Field(None, description="Stop words; the first is the persona's eos in the saved "
                                             "tokenizer and the first eos id servers stop on.")
    thought_words: Optional[list[StrictStr]] = Field(None, description="The two markers around a reasoning part.")
    tool_call_words: Optional[list[StrictStr]] = Field(None, description="The two markers around a tool call.")
    efficient_eos: Optional[StrictBool] = Field(None, description="LLaMA-Factory's efficient_eos: the eos token only "
                                                "after the assistant's last turn.")
    replace_eos: Optional[StrictBool] = Field(None, description="Make the first stop word the tokenizer's eos (needs one).")
    replace_jinja_template: Optional[StrictBool] = Field(None, description="Write this template, persona system prompt "
                                                         "included, into the saved tokenizer's chat template.")
    enable_thinking: Optional[StrictBool] = Field(None, description="LLaMA-Factory's enable_thinking for reasoning "
                                                  "templates.")
    preserve_thinking: Optional[StrictBool] = Field(None, description="Keep earlier turns' reasoning in the prompt.")

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

    name: Text = Field(description="The template's name; must match the file name.")
    base: Text = Field(description="A LLaMA-Factory built-in template it derives from (a deep copy; the built-in is "
                       "never edited).")
    description: StrictStr = Field("", description="One line `lfx templates list` shows.")
    default_system: StrictStr = Field("", description="The persona's system prompt (empty: a one-line warning from "
                                      "every command that reads a recipe).")
    overrides: TemplateOverrides = Field(TemplateOverrides(), description="Fields of LLaMA-Factory's Template to "
                                         "replace (below).")
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

    prompt: Optional[Text] = Field(None, description="alpaca: the instruction field (default instruction).")
    query: Optional[Text] = Field(None, description="alpaca: the input field (default input).")
    response: Optional[Text] = Field(None, description="alpaca: the answer field (default output).")
    history: Optional[Text] = Field(None, description="alpaca: earlier [prompt, answer] pairs.")
    messages: Optional[Text] = Field(None, description="sharegpt/openai: the conversation (default conversations).")
    system: Optional[Text] = Field(None, description="The system prompt field.")
    tools: Optional[Text] = Field(None, description="The tool descriptions field.")
    images: Optional[Text] = Field(None, description="Image paths (multimodal).")
    videos: Optional[Text] = Field(None, description="Video paths (multimodal).")
    audios: Optional[Text] = Field(None, description="Audio paths (multimodal).")
    chosen: Optional[Text] = Field(None, description="Ranking: the preferred answer.")
    rejected: Optional[Text] = Field(None, description="Ranking: the other answer.")
    kto_tag: Optional[Text] = Field(None, description="KTO: the good/bad label.")


class Tags(Strict):
    """`tags` of a sharegpt entry: the role and content keys and role names of its messages."""

    role_tag: Optional[Text] = Field(None, description="The key of a message's role (default from).")
    content_tag: Optional[Text] = Field(None, description="The key of its text (default value).")
    user_tag: Optional[Text] = Field(None, description="The user's role name (default human).")
    assistant_tag: Optional[Text] = Field(None, description="The assistant's role name (default gpt).")
    observation_tag: Optional[Text] = Field(None, description="A tool result's role name.")
    function_tag: Optional[Text] = Field(None, description="A tool call's role name.")
    system_tag: Optional[Text] = Field(None, description="The system prompt's role name.")


class LfxKeys(Strict):
    """Our key in an entry, which LLaMA-Factory ignores: JSON-output responses and the responses' language."""

    json_output: Union[StrictBool, dict[str, list]] = Field(False, description="Every response must be JSON (true), "
                                                            "or those of records whose FIELD is one of VALUES "
                                                            "({FIELD: [VALUES]}); `lfx eval` scores JSON validity.")
    language: Optional[Literal[LANGUAGES]] = Field(None, description="The language the responses are written in (ko, "
                                                   "en); `lfx eval` measures the share of answers in it.")


class DatasetInfoEntry(Strict):
    """One entry of dataset_info.json in LLaMA-Factory's vocabulary (llamafactory/data/parser.py, DatasetAttr)."""

    file_name: Optional[Text] = Field(None, description="A file or folder relative to dataset_info.json (no `..`, no "
                                      "`~`), or an absolute path (copied into a run's snapshot).")
    hf_hub_url: Optional[Text] = Field(None, description="A Hugging Face Hub dataset id.")
    ms_hub_url: Optional[Text] = Field(None, description="A ModelScope dataset id.")
    om_hub_url: Optional[Text] = Field(None, description="A Modelers dataset id.")
    script_url: Optional[Text] = Field(None, description="A folder of data files (a loading script is refused).")
    cloud_file_name: Optional[Text] = Field(None, description="A file in cloud storage (s3:// or gs://).")
    formatting: Literal["alpaca", "sharegpt", "openai"] = Field("alpaca", description="The records' layout.")
    ranking: StrictBool = Field(False, description="Preference data (chosen and rejected responses).")
    subset: Optional[Text] = Field(None, description="The Hub dataset's configuration.")
    split: Optional[Text] = Field(None, description="The split to read (LLaMA-Factory's default: train).")
    folder: Optional[Text] = Field(None, description="A folder inside the Hub dataset.")
    num_samples: Optional[Annotated[StrictInt, Field(gt=0)]] = Field(None, description="Draw this many records (as "
                                                                     "LLaMA-Factory draws them).")
    columns: Optional[Columns] = Field(None, description="Which record fields hold what (below).")
    tags: Optional[Tags] = Field(None, description="sharegpt: the message keys and role names (below).")
    lfx: Optional[LfxKeys] = Field(None, description="Our key, which LLaMA-Factory ignores (below).")

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
