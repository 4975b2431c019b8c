"""Declared schemas (pydantic) validated into our one error line: `FILE: field 'a.b': what is wrong (hint)`.

Every schema of ours (recipes, template files, dataset entries) is a pydantic model with unknown keys
forbidden and strict types; this module turns the first of pydantic's errors into the line a user reads:
the field's dotted path, what was expected in words, what was found, and a did-you-mean for a typo.
"""

from __future__ import annotations

import difflib
import enum
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import LfxError


class FieldProblem(ValueError):
    """A rule about `field` (dotted, relative to the model that raises it) broken; `text` says how. Raised
    in validators, so that a rule about several fields still names the one to change."""

    def __init__(self, field: str, text: str):
        super().__init__(text)
        self.field, self.text = field, text


FLOAT_TEXT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def comma_list(value: Any) -> list[str]:
    """The names in a comma-separated argument (`dataset`, `eval_dataset`, `lora_target`, `adapter_name_or_path`,
    ...) or a YAML list of them, split as LLaMA-Factory splits them (llamafactory/hparams/data_args.py:148,
    model_args.py:211): stripped, an empty name kept (`a,` is ['a', ''], which it then fails on)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [n.strip() for n in value.split(",")]
    return [str(n).strip() for n in value]


def did_you_mean(word: str, choices: typing.Iterable[str], fallback: str = "") -> str:
    hint = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return f" (did you mean '{hint[0]}'?)" if hint else fallback


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] -> X."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _literal_values(tp: Any) -> list[Any]:
    """The values a Literal (also inside Optional or a union) allows."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    if _is_union(tp):
        return [v for arm in typing.get_args(tp) for v in _literal_values(arm)]
    return []


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def describe(tp: Any) -> str:
    """An annotation in words: 'a number', 'true or false', 'a string or a list of strings' (or the
    `description` an Annotated type declares for itself)."""
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(getattr(meta, "description", None), str):
                return meta.description
    tp = _unwrap(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if _is_union(tp):
        parts = [describe(a) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts)) or "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin in (list, tuple) or tp in (list, tuple):
        return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    return "a value of another type"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return f"a list {value!r}" if len(repr(value)) < 60 else "a list"
    return repr(value)


def _locate(model: type[BaseModel], loc: tuple) -> tuple[list[Any], Any, type[BaseModel] | None]:
    """The user-facing path of an error, the annotation there, and the model that owns the last key.
    Stops at a union: its member tags in `loc` are pydantic's, not the user's."""
    path: list[Any] = []
    tp: Any = model
    owner: type[BaseModel] | None = model
    for part in loc:
        raw, tp = tp, _unwrap(tp)
        if _is_union(tp):
            members = [m for m in typing.get_args(tp) if m is not type(None)]
            if len(members) == 1:
                raw = tp = members[0]
                tp = _unwrap(tp)
            if len(members) != 1 or _is_union(tp):
                return path, raw, owner
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            owner = tp
            field = tp.model_fields.get(part)
            path.append(part if field is None else (field.alias or part))
            tp = field.annotation if field is not None else Any
        elif typing.get_origin(tp) in (list, tuple) or tp in (list, tuple):
            path.append(part)
            tp = (typing.get_args(tp) or (Any,))[0]
        elif typing.get_origin(tp) is dict or tp is dict:
            path.append(part)
            tp = (typing.get_args(tp) or (Any, Any))[-1]
        else:
            path.append(part)
            tp = Any
    return path, tp, owner


def dotted(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _value_at(data: Any, path: list[Any]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def message(model: type[BaseModel], err: ValidationError, data: Any, missing: dict[str, str] | None = None) -> str:
    """The first error of `err` as `field 'x': ...` (no file prefix)."""
    first = err.errors(include_url=False)[0]
    loc = tuple(first["loc"])
    kind = first["type"]
    path, tp, owner = _locate(model, loc)
    name = dotted(path)
    if kind == "extra_forbidden":
        allowed = [f.alias or n for n, f in owner.model_fields.items()] if owner else []
        key = str(path[-1]) if path else "?"
        prefix = dotted(path[:-1])
        full = f"{prefix}.{key}" if prefix else key
        unknown_hint = getattr(owner, "unknown_key_hint", "")
        fallback = unknown_hint or f" (allowed: {', '.join(sorted(allowed))})"
        note = getattr(owner, "unknown_key_note", "")
        return f"unknown key '{full}'{note}" + did_you_mean(key, allowed, "" if note else fallback)
    if kind == "missing":
        hint = (missing or {}).get(name, "")
        return f"missing '{name}'{hint}"
    problem = (first.get("ctx") or {}).get("error")
    if isinstance(problem, FieldProblem):
        full = ".".join(p for p in (name, problem.field) if p)
        return f"field '{full}': {problem.text}" if full else problem.text
    value = _value_at(data, path) if len(path) < len(loc) else first.get("input")
    where = f"field '{name}'"
    if kind in ("literal_error", "enum"):
        choices = [str(c) for c in _literal_values(tp)] or re.findall(r"'([^']*)'", first["ctx"].get("expected", ""))
        listed = "the known values" if len(choices) > 8 else ", ".join(choices)
        return f"{where}: {value!r} is not one of {listed}" + did_you_mean(value, choices)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ctx = first.get("ctx") or {}
        meta = owner.model_fields.get(str(path[-1])) if owner and path else None
        bounds = _bounds(meta) if meta is not None else ctx
        if bounds.get("gt") == 0 and set(bounds) == {"gt"}:
            return f"{where}: must be positive, got {value!r}"
        if bounds.get("ge") == 1 and set(bounds) == {"ge"}:
            return f"{where}: expected a positive integer, got {value!r}"
        low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds.get('gt', '-inf')}"
        high = f"{bounds['lt']})" if "lt" in bounds else f"{bounds.get('le', 'inf')}]"
        return f"{where}: must be in {low}, {high}, got {value!r}"
    if kind in ("value_error", "assertion_error"):
        text = str(first["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        return f"{where}: {text}" if name else text
    if kind in ("string_too_short", "too_short", "string_pattern_mismatch") and isinstance(value, (str, list)):
        return f"{where}: must not be empty"
    expected = describe(tp)
    if expected == "a number" and isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
        return f"{where}: expected a number, got the string {value!r} (quoted in YAML: write it without quotes)"
    return f"{where}: expected {expected}, got {_shown(value)}"


def _bounds(field) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in field.metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


def validate(model: type[BaseModel], data: Any, where: str, missing: dict[str, str] | None = None) -> BaseModel:
    """`model` validated from `data`, or LfxError `where: field 'x': ...` for the first problem."""
    if not isinstance(data, dict):
        raise LfxError(f"{where}: expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise LfxError(f"{where}: {message(model, err, data, missing)}") from None


def enum_values(tp: Any) -> list[Any]:
    return [m.value for m in tp] if isinstance(tp, type) and issubclass(tp, enum.Enum) else []
