"""Access to the C kernel library (cffi API-mode module ``lowbit.core._native``).

Set ``LOWBIT_NATIVE_PATH`` to the path of another build of the module (for
example the sanitizer build) to load that one instead.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any

from .errors import CancelledError, ContextFullError, InvalidArgumentError, NativeError

LB_OK = 0
LB_ERR_INVALID_ARGUMENT = 1
LB_ERR_UNSUPPORTED = 2
LB_ERR_OUT_OF_MEMORY = 3
LB_ERR_CONTEXT_FULL = 4
LB_ERR_CANCELLED = 5


def _load() -> ModuleType:
    override = os.environ.get("LOWBIT_NATIVE_PATH")
    if override:
        spec = importlib.util.spec_from_file_location("lowbit.core._native", override)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load the native library from {override}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from . import _native  # type: ignore[attr-defined]

    return _native


_mod = _load()
ffi: Any = _mod.ffi
lib: Any = _mod.lib


def last_error() -> str:
    """The message of the last failed library call made by this thread."""
    return ffi.string(lib.lb_last_error()).decode("utf-8", "replace")


def isa() -> str:
    """The kernel path in use: "scalar", "avx2", "avx512" or "neon".

    The library picks the best one the CPU supports; the environment variable
    ``LOWBIT_ISA`` (read on first use) or :func:`set_isa` choose another.
    """
    return ffi.string(lib.lb_isa()).decode("ascii")


def set_isa(name: str) -> None:
    """Switch the kernel path ("auto" for the best available).

    Raises:
        InvalidArgumentError: An unknown name.
        NativeError: A path this CPU or build lacks (the current one stays).
    """
    check(lib.lb_set_isa(name.encode("ascii")), "set_isa")


def check(status: int, what: str = "") -> None:
    """Raise the Python exception that matches an lb_status."""
    if status == LB_OK:
        return
    msg = last_error() or f"native call failed with status {status}"
    if what:
        msg = f"{what}: {msg}"
    if status == LB_ERR_INVALID_ARGUMENT:
        raise InvalidArgumentError(msg, status)
    if status == LB_ERR_CONTEXT_FULL:
        raise ContextFullError(msg)
    if status == LB_ERR_CANCELLED:
        raise CancelledError(msg)
    if status == LB_ERR_OUT_OF_MEMORY:
        raise MemoryError(msg)
    raise NativeError(msg, status)
