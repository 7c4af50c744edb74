"""Instant quality estimate of every preset, before anything is quantized.

Measuring a preset's KL divergence means quantizing the model and running it
over a text; the wizard wants a number for every level at once. The estimate
comes from weight space alone: each matrix (a sample of its rows) is encoded
and decoded with the type the preset gives it, and its relative output noise

    nsr = sum_j imp_j * sum_i (W_ij - Q_ij)^2 / sum_j imp_j * sum_i W_ij^2

is measured, as the size-budget planner does (``mixture.relative_error``). The
noises of all matrices are summed into the preset's total noise ``S`` and
mapped to a KL divergence by ``KLD = floor * r + a * S**b``, fitted by least
squares in log space against KLDs measured with the evaluator. The floor is what
the engine's own 8-bit rounding of activations costs even when the weights are
exact; r is the share of the ffn_down weights whose inputs are rounded so (the
engine gives Q8_0 weights 16-bit inputs and float weights float ones). Only
ffn_down counts: it reads the SwiGLU output, whose outliers make 8-bit rounding
expensive, and a fit with a floor per role puts the whole floor there (log RMS
error 0.18 against 0.25 with r over every matrix). The power law is the weights'
share. Every output that carries the number calls it an estimate: it ranks the
presets and gives the order of magnitude, while the measurement in the report
is the truth.

The constants come from SmolLM2-135M-Instruct, thirteen presets in
round-to-nearest mode, measured on 6 chunks of 256 tokens of the built-in
evaluation text: log RMS error 0.18 (predictions within about 20%), and the
same ranking as the measurement but for one near-tie (Spearman 0.99). The
largest misses are Q6_K (estimated 1.4 times too low) and Q3_K_M (1.4 times
too high). ``python -m tests.bench_estimate`` measures again, refits and prints
the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .convert import SourceModel
from .quantize import QUANT_PRESETS, is_matrix, plan_preset

# KLD = FIT_FLOOR * r + FIT_A * S ** FIT_B (see the module docstring).
FIT_FLOOR = 0.0020
FIT_A = 0.167
FIT_B = 0.966

# Weight types whose inputs the engine does not round to 8 bits: float weights take
# float activations, Q8_0 16-bit ones (the library's traits table, vec_dot_type).
_WIDE_ACTIVATION_TYPES = frozenset({"F32", "F16", "BF16", "Q8_0"})

ProgressFn = Callable[[str, float, float | None, str], None]


@dataclass(frozen=True)
class PresetEstimate:
    """A preset's size (exact) and its quality loss (an estimate)."""

    preset: str
    data_bytes: int
    bpw: float
    noise: float  # S: the summed relative output noise of all matrices
    act8_share: float  # r: the share of ffn_down weights whose inputs are rounded to 8 bits
    kld_estimate: float  # predicted mean KLD against full precision: an estimate, not a measurement

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "weights_mib": round(self.data_bytes / 2**20, 3),  # tensor data; the file adds its metadata
            "bpw": round(self.bpw, 4),
            "noise": self.noise,
            "kld_estimate": self.kld_estimate,
            "estimate": True,
        }


def kld_from_noise(
    noise: float,
    act8_share: float = 1.0,
    *,
    floor: float = FIT_FLOOR,
    a: float = FIT_A,
    b: float = FIT_B,
) -> float:
    """The fitted map from summed weight noise (and the 8-bit activation share) to mean KLD."""
    return floor * act8_share + (a * noise**b if noise > 0 else 0.0)


def act8_share(types: dict[str, Any], source: SourceModel) -> float:
    """The share of the ffn_down weights (of every matrix where a model has none) whose
    inputs the engine rounds to 8 bits.

    Args:
        types: A plan's type (a GGML type with a ``name``) per tensor name.
        source: The model, for the matrices' sizes.
    """
    matrices = [n for n in types if n in source.tensors and is_matrix(source.tensors[n])]
    down = [n for n in matrices if n.endswith("ffn_down.weight")]
    total = eight = 0
    for name in down or matrices:
        qtype = types[name]
        n = int(np.prod(source.tensors[name].shape))
        total += n
        eight += n if qtype.name not in _WIDE_ACTIVATION_TYPES else 0
    return eight / total if total else 0.0


