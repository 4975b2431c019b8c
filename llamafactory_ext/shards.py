"""Safetensors shards read and written one tensor at a time.

`safetensors.torch.save_file` needs every tensor of a shard in memory at once and serializes them
into one more buffer; a merge that streams (read a tensor, update it, write it, forget it) keeps its
peak at about the largest tensor. The format is the documented one: an 8-byte little-endian header
length, a JSON header (dtype, shape, data_offsets per tensor, optional __metadata__), then the data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import LfxError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    path: Path
    entries: list[Entry]  # in file order
    metadata: dict[str, str]
    data_start: int

    def shape(self, name: str) -> tuple[int, ...]:
        return next(e.shape for e in self.entries if e.name == name)


MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def read_header(path: str | Path) -> Header:
    """The header of a safetensors file, validated against the file: known dtypes, byte sizes that
    match the shapes, offsets that tile the data without gap or overlap, and a file as long as the
    header says (a truncated or corrupted shard is an error naming the file, never zeros)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            if size < 8:
                raise ValueError(f"{size} bytes, shorter than the 8-byte header length")
            (header_size,) = struct.unpack("<Q", f.read(8))
            if header_size > MAX_HEADER or 8 + header_size > size:
                raise ValueError(f"header length {header_size} does not fit in the file's {size} bytes")
            raw = json.loads(f.read(header_size))
        if not isinstance(raw, dict):
            raise ValueError("the header is not a JSON object")
        metadata = raw.pop("__metadata__", None) or {}
        entries = [_entry(name, value) for name, value in raw.items()]
    except (ValueError, struct.error, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise LfxError(f"{path}: not a valid safetensors file ({err})") from None
    entries.sort(key=lambda e: e.begin)
    data_start = 8 + header_size
    offset = 0
    for entry in entries:
        if entry.begin != offset:
            raise LfxError(f"{path}: corrupted safetensors header: tensor '{entry.name}' starts at byte {entry.begin} "
                           f"of the data, expected {offset} (a gap or an overlap)")  # fmt: skip
        offset = entry.end
    if data_start + offset != size:
        what = "truncated" if data_start + offset > size else "longer than its header says"
        raise LfxError(f"{path}: {what}: the header needs {data_start + offset} bytes, the file has {size} "
                       "(an interrupted download or copy? fetch it again)")  # fmt: skip
    return Header(path, entries, metadata, data_start)


def _entry(name: str, value: Any) -> Entry:
    if not isinstance(value, dict) or value.get("dtype") not in DTYPE_BYTES:
        raise ValueError(f"tensor '{name}': unknown dtype {value.get('dtype') if isinstance(value, dict) else value!r}")
    shape, offsets = value.get("shape"), value.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ValueError(f"tensor '{name}': bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):  # fmt: skip
        raise ValueError(f"tensor '{name}': bad data_offsets {offsets!r}")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[value["dtype"]]:
        raise ValueError(f"tensor '{name}': {offsets[1] - offsets[0]} bytes for shape {shape} of {value['dtype']}")
    return Entry(name, value["dtype"], tuple(shape), offsets[0], offsets[1])


def torch_dtype(name: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[name]  # fmt: skip


def read_tensor(f: BinaryIO, header: Header, entry: Entry):
    """One tensor, read into its own memory (no mmap that would keep the whole shard resident)."""
    import torch

    f.seek(header.data_start + entry.begin)
    data = bytearray(entry.nbytes)
    got = f.readinto(data)
    if got != entry.nbytes:  # the file changed since its header was read
        raise LfxError(f"{header.path}: tensor '{entry.name}': read {got} of {entry.nbytes} bytes (the file is truncated)")
    if not data:
        return torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
    return torch.frombuffer(data, dtype=torch_dtype(entry.dtype)).reshape(entry.shape)


class ShardWriter:
    """Writes a safetensors file whose tensors (names, dtypes, shapes) are known up front."""

    def __init__(self, path: str | Path, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str]):
        header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
        offset = 0
        self.expected: list[tuple[str, int]] = []
        for name, dtype, shape in layout:
            size = math.prod(shape) * DTYPE_BYTES[dtype]
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.expected.append((name, size))
            offset += size
        self.total = offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors itself writes
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(blob)) + blob)
        self.index = 0

    def write(self, name: str, tensor) -> None:
        import torch

        expected_name, size = self.expected[self.index]
        data = tensor.contiguous().view(-1).view(torch.uint8).numpy()  # a view: written without a copy
        if name != expected_name or data.nbytes != size:
            raise RuntimeError(f"shard writer: got {name} ({data.nbytes} bytes), expected {expected_name} ({size} bytes)")
        self.file.write(data)
        self.index += 1

    def close(self) -> None:
        """Finish the file; it must hold every tensor of the layout."""
        self.file.close()
        if self.index != len(self.expected):
            raise RuntimeError(f"shard writer: {len(self.expected) - self.index} tensors were not written")

    def abort(self) -> None:
        """Close after an error, raising nothing: the error that stopped the writing is the one to see."""
        try:
            self.file.close()
        except OSError:
            pass

