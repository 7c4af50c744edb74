"""Choosing the next token from the model's logits (numpy only).

The chain follows llama.cpp's classic default order: repetition penalty, top-k, softmax
with temperature, top-p, min-p, then a draw from what is left.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Sampler", "SamplingParams"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens.

    Attributes:
        temperature: Softmax temperature; 0 means greedy (always the most likely token).
        top_k: Keep only the k most likely tokens; 0 keeps all.
        top_p: Keep the smallest set of most likely tokens whose probabilities add up to at
            least this much; 1 keeps all.
        min_p: Drop tokens less likely than this fraction of the most likely one; 0 keeps all.
        repeat_penalty: Make recently seen tokens less likely (llama.cpp style); 1 is off.
        repeat_last_n: How many recent tokens the penalty looks at; 0 is off, -1 means the
            whole history.
        seed: Seed of the random generator; None picks a random one.
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self) -> None:
        """Check the values.

        Raises:
            ValueError: A value is out of range or of the wrong kind.
        """
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("top_k", "repeat_last_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 means greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.repeat_penalty <= 0:
            raise ValueError(f"repeat_penalty must be > 0 (1 disables it), got {self.repeat_penalty}")
        if self.repeat_last_n < -1:
            raise ValueError(f"repeat_last_n must be >= -1 (-1 = whole history), got {self.repeat_last_n}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0
        ):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """True when sampling always takes the most likely token."""
        return self.temperature == 0


class Sampler:
    """Picks tokens from logits with :class:`SamplingParams`.

    Each sampler owns its random generator, so two samplers with the same seed given the
    same logits pick the same tokens.
    """

    def __init__(self, params: SamplingParams, vocab_size: int) -> None:
        """Set up a sampler.

        Args:
            params: The sampling settings.
            vocab_size: Length of the logits vectors the model produces.

        Raises:
            ValueError: ``vocab_size`` is not positive.
        """
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be > 0, got {vocab_size}")
        self.params = params
        self.vocab_size = vocab_size
        self._rng = np.random.default_rng(params.seed)

    def sample(self, logits: np.ndarray, history: Sequence[int]) -> int:
        """Pick the next token.

        Args:
            logits: Scores for every token, shape ``(vocab_size,)``. ``-inf`` bans a token.
            history: Tokens so far (prompt and generated), for the repetition penalty.

        Returns:
            The chosen token id.

        Raises:
            ValueError: The logits have the wrong shape, contain NaN or +inf, ban every
                token, or ``history`` holds an id outside the vocabulary.
        """
        p = self.params
        x = np.array(logits, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.vocab_size:
            raise ValueError(f"expected {self.vocab_size} logits, got shape {np.shape(logits)}")
        if np.isnan(x).any() or np.isposinf(x).any():
            raise ValueError("logits contain NaN or +inf")
        self._penalize(x, history)

        if p.greedy:
            best = int(np.argmax(x))
            if x[best] == -np.inf:
                raise ValueError("every token is banned (all logits are -inf)")
            return best

        # Candidates as (ids, logits); top-k by partition keeps this O(vocab).
        if 0 < p.top_k < x.shape[0]:
            ids = np.argpartition(-x, p.top_k - 1)[: p.top_k]
            cand = x[ids]
        else:
            ids = np.arange(x.shape[0])
            cand = x
        top = cand.max()
        if top == -np.inf:
            raise ValueError("every token is banned (all logits are -inf)")
        probs = np.exp((cand - top) / p.temperature)
        probs /= probs.sum()

        # Min-p only drops the tail, and top-p cuts from the top down, so dropping the
        # min-p tail first leaves the top-p prefix sums (and the result) unchanged while
        # sorting far fewer tokens.
        keep = probs >= p.min_p * probs.max() if p.min_p > 0 else probs > 0
        ids, probs = ids[keep], probs[keep]
        if p.top_p < 1:
            nucleus = _nucleus(probs, p.top_p)
            ids, probs = ids[nucleus], probs[nucleus]

        cum = np.cumsum(probs)
        u = self._rng.random() * cum[-1]
        pick = min(int(np.searchsorted(cum, u, side="right")), cum.shape[0] - 1)
        return int(ids[pick])

    def _penalize(self, x: np.ndarray, history: Sequence[int]) -> None:
        p = self.params
        if p.repeat_penalty == 1 or p.repeat_last_n == 0 or len(history) == 0:
            return
        recent = history if p.repeat_last_n == -1 else history[-p.repeat_last_n :]
        seen = np.unique(np.asarray(recent, dtype=np.int64))
        if seen[0] < 0 or seen[-1] >= self.vocab_size:
            raise ValueError(f"history holds token ids outside 0..{self.vocab_size - 1}")
        # llama.cpp: shrink positive logits, push negative ones further down.
        v = x[seen]
        x[seen] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest most-likely set whose probabilities add up to ``top_p``.

    Sorting the whole vocabulary costs tens of milliseconds per token, while the nucleus
    is usually a handful of tokens: sort only the top ``m`` (found by partition) and
    widen ``m`` until their sum reaches ``top_p``.
    """
    n = probs.shape[0]
    m = min(n, 64)
    while True:
        top = np.argpartition(-probs, m - 1)[:m] if m < n else np.arange(n)
        order = top[np.argsort(-probs[top], kind="stable")]
        cum = np.cumsum(probs[order])
        if cum[-1] >= top_p or m == n:
            # At least one token, even when top_p is below the largest probability.
            return order[: min(int(np.searchsorted(cum, top_p, side="left")) + 1, m)]
        m = n if m * 8 > n // 2 else m * 8
