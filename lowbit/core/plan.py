"""What the quantize wizard shows and does: levels, their cost on this machine, and the run.

Before anything is quantized, :func:`describe_levels` gives every preset's exact size,
its estimated quality loss (:mod:`estimate`), and the file it would write without the
data, from which the memory it needs at a context (:func:`memory_needed`: what
:func:`fit.estimate_memory` will say of the finished file) and its decode speed
(:func:`decode_speed`: memory bandwidth over the weight bytes one token reads; an
estimate, as decoding never quite reaches the bandwidth) follow.
:func:`recommend` picks the level to suggest.

:func:`run_levels` is the wizard's run: quantize each chosen level into a folder,
measure all outputs against the source with the evaluator, and time a short greedy
generation of each. It reports one overall progress, so the job's ETA covers the
whole run, and a cancelled or failed run leaves none of its files behind.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .bench import decode_bytes_per_token
from .convert import SourceModel, open_source
from .evaluate import QUICK, CandidateResult, EvalReport, EvalSettings, evaluate
from .fit import FITS_BELOW, estimate_memory
from .gguf_file import GGUFFile, TensorInfo
from .quantize import QUANT_PRESETS, QuantizeResult, plan_preset, quantize_model, tensor_bytes

ProgressFn = Callable[[str, float, "float | None", str], None]

# Greedy tokens timed per output: enough for a stable rate, short enough to take a second.
SPEED_TOKENS = 32
SPEED_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class ModelShape:
    """What the wizard says about the source model itself."""

    name: str
    n_params: int
    n_ctx_train: int


@dataclass(frozen=True)
class Level:
    """One preset for one model: exact sizes and an estimated quality loss."""

    preset: str
    data_bytes: int  # tensor data; the file adds its metadata
    bpw: float
    kld_estimate: float  # predicted mean KLD: an estimate, not a measurement
    decode_bytes: int  # weight bytes one decode step reads
    # The file the preset would write, without its data: what fit and bench read of a file.
    file: GGUFFile | None = field(default=None, repr=False, compare=False)


def planned_file(source: SourceModel, preset: str) -> GGUFFile:
    """The GGUF a preset would write, as an opened file without tensor data.

    Its metadata and every tensor's type, shape and byte size are those of the real
    output, so :func:`fit.estimate_memory` and :func:`bench.decode_bytes_per_token`
    give for it what they will give for the finished file.
    """
    plan = plan_preset(source, preset)
    empty = np.empty(0, dtype=np.uint8)
    tensors = {}
    for name, t in source.tensors.items():
        qt = plan.types[name]
        tensors[name] = TensorInfo(
            name=name,
            type_id=int(qt),
            shape=tuple(reversed(t.shape)),  # GGUF order: the row length first
            offset=0,
            nbytes=tensor_bytes(qt, t.shape),
            data=empty,
        )
    return GGUFFile(
        path=source.path, size=plan.data_bytes, version=3, metadata=source.metadata(), tensors=tensors
    )


def level_of(source: SourceModel, preset: str, kld_estimate: float = math.nan) -> Level:
    """A preset's sizes for this model, from its per-tensor types (nothing is encoded)."""
    gf = planned_file(source, preset)
    data = sum(t.nbytes for t in gf.tensors.values())
    n_weights = sum(t.n_elements for t in source.tensors.values())
    return Level(preset, data, 8.0 * data / max(1, n_weights), kld_estimate, decode_bytes_per_token(gf), gf)


def describe_levels(
    src: str | Path,
    presets: Sequence[str] = QUANT_PRESETS,
    *,
    n_threads: int | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
) -> tuple[ModelShape, list[Level]]:
    """The model and every preset's level, with the instant (round-to-nearest) quality estimate.

    Args:
        src: A Hugging Face folder or an F32/F16/BF16 GGUF.
        presets: Which presets, in the order wanted.
        n_threads: Encoder threads for the estimate; default: physical cores.
        progress: Called with ("estimate", done, total, tensor name).
        cancel: An object with ``raise_if_cancelled()``.

    Returns:
        (the model, levels in the order of ``presets``).

    Raises:
        ModelNotFoundError, ModelFormatError, UnsupportedModelError, UnsafeCheckpointError,
        TokenizerError: The source cannot be used (as :func:`convert.open_source`).
        QuantizeError: An unknown preset.
        CancelledError: Cancelled.
    """
    from .estimate import estimate_presets
    from .model import default_threads, read_hparams

    with open_source(src) as source:
        levels = [level_of(source, p) for p in presets]
        hp = read_hparams(levels[0].file) if levels and levels[0].file else None
        estimates = estimate_presets(
            source, presets, n_threads=n_threads or default_threads(), progress=progress, cancel=cancel
        )
        shape = ModelShape(
            name=source.name,
            n_params=sum(t.n_elements for t in source.tensors.values()),
            n_ctx_train=hp.n_ctx_train if hp else 0,
        )
        return shape, [
            replace(lv, kld_estimate=e.kld_estimate) for lv, e in zip(levels, estimates, strict=True)
        ]


