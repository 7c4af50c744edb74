"""``lowbit self-check``: proves an installed Lowbit works, without a person watching.

Installer tests run it from the packaged app: it loads the native library, and with a
model it loads the GGUF and generates a fixed number of tokens greedily, ignoring the
end-of-generation token so that the count is exact. The GUI half (``--gui``) lives in
``lowbit.app.main`` to keep this module free of Qt.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import native
from .errors import LowbitError

PROMPT = "The three primary colours are"


def environment() -> dict[str, Any]:
    """What this Lowbit is and where it runs."""
    from lowbit import __version__

    return {
        "version": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "packaged": bool(getattr(sys, "frozen", False)),
        "isa": native.isa(),
        "torch_available": _has_torch(),
    }


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def generate_check(
    model_path: str | Path, n_tokens: int = 16, n_threads: int | None = None
) -> dict[str, Any]:
    """Load ``model_path`` and generate exactly ``n_tokens`` tokens greedily.

    Raises:
        LowbitError: The file does not load or fewer tokens came out.
    """
    from .engine import Engine, GenerationDone, TokenEvent
    from .model import Model

    t0 = time.perf_counter()
    model = Model.load(model_path, n_ctx=256, n_threads=n_threads)
    load_s = time.perf_counter() - t0
    try:
        engine = Engine(model)
        ids = engine.encode_prompt(PROMPT)
        tokens: list[int] = []
        stats = None
        # no stop tokens: an early end-of-generation must not shorten the check
        for ev in engine.generate(ids, max_tokens=n_tokens, stop_ids=frozenset()):
            if isinstance(ev, TokenEvent):
                tokens.append(ev.token_id)
            elif isinstance(ev, GenerationDone):
                stats = ev.stats
    finally:
        model.close()
    if stats is None or len(tokens) != n_tokens:
        raise LowbitError(f"generated {len(tokens)} of {n_tokens} tokens from {model_path}")
    return {
        "model": str(model_path),
        "load_s": round(load_s, 3),
        "tokens": tokens,
        "text": stats.text,
        "decode_tps": round(stats.decode_tps, 1),
    }
