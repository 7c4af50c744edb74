"""Open a GGUF file and check it before any native code sees its bytes.

The header, metadata and tensor table are parsed here with every count, length
and offset checked against the bytes that remain, so that a truncated or
hostile file is refused with a message instead of being read out of bounds or
making the parser allocate what the file only claims to hold. Tensor data stay
in a read-only memory map and reach the kernel library without a copy.

The layout is GGUF versions 2 and 3 as specified in ggml's ``docs/gguf.md``:
little-endian; strings are a uint64 length and UTF-8 bytes; arrays a uint32
element type, a uint64 count and the elements. Parsing is written out rather
than left to the ``gguf`` package's reader because that reader turns every
string of a 100k-token vocabulary into numpy objects, which made opening a
small model take seconds.
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from .native import ffi, lib

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8  # no model key nests at all; a hostile file could nest until Python's stack runs out

# GGUF metadata value types (the file format's ids).
T_UINT8, T_INT8, T_UINT16, T_INT16, T_UINT32, T_INT32, T_FLOAT32, T_BOOL = range(8)
T_STRING, T_ARRAY, T_UINT64, T_INT64, T_FLOAT64 = range(8, 13)

# Fixed-size scalar types: struct code and numpy dtype.
_SCALARS: dict[int, tuple[str, str]] = {
    T_UINT8: ("<B", "<u1"), T_INT8: ("<b", "<i1"), T_UINT16: ("<H", "<u2"), T_INT16: ("<h", "<i2"),
    T_UINT32: ("<I", "<u4"), T_INT32: ("<i", "<i4"), T_FLOAT32: ("<f", "<f4"), T_BOOL: ("<?", "<u1"),
    T_UINT64: ("<Q", "<u8"), T_INT64: ("<q", "<i8"), T_FLOAT64: ("<d", "<f8"),
}  # fmt: skip

# GGML type ids -> names, for messages (the ids are the file format's).
TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip


def type_name(type_id: int) -> str:
    """Human name of a GGML type id ("type 99" when unknown)."""
    return TYPE_NAMES.get(type_id, f"type {type_id}")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file, checked against the file's bounds."""

    name: str
    type_id: int
    shape: tuple[int, ...]  # GGML order: shape[0] is the row length
    offset: int  # absolute byte offset in the file
    nbytes: int
    data: np.ndarray  # uint8 view into the memory map

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def drop_pages(t: TensorInfo) -> None:
    """Take a tensor's pages of the file mapping out of this process's resident memory.

    For a tensor the engine no longer reads from the file (it keeps a repacked
    copy): a later read would fault the pages back in from the page cache, so
    nothing is lost. Does nothing where the OS has no ``madvise``.
    """
    base = t.data
    while base is not None and not isinstance(base, np.memmap):
        base = base.base
    mm = getattr(base, "_mmap", None)  # the mapping starts at file offset 0
    if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = -(-t.offset // page) * page  # whole pages inside the tensor only
    end = (t.offset + t.nbytes) // page * page
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)


@dataclass(frozen=True)
class GGUFFile:
    """A validated GGUF file: its metadata as plain Python values and its tensors."""

    path: Path
    size: int
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    # GGUF value type ids of each metadata key (element type last for arrays), so
    # that the metadata can be written back with the same types.
    value_types: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def type_counts(self) -> Counter[str]:
        """How many tensors there are of each type."""
        return Counter(t.type_name for t in self.tensors.values())

    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())


def _row_bytes(type_id: int, n: int) -> int | None:
    out = ffi.new("size_t *")
    if lib.lb_row_size(type_id, n, out) != 0:
        return None
    return int(out[0])


