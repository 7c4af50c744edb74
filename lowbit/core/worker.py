"""The core worker: one thread that owns the loaded model and runs jobs in turn.

Jobs (load, generate; later quantize, evaluate, download) are functions of a
:class:`JobContext`. They report progress and stream events through callbacks
that run on the worker thread; the desktop app forwards them to Qt signals,
the CLI reads them directly. Cancelling a job sets its :class:`CancelToken`,
which long jobs check and which also interrupts the C forward pass.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .engine import CancelToken, Engine, GenerationDone, GenerationStats, TokenEvent
from .errors import CancelledError, LowbitError
from .model import Model
from .sampling import SamplingParams

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """Progress of a long job. ``total`` is None when unknown."""

    job: str
    stage: str
    done: float
    total: float | None = None
    eta_s: float | None = None
    message: str = ""


class JobContext:
    """What a running job sees: its cancel token and its reporting callbacks."""

    def __init__(
        self,
        worker: Worker,
        name: str,
        cancel: CancelToken,
        on_progress: Callable[[Progress], None] | None,
        on_event: Callable[[Any], None] | None,
    ) -> None:
        self.worker = worker
        self.name = name
        self.cancel = cancel
        self._on_progress = on_progress
        self._on_event = on_event
        self._t0 = time.monotonic()

    def progress(self, stage: str, done: float, total: float | None = None, message: str = "") -> None:
        """Report progress; the ETA is extrapolated from the rate so far."""
        eta = None
        if total and done > 0:
            elapsed = time.monotonic() - self._t0
            eta = max(0.0, elapsed * (total - done) / done)
        if self._on_progress is not None:
            self._on_progress(Progress(self.name, stage, done, total, eta, message))

    def emit(self, event: Any) -> None:
        """Stream an event (e.g. a TokenEvent) to the caller."""
        if self._on_event is not None:
            self._on_event(event)


class Job(Generic[T]):
    """A submitted job: cancel it, or wait for its result."""

    def __init__(self, job_id: int, name: str) -> None:
        self.id = job_id
        self.name = name
        self.cancel_token = CancelToken()
        self.future: Future[T] = Future()

    def cancel(self) -> None:
        """Ask the job to stop. A job not yet started never runs."""
        self.cancel_token.cancel()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the job and return its result or raise its exception."""
        return self.future.result(timeout)

    @property
    def done(self) -> bool:
        return self.future.done()


@dataclass
class _Entry:
    job: Job[Any]
    fn: Callable[[JobContext], Any]
    on_progress: Callable[[Progress], None] | None
    on_event: Callable[[Any], None] | None
    on_done: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None


