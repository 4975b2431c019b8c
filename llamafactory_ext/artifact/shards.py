"""Safetensors shards: headers read with safetensors' own `safe_open` (it validates the header against the file),
tensors read with plain reads at the offsets of that validated header, written one tensor at a time by a
streaming writer (none exists upstream).

`safetensors.torch.save_file` needs every tensor of a shard in memory at once and serializes them
into one more buffer; a merge that streams (read a tensor, update it, write it, forget it) keeps its
peak at about the largest tensor. The format is the documented one: an 8-byte little-endian header
length, a JSON header (dtype, shape, data_offsets per tensor, optional __metadata__), then the data.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import LfxError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int = 0  # where its data starts in the file

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


@dataclass(frozen=True)
class Header:
    path: Path
    entries: list[Entry]
    metadata: dict[str, str]

    def shape(self, name: str) -> tuple[int, ...]:
        return next(e.shape for e in self.entries if e.name == name)


def problem(path: str | Path) -> str | None:
    """Why `path` is not a whole safetensors file (cut short, longer than its header, not one), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except SafetensorError as err:
        return f"cut short or damaged (safetensors: {' '.join(str(err).split()).removeprefix('Error while deserializing header: ')})"
    except OSError as err:
        return err.strerror or str(err)


@contextmanager
def open_shard(path: str | Path) -> Iterator[Any]:
    """safe_open on a shard, its problems as one line naming the file."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as err:
        why = " ".join(str(err).split()).removeprefix("Error while deserializing header: ")
        raise LfxError(f"{path}: not a whole safetensors file (safetensors: {why}; an interrupted download or copy? "
                       "fetch it again)") from None  # fmt: skip
    with handle as f:
        yield f


def read_header(path: str | Path) -> Header:
    """Names, dtypes and shapes of a shard's tensors, and its metadata (validated by safetensors)."""
    with open_shard(path) as f:
        with open(path, "rb") as raw:  # the data offsets, which safe_open checked but does not tell
            size = struct.unpack("<Q", raw.read(8))[0]
            offsets = {name: 8 + size + info["data_offsets"][0] for name, info in json.loads(raw.read(size)).items()
                       if name != "__metadata__"}  # fmt: skip
        entries = []
        for name in f.keys():
            piece = f.get_slice(name)
            dtype = piece.get_dtype()
            if dtype not in DTYPE_BYTES:
                raise LfxError(f"{path}: tensor '{name}': dtype {dtype} is not one lfx merge writes")
            entries.append(Entry(name, dtype, tuple(piece.get_shape()), offsets[name]))
        return Header(Path(path), entries, dict(f.metadata() or {}))


def read_into(file, entry: Entry, buffer):
    """`entry`'s tensor read from the open shard `file` into the start of `buffer` (a uint8 tensor at least
    entry.nbytes long): a plain read, so no page of the shard is mapped into the process and a buffer reused from
    tensor to tensor costs its page faults once."""
    view = memoryview(buffer[: entry.nbytes].numpy())
    done = 0
    while done < entry.nbytes:
        got = os.preadv(file.fileno(), [view[done:]], entry.offset + done)
        if got == 0:
            raise LfxError(f"{file.name}: cut short while reading tensor '{entry.name}'")
        done += got
    return buffer[: entry.nbytes].view(torch_dtype(entry.dtype)).view(entry.shape)


def torch_dtype(name: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}[name]  # fmt: skip


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
        self.file = open(path, "wb", buffering=0)  # unbuffered: tensors are written whole, copies go through the fd
        self._write(memoryview(struct.pack("<Q", len(blob)) + blob))
        self.index = 0

    def _write(self, data: memoryview) -> None:
        while data:
            data = data[self.file.write(data) :]

    def _next(self, name: str, nbytes: int) -> None:
        expected_name, size = self.expected[self.index]
        if name != expected_name or nbytes != size:
            raise RuntimeError(f"shard writer: got {name} ({nbytes} bytes), expected {expected_name} ({size} bytes)")

    def write(self, name: str, tensor) -> None:
        import torch

        data = tensor.contiguous().view(-1).view(torch.uint8).numpy()  # a view: written without a copy
        self._next(name, data.nbytes)
        self._write(memoryview(data).cast("B"))
        self.index += 1

    def copy(self, file, entry: Entry) -> None:
        """`entry`'s bytes copied unchanged from the open shard `file`, inside the kernel (sendfile): nothing is
        read into the process."""
        self._next(entry.name, entry.nbytes)
        offset, end = entry.offset, entry.offset + entry.nbytes
        while offset < end:
            try:
                sent = os.sendfile(self.file.fileno(), file.fileno(), offset, min(end - offset, 2**30))
            except OSError as err:
                if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK):  # macOS: sockets only
                    raise  # a full disk, a file size limit: the error itself
                sent = self._write_read(file, offset, min(end - offset, 2**24))  # no sendfile for these files
            if sent == 0:
                raise LfxError(f"{file.name}: cut short while reading tensor '{entry.name}'")
            offset += sent
        self.index += 1

    def _write_read(self, file, offset: int, size: int) -> int:
        data = os.pread(file.fileno(), size, offset)
        self._write(memoryview(data))
        return len(data)

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

