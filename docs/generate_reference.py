"""Writes docs/reference.md from the code: the keys this project adds to a recipe (`launch:`), a template file
and a dataset entry, from the pydantic models' own field descriptions, and every `lfx` command's `--help`, from
click. `make docs` runs it; tests/test_docs.py fails when docs/reference.md is not what it writes.

    python docs/generate_reference.py            # rewrite docs/reference.md
    python docs/generate_reference.py --check    # exit 1 when docs/reference.md is stale
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import click
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

DOCS = Path(__file__).resolve().parent
REFERENCE = DOCS / "reference.md"
WIDTH = 100  # the --help texts are formatted at this width, whatever the terminal


def anchor(title: str) -> str:
    """GitHub's anchor of a heading (tests/test_docs.py checks links with the same rule)."""
    import re

    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def type_name(tp, sections: dict[type, str]) -> str:
    """A field's type in words: `integer >= 1`, `deepspeed, torchrun`, `list of string`, a link to a nested model."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return " ".join([type_name(args[0], sections), *bounds_of(args[1:])])
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in args)
    if origin in (Union, types.UnionType):
        shown = [type_name(a, sections) for a in args if a is not type(None)]
        return " or ".join(shown)
    if origin is list:
        return f"list of {type_name(args[0], sections)}"
    if origin is dict:
        return f"mapping of {type_name(args[0], sections)} to {type_name(args[1], sections)}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        title = sections.get(tp)
        return f"[{tp.__name__}](#{anchor(title)})" if title else tp.__name__
    return {str: "string", int: "integer", bool: "true/false", float: "number", typing.Any: "anything"}.get(tp, str(tp))


def bounds_of(metadata) -> list[str]:
    """`>= 1`, `> 0`: the numeric bounds among a type's metadata (annotated_types, or a Field's own metadata)."""
    flat = [inner for m in metadata for inner in (getattr(m, "metadata", None) or [m])]
    return [f"{op} {getattr(m, attr)}" for m in flat for attr, op in (("ge", ">="), ("gt", ">"))
            if getattr(m, attr, None) is not None]  # fmt: skip


def default_text(field) -> str:
    if field.default is PydanticUndefined:
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "`{}`"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == "":
        return '`""`'
    return f"`{value}`"


def model_table(model: type[BaseModel], sections: dict[type, str]) -> list[str]:
    lines = ["| key | type | default | what |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        if not field.description:
            raise SystemExit(f"{model.__module__}.{model.__name__}: field '{name}' has no description: add "
                             "Field(description=...) (the reference is generated from it)")  # fmt: skip
        text = " ".join(field.description.split()).replace("|", "\\|")
        kind = " ".join([type_name(field.annotation, sections), *bounds_of(field.metadata)])
        lines.append(f"| `{name}` | {kind} | {default_text(field)} | {text} |")
    return lines


def schema_sections() -> list[str]:
    from llamafactory_ext.persona.schema import (
        Columns,
        DatasetInfoEntry,
        Formatter,
        LfxKeys,
        Persona,
        SpecialSlot,
        Tags,
        TemplateFile,
        TemplateOverrides,
    )
    from llamafactory_ext.recipe.schema import Launch

    parts = [
        ("Recipe: `launch`", Launch, ("The block a recipe (`launch/*.yaml`) adds to LLaMA-Factory's arguments; every "
                                      "other top-level key is a LLaMA-Factory argument, typed from its own dataclasses.")),
        ("Template file", TemplateFile, None),
        ("Template file: `persona`", Persona, None),
        ("Template file: `overrides`", TemplateOverrides, None),
        ("Template file: a formatter", Formatter, None),
        ("Template file: a special slot", SpecialSlot, None),
        ("Dataset entry", DatasetInfoEntry, None),
        ("Dataset entry: `columns`", Columns, None),
        ("Dataset entry: `tags`", Tags, None),
        ("Dataset entry: `lfx`", LfxKeys, None),
    ]
    sections = {model: title for title, model, _ in parts}
    out = []
    for title, model, note in parts:
        doc = " ".join((model.__doc__ or "").split())
        out += [f"### {title}", ""]
        if note:
            out += [note, ""]
        if doc:
            out += [doc, ""]
        out += [*model_table(model, sections), ""]
    return out


def commands(group: click.Group, parent: click.Context) -> list[tuple[str, str]]:
    """Every command under `group`, depth first in the order `lfx --help` lists them, with its --help text."""
    found = []
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
        ctx = click.Context(command, info_name=name, parent=parent, **settings)
        found.append((ctx.command_path, command.get_help(ctx)))
        if isinstance(command, click.Group):
            found += commands(command, ctx)
    return found


def command_sections() -> list[str]:
    from llamafactory_ext.cli import main

    # As `lfx` makes its context (its context_settings: -h as well as --help), at a fixed width.
    root = click.Context(main, info_name="lfx", **{**main.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH})
    out = ["### lfx", "", "```text", main.get_help(root), "```", ""]
    for path, text in commands(main, root):
        out += [f"### {path}", "", "```text", text, "```", ""]
    return out


def render() -> str:
    lines = [
        "# Reference",
        "",
        ("<!-- Generated by docs/generate_reference.py from the pydantic schemas and the click commands: do not edit; "
         "run `make docs`. -->"),
        "",
        ("Generated from the code (`make docs`; `tests/test_docs.py` fails when this page is stale): the keys this "
         "project adds, from the schemas' field descriptions (`llamafactory_ext/recipe/schema.py`, "
         "`llamafactory_ext/persona/schema.py`), and every command's `--help`."),
        "",
        "## Keys",
        "",
        *schema_sections(),
        "## Commands",
        "",
        *command_sections(),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not REFERENCE.is_file() or REFERENCE.read_text(encoding="utf-8") != text:
            print(f"{REFERENCE}: stale: run `make docs` (python docs/generate_reference.py)", file=sys.stderr)
            return 1
        return 0
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
