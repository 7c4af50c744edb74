"""Open a GGUF file and check it before any native code sees its bytes.

The file is read with the ``gguf`` package, whose reader memory-maps it; tensor
data stays in the mapping and is handed to the kernel library without a copy.
Every tensor's type, shape, offset and byte size is checked here against the
file's size, so that a truncated or hostile file is refused with a message
instead of being read out of bounds.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelFormatError, ModelNotFoundError, UnsupportedModelError
from .native import ffi, lib

GGUF_MAGIC = b"GGUF"

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
    import gguf  # the format's own library; imported here to keep start-up light

    from .gguf_meta import read_metadata

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

    try:
        reader = gguf.GGUFReader(p, "r")
    except ValueError as e:
        if "GGMLQuantizationType" in str(e):
            raise UnsupportedModelError(f"{p.name} contains a tensor type Lowbit does not know: {e}") from e
        raise ModelFormatError(f"{p.name} is damaged or truncated: {e}") from e
    except (IndexError, KeyError, TypeError, OverflowError, struct.error, UnicodeDecodeError, OSError) as e:
        raise ModelFormatError(f"{p.name} is damaged or truncated ({type(e).__name__}: {e})") from e

    try:
        metadata = read_metadata(reader)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{p.name} has unreadable metadata: {e}") from e

    tensors: dict[str, TensorInfo] = {}
    for t in reader.tensors:
        name = str(t.name)
        if name in tensors:
            raise ModelFormatError(f"{p.name} names tensor {name!r} twice")
        type_id = int(t.tensor_type)
        shape = tuple(int(d) for d in t.shape)
        if not shape or any(d <= 0 for d in shape):
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
        offset = int(t.data_offset)
        if offset < 0 or offset + nbytes > size:
            raise ModelFormatError(
                f"{p.name} is truncated or damaged: tensor {name!r} needs bytes {offset}..{offset + nbytes} "
                f"but the file has {size}"
            )
        data = np.asarray(t.data).reshape(-1).view(np.uint8)
        if data.nbytes != nbytes:
            raise ModelFormatError(
                f"tensor {name!r}: the file holds {data.nbytes} bytes of data, its shape needs {nbytes}"
            )
        tensors[name] = TensorInfo(name, type_id, shape, offset, nbytes, data)

    value_types = {k: tuple(int(t) for t in f.types) for k, f in reader.fields.items()}
    return GGUFFile(
        path=p, size=size, version=version, metadata=metadata, tensors=tensors, value_types=value_types
    )