def fit_noise_model(
    noise: Sequence[float], kld: Sequence[float], share: Sequence[float] | None = None, *, steps: int = 400
) -> tuple[float, float, float]:
    """Fit ``kld = floor * share + a * noise**b``: least squares in log space.

    For each floor on a grid that keeps every ``kld - floor * share`` positive,
    ``log(kld - floor * share)`` is fitted linearly in ``log noise``; the floor whose
    fit has the least log error wins.

    Args:
        noise: Each preset's summed weight noise S.
        kld: Each preset's measured mean KLD.
        share: Each preset's 8-bit activation share r; None: 1 for all.

    Returns:
        (floor, a, b).

    Raises:
        ValueError: Fewer than three presets with positive noise and KLD.
    """
    s = np.asarray(noise, dtype=np.float64)
    k = np.asarray(kld, dtype=np.float64)
    r = np.ones_like(s) if share is None else np.asarray(share, dtype=np.float64)
    ok = (s > 0) & (k > 0)
    s, k, r = s[ok], k[ok], r[ok]
    if len(s) < 3:
        raise ValueError("a fit needs at least three presets with positive noise and KLD")
    top = float(np.min(k[r > 0] / r[r > 0])) if (r > 0).any() else 0.0
    best: tuple[float, float, float, float] | None = None
    for floor in np.linspace(0.0, top, steps, endpoint=False):
        b, log_a = np.polyfit(np.log(s), np.log(k - floor * r), 1)
        pred = floor * r + np.exp(log_a) * s**b
        err = float(np.mean((np.log(pred) - np.log(k)) ** 2))
        if best is None or err < best[0]:
            best = (err, float(floor), float(np.exp(log_a)), float(b))
    assert best is not None
    return best[1], best[2], best[3]


def estimate_presets(
    source: SourceModel,
    presets: Sequence[str] = QUANT_PRESETS,
    *,
    importance: dict[str, np.ndarray] | None = None,
    n_sample: int = 256,
    n_threads: int = 1,
    progress: ProgressFn | None = None,
    cancel: Any = None,
) -> list[PresetEstimate]:
    """Size and estimated KLD of each preset for this model.

    Each matrix is read once and encoded once per distinct type the presets use,
    on an evenly spaced sample of its rows, so the whole table costs about as much
    as reading the model.

    Args:
        source: The full-precision model.
        presets: Which presets (names of :data:`quantize.PRESETS`).
        importance: Per-matrix input importance from calibration; None weights
            every input channel equally (round-to-nearest).
        n_sample: Rows sampled per matrix.
        n_threads: Encoder threads.
        progress: Called with ("estimate", done, total, tensor name).
        cancel: An object with ``raise_if_cancelled()``.

    Returns:
        One estimate per preset, in the order given.
    """
    from .mixture import tensor_sensitivities

    plans = {p: plan_preset(source, p) for p in presets}
    names = [n for n, t in source.tensors.items() if is_matrix(t)]
    types = {n: {plan.types[n] for plan in plans.values()} for n in names}
    sens = tensor_sensitivities(
        source,
        importance or {},
        types,
        n_sample=n_sample,
        n_threads=n_threads,
        progress=progress,
        stage="estimate",
        cancel=cancel,
    )
    noise = {p: sum(sens[n][plan.types[n]] for n in names) for p, plan in plans.items()}
    share = {p: act8_share(plan.types, source) for p, plan in plans.items()}
    if progress is not None:
        progress("estimate", len(names), len(names), "")
    return [
        PresetEstimate(
            p, plans[p].data_bytes, plans[p].bpw, noise[p], share[p], kld_from_noise(noise[p], share[p])
        )
        for p in presets
    ]


def estimate(
    src: Any,
    presets: Sequence[str] = QUANT_PRESETS,
    *,
    method: str = "rtn",
    calibration: Any = None,
    n_threads: int | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
) -> list[PresetEstimate]:
    """:func:`estimate_presets` for a model on disk (a Hugging Face folder or a float GGUF).

    With ``method`` "imatrix" or "gptq" the calibration text is run first and the
    noise is weighted by its activations, as those methods weight their search;
    that takes seconds to minutes instead of the instant round-to-nearest estimate.

    Raises:
        QuantizeError: Unknown preset or method.
        ModelNotFoundError, ModelFormatError, UnsupportedModelError, UnsafeCheckpointError,
        TokenizerError: The source cannot be used.
    """
    from .convert import open_source
    from .errors import QuantizeError
    from .model import default_threads
    from .quantize import METHODS, PRESETS, calibrate

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise QuantizeError(f"unknown preset {unknown[0]!r}; choose from {', '.join(PRESETS)}")
    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    with open_source(src) as source:
        importance = None
        if method != "rtn":
            _, importance = calibrate(source, calibration, progress, cancel)
        return estimate_presets(
            source,
            presets,
            importance=importance,
            n_threads=n_threads or default_threads(),
            progress=progress,
            cancel=cancel,
        )
