"""Reading YAML/JSON with positions in errors, and atomic writes (never a half-written file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import LfxError


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LfxError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise LfxError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise LfxError(f"{path}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise LfxError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None


def _check_yaml_nodes(path: Path, node, field: str = "") -> None:
    """Refuse what PyYAML accepts silently: a key given twice in one mapping (PyYAML keeps the last
    value, so the user's first one is ignored) and non-finite numbers (.nan, .inf: no argument of a
    run, template or preset means that). Errors name the line and the field (dotted path)."""
    import math

    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys after it may override
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            name = f"{field}.{key}" if field else key
            line = key_node.start_mark.line + 1
            if key in seen and isinstance(key_node, yaml.ScalarNode):
                raise LfxError(f"{path}:{line}: field '{name}': duplicate key (first on line {seen[key]}; "
                               "YAML would silently keep only the last value)")  # fmt: skip
            seen[key] = line
            _check_yaml_nodes(path, value_node, name)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_yaml_nodes(path, item, f"{field}[{i}]")
    elif isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
        if not math.isfinite(yaml.SafeLoader("").construct_yaml_float(node)):
            where = f"field '{field}'" if field else "value"
            raise LfxError(f"{path}:{node.start_mark.line + 1}: {where}: {node.value} is not a finite number")


def read_jsonl(path: str | Path) -> list:
    """JSON Lines: one value a line (blank lines skipped); an error names line and column."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise LfxError(f"{path}:{lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    return records


def read_yaml(path: str | Path) -> Any:
    """A YAML file, strictly: duplicate keys and non-finite numbers are errors with their line."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LfxError(f"{path}: file not found") from None
    try:
        _check_yaml_nodes(path, yaml.compose(text, Loader=yaml.SafeLoader))
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise LfxError(f"{where}: invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise LfxError(f"{path}: invalid YAML: {err}") from None
    if data is None:
        raise LfxError(f"{path}: file is empty")
    return data


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def readable(path: str | Path) -> None:
    """The mode a plain open() would have given (mkstemp and some writers create files 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    readable(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    readable(tmp)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            while chunk := inp.read(1 << 20):
                out.write(chunk)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
