"""GPTQ on GGML block types.

GPTQ (Frantar et al., 2022) quantizes a weight matrix W (rows x n) column after
column and, after each step, corrects the columns not yet quantized so that the
layer's output on the calibration data, not the weights, stays close: it
minimises ``tr((W - Q) H (W - Q)^T)`` with ``H = X^T X / n`` the Gram matrix of
the layer's input.

GGML types encode blocks of columns together (one scale per 32 columns, or a
super-block of 256 with sub-block scales), so here a step is one block of
columns, the *group*: the C encoder quantizes the group's current columns of
all rows at once, weighting each column by ``H_jj`` in its scale search, and the
group's error is then propagated as the optimal update given that the whole
group is fixed. With ``H^-1 = U^T U`` (U the upper Cholesky factor) that update
is ``W_rest -= (W_g - Q_g) U_gg^-1 U_g,rest``: the per-column GPTQ update
``W_rest -= (w_j - q_j) / U_jj * U_j,rest`` run over the group's columns with
their codes already chosen, solved as one triangular system. Updates are
applied lazily, a few groups at a time, so the work is mostly matrix products.

The encoder's bytes for each group are kept and placed at the group's offset in
every row (a row of a GGML type is its blocks one after the other), so the file
holds exactly the Q that the error propagation assumed; encoding the finished
weights again could pick other scales.

PyTorch does the linear algebra. It is only needed for this method and is
imported when used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import QuantizeError

# Dampening added to the Hessian's diagonal, as a fraction of its mean: keeps the
# factorisation stable when activations are nearly collinear (the paper's 1%).
DAMP = 0.01
# Columns per lazy update of the trailing columns.
LAZY_COLUMNS = 256


def require_torch() -> Any:
    """The torch module.

    Raises:
        QuantizeError: PyTorch is not installed.
    """
    try:
        import torch
    except ImportError as e:
        raise QuantizeError(
            "GPTQ needs PyTorch, which is not installed: install it with `pip install torch` "
            "(the CPU build is enough), or use --method imatrix, which needs nothing extra"
        ) from e
    return torch


@dataclass(frozen=True)
class HessianFactor:
    """What GPTQ needs of one input's Hessian; shared by the matrices that input feeds.

    ``upper`` is U (torch float64, n x n) with ``(H + damping)^-1 = U^T U``;
    ``dead`` marks channels that were zero on every calibration token; ``importance``
    is the diagonal of H, the encoder's column weights.
    """

    upper: Any
    dead: np.ndarray
    importance: np.ndarray


def factor_hessian(hessian: np.ndarray, *, damp: float = DAMP, n_threads: int | None = None) -> HessianFactor:
    """Dampen and factor a Hessian ``X^T X / n`` (n x n, symmetric).

    Dead channels get a unit diagonal (their weights are zeroed when quantizing, as
    in the paper: they never contribute to the output). If the dampened matrix is
    still not positive definite in floating point, the dampening grows tenfold,
    a few times. ``n_threads``: torch threads (default: torch's own setting).

    Raises:
        QuantizeError: The Hessian is not square or not finite, or PyTorch is missing.
    """
    torch = require_torch()
    h = np.asarray(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or not np.isfinite(h).all():
        raise QuantizeError(f"GPTQ: the Hessian must be a finite square matrix, got shape {h.shape}")
    diag = np.diag(h).copy()
    dead = diag <= 0
    importance = np.maximum(diag, 0).astype(np.float32)
    ht = torch.from_numpy(h).clone()
    idx = torch.from_numpy(np.flatnonzero(dead))
    ht[idx, idx] = 1.0
    mean_diag = float(ht.diagonal().mean())
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, n_threads or threads))
    try:
        for attempt in range(4):
            hd = ht.clone()
            hd.diagonal().add_(damp * 10**attempt * mean_diag)
            low, info = torch.linalg.cholesky_ex(hd)
            if int(info) == 0:
                hinv = torch.cholesky_inverse(low)
                upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
                if int(info) == 0:
                    return HessianFactor(upper, dead, importance)
    finally:
        torch.set_num_threads(threads)
    raise QuantizeError("GPTQ: the Hessian is not positive definite even with 10x the usual dampening")


@dataclass(frozen=True)
class GPTQResult:
    """``data``: the encoded rows, uint8 (rows, row bytes); ``values``: what they decode to,
    float32 (rows, n), the Q that the error propagation used."""

    data: np.ndarray
    values: np.ndarray


def gptq_quantize(
    w: np.ndarray,
    qtype: int,
    factor: HessianFactor,
    *,
    lazy_columns: int = LAZY_COLUMNS,
    n_threads: int = 1,
) -> GPTQResult:
    """Quantize ``w`` (rows x n, float32) to a GGML block type with GPTQ error feedback.

    Columns go left to right, one block of the type (32 or 256 columns) at a time.

    Raises:
        QuantizeError: ``qtype`` is not a block type, the shapes do not fit, or
            PyTorch is missing.
        InvalidArgumentError: The weights are not finite.
    """
    from .quants import block_size, dequantize_rows, quantize_rows, row_bytes

    torch = require_torch()
    bs = block_size(qtype)
    rows, n = w.shape
    if bs <= 1 or n % bs:
        raise QuantizeError(f"GPTQ: rows of {n} columns are not whole blocks of type {qtype}")
    if factor.upper.shape != (n, n):
        raise QuantizeError(f"GPTQ: a Hessian of shape {tuple(factor.upper.shape)} for {n} columns")
    group_bytes = row_bytes(qtype, bs)
    lazy = max(bs, lazy_columns // bs * bs)
    data = np.empty((rows, row_bytes(qtype, n)), dtype=np.uint8)
    values = np.empty((rows, n), dtype=np.float32)
    threads = torch.get_num_threads()
    try:
        u = factor.upper
        wt = torch.from_numpy(np.asarray(w, dtype=np.float64)).clone()
        wt[:, torch.from_numpy(np.flatnonzero(factor.dead))] = 0.0
        for b0 in range(0, n, lazy):
            b1 = min(n, b0 + lazy)
            # The group steps are small and alternate with the encoder's threads:
            # one torch thread there, so that no idle worker spins against them.
            torch.set_num_threads(1)
            wb = wt[:, b0:b1].clone()
            err = torch.empty_like(wb)
            for g0 in range(0, b1 - b0, bs):
                g1 = g0 + bs
                c0 = b0 + g0
                group = np.ascontiguousarray(wb[:, g0:g1].numpy(), dtype=np.float32)
                imp = factor.importance[c0 : c0 + bs]
                enc = quantize_rows(qtype, group, importance=imp if imp.any() else None, n_threads=n_threads)
                q = dequantize_rows(qtype, enc, bs)
                gi = c0 // bs
                data[:, gi * group_bytes : (gi + 1) * group_bytes] = enc
                values[:, c0 : c0 + bs] = q
                # e solves e U_gg = W_g - Q_g; the group's columns of e are what the
                # per-column update would have divided by U_jj.
                e = torch.linalg.solve_triangular(
                    u[c0 : c0 + bs, c0 : c0 + bs], wb[:, g0:g1] - torch.from_numpy(q), upper=True, left=False
                )
                err[:, g0:g1] = e
                wb[:, g1:] -= e @ u[c0 : c0 + bs, b0 + g1 : b1]
            if b1 < n:
                torch.set_num_threads(max(1, n_threads))
                wt[:, b1:] -= err @ u[b0:b1, b1:]
    finally:
        torch.set_num_threads(threads)
    return GPTQResult(data, values)


def output_error(w: np.ndarray, q: np.ndarray, hessian: np.ndarray) -> float:
    """``tr((W - Q) H (W - Q)^T)``: the mean squared output error the quantization adds
    on the calibration inputs (summed over output channels)."""
    d = np.asarray(w, dtype=np.float64) - q
    return float(np.einsum("ij,ij->", d @ np.asarray(hessian, dtype=np.float64), d))


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and len(parts) > 2 and parts[1].isdigit() else None


class HessianStream:
    """Encodes a model's matrices with GPTQ, calibrating a layer at a time on demand.

    The calibration runs one layer further each time a tensor of the next layer is
    asked for, so only one layer's Gram matrices (and their factors) are held; ask
    in layer order, with the tensors outside the layers last (the output matrix's
    importance is known only after the last layer). Matrices without a Gram matrix
    (the output, or the tied token embeddings) get the importance-weighted encoding
    of ``imatrix``; those without any statistics (untied token embeddings) plain
    round to nearest.
    """

    def __init__(self, source: Any, tokens: list[int], *, damp: float = DAMP, cancel: Any = None) -> None:
        from .calibrate import collect_statistics

        self._stats_iter = collect_statistics(source, tokens, gram=True, cancel=cancel)
        self._damp = damp
        self._stats: dict[str, Any] = {}
        self._factors: dict[int, HessianFactor] = {}
        self._layer: int | None = None
        self._done = False

    def stats(self, name: str) -> Any:
        """The calibration statistics (``InputStats``) of a tensor, or None if it has none."""
        while name not in self._stats and not self._done:
            try:
                got, st = next(self._stats_iter)
            except StopIteration:
                self._done = True
                break
            layer = _layer_of(got)
            if layer != self._layer:
                self._stats.clear()
                self._factors.clear()
                self._layer = layer
            self._stats[got] = st
        return self._stats.get(name)

    def encode(self, name: str, w: np.ndarray, qtype: int, *, n_threads: int = 1) -> np.ndarray:
        """The encoded rows of tensor ``name`` (weights ``w``, rows x n float32) as ``qtype``.

        Raises:
            QuantizeError: See :func:`gptq_quantize`.
            CancelledError: Cancelled while calibrating.
        """
        from .quants import block_size, quantize_rows

        if block_size(qtype) <= 1:
            return quantize_rows(qtype, w, n_threads=n_threads)
        st = self.stats(name)
        if st is None:
            return quantize_rows(qtype, w, n_threads=n_threads)
        if st.gram is None:
            return quantize_rows(qtype, w, importance=st.mean_square, n_threads=n_threads)
        factor = self._factors.get(id(st))
        if factor is None:
            factor = self._factors[id(st)] = factor_hessian(st.gram, damp=self._damp, n_threads=n_threads)
        return gptq_quantize(w, qtype, factor, n_threads=n_threads).data
