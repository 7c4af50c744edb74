"""First run: with an empty library, offer the starter model so chat works at once."""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from lowbit.core.library import LibraryEntry

from .bridge import JobHandle
from .formatting import show_fraction
from .settings import AppContext


class WelcomePage(QWidget):
    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.job: JobHandle | None = None
        title = QLabel("<h1>Welcome to Lowbit</h1>")
        text = QLabel(
            "<p>Lowbit runs language models on this computer's processor: nothing you type leaves it.</p>"
            "<p>To start, get the small <b>SmolLM2-135M-Instruct</b> model (about 100 MB). Once it is "
            "here, chat works offline. Later, find bigger models on the <b>Models</b> page and choose "
            "how far to compress them on the <b>Quantize</b> page, where Lowbit shows what each level "
            "costs in quality, memory and speed.</p>"
        )
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        self.starter_button = QPushButton("Get the starter model")
        self.starter_button.setAccessibleName("Get the starter model")
        self.starter_button.setDefault(True)
        self.open_button = QPushButton("Open a GGUF file…")
        self.open_button.setAccessibleName("Open a GGUF model file")
        self.browse_button = QPushButton("Browse models")
        self.browse_button.setAccessibleName("Browse models on the Models page")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel getting the starter model")
        self.cancel_button.setVisible(False)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Progress of the starter model")
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.starter_button, self.open_button, self.browse_button, self.cancel_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        box = QVBoxLayout()
        box.addWidget(title)
        box.addWidget(text)
        box.addSpacing(12)
        box.addLayout(buttons)
        box.addWidget(self.progress)
        box.addWidget(self.status)
        inner = QWidget()
        inner.setLayout(box)
        inner.setMaximumWidth(640)
        outer = QVBoxLayout(self)
        outer.addStretch(1)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(inner)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)
        self.starter_button.clicked.connect(self.get_starter)
        self.cancel_button.clicked.connect(self.cancel)
        self.open_button.clicked.connect(lambda: self.window().choose_model_file())
        self.browse_button.clicked.connect(lambda: self.window().show_page("Models"))

    @Slot()
    def get_starter(self) -> JobHandle:
        self.job = self.ctx.bridge.run(
            "download", "fetch_starter", "Getting the starter model", self.ctx.library
        )
        self.job.progress.connect(self._progress)
        self.job.done.connect(self._done)
        self.job.failed.connect(self._failed)
        self.starter_button.setEnabled(False)
        self.cancel_button.setVisible(True)
        self.progress.setVisible(True)
        self.progress.setRange(0, 0)
        self.status.setText("Starting…")
        return self.job

    @Slot()
    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    @Slot(object)
    def _progress(self, p) -> None:
        show_fraction(self.progress, p.done, p.total)
        self.status.setText(p.message or p.stage)

    @Slot(object)
    def _done(self, entry: LibraryEntry) -> None:
        self._reset()
        self.status.setText("")
        self.ctx.library_changed.emit()
        self.ctx.open_in_chat.emit(str(self.ctx.library.path_of(entry)))

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._reset()
        self.status.setText(
            "" if message == "Cancelled." else f"The starter model could not be fetched. {message}"
        )

    def _reset(self) -> None:
        self.job = None
        self.starter_button.setEnabled(True)
        self.cancel_button.setVisible(False)
        self.progress.setVisible(False)
