"""Qt side of the core workers: a request returns a JobHandle whose signals report it.

The core workers call their callbacks on their own threads, which Qt did not
start. Those callbacks only put plain data on a thread-safe queue; a timer in
the GUI thread drains it every 25 ms and emits the handles' signals there. No
Qt call is made from a worker thread at all: PySide's signal emission from
threads it does not know corrupted reference counts under load (seen as crashes
at exit), and the timer also batches streamed tokens into a few updates a frame.

Jobs run in lanes, one core Worker each, so that a download does not hold up a
chat: ``model`` owns the loaded model and runs generation, quantization and
evaluation (they compete for the same cores anyway); ``download`` runs the
download queue one model at a time; ``search`` answers Hub queries.
"""

from __future__ import annotations

import functools
import logging
import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from lowbit.core.errors import CancelledError, LowbitError
from lowbit.core.sampling import SamplingParams
from lowbit.core.worker import Job, Progress, Worker

log = logging.getLogger(__name__)

LANES = ("model", "download", "search")


class JobHandle(QObject):
    """One submitted job, seen from the GUI thread.

    Exactly one of ``done`` or ``failed`` is emitted, then ``finished``.
    """

    progress = Signal(object)  # lowbit.core.worker.Progress
    event = Signal(object)  # streamed events: TokenEvent, DownloadProgress, ...
    done = Signal(object)  # the job's result
    failed = Signal(str)  # a message for a person ("Cancelled." when cancelled)
    finished = Signal()

    def __init__(self, name: str, title: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self.title = title
        self.job: Job[Any] | None = None
        self.last_progress: Progress | None = None
        self.cancelled = False
        self.is_finished = False
        self.error: BaseException | None = None

    def cancel(self) -> None:
        """Ask the job to stop; it reports ``failed("Cancelled.")`` when it has."""
        self.cancelled = True
        if self.job is not None:
            self.job.cancel()


def user_message(e: BaseException) -> str:
    """An exception in words a person understands: never a traceback."""
    if isinstance(e, CancelledError):
        return "Cancelled."
    if isinstance(e, LowbitError):
        return str(e) or type(e).__name__
    if isinstance(e, MemoryError):
        return "There is not enough memory for this. Close other programs or choose a smaller model."
    if isinstance(e, PermissionError):
        return f"Lowbit is not allowed to use {e.filename or 'a file'}: {e.strerror or e}."
    if isinstance(e, FileNotFoundError):
        return f"{e.filename or 'A file'} does not exist."
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return f"A file could not be read or written{where}: {e.strerror or e}."
    if isinstance(e, ValueError):
        return str(e) or "An invalid value."
    return f"Something went wrong ({type(e).__name__}: {e})."


class WorkerBridge(QObject):
    """Owns the core workers for the GUI and turns their callbacks into signals."""

    job_started = Signal(object)  # JobHandle
    job_finished = Signal(object)  # JobHandle
    model_loaded = Signal(object)  # dict from Model.describe()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._workers = {lane: Worker(f"lowbit-{lane}") for lane in LANES}
        self._live: set[JobHandle] = set()
        self._queue: queue.SimpleQueue[tuple[JobHandle, str, Any]] = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(25)
        self._timer.timeout.connect(self._drain)
        self._timer.start()
        self.model_info: dict[str, Any] | None = None
        self._generation: JobHandle | None = None

    # -- plumbing --------------------------------------------------------------

    def run(self, lane: str, method: str, title: str, *args: Any, **kwargs: Any) -> JobHandle:
        """Call ``Worker.<method>(*args, **kwargs)`` on a lane's worker; report through a handle."""
        submit = functools.partial(getattr(self._workers[lane], method), *args, **kwargs)
        return self._start(JobHandle(method, title, self), submit)

    def call(self, lane: str, fn: Callable[..., Any], title: str, *args: Any, **kwargs: Any) -> JobHandle:
        """Run ``fn(ctx, *args, **kwargs)`` as a job on a lane (a JobContext gives progress and cancel)."""
        name = getattr(fn, "__name__", "job")
        submit = functools.partial(self._workers[lane].submit, name, lambda ctx: fn(ctx, *args, **kwargs))
        return self._start(JobHandle(name, title, self), submit)

    def _start(self, handle: JobHandle, submit: Callable[..., Job[Any]]) -> JobHandle:
        post = self._queue.put

        def on_error(e: BaseException) -> None:
            if not isinstance(e, LowbitError | OSError | ValueError | MemoryError):
                log.error("%s failed: %r", handle.name, e)
            post((handle, "error", e))

        handle.job = submit(
            on_progress=lambda p: post((handle, "progress", p)),
            on_event=lambda ev: post((handle, "event", ev)),
            on_done=lambda r: post((handle, "done", r)),
            on_error=on_error,
        )
        self._live.add(handle)
        self.job_started.emit(handle)
        return handle

    @Slot()
    def _drain(self) -> None:
        while True:
            try:
                handle, kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return
            if kind == "progress":
                handle.last_progress = payload
                handle.progress.emit(payload)
            elif kind == "event":
                handle.event.emit(payload)
            else:
                handle.is_finished = True
                self._live.discard(handle)
                if kind == "done":
                    handle.done.emit(payload)
                else:
                    handle.error = payload
                    handle.failed.emit(user_message(payload))
                handle.finished.emit()
                self.job_finished.emit(handle)

    def running(self) -> list[JobHandle]:
        """Jobs submitted and not yet finished."""
        return [h for h in self._live if not h.is_finished]

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Cancel everything and stop the workers. True if every thread ended in time."""
        self._timer.stop()
        for h in list(self._live):
            h.cancel()
        return all([w.shutdown(timeout=timeout) for w in self._workers.values()])

    # -- the model lane ------------------------------------------------------------

    def load_model(self, path: str | Path, **options: Any) -> JobHandle:
        """Load a GGUF into the model lane, replacing the loaded one."""
        handle = self.run("model", "load_model", f"Loading {Path(path).name}", path, **options)

        def loaded(model: Any) -> None:
            self.model_info = model.describe()
            self.model_loaded.emit(self.model_info)

        def failed(_message: str) -> None:
            # the worker frees the old model before reading the new one
            self.model_info = None

        handle.done.connect(loaded)
        handle.failed.connect(failed)
        return handle

    def generate(self, messages: list[dict[str, str]], params: SamplingParams, max_tokens: int) -> JobHandle:
        handle = self.run(
            "model", "generate", "Generating", messages=messages, params=params, max_tokens=max_tokens
        )
        self._generation = handle
        return handle

    def stop_generation(self) -> None:
        if self._generation is not None and not self._generation.is_finished:
            self._generation.cancel()
