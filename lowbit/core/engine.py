"""Text generation on a loaded model: prompt in, streamed text out.

Generation is a generator of events, so the caller decides how to show them
and cancels by calling :meth:`CancelToken.cancel` (which also interrupts a long
prompt inside the C library) or by simply not iterating further.

When the context is full, generation stops with ``finish_reason ==
"context"``; a prompt that does not fit raises :class:`ContextFullError` before
any work. Lowbit does not silently drop old tokens: a chat that outgrows the
context is a decision for the person (start a new chat or raise the context).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CancelledError, ChatTemplateError, ContextFullError
from .model import Model
from .sampling import Sampler, SamplingParams


class CancelToken:
    """A thread-safe cancellation flag with callbacks run on cancel."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled")

    def on_cancel(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Run cb when cancelled (at once if already). Returns a remover."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._callbacks.append(cb)
        if already:
            cb()

        def remove() -> None:
            with self._lock:
                if cb in self._callbacks:
                    self._callbacks.remove(cb)

        return remove


@dataclass(frozen=True)
class TokenEvent:
    """A piece of generated text (may be empty while a UTF-8 character is incomplete)."""

    token_id: int
    text: str
    n_generated: int
    n_context: int  # tokens in the context after this one


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int  # tokens of the prompt
    prompt_evaluated: int  # of those, processed (the rest came from the cache)
    generated_tokens: int
    ttft_s: float  # prompt processing up to the first sampled token
    prompt_tps: float
    decode_tps: float
    finish_reason: str  # "stop" | "length" | "context" | "cancelled"
    text: str


@dataclass(frozen=True)
class GenerationDone:
    stats: GenerationStats


class Engine:
    """Generation with a model's tokenizer and chat template."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.tokenizer = model.tokenizer

    def render_chat(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt text for a conversation, from the model's chat template.

        Raises:
            ChatTemplateError: The model has no usable chat template.
        """
        tmpl = self.model.chat_template
        if tmpl is None:
            raise ChatTemplateError(
                f"{self.model.path.name} has no chat template; use a plain prompt instead"
            )
        return tmpl.render(messages, add_generation_prompt=True)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Tokenize a prompt, adding BOS as the model asks (never twice: a template
        that writes the BOS text itself is recognised). Special-token text such as
        ``<|im_start|>`` is parsed, as a chat template writes it."""
        return self.tokenizer.encode(prompt, parse_special=True)

    def generate(
        self,
        prompt_tokens: Sequence[int],
        *,
        params: SamplingParams | None = None,
        max_tokens: int = 256,
        cancel: CancelToken | None = None,
        stop_ids: frozenset[int] | None = None,
    ) -> Iterator[TokenEvent | GenerationDone]:
        """Generate from prompt tokens, yielding TokenEvents then one GenerationDone.

        Args:
            prompt_tokens: The tokenized prompt (BOS included when wanted).
            params: Sampling settings; greedy when None.
            max_tokens: Most tokens to generate.
            cancel: Stops the generation (finish_reason "cancelled").
            stop_ids: Tokens that end the reply; default: the model's end-of-generation tokens.

        Raises:
            ContextFullError: The prompt alone does not fit in the context.
            ValueError: Empty prompt or bad max_tokens.
        """
        if not prompt_tokens:
            raise ValueError("the prompt is empty")
        if max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        model = self.model
        n_prompt = len(prompt_tokens)
        if n_prompt >= model.n_ctx:
            raise ContextFullError(
                f"the prompt has {n_prompt} tokens but the context holds {model.n_ctx}; "
                "shorten it or raise the context length",
                needed=n_prompt,
                n_ctx=model.n_ctx,
            )
        params = params or SamplingParams(temperature=0.0)
        sampler = Sampler(params, model.n_vocab)
        # Embedding rows past the vocabulary (padding) must never be sampled.
        n_real = self.tokenizer.vocab_size
        stops = self.tokenizer.eog_ids if stop_ids is None else stop_ids
        cancel = cancel or CancelToken()
        remove = cancel.on_cancel(model.cancel)
        decoder = self.tokenizer.stream_decoder()
        history = list(prompt_tokens)
        pieces: list[str] = []
        n_gen = 0
        finish = "length"
        t0 = time.perf_counter()
        ttft = 0.0
        t_first = t0
        # eval_prompt reuses the cached prefix and always recomputes the last token
        evaluated = n_prompt - _common_prefix(model.cached_tokens, prompt_tokens, n_prompt - 1)
        try:
            try:
                logits = model.eval_prompt(list(prompt_tokens))
            except CancelledError:
                finish = "cancelled"
                logits = None
            while logits is not None and n_gen < max_tokens:
                if cancel.cancelled:
                    finish = "cancelled"
                    break
                if n_real < logits.shape[0]:
                    logits[n_real:] = -np.inf
                tok = sampler.sample(logits, history)
                if n_gen == 0:
                    t_first = time.perf_counter()
                    ttft = t_first - t0
                n_gen += 1
                history.append(tok)
                if tok in stops:
                    finish = "stop"
                    break
                text = decoder.push(tok)
                pieces.append(text)
                yield TokenEvent(tok, text, n_gen, len(history))
                if len(history) >= model.n_ctx:
                    finish = "context"
                    break
                if n_gen >= max_tokens:
                    break
                try:
                    logits = model.forward([tok], len(history) - 1)
                except CancelledError:
                    finish = "cancelled"
                    break
            tail = decoder.flush()
            if tail:
                pieces.append(tail)
                yield TokenEvent(-1, tail, n_gen, len(history))
        finally:
            remove()
        t_end = time.perf_counter()
        decode_time = t_end - t_first
        n_decode = max(0, n_gen - 1)  # the first token's time is in ttft
        stats = GenerationStats(
            prompt_tokens=n_prompt,
            prompt_evaluated=evaluated if ttft > 0 else 0,
            generated_tokens=n_gen,
            ttft_s=ttft,
            prompt_tps=(evaluated / ttft) if ttft > 0 else 0.0,
            decode_tps=(n_decode / decode_time) if n_decode and decode_time > 0 else 0.0,
            finish_reason=finish,
            text="".join(pieces),
        )
        yield GenerationDone(stats)


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    m = min(len(a), len(b), limit)
    while n < m and a[n] == b[n]:
        n += 1
    return n
