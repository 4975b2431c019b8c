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


def read_header(path: str | Path) -> Header:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            raw = json.loads(f.read(size))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LfxError(f"{path}: not a safetensors file ({type(err).__name__})") from None
    metadata = raw.pop("__metadata__", None) or {}
    entries = [Entry(name, v["dtype"], tuple(v["shape"]), *v["data_offsets"]) for name, v in raw.items()]
    entries.sort(key=lambda e: e.begin)
    return Header(path, entries, metadata, 8 + size)


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
    f.readinto(data)
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
        self.file.close()
        if self.index != len(self.expected):
            raise RuntimeError(f"shard writer: {len(self.expected) - self.index} tensors were not written")

