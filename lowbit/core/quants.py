"""Encode and decode rows of GGML tensor types with the kernel library.

Type ids are GGML's (``gguf.GGMLQuantizationType`` values work as they are).
Every function raises on a bad request (InvalidArgumentError for a bad shape,
size, type or value, NativeError for what the library cannot do).
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError
from .native import LB_ERR_INVALID_ARGUMENT, check, ffi, lib


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, LB_ERR_INVALID_ARGUMENT)


def block_size(qtype: int) -> int:
    """Elements per block of a type (1 for F32, F16 and BF16)."""
    bs = ffi.new("int64_t *")
    ts = ffi.new("size_t *")
    check(lib.lb_type_info(int(qtype), bs, ts))
    return int(bs[0])


def row_bytes(qtype: int, n: int) -> int:
    """Bytes of one row of n elements; n must be a positive multiple of the block size."""
    out = ffi.new("size_t *")
    check(lib.lb_row_size(int(qtype), int(n), out))
    return int(out[0])


def quantize_rows(
    qtype: int,
    x: np.ndarray,
    *,
    importance: np.ndarray | None = None,
    n_threads: int = 1,
) -> np.ndarray:
    """Encode each row of x into blocks of a weight type.

    x: 2-D float32, C-contiguous, shape (nrows, n_per_row), finite.
    importance: None, or n_per_row finite non-negative weights, one per column
    (for instance the mean squared activation that multiplies that column); the
    encoder then minimises the importance-weighted squared error, and is never
    worse by that measure than the encoding without importance.
    n_threads: threads to share the rows out to; the bytes do not depend on it.

    Returns uint8 of shape (nrows, row_bytes(qtype, n_per_row)). Without
    importance the bytes are those of the library's reference encoders (for
    Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 the same as gguf-py's quantize()).
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        raise _bad("quantize_rows: x must be a 2-D float32 numpy array")
    if not x.flags.c_contiguous:
        raise _bad("quantize_rows: x must be C-contiguous (use np.ascontiguousarray)")
    nrows, n = x.shape
    out = np.empty((nrows, row_bytes(qtype, n)), dtype=np.uint8)
    if nrows == 0:
        return out
    imp = ffi.NULL
    if importance is not None:
        w = np.ascontiguousarray(importance, dtype=np.float32)
        if w.shape != (n,):
            raise _bad(f"quantize_rows: importance has shape {w.shape}, expected ({n},)")
        imp = ffi.from_buffer("float[]", w)
    check(
        lib.lb_quantize_rows(
            int(qtype),
            ffi.from_buffer("float[]", x),
            nrows,
            n,
            imp,
            ffi.from_buffer(out),
            out.nbytes,
            int(n_threads),
        )
    )
    return out


def dequantize_rows(qtype: int, data: np.ndarray, n_per_row: int) -> np.ndarray:
    """Decode rows of a type to float32, shape (nrows, n_per_row).

    data: C-contiguous uint8 holding whole rows, e.g. the result of quantize_rows;
    its size must be a multiple of row_bytes(qtype, n_per_row).
    """
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise _bad("dequantize_rows: data must be a uint8 numpy array")
    if not data.flags.c_contiguous:
        raise _bad("dequantize_rows: data must be C-contiguous (use np.ascontiguousarray)")
    rb = row_bytes(qtype, n_per_row)
    if data.size % rb != 0:
        raise _bad(f"dequantize_rows: {data.size} bytes is not a whole number of {rb}-byte rows")
    nrows = data.size // rb
    out = np.empty((nrows, n_per_row), dtype=np.float32)
    if nrows == 0:
        return out
    check(
        lib.lb_dequantize(
            int(qtype), ffi.from_buffer(data), data.nbytes, ffi.from_buffer("float[]", out), out.size
        )
    )
    return out
