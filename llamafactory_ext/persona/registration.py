"""Registration into LLaMA-Factory: our templates into its template registry (in every process that trains
or encodes), our dataset entries and their files into a dataset folder it reads (dataset_info.json).

LLaMA-Factory mutates its shared Template objects while encoding, so every lookup here hands out a private copy.
"""

from __future__ import annotations

import copy
import dataclasses
import filecmp
from pathlib import Path
from typing import Any

from ..errors import LfxError
from ..files import (
    atomic_copy,
    atomic_write_text,
    dump_json,
    has_bom,
    inside,
    mark_written,
    not_written_by,
    read_json,
    read_text,
    refuse_foreign,
    refuse_overwrite,
)
from ..paths import datasets_dir
from .dataset_entries import INFO_FILE, DatasetEntry, load_entries, select
from .dataset_records import check_entry
from .schema import FORMATTER_FIELDS
from .templates import TemplateSpec, load_specs

# Names this package put into LLaMA-Factory's registry, so re-registering replaces only our own.
_REGISTERED: set[str] = set()
COMMAND = "lfx datasets register"  # what a dataset folder's marker names: --force replaces only files it copied


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


def register_datasets(into: str | Path, names: list[str] | None = None, force: bool = False,
                      keep_lfx: bool = False, mark: bool = False) -> list[str]:  # fmt: skip
    """Merge our entries (and copy their files) into `into`/dataset_info.json.

    Existing entries are kept; redefining one differently is refused unless `force`, and `force` replaces
    only data files an earlier registration copied (`mark` records them in the folder's marker). Everything is
    validated and every conflict found before the first byte is written. `keep_lfx` keeps our `lfx`
    key (a run folder's snapshot, which `lfx check` reads back); LLaMA-Factory ignores it.
    """
    into = Path(into)
    if into.exists() and not into.is_dir():
        raise LfxError(f"{into}: exists and is not a folder (--into names LLaMA-Factory's dataset folder)")
    in_place = into.resolve() == datasets_dir().resolve()  # our own folder: checked, nothing to copy
    if not in_place:
        refuse_overwrite(into, [], "dataset folder")
    chosen = select(load_entries(names=names or None), names)
    for entry in chosen:
        check_entry(entry)
    if in_place:
        return [e.name for e in chosen]
    info_path = into / INFO_FILE
    existing = read_json(info_path) if info_path.exists() else {}
    if not isinstance(existing, dict):
        raise LfxError(f"{info_path}: expected a JSON object of dataset entries, got {type(existing).__name__}")
    merged = dict(existing)
    copies: list[tuple[Path, Path]] = []
    replaced: list[str] = []
    for entry in chosen:
        info = dict(entry.info if keep_lfx else entry.lf_info)
        if entry.path is not None:
            info["file_name"] = copied_name(entry)
        old = existing.get(entry.name)
        if old is not None and old != info and not force:
            raise LfxError(f"{info_path}: dataset '{entry.name}' is already defined differently (use --force to replace it)")
        merged[entry.name] = info
        if entry.path is not None:
            target = inside(into, info["file_name"], f"{entry.directory / INFO_FILE}: dataset '{entry.name}': field 'file_name'")
            pairs = ([(f, target / f.name) for f in sorted(entry.path.iterdir()) if f.is_file()]
                     if entry.path.is_dir() else [(entry.path, target)])  # a folder: LLaMA-Factory reads all its files
            for src, dst in pairs:
                if dst.is_dir():
                    raise LfxError(f"{dst}: a folder is already there, where dataset '{entry.name}' goes")
                if dst.exists() and not _same(src, dst):
                    if not force:
                        raise LfxError(f"{dst}: a different file is already there (use --force to replace it)")
                    replaced.append(dst.relative_to(into).as_posix())
                if not dst.is_file() or not _same(src, dst):
                    copies.append((src, dst))
    refuse_foreign(into, COMMAND, replaced)  # --force replaces only the files an earlier registration copied
    for src, dst in copies:
        _copy_data(src, dst)
    if merged != existing or not info_path.exists():
        atomic_write_text(info_path, dump_json(merged))
    if mark and copies:
        ours = _written_files(into) | {dst.relative_to(into).as_posix() for _, dst in copies}
        mark_written(into, COMMAND, sorted(n for n in ours if (into / n).is_file()))
    return [e.name for e in chosen]


def copied_name(entry: DatasetEntry) -> str:
    """The entry's `file_name` in a copy of its data: as it is, or for an absolute one (LLaMA-Factory accepts
    it) a relative name inside the copy, so the copy stands alone and names no path of this machine."""
    name = entry.info["file_name"]
    return f"external/{entry.name}/{Path(name).name}" if Path(name).is_absolute() else name


def _written_files(folder: Path) -> set[str]:
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return set(names) - set(not_written_by(folder, COMMAND, names))


def _same(src: Path, dst: Path) -> bool:
    """dst holds what a copy of src would hold (a BOM dropped)."""
    if has_bom(src):
        return dst.read_bytes() == src.read_bytes()[3:]
    return filecmp.cmp(src, dst, shallow=False)


def _copy_data(src: Path, dst: Path) -> None:
    """Copy a data file; a UTF-8 BOM is dropped on the way, since LLaMA-Factory's loader (HF datasets)
    refuses a JSON file that starts with one, while every reader of ours accepts it."""
    if has_bom(src):
        atomic_write_text(dst, read_text(src))
    else:
        atomic_copy(src, dst)
