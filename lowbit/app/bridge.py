"""Qt side of the core worker: requests go in as method calls, results come out as signals.

The core worker calls its callbacks on its own thread, which Qt did not start.
Those callbacks only put plain data on a thread-safe queue; a timer in the GUI
thread drains it every 25 ms and emits the public signals there. No Qt call is
made from the worker thread at all: PySide's signal emission from threads it
does not know corrupted reference counts under load (seen as crashes at exit),
and the timer also batches streamed tokens into a few updates per frame.
"""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal, Slot

from lowbit.core.engine import GenerationStats, TokenEvent
from lowbit.core.errors import CancelledError
from lowbit.core.sampling import SamplingParams
from lowbit.core.worker import Job, Progress, Worker


class WorkerBridge(QObject):
    """Owns the core worker for the GUI and turns its callbacks into signals."""

    progress = Signal(object)  # Progress
    model_loaded = Signal(object)  # dict from Model.describe()
    token = Signal(object)  # TokenEvent
    generation_done = Signal(object)  # GenerationStats
    failed = Signal(str, str)  # job name, message for a person

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker = Worker()
        self._job: Job[Any] | None = None
        self._queue: queue.SimpleQueue[tuple[str, tuple[Any, ...]]] = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(25)
        self._timer.timeout.connect(self._drain)
        self._timer.start()

    def _post(self, signal: str, *args: Any) -> None:
        """Called on the worker thread: no Qt here."""
        self._queue.put((signal, args))

    @Slot()
    def _drain(self) -> None:
        while True:
            try:
                name, args = self._queue.get_nowait()
            except queue.Empty:
                return
            getattr(self, name).emit(*args)

    def load_model(self, path: str | Path, **options: Any) -> None:
        self._job = self._worker.load_model(
            path,
            on_progress=self._on_progress,
            on_done=lambda m: self._post("model_loaded", m.describe()),
            on_error=lambda e: self._on_error("load", e),
            **options,
        )

    def generate(self, messages: list[dict[str, str]], params: SamplingParams, max_tokens: int) -> None:
        self._job = self._worker.generate(
            messages=messages,
            params=params,
            max_tokens=max_tokens,
            on_event=self._on_event,
            on_done=self._on_generated,
            on_error=lambda e: self._on_error("generate", e),
        )

    def stop(self) -> None:
        """Cancel the running job."""
        self._worker.cancel_current()

    def shutdown(self, timeout: float = 5.0) -> bool:
        self._timer.stop()
        return self._worker.shutdown(timeout=timeout)

    # callbacks on the worker thread
    def _on_progress(self, p: Progress) -> None:
        self._post("progress", p)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, TokenEvent):
            self._post("token", ev)

    def _on_generated(self, stats: GenerationStats) -> None:
        self._post("generation_done", stats)

    def _on_error(self, job: str, e: BaseException) -> None:
        if isinstance(e, CancelledError):
            self._post("failed", job, "Cancelled.")
        else:
            self._post("failed", job, str(e) or type(e).__name__)
