"""The peer: llama.cpp through ``llama-cpp-python``, for interop tests and benchmarks.

llama.cpp built for a CPU with AMX multiplies through its AMX buffer type, which crashes
(SIGSEGV in ``ggml_backend_amx_mul_mat``) on some machines with AMX (llama.cpp issue
#20824). So the peer computes in a process of its own in which the request for AMX state
is refused (``deny_amx``): ggml then says "AMX is not ready to be used!" and runs as on
any AVX-512 CPU, with its AVX-512 kernels and weight repacking.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import os
import platform
import struct
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # llama.cpp logs every tensor to stderr; keep test output readable.
    fd = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)
        os.close(devnull)


def deny_amx() -> None:
    """Make this thread, and threads it starts later, fail to request AMX tile state.

    A seccomp filter answers ``arch_prctl(ARCH_REQ_XCOMP_PERM, ...)`` with EPERM and lets
    every other call through. It cannot be undone, so call it only in a process that
    exists to run the peer. A no-op off x86-64 Linux.
    """
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return
    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_RET|K

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    prog = b"".join([
        op(ld, 0, 0, 4),                 # seccomp_data.arch
        op(jeq, 0, 4, 0xC000003E),       # not AUDIT_ARCH_X86_64: allow
        op(ld, 0, 0, 0),                 # seccomp_data.nr
        op(jeq, 0, 2, 158),              # not SYS_arch_prctl: allow
        op(ld, 0, 0, 16),                # low half of args[0]
        op(jeq, 1, 0, 0x1023),           # ARCH_REQ_XCOMP_PERM: deny
        op(ret, 0, 0, 0x7FFF0000),       # SECCOMP_RET_ALLOW
        op(ret, 0, 0, 0x00050000 | 1),   # SECCOMP_RET_ERRNO | EPERM
    ])  # fmt: skip

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    code = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(code, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) or libc.prctl(
        pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0
    ):
        raise OSError(ctypes.get_errno(), "could not install the seccomp filter that keeps llama.cpp off AMX")


@functools.cache
def _peer_process() -> ProcessPoolExecutor:
    # One process for the whole run, started clean ("spawn") so that the filter binds it alone.
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=deny_amx)


def quantize(src: Path, dst: Path, preset: str, *, n_threads: int = 2) -> None:
    """llama.cpp's own quantization (``llama_model_quantize``, no importance matrix)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = n_threads
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    with _quiet():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed with {rc} for {preset}")


def logits(path: Path, tokens: Sequence[int], *, n_threads: int = 2) -> np.ndarray:
    """llama.cpp's logits for every position of ``tokens`` (one sequence, from an empty cache).

    Computed in the peer's own process (see the module's docstring).
    """
    return _peer_process().submit(_logits_here, path, list(tokens), n_threads).result()


def _logits_here(path: Path, tokens: Sequence[int], n_threads: int) -> np.ndarray:
    import llama_cpp

    with _quiet():
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=max(64, len(tokens)),
            n_batch=len(tokens),
            n_ubatch=len(tokens),
            n_threads=n_threads,
            logits_all=True,
            verbose=False,
        )
        try:
            llm.eval(list(tokens))
            out = np.array(llm.scores[: len(tokens)], dtype=np.float32)
        finally:
            llm.close()
    return out