class _Cursor:
    """Reads little-endian values from a buffer, refusing to step past its end."""

    def __init__(self, buf: memoryview, name: str) -> None:
        self.buf = buf
        self.pos = 0
        self.name = name

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ModelFormatError(
                f"{self.name} is truncated or damaged: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {len(self.buf) - self.pos} left"
            )

    def unpack(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        v = struct.unpack_from(code, self.buf, self.pos)[0]
        self.pos += size
        return v

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", 4, what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", 8, what))

    def raw_string(self, what: str) -> bytes:
        n = self.u64(what)
        self.need(n, what)
        b = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return b

    def string(self, what: str) -> str:
        # Some converters wrote vocabularies that are not valid UTF-8; a replacement
        # character is better than refusing the whole file.
        return self.raw_string(what).decode("utf-8", errors="replace")

    def _strings(self, count: int, what: str) -> list[str]:
        # The vocabulary loop: a hundred thousand strings, so no method calls per item.
        buf, pos, end = self.buf, self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        out = []
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self.need(8, what)
            (n,) = unpack(buf, pos)
            pos += 8
            if n > end - pos:
                self.pos = pos
                self.need(n, what)
            out.append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out

    def value(self, vtype: int, key: str) -> tuple[Any, tuple[int, ...]]:
        """One metadata value and its type ids (element types follow ARRAY)."""
        if vtype == T_STRING:
            return self.string(f"the value of {key!r}"), (T_STRING,)
        if vtype in _SCALARS:
            code, _ = _SCALARS[vtype]
            return self.unpack(code, struct.calcsize(code), f"the value of {key!r}"), (vtype,)
        if vtype == T_ARRAY:
            return self.array(key)
        raise ModelFormatError(f"{self.name}: metadata key {key!r} has an unknown value type {vtype}")

    def array(self, key: str, depth: int = 0) -> tuple[list[Any], tuple[int, ...]]:
        if depth > MAX_ARRAY_NESTING:
            raise ModelFormatError(
                f"{self.name}: metadata key {key!r} nests arrays more than {MAX_ARRAY_NESTING} deep"
            )
        etype = self.u32(f"the array type of {key!r}")
        count = self.u64(f"the array length of {key!r}")
        what = f"the {count} elements of {key!r}"
        if etype in _SCALARS:
            _, dtype = _SCALARS[etype]
            n = count * np.dtype(dtype).itemsize
            self.need(n, what)
            values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += n
            out = values.astype(bool).tolist() if etype == T_BOOL else values.tolist()
            return out, (T_ARRAY, etype)
        if etype == T_STRING:
            # Each element is at least its 8-byte length: check before looping so a
            # claimed count of 2^60 fails at once.
            self.need(8 * count, what)
            return self._strings(count, what), (T_ARRAY, T_STRING)
        if etype == T_ARRAY:
            # Nested arrays (no model key uses them) come back flattened.
            self.need(12 * count, what)
            flat: list[Any] = []
            inner: tuple[int, ...] = ()
            for _ in range(count):
                vals, inner = self.array(key, depth + 1)
                flat.extend(vals)
            return flat, (T_ARRAY, *inner) if inner else (T_ARRAY, T_ARRAY)
        raise ModelFormatError(f"{self.name}: metadata key {key!r} has an unknown array type {etype}")


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file.

    Args:
        path: The file to open.

    Returns:
        The parsed file; tensor data are views into a read-only memory map.

    Raises:
        ModelNotFoundError: The path does not exist.
        ModelFormatError: Not a GGUF file, or damaged: truncated, tensor data
            outside the file, bad shapes or offsets.
        UnsupportedModelError: A tensor type that Lowbit cannot decode.
    """
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}")
    if p.is_dir():
        raise ModelFormatError(f"{p} is a folder, not a GGUF file")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
    if head[:4] != GGUF_MAGIC:
        raise ModelFormatError(f"{p.name} is not a GGUF file (it does not start with 'GGUF')")
    if size < 24:
        raise ModelFormatError(f"{p.name} is truncated: {size} bytes is too short for a GGUF header")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in (2, 3):
        raise ModelFormatError(f"{p.name} is GGUF version {version}; versions 2 and 3 are supported")

    # np.memmap keeps the mapping alive for as long as any tensor view exists.
    mm = np.memmap(p, dtype=np.uint8, mode="r").view(np.ndarray)
    cur = _Cursor(memoryview(mm), p.name)
    cur.pos = 8
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    # Each key-value pair takes at least 12 bytes, each tensor entry at least 28.
    cur.need(12 * n_kv + 28 * n_tensors, f"{n_kv} metadata entries and {n_tensors} tensor entries")

    metadata: dict[str, Any] = {}
    value_types: dict[str, tuple[int, ...]] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        if key in metadata:
            raise ModelFormatError(f"{p.name} has metadata key {key!r} twice")
        vtype = cur.u32(f"the type of {key!r}")
        metadata[key], value_types[key] = cur.value(vtype, key)

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFormatError(f"{p.name}: general.alignment {alignment!r} is not a power of two")

    entries = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.u32(f"the dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFormatError(f"tensor {name!r} has {n_dims} dimensions; GGUF allows 1 to {MAX_DIMS}")
        shape = tuple(cur.u64(f"the shape of {name!r}") for _ in range(n_dims))
        type_id = cur.u32(f"the type of {name!r}")
        offset = cur.u64(f"the data offset of {name!r}")
        entries.append((name, shape, type_id, offset))
    data_start = -(-cur.pos // alignment) * alignment

    tensors: dict[str, TensorInfo] = {}
    for name, shape, type_id, rel in entries:
        if name in tensors:
            raise ModelFormatError(f"{p.name} names tensor {name!r} twice")
        if any(d <= 0 for d in shape) or max(shape) >= 1 << 62:
            raise ModelFormatError(f"tensor {name!r} has an invalid shape {list(shape)}")
        rows = 1
        for d in shape[1:]:
            rows *= d
        row = _row_bytes(type_id, shape[0])
        if row is None:
            if not lib.lb_type_is_supported(type_id):
                raise UnsupportedModelError(
                    f"tensor {name!r} has type {type_name(type_id)}, which Lowbit cannot run yet"
                )
            raise ModelFormatError(
                f"tensor {name!r}: a row of {shape[0]} elements is not a whole number of "
                f"{type_name(type_id)} blocks"
            )
        nbytes = row * rows
        if rel % alignment:
            raise ModelFormatError(f"tensor {name!r}: data offset {rel} is not a multiple of {alignment}")
        offset = data_start + rel
        if offset + nbytes > size:
            raise ModelFormatError(
                f"{p.name} is truncated or damaged: tensor {name!r} needs bytes {offset}..{offset + nbytes} "
                f"but the file has {size}"
            )
        tensors[name] = TensorInfo(name, type_id, shape, offset, nbytes, mm[offset : offset + nbytes])

    return GGUFFile(
        path=p, size=size, version=version, metadata=metadata, tensors=tensors, value_types=value_types
    )
