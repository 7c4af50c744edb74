"""The peer: llama.cpp through ``llama-cpp-python``, for interop tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
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
    """llama.cpp's logits for every position of ``tokens`` (one sequence, from an empty cache)."""
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
