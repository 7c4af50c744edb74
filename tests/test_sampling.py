"""Sampler tests: each filter checked against sets computed independently in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from lowbit.core.sampling import Sampler, SamplingParams

PLAIN = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}  # no truncation at all


def _softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.exp((x - x.max()) / temperature)
    return z / z.sum()


def _logits(n: int, seed: int, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, scale, n).astype(np.float32)


def _draws(sampler: Sampler, logits: np.ndarray, n: int, history: list[int] | None = None) -> np.ndarray:
    return np.array([sampler.sample(logits, history or []) for _ in range(n)])


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -0.1, "temperature"),
        ("temperature", float("nan"), "temperature"),
        ("top_k", -1, "top_k"),
        ("top_k", 2.5, "top_k"),
        ("top_p", 0.0, "top_p"),
        ("top_p", 1.01, "top_p"),
        ("min_p", -0.01, "min_p"),
        ("min_p", 1.5, "min_p"),
        ("repeat_penalty", 0.0, "repeat_penalty"),
        ("repeat_last_n", -2, "repeat_last_n"),
        ("seed", -5, "seed"),
        ("seed", 1.5, "seed"),
    ],
)
def test_params_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**{field: value})


def test_params_defaults_are_valid() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repeat_penalty, p.repeat_last_n, p.seed) == (
        0.8,
        40,
        0.95,
        0.05,
        1.0,
        64,
        None,
    )
    assert SamplingParams(temperature=0).greedy and not p.greedy


def test_bad_logits_and_history() -> None:
    s = Sampler(SamplingParams(seed=0), 4)
    with pytest.raises(ValueError, match="NaN"):
        s.sample(np.array([0.0, np.nan, 1.0, 2.0]), [])
    with pytest.raises(ValueError, match="expected 4 logits"):
        s.sample(np.zeros(5), [])
    with pytest.raises(ValueError, match="banned"):
        s.sample(np.full(4, -np.inf), [])
    penalised = Sampler(SamplingParams(seed=0, repeat_penalty=1.1), 4)
    with pytest.raises(ValueError, match="history"):
        penalised.sample(np.zeros(4), [7])
    with pytest.raises(ValueError, match="vocab_size"):
        Sampler(SamplingParams(), 0)


# --------------------------------------------------------------------------- determinism


def _sequence(seed: int | None, steps: int = 200) -> list[int]:
    sampler = Sampler(SamplingParams(seed=seed, temperature=1.0, top_k=50, top_p=0.98, min_p=0.0), 500)
    rng = np.random.default_rng(99)  # the "model": same logits for every run
    history: list[int] = []
    for _ in range(steps):
        history.append(sampler.sample(rng.normal(0, 1.0, 500), history))
    return history


def test_same_seed_same_sequence() -> None:
    assert _sequence(1234) == _sequence(1234)


def test_different_seeds_differ() -> None:
    assert _sequence(1234) != _sequence(1235)
    assert _sequence(None) != _sequence(None)


def test_greedy_is_argmax() -> None:
    logits = _logits(1000, seed=1)
    s = Sampler(SamplingParams(temperature=0.0), 1000)
    assert all(s.sample(logits, []) == int(np.argmax(logits)) for _ in range(20))
    for seed in range(20):
        x = _logits(300, seed=seed)
        assert Sampler(SamplingParams(temperature=0.0, seed=seed), 300).sample(x, []) == int(np.argmax(x))


def test_temperature_near_zero_is_greedy() -> None:
    for seed in range(10):
        x = _logits(2000, seed=seed, scale=1.0)
        s = Sampler(SamplingParams(temperature=1e-6, seed=seed, **PLAIN), 2000)
        assert set(_draws(s, x, 50)) == {int(np.argmax(x))}


# --------------------------------------------------------------------------- truncation


def test_top_k_stays_in_k_largest() -> None:
    x = _logits(5000, seed=3, scale=0.5)  # flat: without top-k most draws would be elsewhere
    k = 7
    allowed = set(np.argsort(x)[-k:].tolist())
    s = Sampler(SamplingParams(seed=5, temperature=2.0, top_k=k, top_p=1.0, min_p=0.0), x.size)
    drawn = set(_draws(s, x, 3000).tolist())
    assert drawn <= allowed
    assert drawn == allowed  # and all of them are reachable


def _numpy_nucleus(x: np.ndarray, p: float, temp: float) -> set[int]:
    probs = _softmax(x.astype(np.float64), temp)
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    return set(order[: int(np.argmax(cum >= p)) + 1].tolist())


def test_top_p_stays_in_nucleus() -> None:
    x = _logits(200, seed=4, scale=2.0)
    p, temp = 0.7, 1.3
    nucleus = _numpy_nucleus(x, p, temp)
    s = Sampler(SamplingParams(seed=6, temperature=temp, top_k=0, top_p=p, min_p=0.0), x.size)
    drawn = set(_draws(s, x, 5000).tolist())
    assert drawn <= nucleus
    assert len(nucleus) > 3 and drawn == nucleus


def test_top_p_wide_nucleus_in_large_vocab() -> None:
    # A flat distribution: the nucleus holds thousands of tokens, far past the sampler's
    # first partial sort.
    x = _logits(5000, seed=5, scale=0.5)
    nucleus = _numpy_nucleus(x, 0.5, 1.0)
    s = Sampler(SamplingParams(seed=8, temperature=1.0, top_k=0, top_p=0.5, min_p=0.0), x.size)
    drawn = set(_draws(s, x, 1000).tolist())
    assert len(nucleus) > 1000 and len(drawn) > 300
    assert drawn <= nucleus


def test_top_p_keeps_at_least_one_token() -> None:
    x = np.array([5.0, 1.0, 0.0, -1.0])
    s = Sampler(SamplingParams(seed=1, temperature=1.0, top_k=0, top_p=1e-9, min_p=0.0), 4)
    assert set(_draws(s, x, 200).tolist()) == {0}


def test_min_p_never_below_threshold() -> None:
    x = _logits(300, seed=8, scale=1.5)
    min_p, temp = 0.2, 1.0
    probs = _softmax(x.astype(np.float64), temp)
    allowed = set(np.flatnonzero(probs >= min_p * probs.max()).tolist())
    s = Sampler(SamplingParams(seed=9, temperature=temp, top_k=0, top_p=1.0, min_p=min_p), x.size)
    drawn = set(_draws(s, x, 5000).tolist())
    assert drawn <= allowed
    assert len(allowed) > 2 and drawn == allowed


def test_chain_top_k_top_p_min_p_together() -> None:
    x = _logits(1000, seed=10, scale=1.0)
    k, p, min_p, temp = 30, 0.8, 0.1, 0.9
    top = np.argsort(-x)[:k]
    probs = _softmax(x[top].astype(np.float64), temp)  # already sorted descending
    n_p = int(np.argmax(np.cumsum(probs) >= p)) + 1
    kept = [i for i, q in zip(top[:n_p], probs[:n_p], strict=True) if q >= min_p * probs[0]]
    s = Sampler(SamplingParams(seed=2, temperature=temp, top_k=k, top_p=p, min_p=min_p), x.size)
    assert set(_draws(s, x, 4000).tolist()) == set(np.asarray(kept).tolist())


def test_minus_infinity_bans_a_token() -> None:
    x = np.array([0.0, -np.inf, 0.0, -np.inf])
    s = Sampler(SamplingParams(seed=3, temperature=1.0, **PLAIN), 4)
    assert set(_draws(s, x, 500).tolist()) == {0, 2}


# --------------------------------------------------------------------------- repetition penalty


def _greedy(x: list[float], history: list[int], penalty: float = 2.0, last_n: int = 64) -> int:
    params = SamplingParams(temperature=0.0, repeat_penalty=penalty, repeat_last_n=last_n)
    return Sampler(params, len(x)).sample(np.array(x), history)


def test_repeat_penalty_divides_positive_logits() -> None:
    # Token 0 (2.0) penalised by 2 becomes 1.0: just below 1.01, just above 0.99.
    assert _greedy([2.0, 1.01], [0]) == 1
    assert _greedy([2.0, 0.99], [0]) == 0
    assert _greedy([2.0, 1.01], []) == 0


def test_repeat_penalty_multiplies_negative_logits() -> None:
    # Token 0 (-1.0) penalised by 2 becomes -2.0: below -1.99, above -2.01.
    assert _greedy([-1.0, -1.99], [0]) == 1
    assert _greedy([-1.0, -2.01], [0]) == 0


def test_repeat_penalty_counts_a_token_once_and_only_in_window() -> None:
    # Applied once however often the token repeats: 2.0 -> 1.0, not 0.5.
    assert _greedy([2.0, 0.9], [0, 0, 0]) == 0
    # Token 0 is outside the last 2 tokens of the history, so it is not penalised.
    assert _greedy([2.0, 1.01, 0.0, 0.0], [0, 2, 3], last_n=2) == 0
    assert _greedy([2.0, 1.01, 0.0, 0.0], [0, 2, 3], last_n=3) == 1
    assert _greedy([2.0, 1.01, 0.0, 0.0], [0, 2, 3], last_n=0) == 0
    assert _greedy([2.0, 1.01, 0.0, 0.0], [0, 2, 3], last_n=-1) == 1


def test_repeat_penalty_shifts_sampled_distribution() -> None:
    x = np.array([1.0, 1.0, -0.5, -0.5])
    history = [0, 2]
    penalised = np.array([0.5, 1.0, -1.0, -0.5])  # llama.cpp rule with penalty 2
    s = Sampler(SamplingParams(seed=4, temperature=1.0, repeat_penalty=2.0, **PLAIN), 4)
    freq = np.bincount(_draws(s, x, 20000, history), minlength=4) / 20000
    assert np.allclose(freq, _softmax(penalised), atol=0.015)


# --------------------------------------------------------------------------- distribution


def test_frequencies_match_softmax() -> None:
    x = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0, 0.25, 1.25])
    n = 20000
    s = Sampler(SamplingParams(seed=2024, temperature=1.0, **PLAIN), x.size)
    counts = np.bincount(_draws(s, x, n), minlength=x.size)
    expected = n * _softmax(x)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 9 degrees of freedom: the 99.9th percentile is 27.9.
    assert chi2 < 27.9, (chi2, counts, expected.round())


def test_temperature_sharpens_and_flattens() -> None:
    x = np.array([1.0, 0.0])
    n = 20000
    for temp in (0.5, 2.0):
        s = Sampler(SamplingParams(seed=7, temperature=temp, **PLAIN), 2)
        share = np.mean(_draws(s, x, n) == 0)
        assert abs(share - _softmax(x, temp)[0]) < 0.015


def test_large_vocab_is_fast_enough() -> None:
    import time

    x = _logits(150_000, seed=12)
    s = Sampler(SamplingParams(seed=1), x.size)
    start = time.perf_counter()
    for _ in range(50):
        s.sample(x, list(range(64)))
    # Generous: a sort of the whole vocabulary per token would still pass on a slow
    # machine, but this catches a Python-level loop over the vocabulary.
    assert (time.perf_counter() - start) / 50 < 0.05
