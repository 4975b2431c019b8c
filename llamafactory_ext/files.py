"""Reading and writing files: text in UTF-8 (with or without BOM) or a one-line error naming the encoding
found; YAML/JSON/JSON Lines with positions in errors; paths kept inside the folder they belong to;
atomic writes that never leave a half-written file or folder; the one rule for outputs every command
follows: never over an input or in a folder lfx reads, and replacing only what the same command wrote."""

from __future__ import annotations

import codecs
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import LfxError
from .paths import read_folders

# Legacy encodings users' files come in, tried in this order to name what a non-UTF-8 file is (Korean
# spreadsheets export CP949/EUC-KR; Windows tools UTF-16 with a BOM).
LEGACY = (("cp949", "CP949/EUC-KR (Korean)"), ("shift_jis", "Shift-JIS (Japanese)"), ("gb18030", "GB18030 (Chinese)"),
          ("cp1252", "Windows-1252"))  # fmt: skip


def encoding_problem(path: Path, data: bytes) -> str:
    """Why `data` is not UTF-8 text, naming the encoding it is in and how to convert it."""
    for bom, name in ((codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            return f"{path}: encoded as {name}, not UTF-8: convert it (iconv -f UTF-16 -t UTF-8 '{path}' > out)"
    err = None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        err = e
    for codec, label in LEGACY:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if codec != "cp949" or any("\uac00" <= c <= "\ud7a3" for c in text):
            return (f"{path}: not UTF-8 (byte {err.start if err else '?'}): looks like {label}; convert it "
                    f"(iconv -f {codec.upper()} -t UTF-8 '{path}' > out, or save as UTF-8)")
    return f"{path}: not UTF-8 text ({err.reason if err else 'undecodable'} at byte {err.start if err else '?'})"


def read_text(path: str | Path) -> str:
    """A text file in UTF-8, a leading BOM dropped; LfxError (one line) when missing or not UTF-8."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LfxError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LfxError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise LfxError(f"{path}: not readable (permission denied)") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LfxError(encoding_problem(path, data)) from None


def has_bom(path: str | Path) -> bool:
    with open(path, "rb") as f:
        return f.read(3) == codecs.BOM_UTF8


def inside(base: str | Path, relative: str, where: str) -> Path:
    """`base / relative`, refused unless it stays inside `base` (no absolute path, no `..` escape)."""
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith("~"):
        raise LfxError(f"{where}: '{relative}' is an absolute path; give it relative to {base}")
    target = Path(os.path.normpath(Path(base) / rel))
    base_norm = Path(os.path.normpath(base))
    if target != base_norm and base_norm not in target.parents:
        raise LfxError(f"{where}: '{relative}' leads outside {base}")
    return target


def refuse_overwrite(out: str | Path, inputs: list[str | Path | None], what: str = "output") -> None:
    """An output path that is one of the command's inputs or a folder lfx reads from (templates/, datasets/,
    launch/, ...), holds one, or lies inside one would destroy or change what is read: every command that
    writes checks its outputs here, before any heavy work."""
    out_path = Path(out).resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if out_path == source or out_path in source.parents:
            raise LfxError(f"{out}: the {what} would overwrite the input {item}; choose another path")
        if source.is_dir() and source in out_path.parents:
            raise LfxError(f"{out}: the {what} would be written into the input folder {item}; choose another path")
    for folder in read_folders():
        source = folder.resolve()
        if out_path == source or source in out_path.parents or out_path in source.parents:
            raise LfxError(f"{out}: the {what} would be written {'over' if out_path in (source, *source.parents) else 'into'} "
                           f"{folder}, which lfx reads (generated files never go next to sources); choose another path "
                           "(e.g. runs/...)")  # fmt: skip


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice in one object is an error (json keeps the last one silently,
    the JSON twin of YAML's duplicate keys)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise LfxError(f"{where}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    except DuplicateKey as err:
        raise LfxError(f"{where}: field '{err.key}': defined twice in one object (JSON would keep only the last one)") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise LfxError(f"{path}: file is empty")
    return parse_json(text, str(path))


def _check_yaml_nodes(path: Path, node, field: str = "") -> None:
    """Refuse what PyYAML accepts silently: a key given twice in one mapping (PyYAML keeps the last
    value, so the user's first one is ignored) and non-finite numbers (.nan, .inf: no argument of a
    run, template or preset means that). Errors name the line and the field (dotted path)."""
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
        if node.value.lstrip("+-").lower() in (".inf", ".nan"):
            where = f"field '{field}'" if field else "value"
            raise LfxError(f"{path}:{node.start_mark.line + 1}: {where}: {node.value} is not a finite number")


def read_jsonl(path: str | Path) -> list:
    """JSON Lines: one value a line (blank lines skipped); an error names line and column."""
    path = Path(path)
    records = []
    for lineno, line in enumerate(read_text(path).splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line, object_pairs_hook=_unique_keys))
            except json.JSONDecodeError as err:
                raise LfxError(f"{path}:{lineno}:{err.colno}: invalid JSON: {err.msg}") from None
            except DuplicateKey as err:
                raise LfxError(f"{path}:{lineno}: field '{err.key}': defined twice in one object") from None
    return records


def read_json_records(path: str | Path) -> list:
    """A `.json` data file as LLaMA-Factory's loader (HF datasets' json builder) reads it: one JSON list
    of records, or JSON Lines (one record a line) under a .json name."""
    path = Path(path)
    text = read_text(path)
    if not text.strip():
        raise LfxError(f"{path}: file is empty")
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data" and text.lstrip().startswith("{"):
            return read_jsonl(path)
        data = parse_json(text, str(path))  # raises the one-line error with line and column
    except DuplicateKey:
        data = parse_json(text, str(path))
    if not isinstance(data, list):
        raise LfxError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _loader():
    """The YAML loader LLaMA-Factory's config reader (OmegaConf.load) uses: `1e-4` is a number (YAML 1.1 wants
    `1.0e-4`), and dates stay text."""
    from omegaconf._yaml import get_yaml_loader

    return get_yaml_loader()


def read_yaml(path: str | Path) -> Any:
    """A YAML file read as LLaMA-Factory reads its configs, strictly: duplicate keys and non-finite
    numbers are errors with their line."""
    import yaml

    path = Path(path)
    text = read_text(path)
    try:
        _check_yaml_nodes(path, yaml.compose(text, Loader=_loader()))
        data = yaml.load(text, Loader=_loader())  # noqa: S506 (OmegaConf's safe loader)
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


# --- outputs lfx may replace: only what it wrote -----------------------------------------------------------
# A folder (or run folder) a command wrote holds MARKER: the command and each file it wrote, with its size. A
# command replaces or removes a file only when its own marker lists it unchanged; anything else is the user's.

MARKER = ".lfx_written"


def mark_written(folder: Path, command: str, names: list[str] | None = None) -> None:
    """Record that `command` wrote `names` (paths relative to `folder`; default: every file in it)."""
    if names is None:
        names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER]
    sizes = {name: (folder / name).stat().st_size for name in sorted(names)}
    atomic_write_text(folder / MARKER, dump_json({"command": command, "files": sizes}))


def add_written(folder: Path, command: str, names: list[str]) -> None:
    """Record in `folder`'s marker, when it has one, that `command` wrote `names` there too (lfx eval's report in
    a merged folder): the command that wrote the folder may then replace them with it."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        return
    data["files"].update({name: (folder / name).stat().st_size for name in names})
    data["added"] = {**(data.get("added") or {}), **{name: command for name in names}}
    atomic_write_text(folder / MARKER, dump_json(data))


