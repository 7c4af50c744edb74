"""Quick accuracy preview: quantize a model to several presets and measure each.

The wizard's "measure" step. Every preset is quantized into a scratch folder and
scored against the full-precision model with the evaluator (:data:`evaluate.QUICK`
by default: a few hundred tokens, with standard errors so the uncertainty shows).
The scratch files are deleted afterwards unless ``keep_dir`` asks to keep them.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .evaluate import QUICK, EvalReport, EvalSettings, default_cache_dir, evaluate

ProgressFn = Callable[[str, float, float | None, str], None]


@dataclass(frozen=True)
class PreviewResult:
    """The evaluation of every preset, and where their files are if they were kept."""

    presets: list[str]
    report: EvalReport  # candidates in the order of ``presets``
    files: dict[str, Path]  # empty unless keep_dir was given
    quantize_seconds: float


def preview(
    src: str | Path,
    presets: Sequence[str],
    *,
    method: str = "rtn",
    settings: EvalSettings = QUICK,
    text_file: str | Path | None = None,
    n_threads: int | None = None,
    cache_dir: str | Path | None = None,
    keep_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
) -> PreviewResult:
    """Quantize ``src`` to each preset and measure it against ``src``.

    Args:
        src: The full-precision model: a Hugging Face folder or an F32/F16/BF16 GGUF.
        presets: Preset names (see :data:`quantize.PRESETS`).
        method: Quantization method ("rtn", "imatrix" or "gptq").
        settings: How much text to score (default: the quick preview).
        text_file: Evaluation text; default: the built-in one.
        n_threads: Threads for quantizing and evaluating.
        cache_dir: The evaluator's reference cache; the scratch folder goes beside it.
        keep_dir: Move the quantized files here instead of deleting them.
        progress: Called as (stage, done, total, message): "quantize" counts presets,
            then the evaluator's own stages.
        cancel: An object with ``raise_if_cancelled()``; nothing is left behind.

    Returns:
        The report and, with ``keep_dir``, the kept files.

    Raises:
        QuantizeError, EvaluationError, and whatever the source raises when opened.
        CancelledError: Cancelled.
    """
    from .quantize import quantize_model

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".preview-", dir=cache))
    seconds = 0.0
    try:
        files: list[Path] = []
        for i, preset in enumerate(presets):
            if progress is not None:
                progress("quantize", i, len(presets), f"Quantizing to {preset}")
            r = quantize_model(
                src,
                scratch / f"{preset}.gguf",
                preset=preset,
                method=method,
                n_threads=n_threads,
                cancel=cancel,
            )
            seconds += r.seconds
            files.append(r.path)
        if progress is not None:
            progress("quantize", len(presets), len(presets), "")
        report = evaluate(
            src,
            files,
            text_file=text_file,
            settings=settings,
            n_threads=n_threads,
            cache_dir=cache,
            progress=progress,
            cancel=cancel,
        )
        kept: dict[str, Path] = {}
        if keep_dir is not None:
            dest = Path(keep_dir)
            dest.mkdir(parents=True, exist_ok=True)
            for preset, f in zip(presets, files, strict=True):
                kept[preset] = Path(shutil.move(f, dest / f.name))
        return PreviewResult(list(presets), report, kept, seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