class Worker:
    """A single background thread that runs jobs one at a time and owns the model."""

    def __init__(self, name: str = "lowbit-worker") -> None:
        self._queue: queue.Queue[_Entry | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._model: Model | None = None
        self._current: Job[Any] | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    # -- generic -------------------------------------------------------------

    def submit(
        self,
        name: str,
        fn: Callable[[JobContext], T],
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_event: Callable[[Any], None] | None = None,
        on_done: Callable[[T], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> Job[T]:
        """Queue a job. Callbacks run on the worker thread.

        Raises:
            RuntimeError: The worker has been shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker has been shut down")
            job: Job[T] = Job(next(self._ids), name)
            self._queue.put(_Entry(job, fn, on_progress, on_event, on_done, on_error))
        return job

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                break
            job = entry.job
            if job.cancel_token.cancelled:
                job.future.set_exception(CancelledError(f"{job.name} was cancelled before it started"))
                _safe_call(entry.on_error, job.future.exception())
                continue
            if not job.future.set_running_or_notify_cancel():
                continue
            self._current = job
            ctx = JobContext(self, job.name, job.cancel_token, entry.on_progress, entry.on_event)
            try:
                result = entry.fn(ctx)
            except BaseException as e:  # reported to the caller, never lost
                if not isinstance(e, LowbitError | ValueError | OSError | MemoryError):
                    log.exception("job %s failed", job.name)
                job.future.set_exception(e)
                _safe_call(entry.on_error, e)
            else:
                job.future.set_result(result)
                _safe_call(entry.on_done, result)
            finally:
                self._current = None
        if self._model is not None:
            self._model.close()
            self._model = None

    def cancel_current(self) -> None:
        """Cancel the running job, if any."""
        job = self._current
        if job is not None:
            job.cancel()

    def shutdown(self, *, timeout: float | None = 5.0) -> bool:
        """Cancel the running job, finish, and free the model. True if the thread ended."""
        with self._lock:
            if not self._closed:
                self._closed = True
                # drain pending jobs so they are not started
                pending: list[_Entry] = []
                while True:
                    try:
                        e = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if e is not None:
                        pending.append(e)
                for e in pending:
                    e.job.cancel()
                    self._queue.put(e)
                self._queue.put(None)
        self.cancel_current()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- model jobs ------------------------------------------------------------

    @property
    def model(self) -> Model | None:
        """The loaded model (use it only from jobs)."""
        return self._model

    def load_model(self, path: str | Path, **options: Any) -> Job[Model]:
        """Load a GGUF model, replacing the current one. Options go to Model.load."""
        on = _pop_callbacks(options)

        def run(ctx: JobContext) -> Model:
            ctx.progress("load", 0, 1, f"Loading {Path(path).name}")
            ctx.cancel.raise_if_cancelled()
            if self._model is not None:
                self._model.close()
                self._model = None
            model = Model.load(path, **options)
            if ctx.cancel.cancelled:
                model.close()
                raise CancelledError("loading was cancelled")
            self._model = model
            ctx.progress("load", 1, 1, "Loaded")
            return model

        return self.submit("load", run, **on)

    def unload_model(self) -> Job[None]:
        def run(ctx: JobContext) -> None:
            if self._model is not None:
                self._model.close()
                self._model = None

        return self.submit("unload", run)

    def generate(
        self,
        *,
        prompt: str | None = None,
        messages: Sequence[Mapping[str, str]] | None = None,
        tokens: Sequence[int] | None = None,
        params: SamplingParams | None = None,
        max_tokens: int = 256,
        **callbacks: Any,
    ) -> Job[GenerationStats]:
        """Generate from a raw prompt, a conversation (chat template) or tokens.

        Streams TokenEvents to ``on_event``; the result is the GenerationStats.
        """
        on = _pop_callbacks(callbacks)
        if callbacks:
            raise TypeError(f"unexpected arguments: {', '.join(callbacks)}")
        if sum(x is not None for x in (prompt, messages, tokens)) != 1:
            raise ValueError("give exactly one of prompt, messages or tokens")

        def run(ctx: JobContext) -> GenerationStats:
            model = self._model
            if model is None:
                raise LowbitError("no model is loaded")
            engine = Engine(model)
            if tokens is not None:
                ids = list(tokens)
            elif messages is not None:
                ids = engine.encode_prompt(engine.render_chat(messages))
            else:
                ids = engine.encode_prompt(prompt or "")
            for ev in engine.generate(ids, params=params, max_tokens=max_tokens, cancel=ctx.cancel):
                if isinstance(ev, TokenEvent):
                    ctx.emit(ev)
                elif isinstance(ev, GenerationDone):
                    return ev.stats
            raise LowbitError("generation ended without a result")  # pragma: no cover

        return self.submit("generate", run, **on)

    def evaluate(self, reference: str | Path, candidates: Sequence[str | Path], **options: Any) -> Job[Any]:
        """Compare candidates with a reference; options and result (an EvalReport) as in
        :func:`lowbit.core.evaluate.evaluate`. Runs its own models, not the loaded one."""
        from .evaluate import evaluate

        on = _pop_callbacks(options)
        return self.submit(
            "evaluate",
            lambda ctx: evaluate(reference, candidates, progress=ctx.progress, cancel=ctx.cancel, **options),
            **on,
        )

    def quantize(self, src: str | Path, dst: str | Path, **options: Any) -> Job[Any]:
        """Quantize a full-precision model; options and result (a QuantizeResult) as in
        :func:`lowbit.core.quantize.quantize_model`. A cancelled job leaves no file."""
        from .quantize import quantize_model

        on = _pop_callbacks(options)
        return self.submit(
            "quantize",
            lambda ctx: quantize_model(src, dst, progress=ctx.progress, cancel=ctx.cancel, **options),
            **on,
        )

    def estimate(self, src: str | Path, **options: Any) -> Job[Any]:
        """Size and estimated quality loss of each preset; options and result (a list of
        PresetEstimate) as in :func:`lowbit.core.estimate.estimate`."""
        from .estimate import estimate

        on = _pop_callbacks(options)
        return self.submit(
            "estimate",
            lambda ctx: estimate(src, progress=ctx.progress, cancel=ctx.cancel, **options),
            **on,
        )

    def preview(self, src: str | Path, presets: Sequence[str], **options: Any) -> Job[Any]:
        """Quantize to several presets and measure each; options and result (a
        PreviewResult) as in :func:`lowbit.core.preview.preview`."""
        from .preview import preview

        on = _pop_callbacks(options)
        return self.submit(
            "preview",
            lambda ctx: preview(src, presets, progress=ctx.progress, cancel=ctx.cancel, **options),
            **on,
        )

    def search(self, query: str = "", **options: Any) -> Job[Any]:
        """Search the Hub; options and result (a list of HubModel) as in
        :func:`lowbit.core.hub.search`."""
        from .hub import search

        on = _pop_callbacks(options)
        return self.submit("search", lambda ctx: search(query, **options), **on)

    def download(self, library: Any, repo_id: str, **options: Any) -> Job[Any]:
        """Download a model into a :class:`~lowbit.core.library.Library`; options and result
        (the new entries) as in :meth:`Library.download`. Progress goes to ``on_progress``,
        a :class:`~lowbit.core.hub.DownloadProgress` per update (file, speed, ETA) to
        ``on_event``. A cancelled download keeps its partial file and resumes next time."""
        on = _pop_callbacks(options)
        return self.submit(
            "download",
            lambda ctx: library.download(
                repo_id, progress=ctx.progress, on_update=ctx.emit, cancel=ctx.cancel, **options
            ),
            **on,
        )

    def fetch_starter(self, library: Any, **options: Any) -> Job[Any]:
        """Get the starter model into a library; options and result (its entry) as in
        :meth:`Library.fetch_starter`."""
        on = _pop_callbacks(options)
        return self.submit(
            "starter",
            lambda ctx: library.fetch_starter(
                progress=ctx.progress, on_update=ctx.emit, cancel=ctx.cancel, **options
            ),
            **on,
        )


def _pop_callbacks(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: kw.pop(k) for k in ("on_progress", "on_event", "on_done", "on_error") if k in kw}


def _safe_call(cb: Callable[[Any], None] | None, arg: Any) -> None:
    if cb is None:
        return
    try:
        cb(arg)
    except Exception:  # a broken callback must not kill the worker
        log.exception("worker callback failed")
