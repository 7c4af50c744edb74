"""How far quantized models ("candidates") are from their full-precision reference.

The metrics are those of llama.cpp's ``llama-perplexity --kl-divergence``, computed the
same way:

* The text is tokenized once with the reference's tokenizer, adding BOS if the model
  adds BOS (llama.cpp tokenizes with ``add_special = true``).
* The tokens are cut into consecutive chunks of ``n_ctx`` tokens (a remainder shorter
  than a chunk is dropped); with ``n_chunks`` set, only the first ``n_chunks`` are used,
  like llama.cpp's ``--chunks`` (or, for the quick preview, chunks spread evenly over
  the text, so that a mixed text is sampled in several places).
* Each chunk is evaluated from an empty KV cache. If the model adds BOS, the chunk's
  first token is *replaced* by BOS (not shifted), as llama.cpp does; the replaced token
  is never scored, and for the first chunk it already is BOS.
* Only the second half of each chunk is scored: the logits at positions
  ``n_ctx // 2 .. n_ctx - 2`` predict tokens ``n_ctx // 2 + 1 .. n_ctx - 1``, so each
  chunk scores ``n_ctx - 1 - n_ctx // 2`` tokens and every scored token has at least
  ``n_ctx // 2`` tokens of context.

Unlike llama.cpp, which refuses texts shorter than two chunks, one chunk is enough here.

Per scored token, with P the reference's and Q the candidate's next-token distribution:
KL(P || Q), whether both put the same token on top, the negative log-likelihoods of the
correct token under each (for the perplexities), and Δp = Q(correct) - P(correct).
Standard errors are those of the means over tokens (llama.cpp's formulas).

The reference's distributions are computed once and cached on disk in a compact form:
per scored token, the k most probable tokens and their log-probabilities, the probability
of all other tokens (the "tail"), s tokens drawn from the tail, the log-probability of the
correct token and the most probable token. With P_tail and Q_tail the two models'
distributions restricted to the tail and renormalised, the KL divergence splits exactly as

    KL = sum_{i in top k} p_i log(p_i / q_i) + p_rest log(p_rest / q_rest)     (the bound)
         + p_rest * KL(P_tail || Q_tail)

where q_rest is the candidate's probability outside the reference's top k. The first line
alone is a lower bound (merging tokens never increases a KL divergence, by the log-sum
inequality), exact when k covers the vocabulary. It is not tight for small models: with
k = 64 it is 15-20 % below the full value on SmolLM2-135M, whose tails hold ~9 % of the
probability. So the last term is estimated from the s tail draws, taken at the midpoints
of s equal slices of the tail's probability (in token-id order), as the mean of
w - 1 - log w with w = q_tail / p_tail, a quantity whose expectation under P_tail is
exactly KL(P_tail || Q_tail) and which is never negative. With k = 64 and s = 64 (1 KiB
per scored token) the mean KL divergence is within about 1 % of the full-vocabulary
value on SmolLM2-135M; ``TokenScores.kld_bound`` keeps the bound alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .engine import CancelToken
from .errors import EvaluationError, ModelNotFoundError
from .gguf_file import GGUFFile, open_gguf
from .model import Model, read_hparams

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_TOP_K = 64
DEFAULT_TAIL_SAMPLES = 64
BUILTIN_TEXT = "eval.txt"  # in lowbit/resources/texts/

#: Reports progress: (stage, done, total or None, message). JobContext.progress fits.
ProgressFn = Callable[[str, float, float | None, str], None]

_ROW_BLOCK_ELEMENTS = 1 << 22  # rows of logits handled at once: bounds float64 temporaries to ~32 MiB
_HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class EvalSettings:
    """How much text to evaluate and how the reference is stored.

    Attributes:
        n_ctx: Tokens per chunk (the context each chunk is evaluated in).
        n_chunks: Use at most this many chunks; None: all.
        top_k: Reference log-probabilities kept exactly per scored token.
        tail_samples: Reference tokens drawn from beyond the top k per scored token, for
            the part of the KL divergence that the top k miss; 0 leaves the lower bound.
        spread: Take the chunks evenly spaced over the text instead of from its start.
    """

    n_ctx: int = 512
    n_chunks: int | None = None
    top_k: int = DEFAULT_TOP_K
    tail_samples: int = DEFAULT_TAIL_SAMPLES
    spread: bool = False

    def __post_init__(self) -> None:
        if not 8 <= self.n_ctx <= 1 << 20:
            raise EvaluationError(f"the chunk length must be 8..{1 << 20} tokens, not {self.n_ctx}")
        if self.n_chunks is not None and self.n_chunks < 1:
            raise EvaluationError(f"the number of chunks must be at least 1, not {self.n_chunks}")
        if self.top_k < 1:
            raise EvaluationError(f"top_k must be at least 1, not {self.top_k}")
        if self.tail_samples < 0:
            raise EvaluationError(f"tail_samples must not be negative, not {self.tail_samples}")

    @property
    def scored_per_chunk(self) -> int:
        """Tokens scored in each chunk (its second half, minus the last position)."""
        return self.n_ctx - 1 - self.n_ctx // 2


#: The preview: two chunks of 128 tokens, the text's first and last, 126 tokens scored.
#: Each model processes 254 tokens (a few seconds for SmolLM2-135M on two cores), so six
#: candidates take well under a minute; chunks of 256 would double that. The standard
#: errors show the uncertainty (about 10 % of the mean KL divergence); comparisons between
#: candidates are firmer than that, as all are scored on the same tokens.
QUICK = EvalSettings(n_ctx=128, n_chunks=2, spread=True)
#: Every chunk of 512 tokens, llama.cpp's default context for perplexity runs.
FULL = EvalSettings(n_ctx=512, n_chunks=None)


# -- text ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalText:
    """An evaluation text and where it came from ("built-in" or the file's path)."""

    text: str
    source: str


def load_text(text_file: str | Path | None = None) -> EvalText:
    """The built-in evaluation text, or a file's.

    Args:
        text_file: A UTF-8 text file; None for the built-in text.

    Returns:
        The text and its source.

    Raises:
        EvaluationError: The file does not exist, is not UTF-8 text, or the built-in
            text is missing from the installation.
    """
    if text_file is None:
        from importlib import resources

        res = resources.files("lowbit.resources").joinpath("texts", BUILTIN_TEXT)
        try:
            return EvalText(res.read_text(encoding="utf-8"), "built-in")
        except (FileNotFoundError, NotADirectoryError) as e:
            raise EvaluationError(
                f"the built-in evaluation text ({BUILTIN_TEXT}) is missing; give a text file"
            ) from e
    p = Path(text_file)
    try:
        return EvalText(p.read_text(encoding="utf-8"), str(p))
    except FileNotFoundError as e:
        raise EvaluationError(f"text file not found: {p}") from e
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{p} is not UTF-8 text: {e}") from e
    except OSError as e:
        raise EvaluationError(f"cannot read {p}: {e}") from e


def chunk_tokens(
    tokens: Sequence[int],
    *,
    n_ctx: int,
    n_chunks: int | None = None,
    bos_id: int | None = None,
    spread: bool = False,
) -> np.ndarray:
    """Cut a tokenized text into the chunks that are evaluated (llama.cpp's rule).

    Args:
        tokens: The whole text's token ids, tokenized once (with BOS if the model adds it).
        n_ctx: Tokens per chunk.
        n_chunks: Keep at most this many chunks; None: every whole chunk.
        bos_id: The BOS id if the model adds BOS: it replaces each chunk's first token.
        spread: Keep chunks evenly spaced over the text (first and last included) rather
            than the first ones. Either way each is one of the text's consecutive chunks.

    Returns:
        int32 array [chunks, n_ctx].

    Raises:
        EvaluationError: Fewer tokens than one chunk.
    """
    n = len(tokens)
    if n < n_ctx:
        what = "is empty" if n == 0 else f"gives only {n} tokens"
        raise EvaluationError(
            f"the evaluation text {what}; a chunk of {n_ctx} tokens needs at least {n_ctx} "
            "(use a longer text or a shorter chunk length)"
        )
    n_max = n // n_ctx
    count = n_max if n_chunks is None else min(n_chunks, n_max)
    chunks = np.asarray(tokens[: n_max * n_ctx], dtype=np.int32).reshape(n_max, n_ctx)
    if spread and count > 1:
        chunks = chunks[np.linspace(0, n_max - 1, count).round().astype(np.int64)]
    else:
        chunks = chunks[:count]
    chunks = chunks.copy()
    if bos_id is not None:
        chunks[:, 0] = bos_id
    return chunks


def scored_targets(chunks: np.ndarray) -> np.ndarray:
    """The tokens that are scored, chunk after chunk: the second half of each but its first.

    Args:
        chunks: [chunks, n_ctx] as from :func:`chunk_tokens`.

    Returns:
        int32 array [chunks * (n_ctx - 1 - n_ctx // 2)].
    """
    first = chunks.shape[1] // 2
    return np.ascontiguousarray(chunks[:, first + 1 :]).reshape(-1)


# -- files --------------------------------------------------------------------------------

_hash_memo: dict[tuple[Any, ...], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: str | Path, *, cancel: CancelToken | None = None) -> str:
    """SHA-256 of a file, read once per process for a given file state.

    The result is remembered by (path, device, inode, size, mtime, ctime), so an edited
    or replaced file is hashed again while repeated evaluations of the same file are free
    (files modified in the last two seconds are not remembered).

    Args:
        path: The file.
        cancel: Checked between blocks of a few MiB.

    Returns:
        The hex digest.

    Raises:
        ModelNotFoundError: The file does not exist.
        CancelledError: Cancelled while hashing.
    """
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError as e:
        raise ModelNotFoundError(f"model file not found: {p}") from e
    key = (str(p), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _hash_lock:
        if key in _hash_memo:
            return _hash_memo[key]
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with p.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            if cancel is not None:
                cancel.raise_if_cancelled()
    digest = h.hexdigest()
    # File times are coarse (a clock tick): a file changed within the same tick as the
    # one that was hashed would look unchanged, so only files left alone for a while are
    # remembered (git's "racily clean" rule), and only if they did not change meanwhile.
    settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > 2_000_000_000
    st2 = p.stat()
    if settled and (st2.st_size, st2.st_mtime_ns, st2.st_ctime_ns) == key[3:]:
        with _hash_lock:
            _hash_memo[key] = digest
    return digest


def file_size_and_bpw(gf: GGUFFile) -> tuple[int, float]:
    """The file's size and its bits per weight.

    Args:
        gf: An opened GGUF file.

    Returns:
        (size in bytes, 8 * tensor data bytes / number of weights, over all tensors).
    """
    data = sum(t.nbytes for t in gf.tensors.values())
    return gf.size, 8 * data / max(1, gf.n_params())


# -- per-token computations ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RefDist:
    """The reference's next-token distributions in compact form, one row per scored token.

    Attributes:
        top_ids: int32 [n, k], the k most probable tokens, most probable first.
        top_logp: float32 [n, k], their log-probabilities.
        rest_logp: float64 [n], log of the probability of all other tokens, the "tail"
            (-inf if there are none).
        tail_ids: int32 [n, s], tokens drawn from the tail in proportion to their
            probability (stratified: one per 1/s of the tail's mass, in token-id order).
        tail_logp: float32 [n, s], their log-probabilities.
        target_logp: float64 [n], log-probability of the correct next token.
        top1: int32 [n], the most probable token (first one on ties, like argmax).
    """

    top_ids: np.ndarray
    top_logp: np.ndarray
    rest_logp: np.ndarray
    tail_ids: np.ndarray
    tail_logp: np.ndarray
    target_logp: np.ndarray
    top1: np.ndarray

    def __len__(self) -> int:
        return len(self.top1)

    @staticmethod
    def concat(parts: Sequence[RefDist]) -> RefDist:
        """Rows of several RefDist, in order."""
        return RefDist(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(RefDist)))

    def rows(self, start: int, stop: int) -> RefDist:
        """Rows start..stop-1."""
        return RefDist(*(getattr(self, f.name)[start:stop] for f in fields(RefDist)))


@dataclass(frozen=True, eq=False)
class TokenScores:
    """Per-token comparison of a candidate with the reference (float64 / bool arrays).

    Attributes:
        kld: KL(reference || candidate), estimated as described in the module's docstring.
        kld_bound: Its lower bound over the top k and the tail taken as one outcome.
        same_top: Whether both models' most probable tokens agree.
        nll: The candidate's negative log-likelihood of the correct token.
        nll_ref: The reference's.
        dp: Candidate's minus reference's probability of the correct token.
    """

    kld: np.ndarray
    kld_bound: np.ndarray
    same_top: np.ndarray
    nll: np.ndarray
    nll_ref: np.ndarray
    dp: np.ndarray

    @staticmethod
    def concat(parts: Sequence[TokenScores]) -> TokenScores:
        """Scores of several blocks, in order."""
        return TokenScores(
            *(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(TokenScores))
        )


def _row_blocks(n_rows: int, n_vocab: int) -> list[tuple[int, int]]:
    step = max(1, _ROW_BLOCK_ELEMENTS // max(1, n_vocab))
    return [(i, min(n_rows, i + step)) for i in range(0, n_rows, step)]


def _softmax_parts(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of logits in float64: (x, exp(x - max), row sums of those, log-sum-exp).

    log p = x - lse. Nothing else of vocabulary size is allocated, to keep the per-chunk
    work a small fraction of the forward pass.
    """
    x = logits.astype(np.float64)
    m = x.max(axis=1)
    e = np.exp(x - m[:, None])
    z = e.sum(axis=1)
    return x, e, z, m + np.log(z)


def _stratified_draws(weights: np.ndarray, n: int) -> np.ndarray:
    """Per row, n indices drawn in proportion to the row's weights, one per 1/n of its sum.

    The draws sit at the midpoints (i + 0.5) / n of the row's cumulative distribution, so
    they are reproducible. Rows whose weights are all zero give index 0.
    """
    rows, width = weights.shape
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1:]
    cum = np.divide(cum, total, out=np.zeros_like(cum), where=total > 0)
    # one search over all rows: row r's cumulative values are shifted into [r, r + 1]
    cum += np.arange(rows)[:, None]
    targets = (np.arange(n) + 0.5) / n + np.arange(rows)[:, None]
    flat = np.searchsorted(cum.ravel(), targets.ravel()).reshape(rows, n)
    return np.clip(flat - np.arange(rows)[:, None] * width, 0, width - 1)


def reference_dist(logits: np.ndarray, targets: np.ndarray, *, top_k: int, tail_samples: int) -> RefDist:
    """Compact distributions of reference logits.

    Args:
        logits: float32 [n, vocab], the logits that predict ``targets``.
        targets: [n] the correct next tokens.
        top_k: Tokens kept exactly per row (all of them if it is at least the vocabulary).
        tail_samples: Tokens drawn from the rest of the vocabulary per row (0: none).

    Returns:
        The rows' RefDist; log-probabilities are rounded to float32 as stored.
    """
    n, v = logits.shape
    k = min(top_k, v)
    s = tail_samples if k < v else 0
    parts = []
    for a, b in _row_blocks(n, v):
        x, e, z, lse = _softmax_parts(logits[a:b])
        if k < v:
            ids = np.argpartition(x, v - k, axis=1)[:, v - k :]
        else:
            ids = np.broadcast_to(np.arange(v), x.shape)
        vals = np.take_along_axis(x, ids, axis=1) - lse[:, None]
        order = np.argsort(-vals, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, axis=1)
        vals = np.take_along_axis(vals, order, axis=1)
        # The mass outside the top k, summed directly: 1 - sum(top k) would lose it to
        # cancellation when the top k hold nearly everything.
        np.put_along_axis(e, ids, 0.0, axis=1)
        rest = e.sum(axis=1) / z
        with np.errstate(divide="ignore"):
            rest_logp = np.where(rest > 0, np.log(rest), -np.inf)
        tail = _stratified_draws(e, s) if s else np.zeros((b - a, 0), dtype=np.int64)
        parts.append(
            RefDist(
                top_ids=ids.astype(np.int32),
                top_logp=vals.astype(np.float32),
                rest_logp=rest_logp,
                tail_ids=tail.astype(np.int32),
                tail_logp=(np.take_along_axis(x, tail, axis=1) - lse[:, None]).astype(np.float32),
                target_logp=x[np.arange(b - a), targets[a:b]] - lse,
                top1=logits[a:b].argmax(axis=1).astype(np.int32),
            )
        )
    return RefDist.concat(parts)


def token_scores(ref: RefDist, logits: np.ndarray, targets: np.ndarray) -> TokenScores:
    """Compare a candidate's logits with the reference's compact distributions.

    Args:
        ref: The reference's RefDist for the same rows.
        logits: float32 [n, vocab], the candidate's logits that predict ``targets``.
        targets: [n] the correct next tokens.

    Returns:
        Per-token scores.
    """
    n, v = logits.shape
    parts = []
    tiny = np.finfo(np.float64).tiny
    for a, b in _row_blocks(n, v):
        r = ref.rows(a, b)
        x, e, z, lse = _softmax_parts(logits[a:b])
        lq_top = np.take_along_axis(x, r.top_ids, axis=1) - lse[:, None]
        np.put_along_axis(e, r.top_ids, 0.0, axis=1)
        lq_rest = np.log(np.maximum(e.sum(axis=1) / z, tiny))  # clamped: log 0 would be infinite
        lp_top = r.top_logp.astype(np.float64)
        bound = (np.exp(lp_top) * (lp_top - lq_top)).sum(axis=1)
        has_rest = np.isfinite(r.rest_logp)
        lp_rest = np.where(has_rest, r.rest_logp, 0.0)
        p_rest = np.where(has_rest, np.exp(lp_rest), 0.0)
        bound += p_rest * (lp_rest - lq_rest)
        kld = bound.copy()
        if r.tail_ids.shape[1]:
            # p_rest * KL(tail of P || tail of Q), the part the bound leaves out, estimated
            # from the reference's tail draws with E[w - 1 - log w], w = q_tail / p_tail:
            # unbiased, and never negative draw by draw.
            lq_tail = np.take_along_axis(x, r.tail_ids, axis=1) - lse[:, None] - lq_rest[:, None]
            log_w = lq_tail - (r.tail_logp.astype(np.float64) - lp_rest[:, None])
            kld += p_rest * (np.expm1(log_w) - log_w).mean(axis=1)
        nll = lse - x[np.arange(b - a), targets[a:b]]
        parts.append(
            TokenScores(
                kld=kld,
                kld_bound=bound,
                same_top=logits[a:b].argmax(axis=1) == r.top1,
                nll=nll,
                nll_ref=-r.target_logp,
                dp=np.exp(-nll) - np.exp(r.target_logp),
            )
        )
    return TokenScores.concat(parts)


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateResult:
    """One candidate's accuracy against the reference. Percentages are in %.

    ``*_stderr`` are standard errors of the means over the scored tokens; the PPL ratio's
    uncertainty is that of its logarithm, which takes the correlation of the two models'
    log-likelihoods into account.
    """

    file: str
    size_bytes: int
    bpw: float
    n_tokens: int
    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p99: float
    kld_max: float
    same_top_pct: float
    same_top_stderr: float
    ppl: float
    ppl_stderr: float
    ppl_ref: float
    ppl_ref_stderr: float
    ppl_ratio: float
    ln_ppl_ratio: float
    ln_ppl_ratio_stderr: float
    rms_dp_pct: float
    rms_dp_stderr: float

    @property
    def size_mib(self) -> float:
        return self.size_bytes / 2**20

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (sizes rounded, metrics as computed)."""
        d: dict[str, Any] = {
            "file": self.file,
            "size_mib": round(self.size_mib, 3),
            "bpw": round(self.bpw, 4),
        }
        for name in self.__dataclass_fields__:
            if name not in d:
                d[name] = getattr(self, name)
        return d


def _exp(x: float) -> float:
    """exp that gives inf instead of raising, for a candidate broken enough to need it."""
    return math.exp(x) if x < 709 else math.inf


def _mean_stderr(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    mean = float(x.mean())
    return mean, float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def summarize(scores: TokenScores, *, file: str, size_bytes: int, bpw: float) -> CandidateResult:
    """Means, standard errors and percentiles of per-token scores.

    Args:
        scores: The candidate's per-token scores (at least one token).
        file: The candidate's path, for the report.
        size_bytes: Its file size.
        bpw: Its bits per weight.

    Returns:
        The candidate's result.
    """
    n = len(scores.kld)
    kld_mean, kld_err = _mean_stderr(scores.kld)
    same = float(scores.same_top.mean())
    same_err = math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0
    ln_ppl, ln_ppl_err = _mean_stderr(scores.nll)
    ln_ref, ln_ref_err = _mean_stderr(scores.nll_ref)
    ln_ratio, ln_ratio_err = _mean_stderr(scores.nll - scores.nll_ref)
    ms_dp, ms_dp_err = _mean_stderr(scores.dp**2)
    rms = math.sqrt(ms_dp)
    return CandidateResult(
        file=file,
        size_bytes=size_bytes,
        bpw=bpw,
        n_tokens=n,
        kld_mean=kld_mean,
        kld_stderr=kld_err,
        kld_median=float(np.median(scores.kld)),
        kld_p99=float(np.percentile(scores.kld, 99)),
        kld_max=float(scores.kld.max()),
        same_top_pct=100 * same,
        same_top_stderr=100 * same_err,
        ppl=_exp(ln_ppl),
        ppl_stderr=_exp(ln_ppl) * ln_ppl_err,
        ppl_ref=_exp(ln_ref),
        ppl_ref_stderr=_exp(ln_ref) * ln_ref_err,
        ppl_ratio=_exp(ln_ratio),
        ln_ppl_ratio=ln_ratio,
        ln_ppl_ratio_stderr=ln_ratio_err,
        rms_dp_pct=100 * rms,
        rms_dp_stderr=100 * (0.5 / rms * ms_dp_err if rms > 0 else 0.0),
    )


@dataclass(frozen=True)
class EvalReport:
    """The reference, the text, the settings used, and each candidate's result."""

    reference: str
    reference_size_bytes: int
    reference_bpw: float
    text: str
    n_ctx: int
    n_chunks: int
    n_tokens: int
    top_k: int
    tail_samples: int
    ppl_ref: float
    ppl_ref_stderr: float
    reference_cached: bool
    candidates: tuple[CandidateResult, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return {
            "reference": self.reference,
            "reference_size_mib": round(self.reference_size_bytes / 2**20, 3),
            "reference_bpw": round(self.reference_bpw, 4),
            "text": self.text,
            "n_ctx": self.n_ctx,
            "n_chunks": self.n_chunks,
            "n_tokens": self.n_tokens,
            "top_k": self.top_k,
            "tail_samples": self.tail_samples,
            "ppl_ref": self.ppl_ref,
            "ppl_ref_stderr": self.ppl_ref_stderr,
            "reference_cached": self.reference_cached,
            "candidates": [c.to_dict() for c in self.candidates],
        }


# -- running models -------------------------------------------------------------------------


def _forward_chunks(
    model: Model, chunks: np.ndarray, cancel: CancelToken | None, on_chunk: Callable[[int, np.ndarray], None]
) -> None:
    """Run each chunk from an empty cache; hand on the logits of its scored positions."""
    first = chunks.shape[1] // 2
    remove = cancel.on_cancel(model.cancel) if cancel is not None else None
    try:
        for i, chunk in enumerate(chunks):
            if cancel is not None:
                cancel.raise_if_cancelled()
            # Two calls so that only the scored half returns logits ([n, vocab] floats each);
            # the last token is only a target and is not run at all.
            model.forward(chunk[:first], 0)
            if cancel is not None:
                cancel.raise_if_cancelled()
            on_chunk(i, model.forward(chunk[first:-1], first, logits_all=True))
    finally:
        if remove is not None:
            remove()


@dataclass(frozen=True, eq=False)
class ReferenceData:
    """The reference's compact distributions over the evaluated chunks, as cached."""

    model_sha256: str
    chunks: np.ndarray  # int32 [n_chunks, n_ctx] as evaluated (BOS applied)
    top_k: int  # as requested; dist holds min(top_k, n_vocab) columns
    tail_samples: int
    n_vocab: int
    dist: RefDist
    from_cache: bool = False

    @property
    def n_ctx(self) -> int:
        return int(self.chunks.shape[1])

    @property
    def n_chunks(self) -> int:
        return int(self.chunks.shape[0])

    @property
    def targets(self) -> np.ndarray:
        return scored_targets(self.chunks)


def default_cache_dir() -> Path:
    """Where reference distributions are cached: the user cache's ``eval-ref`` folder."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("lowbit")) / "eval-ref"


def _cache_key(
    model_sha256: str, chunks: np.ndarray, *, top_k: int, tail_samples: int, n_vocab: int
) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "model_sha256": model_sha256,
        "tokens_sha256": hashlib.sha256(np.ascontiguousarray(chunks, dtype="<i4").tobytes()).hexdigest(),
        "n_ctx": int(chunks.shape[1]),
        "n_chunks": int(chunks.shape[0]),
        "top_k": top_k,
        "tail_samples": tail_samples,
        "n_vocab": n_vocab,
    }


def _cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_dir / f"ref-{digest[:40]}.npz"


def _expected_arrays(key: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], type]]:
    n_ctx, n_vocab = key["n_ctx"], key["n_vocab"]
    n = key["n_chunks"] * (n_ctx - 1 - n_ctx // 2)
    k = min(key["top_k"], n_vocab)
    s = key["tail_samples"] if k < n_vocab else 0
    return {
        "top_ids": ((n, k), np.int32),
        "top_logp": ((n, k), np.float32),
        "rest_logp": ((n,), np.float64),
        "tail_ids": ((n, s), np.int32),
        "tail_logp": ((n, s), np.float32),
        "target_logp": ((n,), np.float64),
        "top1": ((n,), np.int32),
    }


def _read_cache(path: Path, key: dict[str, Any], chunks: np.ndarray) -> RefDist | None:
    """The cached distributions if the file is whole and made for exactly this key, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["meta"][()])) != key or not np.array_equal(z["chunks"], chunks):
                return None
            dist = RefDist(**{f.name: z[f.name] for f in fields(RefDist)})
    except FileNotFoundError:
        return None
    except Exception as e:  # a damaged file of any kind is a miss, recomputed and replaced
        log.warning("ignoring the damaged reference cache %s: %s", path, e)
        return None
    for name, (shape, dtype) in _expected_arrays(key).items():
        a = getattr(dist, name)
        if a.shape != shape or a.dtype != dtype:
            log.warning("ignoring the reference cache %s: %s has the wrong shape or type", path, name)
            return None
    ids_ok = all(
        a.min(initial=0) >= 0 and a.max(initial=0) < key["n_vocab"]
        for a in (dist.top_ids, dist.tail_ids, dist.top1)
    )
    finite = all(np.isfinite(a).all() for a in (dist.top_logp, dist.tail_logp, dist.target_logp))
    if not (ids_ok and finite and not np.isnan(dist.rest_logp).any()):
        log.warning("ignoring the reference cache %s: values out of range", path)
        return None
    return dist


def _write_cache(path: Path, key: dict[str, Any], chunks: np.ndarray, dist: RefDist) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            arrays = {f.name: getattr(dist, f.name) for f in fields(RefDist)}
            np.savez(f, meta=np.array(json.dumps(key, sort_keys=True)), chunks=chunks, **arrays)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class _CacheEntry:
    model_sha256: str
    key: dict[str, Any]
    path: Path


def _lookup(
    gf: GGUFFile,
    chunks: np.ndarray,
    *,
    top_k: int,
    tail_samples: int,
    cache_dir: str | Path | None,
    cancel: CancelToken | None,
) -> _CacheEntry:
    n_vocab = read_hparams(gf).n_vocab
    if chunks.size and (chunks.min() < 0 or chunks.max() >= n_vocab):
        raise EvaluationError(f"token ids must be in 0..{n_vocab - 1}")
    sha = file_sha256(gf.path, cancel=cancel)
    key = _cache_key(sha, chunks, top_k=top_k, tail_samples=tail_samples, n_vocab=n_vocab)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _CacheEntry(sha, key, _cache_path(folder, key))


def _reference_data(chunks: np.ndarray, entry: _CacheEntry, dist: RefDist, from_cache: bool) -> ReferenceData:
    k = entry.key
    return ReferenceData(
        entry.model_sha256, chunks, k["top_k"], k["tail_samples"], k["n_vocab"], dist, from_cache=from_cache
    )


def _compute_reference(
    gf: GGUFFile,
    chunks: np.ndarray,
    entry: _CacheEntry,
    *,
    n_threads: int | None,
    write_cache: bool,
    cancel: CancelToken | None,
    on_chunk: Callable[[int], None] | None,
) -> ReferenceData:
    targets = scored_targets(chunks)
    per = chunks.shape[1] - 1 - chunks.shape[1] // 2
    top_k, tail_samples = entry.key["top_k"], entry.key["tail_samples"]
    parts: list[RefDist] = []

    def take(i: int, logits: np.ndarray) -> None:
        rows = targets[i * per : (i + 1) * per]
        parts.append(reference_dist(logits, rows, top_k=top_k, tail_samples=tail_samples))
        if on_chunk is not None:
            on_chunk(i)

    t0 = time.perf_counter()
    with Model.load(gf, n_ctx=chunks.shape[1], n_threads=n_threads) as model:
        _forward_chunks(model, chunks, cancel, take)
    log.info("reference pass over %d chunks took %.1f s", len(chunks), time.perf_counter() - t0)
    dist = RefDist.concat(parts)
    if write_cache:
        try:
            _write_cache(entry.path, entry.key, chunks, dist)
        except OSError as e:  # a read-only or full disk costs a recomputation next time, not this result
            log.warning("cannot write the reference cache %s: %s", entry.path, e)
    return _reference_data(chunks, entry, dist, from_cache=False)


def reference_distributions(
    reference: str | Path | GGUFFile,
    chunks: np.ndarray,
    *,
    top_k: int = DEFAULT_TOP_K,
    tail_samples: int = DEFAULT_TAIL_SAMPLES,
    n_threads: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    cancel: CancelToken | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> ReferenceData:
    """The reference's compact distributions over chunks, from the cache or computed.

    The cache entry is keyed by the model file's SHA-256, the chunks' token ids, the
    chunk length and count, k, the number of tail draws, the vocabulary size and the
    format version; it is written only once complete, and a damaged entry counts as missing.

    Args:
        reference: The reference GGUF.
        chunks: [n_chunks, n_ctx] token ids from :func:`chunk_tokens`.
        top_k: Log-probabilities kept exactly per scored token.
        tail_samples: Tokens drawn from the rest of the vocabulary per scored token.
        n_threads: Threads for the forward passes; default: physical cores.
        cache_dir: Cache folder; default: :func:`default_cache_dir`.
        use_cache: False to neither read nor write the cache.
        cancel: Stops the work within a chunk; nothing is written then.
        on_chunk: Called with the chunk index after each reference chunk is computed.

    Returns:
        The reference data; ``from_cache`` tells whether the model was run.

    Raises:
        ModelNotFoundError, ModelFormatError, UnsupportedModelError: The reference file.
        EvaluationError: Token ids outside the reference's vocabulary.
        CancelledError: Cancelled.
    """
    gf = reference if isinstance(reference, GGUFFile) else open_gguf(reference)
    entry = _lookup(gf, chunks, top_k=top_k, tail_samples=tail_samples, cache_dir=cache_dir, cancel=cancel)
    if use_cache:
        cached = _read_cache(entry.path, entry.key, chunks)
        if cached is not None:
            return _reference_data(chunks, entry, cached, from_cache=True)
    return _compute_reference(
        gf, chunks, entry, n_threads=n_threads, write_cache=use_cache, cancel=cancel, on_chunk=on_chunk
    )


# -- the evaluation -------------------------------------------------------------------------


def _open(path: str | Path, role: str) -> GGUFFile:
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"{role} model not found: {p}")
    return open_gguf(p)


def _check_vocabulary(ref: GGUFFile, ref_vocab: int, cand: GGUFFile) -> None:
    n = read_hparams(cand).n_vocab
    if n != ref_vocab:
        raise EvaluationError(
            f"{cand.path.name} has a vocabulary of {n} tokens but the reference {ref.path.name} has "
            f"{ref_vocab}: a candidate must be a quantization of the reference model"
        )
    a = ref.metadata.get("tokenizer.ggml.tokens")
    b = cand.metadata.get("tokenizer.ggml.tokens")
    if a is not None and b is not None and a != b:
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        raise EvaluationError(
            f"{cand.path.name} and the reference {ref.path.name} have different vocabularies "
            f"(token {i} differs): a candidate must be a quantization of the reference model"
        )


def evaluate(
    reference: str | Path,
    candidates: Sequence[str | Path],
    *,
    text: str | None = None,
    text_file: str | Path | None = None,
    settings: EvalSettings = FULL,
    n_threads: int | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: ProgressFn | None = None,
    cancel: CancelToken | None = None,
) -> EvalReport:
    """Measure how far each candidate's predictions are from the reference's.

    Every file is opened and checked before any model runs. The reference's pass is
    taken from the cache when it is valid; each candidate is then run over the same
    chunks, one at a time.

    Args:
        reference: The full-precision model whose predictions are the truth: an F32/F16/BF16
            GGUF, or a Hugging Face folder (converted to an F32 GGUF for the run).
        candidates: GGUF files of the same model, e.g. quantized.
        text: The evaluation text itself; or
        text_file: a UTF-8 file holding it. With neither, the built-in text.
        settings: Chunk length, number of chunks and k (:data:`QUICK`, :data:`FULL`...).
        n_threads: Threads for the forward passes; default: physical cores.
        cache_dir: Reference cache folder; default: :func:`default_cache_dir`.
        use_cache: False to neither read nor write the reference cache.
        progress: Called as (stage, done, total, message) with stage "prepare",
            "reference" or "candidate"; done and total count chunks of model work.
        cancel: Stops the evaluation within a chunk (a running forward pass is
            interrupted too); a reference cache entry is never left half written.

    Returns:
        The report, candidates in the order given.

    Raises:
        ModelNotFoundError: The reference or a candidate does not exist.
        ModelFormatError, UnsupportedModelError: A file Lowbit cannot run.
        EvaluationError: No candidates, text too short, different vocabularies, bad settings.
        TokenizerError: The text cannot be tokenized.
        CancelledError: Cancelled.
    """
    from .tokenizer import Tokenizer

    def report(stage: str, done: float, total: float | None, message: str) -> None:
        if progress is not None:
            progress(stage, done, total, message)

    if not candidates:
        raise EvaluationError("no candidate models to evaluate")
    if Path(reference).is_dir():
        return _evaluate_folder_reference(
            Path(reference),
            candidates,
            text=text,
            text_file=text_file,
            settings=settings,
            n_threads=n_threads,
            cache_dir=cache_dir,
            use_cache=use_cache,
            progress=progress,
            cancel=cancel,
        )
    if text is not None and text_file is not None:
        raise EvaluationError("give the text or a text file, not both")
    if cancel is not None:
        cancel.raise_if_cancelled()
    src = EvalText(text, "text") if text is not None else load_text(text_file)

    report("prepare", 0, None, f"Reading {Path(reference).name}")
    ref_gf = _open(reference, "reference")
    ref_vocab = read_hparams(ref_gf).n_vocab
    if "tokenizer.ggml.tokens" not in ref_gf.metadata:
        raise EvaluationError(f"the reference {ref_gf.path.name} has no vocabulary to tokenize the text with")
    cand_files: list[GGUFFile | None] = []
    for i, c in enumerate(candidates):
        report("prepare", 0, None, f"Reading candidate {i + 1}/{len(candidates)}: {Path(c).name}")
        gf = _open(c, "candidate")
        _check_vocabulary(ref_gf, ref_vocab, gf)
        cand_files.append(gf)

    tok = Tokenizer.from_gguf_metadata(ref_gf.metadata)
    ids = tok.encode(src.text, parse_special=False)  # BOS per the model, as llama.cpp tokenizes
    chunks = chunk_tokens(
        ids,
        n_ctx=settings.n_ctx,
        n_chunks=settings.n_chunks,
        bos_id=tok.bos_id if tok.add_bos else None,
        spread=settings.spread,
    )
    n_chunks = len(chunks)
    targets = scored_targets(chunks)
    per = settings.scored_per_chunk

    ref_name = ref_gf.path.name
    report("prepare", 0, None, f"Hashing {ref_name}")
    entry = _lookup(
        ref_gf,
        chunks,
        top_k=settings.top_k,
        tail_samples=settings.tail_samples,
        cache_dir=cache_dir,
        cancel=cancel,
    )
    cached = _read_cache(entry.path, entry.key, chunks) if use_cache else None
    total = n_chunks * (len(candidates) + int(cached is None))
    done = 0
    if cached is not None:
        ref = _reference_data(chunks, entry, cached, from_cache=True)
    else:

        def ref_chunk(i: int) -> None:
            nonlocal done
            done += 1
            report("reference", done, total, f"Reference {ref_name}: chunk {i + 1}/{n_chunks}")

        report("reference", 0, total, f"Reference {ref_name}")
        ref = _compute_reference(
            ref_gf,
            chunks,
            entry,
            n_threads=n_threads,
            write_cache=use_cache,
            cancel=cancel,
            on_chunk=ref_chunk,
        )
    ref_size, ref_bpw = file_size_and_bpw(ref_gf)
    ref_path = str(ref_gf.path)
    del ref_gf  # lets the mapping go once the model is closed

    results: list[CandidateResult] = []
    for ci, path in enumerate(candidates):
        gf = cand_files[ci]
        assert gf is not None
        cand_files[ci] = None  # drop the mapping after this candidate
        label = f"Candidate {ci + 1}/{len(candidates)} {gf.path.name}"
        report("candidate", done, total, label)
        parts: list[TokenScores] = []

        def take(i: int, logits: np.ndarray, label: str = label, parts: list[TokenScores] = parts) -> None:
            nonlocal done
            sl = slice(i * per, (i + 1) * per)
            parts.append(token_scores(ref.dist.rows(sl.start, sl.stop), logits, targets[sl]))
            done += 1
            report("candidate", done, total, f"{label}: chunk {i + 1}/{n_chunks}")

        t0 = time.perf_counter()
        with Model.load(gf, n_ctx=settings.n_ctx, n_threads=n_threads) as model:
            _forward_chunks(model, chunks, cancel, take)
        log.info("candidate %s took %.1f s", gf.path.name, time.perf_counter() - t0)
        size, bpw = file_size_and_bpw(gf)
        results.append(summarize(TokenScores.concat(parts), file=str(path), size_bytes=size, bpw=bpw))
        del gf

    ppl_ref, ppl_ref_err = _mean_stderr(-ref.dist.target_logp)
    return EvalReport(
        reference=ref_path,
        reference_size_bytes=ref_size,
        reference_bpw=ref_bpw,
        text=src.source,
        n_ctx=settings.n_ctx,
        n_chunks=n_chunks,
        n_tokens=len(targets),
        top_k=settings.top_k,
        tail_samples=settings.tail_samples,
        ppl_ref=_exp(ppl_ref),
        ppl_ref_stderr=_exp(ppl_ref) * ppl_ref_err,
        reference_cached=ref.from_cache,
        candidates=tuple(results),
    )


def _evaluate_folder_reference(folder: Path, candidates: Sequence[str | Path], **kw: Any) -> EvalReport:
    """Evaluate against a Hugging Face folder: converted to an F32 GGUF beside the cache,
    evaluated, deleted. The conversion writes the same bytes every time, so the
    reference cache still applies."""
    import dataclasses
    import shutil
    import tempfile

    from .quantize import quantize_model

    cache = Path(kw["cache_dir"]) if kw.get("cache_dir") is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".reference-", dir=cache))
    try:
        if kw.get("progress") is not None:
            kw["progress"]("prepare", 0, None, f"Converting {folder.name} to a GGUF reference")
        converted = quantize_model(
            folder, scratch / "reference-F32.gguf", preset="F32", cancel=kw.get("cancel")
        )
        report = evaluate(converted.path, candidates, **kw)
        return dataclasses.replace(report, reference=str(folder))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = [
    "DEFAULT_TAIL_SAMPLES",
    "DEFAULT_TOP_K",
    "FORMAT_VERSION",
    "FULL",
    "QUICK",
    "CandidateResult",
    "EvalReport",
    "EvalSettings",
    "EvalText",
    "RefDist",
    "ReferenceData",
    "TokenScores",
    "chunk_tokens",
    "default_cache_dir",
    "evaluate",
    "file_sha256",
    "file_size_and_bpw",
    "load_text",
    "reference_dist",
    "reference_distributions",
    "scored_targets",
    "summarize",
    "token_scores",
]