def adopt_changed(folder: Path, command: str) -> None:
    """The files `command` wrote into `folder` that changed since (a cut copy its own check found damaged), recorded
    again at their size now, so that the command may write them anew; a file it did not write stays foreign."""
    ours = _written(folder, command)
    if ours:
        mark_written(folder, command, [name for name in ours if (folder / name).is_file()])


def _written(folder: Path, command: str) -> dict[str, int]:
    """The files `command` wrote into `folder` by its marker; {} without one, or for another command's."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("command") == command else None
    return files if isinstance(files, dict) else {}


def not_written_by(folder: Path, command: str, names: list[str] | None = None) -> list[str]:
    """Those of `names` (default: every file in `folder`) that exist but that `command` did not write, or
    that changed since (another size)."""
    ours = _written(folder, command)
    if names is None:
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    return [n for n in names if (folder / n).is_file() and ours.get(n) != (folder / n).stat().st_size]


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def refuse_foreign(folder: Path, command: str, names: list[str] | None = None) -> None:
    """LfxError naming the files among `names` (default: all of `folder`) that `command` did not write."""
    foreign = not_written_by(folder, command, names)
    if foreign:
        raise LfxError(f"{folder}: holds {_listing(foreign)}, which {command} did not write; it never replaces or "
                       "removes what it did not write: move them, or choose another folder")  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_leftovers(out: Path) -> None:
    """Remove what a killed command writing `out` left beside it (its temporary folder), and put back a
    previous `out` it had moved aside between its two renames."""
    parent = out.resolve().parent
    for kind in ("partial", "old"):
        for path in parent.glob(f".{out.name}.{kind}-*"):
            pid = path.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


def check_replaceable(out: Path, command: str, force: bool) -> None:
    """The rule for a folder a command writes as a whole: a missing or empty `out` is written; an existing one
    only with --force, and only when `command` wrote every file in it (its marker). What a killed run left
    beside `out` is cleaned up first."""
    clean_leftovers(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise LfxError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    refuse_foreign(out, command)
    if not force:
        raise LfxError(f"{out}: already exists (pass --force to replace it), written by {command}")


@contextmanager
def staged_folder(out: str | Path, command: str, force: bool = False) -> Iterator[Path]:
    """A folder to write `out` in: a temporary sibling, marked and swapped in for `out` when the block ends
    (check_replaceable applied before and again at the swap), removed when it fails, so `out` is never
    half-written and a failure leaves nothing behind; a full disk is the one-line error it is."""
    out = Path(out)
    check_replaceable(out, command, force)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                readable(item)
        mark_written(tmp, command)
        check_replaceable(out, command, force)
        replace_folder(tmp, out)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # disk full, quota, file size limit
            raise LfxError(f"{out}: writing it failed: {err.strerror} ({err.filename or tmp}); nothing was written") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move a finished folder `tmp` to `out` (a sibling): an existing `out` is moved aside first and removed only
    once the new one is in place, so `out` is never half-written. The caller has checked that `out` may go."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def dump_json(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
