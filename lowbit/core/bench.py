"""Speed of a model on this machine, measured the way llama-bench does, plus the roofline.

As in llama-bench, the prompt test (pp) and the generation test (tg) are separate: each
starts from a cache holding ``depth`` tokens (llama-bench's ``-d``, 0 by default, an
empty cache), so decoding speed does not depend on the prompt length chosen for pp.

Decoding one token reads every weight once, so its speed is bounded by memory
bandwidth: ``bytes_per_token * tokens_per_second <= bandwidth``. The benchmark
measures both sides in the same run with the same thread count and reports how
close decoding comes to that bound. (A model small enough to stay in the CPU's
caches is not bound by main memory and may pass 100%.)

Lowbit's model code is imported inside the functions: :func:`time_generation` and
:func:`time_pp_tg` also drive other engines, in processes that should not load it.
"""

from __future__ import annotations

import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ContextFullError, TokenizerError

if TYPE_CHECKING:
    from .gguf_file import GGUFFile
    from .tokenizer import Tokenizer

ProgressFn = Callable[[str, float, "float | None", str], None]

BUILTIN_PROMPT_TEXT = "eval.txt"  # in lowbit/resources/texts/


@dataclass(frozen=True)
class BenchResult:
    """One model's speed on this machine. Speeds are medians over the repetitions."""

    model: str  # file name
    type: str  # the file's type label, e.g. "Q4_K_M"
    file_mib: float
    n_params: int
    threads: int
    prompt_tokens: int
    gen_tokens: int
    reps: int
    prompt_tps: float  # prompt tokens / one forward call over them
    decode_tps: float  # generated tokens / their single-token forward calls
    ttft_s: float  # prompt processing plus choosing the first token
    peak_rss_mib: float  # the process's high-water mark, taken before the bandwidth test
    bytes_per_token: int  # weight bytes one decode step reads
    bandwidth_gbs: float  # measured memory read bandwidth, 1 GB = 1e9 bytes
    roofline_pct: float  # decode speed as a share of bandwidth / bytes_per_token
    isa: str | None  # the kernel library's instruction set, when it reports one
    kv_type: str = "f16"  # the KV cache type
    depth: int = 0  # tokens in the cache before each test

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values, floats rounded for display."""
        d = asdict(self)
        for key, digits in (
            ("file_mib", 2),
            ("prompt_tps", 2),
            ("decode_tps", 2),
            ("ttft_s", 4),
            ("peak_rss_mib", 1),
            ("bandwidth_gbs", 2),
            ("roofline_pct", 2),
        ):
            d[key] = round(d[key], digits)
        return d


@dataclass(frozen=True)
class RunTiming:
    """Wall-clock seconds of one run: a prompt, and decoding (after it, or on its own)."""

    prompt_tokens: int
    gen_tokens: int
    prompt_s: float  # the forward call over the prompt
    ttft_s: float  # that call plus choosing the first token
    decode_s: float  # every single-token call and its greedy choice

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_s if self.prompt_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return self.gen_tokens / self.decode_s if self.decode_s > 0 else 0.0


def _greedy(logits: np.ndarray, n_real: int | None) -> int:
    # Embedding rows past the vocabulary are padding and never chosen.
    return int(np.argmax(logits if n_real is None else logits[:n_real]))


def time_generation(
    prefill: Callable[[Sequence[int]], np.ndarray],
    step: Callable[[int, int], np.ndarray],
    prompt: Sequence[int],
    gen_tokens: int,
    *,
    n_real: int | None = None,
    cancel: Any = None,
) -> RunTiming:
    """Time a prompt forward call followed by greedy decoding, one call per token.

    Engine-neutral, so that two engines driven through it do exactly the same Python work.

    Args:
        prefill: Runs the prompt from an empty cache; returns the last position's logits.
        step: Runs one token at a position; returns its logits.
        prompt: The prompt token ids.
        gen_tokens: Single-token calls to time after the first token.
        n_real: Choose only among ids below this (the tokenizer's vocabulary size).
        cancel: An object with ``raise_if_cancelled()``, checked between calls.

    Returns:
        The timings.

    Raises:
        CancelledError: ``cancel`` was cancelled.
    """
    return _time_calls(lambda: prefill(prompt), step, len(prompt), gen_tokens, len(prompt), n_real, cancel)


def _time_calls(
    run_prompt: Callable[[], np.ndarray],
    step: Callable[[int, int], np.ndarray],
    n_prompt: int,
    gen_tokens: int,
    pos: int,
    n_real: int | None,
    cancel: Any,
) -> RunTiming:
    # The prompt call, the first greedy choice, then decoding from position pos.
    t0 = time.perf_counter()
    logits = run_prompt()
    t1 = time.perf_counter()
    tok = _greedy(logits, n_real)
    t2 = time.perf_counter()
    for i in range(gen_tokens):
        if cancel is not None:
            cancel.raise_if_cancelled()
        tok = _greedy(step(tok, pos + i), n_real)
    t3 = time.perf_counter()
    return RunTiming(n_prompt, gen_tokens, prompt_s=t1 - t0, ttft_s=t2 - t0, decode_s=t3 - t2)


def time_pp_tg(
    prefill: Callable[[Sequence[int], int], np.ndarray],
    step: Callable[[int, int], np.ndarray],
    prompt: Sequence[int],
    gen_tokens: int,
    *,
    pos: int = 0,
    n_real: int | None = None,
    cancel: Any = None,
) -> RunTiming:
    """Time llama-bench's two tests: the prompt in one call, and decoding on its own.

    Both start from a cache holding ``pos`` tokens (the depth), which neither test
    changes: the prompt at position ``pos``, then decoding from that same position, which
    drops what the prompt left in the cache, one call per token from the prompt's greedy
    choice. So one filling of the depth serves any number of runs.

    Args:
        prefill: Runs tokens from a position; returns the last position's logits.
        step: Runs one token at a position; returns its logits.
        prompt: The prompt token ids.
        gen_tokens: Single-token calls to time.
        pos: Tokens the cache already holds.
        n_real: Choose only among ids below this (the tokenizer's vocabulary size).
        cancel: An object with ``raise_if_cancelled()``, checked between calls.

    Returns:
        The timings.

    Raises:
        CancelledError: ``cancel`` was cancelled.
    """
    return _time_calls(lambda: prefill(prompt, pos), step, len(prompt), gen_tokens, pos, n_real, cancel)


def decode_bytes_per_token(gf: GGUFFile) -> int:
    """Bytes of weights that one decode step reads.

    Every tensor the engine uses is read whole, except the token embedding, of which
    one row is read per token. With tied embeddings the same matrix is the output
    projection, read whole, and is counted once as such.

    Args:
        gf: The opened model file.

    Returns:
        The byte count.
    """
    # The engine's own tables of the tensors it uses, so that both count the same set.
    from .model import _LAYER_RE, _ROLES_GLOBAL, _ROLES_LAYER

    total = 0
    for name, t in gf.tensors.items():
        m = _LAYER_RE.match(name)
        if (m.group(2) not in _ROLES_LAYER) if m else (name not in _ROLES_GLOBAL):
            continue
        if name == "token_embd.weight" and "output.weight" in gf.tensors:
            rows = math.prod(t.shape[1:])
            total += t.nbytes // rows
        else:
            total += t.nbytes
    return total


def peak_rss_mib() -> float:
    """The process's peak resident memory so far, in MiB."""
    # On Linux ru_maxrss survives exec, so a child would report its parent's peak if that
    # was higher; VmHWM belongs to the process's own address space.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows: the peak working set
        import psutil

        info = psutil.Process().memory_info()
        return float(getattr(info, "peak_wset", info.rss)) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def measure_bandwidth(n_threads: int, *, buffer_mib: int | None = None, repeats: int = 5) -> float:
    """Memory read bandwidth in GB/s (1e9 bytes), as n_threads threads see it.

    Each thread reads its own buffer, far larger than any cache, with ``np.max``:
    numpy releases the GIL for it, so the threads run in parallel, and it keeps more
    loads in flight than numpy's sum, which reads about a fifth slower from memory.
    Each thread times its own reads, and a round lasts from the first thread's start
    to the last one's end. (Timed from the thread that starts the rounds, a round
    also counted that thread's waits for a core, which it shares with the readers
    when they are as many as the cores; runs then came out up to a quarter above or
    below what a C loop of vector loads reads.) The best of ``repeats`` rounds
    counts, as other work on the machine can only slow a round down.

    Args:
        n_threads: Reading threads.
        buffer_mib: Each thread's buffer; default 256 MiB, less with many threads
            (at least 64 MiB each, about 1 GiB in all).
        repeats: Rounds to time.

    Returns:
        Bytes read per second, in GB/s.

    Raises:
        ValueError: n_threads, buffer_mib or repeats below 1.
    """
    if n_threads < 1 or repeats < 1 or (buffer_mib is not None and buffer_mib < 1):
        raise ValueError("threads, buffer size and repeats must be positive")
    mib = buffer_mib or max(64, min(256, 1024 // n_threads))
    # Filled, not np.empty: untouched pages all map the one zero page and read from cache.
    bufs = [np.ones(mib * 2**20 // 8, dtype=np.int64) for _ in range(n_threads)]
    start = threading.Barrier(n_threads)
    began = [[0.0] * repeats for _ in bufs]
    ended = [[0.0] * repeats for _ in bufs]

    def read(i: int) -> None:
        for r in range(repeats):
            start.wait()
            began[i][r] = time.perf_counter()
            np.max(bufs[i])
            ended[i][r] = time.perf_counter()

    # Threads live across rounds so that start-up costs stay out of the timing.
    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    best = min(max(e[r] for e in ended) - min(b[r] for b in began) for r in range(repeats))
    return n_threads * mib * 2**20 / max(best, 1e-9) / 1e9


def synthetic_prompt(tokenizer: Tokenizer, n_tokens: int) -> list[int]:
    """A fixed prompt of n_tokens valid ids: BOS if the model wants one, then the built-in
    evaluation text's tokens, repeated as needed.

    Raises:
        TokenizerError: The text gives no tokens, or the built-in text is missing.
    """
    from importlib import resources

    try:
        text = resources.files("lowbit.resources").joinpath("texts", BUILTIN_PROMPT_TEXT).read_text("utf-8")
    except (FileNotFoundError, NotADirectoryError) as e:
        raise TokenizerError(f"the built-in text ({BUILTIN_PROMPT_TEXT}) is missing") from e
    head = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    # A slice of the text is enough: a token covers at least one character.
    body = tokenizer.encode(text[: max(256, n_tokens * 2)], add_bos=False, parse_special=False)
    if not body:
        raise TokenizerError("the built-in text gives no tokens with this model's tokenizer")
    ids = head + body * (n_tokens // len(body) + 1)
    return ids[:n_tokens]


def file_type_label(gf: GGUFFile) -> str:
    """The file's type as llama.cpp names it (Q4_K_M, Q8_0...), else its most common matrix type."""
    import gguf

    ft = gf.metadata.get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(ft)).name if ft is not None else ""
    except (ValueError, TypeError):
        name = ""
    if name and name != "GUESSED":
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    matrices = [t.type_name for t in gf.tensors.values() if len(t.shape) > 1]
    return max(set(matrices), key=matrices.count) if matrices else "?"


def native_isa() -> str | None:
    """The instruction set the kernel library chose, if the library reports it."""
    from . import native

    isa = getattr(native, "isa", None)
    try:
        value = isa() if callable(isa) else isa
    except Exception:  # e.g. Python code newer than the built library: not worth failing over
        return None
    return str(value) if value else None


def benchmark(
    path: str | Path,
    *,
    n_threads: int | None = None,
    prompt_tokens: int = 512,
    gen_tokens: int = 128,
    reps: int = 1,
    bandwidth_gbs: float | None = None,
    progress: ProgressFn | None = None,
    cancel: Any = None,
    kv_type: str = "f16",
    depth: int = 0,
) -> BenchResult:
    """Measure prompt and decode speed, peak memory and the memory roofline of a model.

    Each repetition runs llama-bench's two tests (see :func:`time_pp_tg`): a fixed
    prompt in one forward call, and ``gen_tokens`` tokens decoded greedily, one forward
    call each (end-of-text tokens do not stop it), both from a cache holding ``depth``
    tokens. A short warm-up first pages the weights in.

    Args:
        path: The GGUF file.
        n_threads: Threads for the model and the bandwidth test; default: physical cores.
        prompt_tokens: Length of the prompt.
        gen_tokens: Tokens decoded after the first one.
        reps: Repetitions; the speeds are their medians.
        bandwidth_gbs: A bandwidth measured before, to skip measuring it again.
        progress: Called with (stage, done, total, message).
        cancel: An object with ``raise_if_cancelled()`` (e.g. engine.CancelToken).
        kv_type: KV cache type, "f16" or "q8_0".
        depth: Tokens in the cache before each test (llama-bench's ``-d``). The
            roofline counts weights only, so at a depth it leaves out the cache reads.

    Returns:
        The measurements.

    Raises:
        ModelNotFoundError: The file does not exist.
        ModelFormatError: The file is damaged or lacks required metadata.
        UnsupportedModelError: Unknown architecture or tensor type.
        TokenizerError: The model has no usable vocabulary.
        ContextFullError: The depth and the longer test exceed the model's context.
        CancelledError: ``cancel`` was cancelled.
        ValueError: A count below 1 (depth below 0), or an unknown KV cache type.
    """
    from .gguf_file import open_gguf
    from .model import Model, check_kv_type, default_threads, read_hparams

    if prompt_tokens < 1 or gen_tokens < 1 or reps < 1:
        raise ValueError("prompt tokens, generated tokens and repetitions must be at least 1")
    if depth < 0:
        raise ValueError("the depth must not be negative")
    kv_type = check_kv_type(kv_type)
    n_threads = n_threads or default_threads()
    report = progress or (lambda *a: None)

    def check() -> None:
        if cancel is not None:
            cancel.raise_if_cancelled()

    report("load", 0, None, "")
    gf = open_gguf(path)
    hp = read_hparams(gf)
    needed = depth + max(prompt_tokens, gen_tokens)
    if needed > hp.n_ctx_train:
        longer = max((prompt_tokens, "prompt tokens"), (gen_tokens, "generated tokens"))
        test = f"{longer[0]} {longer[1]}"
        what = f"{depth} tokens of depth + {test} = {needed}" if depth else test
        raise ContextFullError(
            f"{what} exceed the model's context of {hp.n_ctx_train} tokens",
            needed=needed,
            n_ctx=hp.n_ctx_train,
        )
    with Model.load(gf, n_ctx=max(8, needed), n_threads=n_threads, kv_type=kv_type) as model:
        text = synthetic_prompt(model.tokenizer, depth + prompt_tokens)
        fill, prompt = text[:depth], text[depth:]
        n_real = min(model.tokenizer.vocab_size, model.n_vocab)

        def step(tok: int, pos: int) -> np.ndarray:
            return model.forward([tok], pos)

        check()
        report("warm-up", 0, None, "")
        time_pp_tg(model.forward, step, prompt[: min(16, prompt_tokens)], 1, n_real=n_real)
        if depth:  # untimed, once: the tests leave the cache below the depth as it is
            model.forward(fill, 0)
        runs: list[RunTiming] = []
        for i in range(reps):
            check()
            report("run", i, reps, f"repetition {i + 1} of {reps}")
            runs.append(
                time_pp_tg(model.forward, step, prompt, gen_tokens, pos=depth, n_real=n_real, cancel=cancel)
            )
        report("run", reps, reps, "")
    peak = peak_rss_mib()  # before the bandwidth test, whose buffers are not the model's
    check()
    if bandwidth_gbs is None:
        report("bandwidth", 0, None, f"{n_threads} threads")
        bandwidth_gbs = measure_bandwidth(n_threads)
    bpt = decode_bytes_per_token(gf)
    decode_tps = statistics.median(r.decode_tps for r in runs)
    return BenchResult(
        model=gf.path.name,
        type=file_type_label(gf),
        file_mib=gf.size / 2**20,
        n_params=gf.n_params(),
        threads=n_threads,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        reps=reps,
        prompt_tps=statistics.median(r.prompt_tps for r in runs),
        decode_tps=decode_tps,
        ttft_s=statistics.median(r.ttft_s for r in runs),
        peak_rss_mib=peak,
        bytes_per_token=bpt,
        bandwidth_gbs=bandwidth_gbs,
        roofline_pct=100 * bpt * decode_tps / (bandwidth_gbs * 1e9) if bandwidth_gbs > 0 else 0.0,
        isa=native_isa(),
        kv_type=kv_type,
        depth=depth,
    )
