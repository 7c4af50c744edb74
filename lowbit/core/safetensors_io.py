"""Read and write ``*.safetensors`` files with numpy, BF16 included.

The format (https://huggingface.co/docs/safetensors): an 8-byte little-endian
header length N, N bytes of JSON mapping tensor names to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets relative to the end of the header), then
the raw little-endian data. The ``safetensors`` package's numpy API cannot hold
BF16 (numpy has no such dtype) and its torch API would make torch a run-time
dependency, so Lowbit reads the few fields it needs itself, memory-maps the data
and checks every offset against the file size before trusting it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelFormatError

# dtype name -> (numpy dtype of the stored words, bytes per element)
_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bit patterns; see to_float32
    "F64": np.dtype("<f8"),
}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class SafeTensorInfo:
    """One tensor's entry in a safetensors header (shape in PyTorch order: rows first)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset
    nbytes: int


class SafeTensorsFile:
    """A validated, memory-mapped safetensors file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open and validate ``path``.

        Raises:
            ModelFormatError: The file is truncated, its header is not valid JSON, or a
                tensor's dtype, shape or offsets are inconsistent with the file.
            OSError: The file cannot be read.
        """
        self.path = Path(path)
        size = self.path.stat().st_size
        with self.path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(f"{self.path.name} is truncated: no safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise ModelFormatError(
                    f"{self.path.name} is truncated or not a safetensors file "
                    f"(header of {n} bytes in a file of {size})"
                )
            raw = f.read(n)
        try:
            header = json.loads(raw)
        except ValueError as e:
            raise ModelFormatError(f"{self.path.name}: the safetensors header is not valid JSON") from e
        if not isinstance(header, dict):
            raise ModelFormatError(f"{self.path.name}: the safetensors header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        base = 8 + n
        self.tensors: dict[str, SafeTensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = self._entry(name, entry, base, size)
        self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r") if size > base else None

    def _entry(self, name: str, entry: object, base: int, size: int) -> SafeTensorInfo:
        where = f"{self.path.name}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise ModelFormatError(f"{where} has a malformed header entry")
        dtype = entry.get("dtype")
        shape = entry.get("shape")
        offsets = entry.get("data_offsets")
        if dtype not in _DTYPES:
            raise ModelFormatError(f"{where} has dtype {dtype!r}; Lowbit reads F32, F16, BF16 and F64")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ModelFormatError(f"{where} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelFormatError(f"{where} has invalid data offsets {offsets!r}")
        begin, end = offsets
        nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
        if not 0 <= begin <= end or end - begin != nbytes:
            raise ModelFormatError(f"{where}: offsets {offsets} do not match its shape {shape} and {dtype}")
        if base + end > size:
            raise ModelFormatError(
                f"{where} ends at byte {base + end} but the file has only {size} bytes (truncated download?)"
            )
        return SafeTensorInfo(name, dtype, tuple(shape), base + begin, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The stored words of a tensor, shaped, without a copy (BF16 as uint16 bits)."""
        info = self.tensors[name]
        dt = _DTYPES[info.dtype]
        if info.nbytes == 0 or self._mmap is None:
            return np.zeros(info.shape, dtype=dt)
        return self._mmap[info.begin : info.begin + info.nbytes].view(dt).reshape(info.shape)

    def load_f32(self, name: str) -> np.ndarray:
        """A tensor converted to a new float32 array."""
        info = self.tensors[name]
        return to_float32(self.raw(name), info.dtype)

    def close(self) -> None:
        """Drop the memory map (arrays returned by raw() keep it alive while they exist)."""
        self._mmap = None


def to_float32(words: np.ndarray, dtype: str) -> np.ndarray:
    """Convert stored words of a safetensors dtype to float32 (exact for F16/BF16)."""
    if dtype == "BF16":
        return (words.astype(np.uint32) << 16).view(np.float32)
    return np.asarray(words, dtype=np.float32)


def float32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to BF16 (nearest, ties to even; NaN stays NaN) as uint16 bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Iterable[tuple[str, np.ndarray, str]],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write tensors to ``path`` (a new file; the caller handles atomic replacement).

    Args:
        path: Destination file.
        tensors: (name, float32 array, dtype) with dtype one of "F32", "F16", "BF16".
            The arrays are converted as they are written, one at a time.
        metadata: String pairs for the ``__metadata__`` entry.

    Raises:
        ValueError: An unknown dtype or a duplicated name.
        OSError: The file cannot be written (e.g. the disk is full).
    """
    items = list(tensors)
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, arr, dtype in items:
        if dtype not in ("F32", "F16", "BF16"):
            raise ValueError(f"cannot write dtype {dtype!r}")
        if name in header:
            raise ValueError(f"duplicate tensor name {name!r}")
        nbytes = arr.size * _DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, arr, dtype in items:
            if dtype == "BF16":
                words = float32_to_bf16_bits(arr)
            else:
                words = np.ascontiguousarray(arr, dtype=_DTYPES[dtype])
            f.write(words.tobytes())