def memory_needed(
    level: Level, *, n_ctx: int, cache_type: str = "f16", n_threads: int, n_batch: int = 256
) -> int:
    """Bytes needed to run the level at a full context (weights, KV cache, buffers and the
    runtime), exactly as :func:`fit.estimate_memory` will count them for the finished file.

    Raises:
        ValueError: An unknown cache type, a context below 1, or a level without its planned file.
    """
    if level.file is None:
        raise ValueError(f"the level {level.preset} has no planned file")
    return estimate_memory(
        level.file, n_ctx=n_ctx, cache_type=cache_type, n_threads=n_threads, n_batch=n_batch
    ).total_bytes


def decode_speed(level: Level, bandwidth_gbs: float) -> float:
    """Estimated decode tokens/s: memory bandwidth (GB/s) over the bytes one token reads."""
    if bandwidth_gbs <= 0 or level.decode_bytes <= 0:
        return 0.0
    return bandwidth_gbs * 1e9 / level.decode_bytes


def recommend(levels: Sequence[Level], memory: Mapping[str, int], available_bytes: int) -> str | None:
    """The level with the best estimated quality whose memory need stays below
    ``FITS_BELOW`` of the available memory; ties go to the smaller file. None if none fits.

    Args:
        levels: The candidates.
        memory: Bytes each preset needs (see :func:`memory_needed`).
        available_bytes: Memory available now.
    """
    fitting = [lv for lv in levels if memory[lv.preset] <= FITS_BELOW * available_bytes]
    if not fitting:
        return None
    best = min(fitting, key=lambda lv: (_finite(lv.kld_estimate), lv.data_bytes))
    return best.preset


def _finite(x: float) -> float:
    return x if math.isfinite(x) else math.inf


def safe_stem(name: str) -> str:
    """A model name usable in a file name on every system."""
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "-", name).strip(".-")
    return stem or "model"


def output_path(folder: Path, model_name: str, label: str, taken: set[Path] | None = None) -> Path:
    """``<folder>/<model-name>.<label>.gguf``, or with ``-2``, ``-3``... when that exists
    (an earlier run's file may be in use; it is never overwritten)."""
    stem = f"{safe_stem(model_name)}.{label}"
    taken = taken or set()
    candidate = folder / f"{stem}.gguf"
    n = 2
    while candidate.exists() or candidate in taken or _incomplete_exists(candidate):
        candidate = folder / f"{stem}-{n}.gguf"
        n += 1
    return candidate


def _incomplete_exists(p: Path) -> bool:
    # quantize_model writes ".<name>.<pid>.incomplete" beside the output
    return p.parent.is_dir() and any(p.parent.glob(f".{p.name}.*.incomplete"))


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRequest:
    """What to make and how to measure it."""

    src: Path  # the full-precision model
    out_dir: Path  # where the outputs go (the library folder)
    model_name: str
    presets: tuple[str, ...]
    method: str = "rtn"
    calibration: Path | None = None  # None: the built-in text
    budget_mib: int | None = None  # also make the best mixture under this many MiB
    budget_preset: str = "Q4_K_M"  # the budget output's label in its metadata
    eval_settings: EvalSettings = QUICK
    eval_cache_dir: Path | None = None
    n_threads: int | None = None
    speed_tokens: int = SPEED_TOKENS

    @property
    def labels(self) -> list[str]:
        """Each output's label: its preset, or the budget's size."""
        extra = [budget_label(self.budget_mib)] if self.budget_mib else []
        return [*self.presets, *extra]


def budget_label(mib: int) -> str:
    return f"{mib}MiB"


@dataclass(frozen=True)
class LevelOutcome:
    """One output of a run, measured."""

    label: str
    path: Path
    file_bytes: int
    quantized: QuantizeResult
    result: CandidateResult  # measured against the source
    decode_tps: float  # measured: a short greedy generation

    @property
    def size_mib(self) -> float:
        return self.file_bytes / 2**20

    def evaluation_record(self, report: EvalReport) -> dict[str, Any]:
        """What the library keeps of this output's evaluation: the evaluator's keys
        (as ``lowbit eval --json`` prints them) plus the measured speed."""
        return {
            **self.result.to_dict(),
            "reference": report.reference,
            "text": report.text,
            "n_ctx": report.n_ctx,
            "n_chunks": report.n_chunks,
            "decode_tps": self.decode_tps,
            "method": self.quantized.method,
        }


@dataclass(frozen=True)
class RunOutcome:
    """Every output of a run and the evaluation report they were measured in."""

    outputs: list[LevelOutcome]
    report: EvalReport
    seconds: float
    request: RunRequest | None = field(default=None, compare=False)


