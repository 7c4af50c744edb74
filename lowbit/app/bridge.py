"""Qt side of the core worker: requests go in as method calls, results come out as signals.

The core worker calls its callbacks on its own thread. Emitting a signal from
there to objects living in the GUI thread is delivered as a queued call, so the
widgets are only ever touched by the GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal

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

    def load_model(self, path: str | Path, **options: Any) -> None:
        self._job = self._worker.load_model(
            path,
            on_progress=self._on_progress,
            on_done=lambda m: self.model_loaded.emit(m.describe()),
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
        return self._worker.shutdown(timeout=timeout)

    # callbacks on the worker thread -> signals
    def _on_progress(self, p: Progress) -> None:
        self.progress.emit(p)

    def _on_event(self, ev: Any) -> None:
        if isinstance(ev, TokenEvent):
            self.token.emit(ev)

    def _on_generated(self, stats: GenerationStats) -> None:
        self.generation_done.emit(stats)

    def _on_error(self, job: str, e: BaseException) -> None:
        if isinstance(e, CancelledError):
            self.failed.emit(job, "Cancelled.")
        else:
            self.failed.emit(job, str(e) or type(e).__name__)
