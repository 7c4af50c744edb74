"""Sensitivity-driven mixed precision under a size budget.

Each weight matrix's sensitivity to a type is measured, not guessed: the matrix
(a sample of its rows) is encoded and decoded with that type, and the error is
weighted by the calibration importance of every input channel. The result is
the matrix's relative output noise,

    nsr(T, type) = sum_j imp_j * sum_i (W_ij - Q_ij)^2 / sum_j imp_j * sum_i W_ij^2,

the expected energy of the error that the matrix adds to its output relative to
the energy of the output itself. The plan minimises the sum of these over all
matrices subject to the budget: start every matrix at its smallest type, then
repeatedly take the upgrade with the largest drop in noise per extra byte that
still fits.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType as QT

from .convert import SourceModel
from .errors import QuantizeError
from .quantize import BUDGET_TYPES, QuantizePlan, _plan, fallback_type, is_matrix, tensor_bytes

SAMPLE_ROWS = 256


def sample_rows(w: np.ndarray, n: int = SAMPLE_ROWS) -> np.ndarray:
    """At most ``n`` evenly spaced rows of ``w`` (all of them when it has fewer)."""
    if w.shape[0] <= n:
        return w
    idx = np.linspace(0, w.shape[0] - 1, n).round().astype(np.int64)
    return np.ascontiguousarray(w[idx])


def relative_error(w: np.ndarray, qtype: QT, importance: np.ndarray | None, *, n_threads: int = 1) -> float:
    """Importance-weighted relative squared error of encoding ``w`` (rows x n) as ``qtype``."""
    from .quants import dequantize_rows, quantize_rows

    imp = importance if importance is not None else np.ones(w.shape[1], dtype=np.float32)
    q = quantize_rows(int(qtype), w, importance=importance, n_threads=n_threads)
    d = dequantize_rows(int(qtype), q, w.shape[1])
    err = np.square(d - w, dtype=np.float64).sum(axis=0) @ imp
    ref = np.square(w, dtype=np.float64).sum(axis=0) @ imp
    return float(err / ref) if ref > 0 else 0.0


def tensor_sensitivities(
    source: SourceModel,
    importance: dict[str, np.ndarray],
    types: Collection[QT] | Mapping[str, Collection[QT]],
    *,
    n_sample: int = SAMPLE_ROWS,
    n_threads: int = 1,
    progress: Callable[[str, float, float | None, str], None] | None = None,
    stage: str = "measure",
    cancel: Any = None,
) -> dict[str, dict[QT, float]]:
    """nsr of every matrix at every usable type (fallbacks applied) of ``types``: the
    same types for all matrices, or a mapping from matrix name to its own types."""
    names = [n for n, t in source.tensors.items() if is_matrix(t)]
    out: dict[str, dict[QT, float]] = {}
    for i, name in enumerate(names):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if progress is not None:
            progress(stage, i, len(names), name)
        t = source.tensors[name]
        w = sample_rows(source.load(name).reshape(-1, t.shape[-1]), n_sample)
        wanted = types[name] if isinstance(types, Mapping) else types
        usable = sorted(
            {fallback_type(q, t.shape[-1]) for q in wanted}, key=lambda q: tensor_bytes(q, t.shape)
        )
        out[name] = {q: relative_error(w, q, importance.get(name), n_threads=n_threads) for q in usable}
    return out


def plan_budget(
    source: SourceModel,
    limit_bytes: int,
    importance: dict[str, np.ndarray],
    *,
    types: list[QT] | None = None,
    n_threads: int = 1,
    progress: Callable[[str, float, float | None, str], None] | None = None,
    cancel: Any = None,
) -> QuantizePlan:
    """Per-tensor types with the least total noise whose data fit in ``limit_bytes``.

    Raises:
        QuantizeError: Even the smallest types do not fit.
    """
    sens = tensor_sensitivities(
        source, importance, types or BUDGET_TYPES, n_threads=n_threads, progress=progress, cancel=cancel
    )
    chosen: dict[str, QT] = {n: QT.F32 for n in source.tensors}
    ladders: dict[str, list[QT]] = {}
    for name, by_type in sens.items():
        shape = source.tensors[name].shape
        ladder = sorted(by_type, key=lambda q: (tensor_bytes(q, shape), by_type[q]))
        # Drop rungs that cost more but are no better than a cheaper one.
        kept: list[QT] = []
        for q in ladder:
            if not kept or by_type[q] < by_type[kept[-1]]:
                kept.append(q)
        ladders[name] = kept
        chosen[name] = kept[0]
    plan = _plan(source, chosen)
    if plan.data_bytes > limit_bytes:
        raise QuantizeError(
            f"the budget of {limit_bytes / 2**20:.1f} MiB is below the smallest mixture "
            f"({plan.data_bytes / 2**20:.1f} MiB, {plan.bpw:.2f} bits per weight)"
        )
    used = plan.data_bytes
    step = dict.fromkeys(ladders, 0)
    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        k = step[name]
        ladder = ladders[name]
        if k + 1 >= len(ladder):
            return
        shape = source.tensors[name].shape
        gain = sens[name][ladder[k]] - sens[name][ladder[k + 1]]
        cost = tensor_bytes(ladder[k + 1], shape) - tensor_bytes(ladder[k], shape)
        heapq.heappush(heap, (-gain / max(cost, 1), name))

    for name in ladders:
        push(name)
    while heap:
        _, name = heapq.heappop(heap)
        k = step[name]
        shape = source.tensors[name].shape
        cost = tensor_bytes(ladders[name][k + 1], shape) - tensor_bytes(ladders[name][k], shape)
        if used + cost > limit_bytes:
            continue  # this upgrade does not fit; cheaper ones of other tensors still may
        used += cost
        step[name] = k + 1
        chosen[name] = ladders[name][k + 1]
        push(name)
    return _plan(source, chosen)