def measure_speed(path: Path, *, n_threads: int | None, n_tokens: int, cancel: Any = None) -> float:
    """Decode tokens/s of a GGUF: ``n_tokens`` greedy tokens from an empty cache."""
    from .bench import benchmark

    # bandwidth 0: the roofline is not wanted here, and measuring it takes seconds
    r = benchmark(
        path,
        n_threads=n_threads,
        prompt_tokens=SPEED_PROMPT_TOKENS,
        gen_tokens=n_tokens,
        reps=1,
        bandwidth_gbs=0.0,
        cancel=cancel,
    )
    return r.decode_tps


# Shares of the overall progress: quantizing dominates, the evaluation runs every model.
_QUANTIZE_UNITS = 10.0
_EVAL_UNITS = 4.0
_SPEED_UNITS = 1.0


def run_levels(request: RunRequest, *, progress: ProgressFn | None = None, cancel: Any = None) -> RunOutcome:
    """Quantize each level, measure all against the source, then time each one's decoding.

    Progress is one overall count: ``progress(stage, done, total, message)`` with stage
    "quantize", "evaluate" or "speed" and ``done``/``total`` in units of the whole run.

    Args:
        request: What to make and how.
        progress: Called with the overall progress.
        cancel: An object with ``raise_if_cancelled()`` (e.g. engine.CancelToken).

    Returns:
        The outputs in the order of ``request.labels`` and the evaluation report.

    Raises:
        CancelledError: Cancelled; none of the run's files remain.
        QuantizeError, EvaluationError, DiskFullError, OSError, and what the source raises
        when opened: the run failed; none of its files remain.
    """
    t0 = time.monotonic()
    labels = request.labels
    if not labels:
        raise ValueError("choose at least one level")
    n = len(labels)
    total = n * (_QUANTIZE_UNITS + _EVAL_UNITS + _SPEED_UNITS) + _EVAL_UNITS
    report_fn: ProgressFn = progress or (lambda *a: None)
    request.out_dir.mkdir(parents=True, exist_ok=True)
    taken: set[Path] = set()
    paths: list[Path] = []
    for label in labels:
        p = output_path(request.out_dir, request.model_name, label, taken)
        taken.add(p)
        paths.append(p)
    written: list[Path] = []
    try:
        quantized: list[QuantizeResult] = []
        for i, (label, path) in enumerate(zip(labels, paths, strict=True)):
            base = i * _QUANTIZE_UNITS
            message = f"Quantizing to {label} ({i + 1} of {n})"
            report_fn("quantize", base, total, message)

            def on_quantize(
                stage: str,
                done: float,
                tot: float | None,
                msg: str,
                base: float = base,
                message: str = message,
            ) -> None:
                if stage == "quantize" and tot:
                    report_fn("quantize", base + _QUANTIZE_UNITS * min(1.0, done / tot), total, message)
                elif stage != "quantize":  # calibration or the budget's search come first
                    report_fn("quantize", base, total, f"{message}: {msg or stage}")

            budget = f"{request.budget_mib}MiB" if request.budget_mib and i == len(request.presets) else None
            r = quantize_model(
                request.src,
                path,
                preset=request.budget_preset if budget else label,
                method=request.method,
                calibration=request.calibration,
                budget=budget,
                n_threads=request.n_threads,
                progress=on_quantize,
                cancel=cancel,
            )
            written.append(r.path)
            quantized.append(r)
        eval_base = n * _QUANTIZE_UNITS
        eval_units = (n + 1) * _EVAL_UNITS
        report_fn("evaluate", eval_base, total, "Measuring quality against the source")

        def on_eval(stage: str, done: float, tot: float | None, _msg: str) -> None:
            if tot:
                frac = min(1.0, done / tot)
                report_fn(
                    "evaluate", eval_base + eval_units * frac, total, "Measuring quality against the source"
                )

        report = evaluate(
            request.src,
            paths,
            settings=request.eval_settings,
            n_threads=request.n_threads,
            cache_dir=request.eval_cache_dir,
            progress=on_eval,
            cancel=cancel,
        )
        speed_base = eval_base + eval_units
        outputs: list[LevelOutcome] = []
        for i, (label, r, cand) in enumerate(zip(labels, quantized, report.candidates, strict=True)):
            report_fn("speed", speed_base + i * _SPEED_UNITS, total, f"Measuring the speed of {label}")
            tps = measure_speed(
                r.path, n_threads=request.n_threads, n_tokens=request.speed_tokens, cancel=cancel
            )
            outputs.append(LevelOutcome(label, r.path, r.path.stat().st_size, r, cand, tps))
        report_fn("speed", total, total, "Done")
        return RunOutcome(outputs, report, time.monotonic() - t0, request)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def discard_outputs(outcome: RunOutcome) -> None:
    """Delete a run's files (outputs that were never added to the library)."""
    for o in outcome.outputs:
        o.path.unlink(missing_ok=True)
