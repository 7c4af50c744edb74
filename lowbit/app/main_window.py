"""The main window: navigation between the pages, a banner for errors, and live status."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import QSize, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from lowbit.core.conversations import ConversationStore

from .bridge import JobHandle, WorkerBridge
from .chat_page import ChatPage
from .formatting import format_eta, show_fraction
from .settings import AppContext, AppSettings
from .settings_page import SettingsPage
from .theme import apply_theme
from .welcome import WelcomePage

PAGES = ("Chat", "Models", "Quantize", "Settings")


class Banner(QFrame):
    """A dismissable message across the top of the window: errors in words, never tracebacks."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("errorBanner")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setAccessibleName("Error message")
        close = QPushButton("Dismiss")
        close.setAccessibleName("Dismiss the message")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 6, 6)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.hide()

    def show_message(self, text: str) -> None:
        self.label.setText(text)
        self.show()


class JobStatus(QWidget):
    """The status bar's view of background jobs: what runs, how far, ETA, and Cancel."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.jobs: list[JobHandle] = []
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(160)
        self.bar.setMaximumHeight(16)
        self.bar.setAccessibleName("Progress of the background job")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel the background job")
        self.cancel_button.clicked.connect(self.cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.setVisible(False)

    def track(self, handle: JobHandle) -> None:
        if handle.name in ("generate", "search"):
            return  # the chat and the search box show these themselves
        self.jobs.append(handle)
        handle.progress.connect(lambda _p: self._show())
        handle.finished.connect(lambda: self._finished(handle))
        self._show()

    def _finished(self, handle: JobHandle) -> None:
        if handle in self.jobs:
            self.jobs.remove(handle)
        self._show()

    def _show(self) -> None:
        if not self.jobs:
            self.setVisible(False)
            return
        h = self.jobs[-1]
        p = h.last_progress
        more = f" (+{len(self.jobs) - 1} queued)" if len(self.jobs) > 1 else ""
        text = p.message if p and p.message else h.title
        if p and p.eta_s is not None and p.eta_s >= 1:
            text += f" · {format_eta(p.eta_s)}"
        self.label.setText(text + more)
        if not (p and show_fraction(self.bar, p.done, p.total)):
            self.bar.setRange(0, 0)  # busy
        self.setVisible(True)

    @Slot()
    def cancel(self) -> None:
        if self.jobs:
            self.jobs[-1].cancel()


class MainWindow(QMainWindow):
    def __init__(
        self,
        model_path: str | None = None,
        *,
        settings: AppSettings | None = None,
        store: ConversationStore | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Lowbit")
        self.settings = settings or AppSettings()
        self.bridge = WorkerBridge(self)
        self.ctx = AppContext(self.settings, self.bridge, self)
        self.store = store or ConversationStore()
        self._build()
        self._connect()
        geometry = self.settings.value("ui/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1180, 760)
        path = model_path or os.environ.get("LOWBIT_MODEL")
        if path and Path(path).is_file():
            self.chat.use_model(path)
            self.show_page("Chat")
        elif self.chat.conversation is None and self.ctx.library.is_empty():
            self.show_welcome()
        else:
            self.show_page("Chat")
            if self.bridge.model_info is None and self.chat.conversation is None:
                last = self.settings.value("chat/last_model")
                if last and Path(str(last)).is_file():
                    self.chat.use_model(str(last))

    # -- layout ----------------------------------------------------------------------

    def _build(self) -> None:
        from .models_page import ModelsPage
        from .quantize_wizard import QuantizePage

        self.nav = QListWidget()
        self.nav.setObjectName("navigation")
        self.nav.setAccessibleName("Pages")
        self.nav.setFixedWidth(150)
        self.nav.setIconSize(QSize(20, 20))
        for name in PAGES:
            self.nav.addItem(name)
        self.stack = QStackedWidget()
        self.chat = ChatPage(self.ctx, self.store)
        self.models = ModelsPage(self.ctx)
        self.quantize = QuantizePage(self.ctx)
        self.settings_page = SettingsPage(self.ctx)
        self.welcome = WelcomePage(self.ctx)
        for page in (self.chat, self.models, self.quantize, self.settings_page, self.welcome):
            self.stack.addWidget(page)
        self.banner = Banner()
        right = QVBoxLayout()
        right.setContentsMargins(0, 0, 0, 0)
        right.addWidget(self.banner)
        right.addWidget(self.stack, 1)
        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 0, 0)
        body.setSpacing(0)
        body.addWidget(self.nav)
        body.addLayout(right, 1)
        central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)

        self.model_status = QLabel("No model loaded")
        self.jobs = JobStatus()
        self.speed_status = QLabel("")
        self.speed_status.setAccessibleName("Last tokens per second")
        self.memory_status = QLabel("")
        self.memory_status.setAccessibleName("Memory")
        sb = self.statusBar()
        sb.addWidget(self.model_status, 1)
        sb.addPermanentWidget(self.jobs)
        sb.addPermanentWidget(self.speed_status)
        sb.addPermanentWidget(self.memory_status)
        self._memory_timer = QTimer(self)
        self._memory_timer.setInterval(1000)
        self._memory_timer.timeout.connect(self._update_memory)
        self._memory_timer.start()
        self._update_memory()

        file_menu = self.menuBar().addMenu("&File")
        open_act = QAction("&Open model…", self)
        open_act.setShortcut(QKeySequence.StandardKey.Open)
        open_act.triggered.connect(self.choose_model_file)
        new_act = QAction("&New chat", self)
        new_act.setShortcut(QKeySequence("Ctrl+N"))
        new_act.triggered.connect(self.new_chat)
        quit_act = QAction("&Quit", self)
        quit_act.setShortcut(QKeySequence.StandardKey.Quit)
        quit_act.triggered.connect(self.close)
        for a in (open_act, new_act):
            file_menu.addAction(a)
        file_menu.addSeparator()
        file_menu.addAction(quit_act)
        go_menu = self.menuBar().addMenu("&Go")
        for i, name in enumerate(PAGES):
            act = QAction(name, self)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.triggered.connect(lambda _=False, n=name: self.show_page(n))
            go_menu.addAction(act)

    def _connect(self) -> None:
        self.nav.currentRowChanged.connect(lambda i: self.stack.setCurrentIndex(i) if i >= 0 else None)
        self.ctx.error.connect(self.banner.show_message)
        self.ctx.notice.connect(lambda text: self.statusBar().showMessage(text, 5000))
        self.ctx.open_in_chat.connect(self.open_in_chat)
        self.ctx.quantize_source.connect(lambda _p: self.show_page("Quantize"))
        self.bridge.job_started.connect(self.jobs.track)
        self.bridge.model_loaded.connect(self._model_loaded)
        self.chat.speed_measured.connect(
            lambda tps: self.speed_status.setText(f"last reply {tps:.1f} tokens/s")
        )
        self.settings_page.theme_changed.connect(apply_theme)
        self.settings_page.reload_requested.connect(self._reload_model)

    # -- navigation ---------------------------------------------------------------------

    def show_page(self, name: str) -> None:
        i = PAGES.index(name)
        self.nav.setCurrentRow(i)
        self.stack.setCurrentIndex(i)

    def show_welcome(self) -> None:
        self.nav.setCurrentRow(-1)
        self.stack.setCurrentWidget(self.welcome)

    @Slot(str)
    def open_in_chat(self, path: str) -> None:
        self.show_page("Chat")
        if self.chat.busy:
            self.ctx.error.emit("Wait for the reply to finish (or stop it) before switching models.")
            return
        self.chat.new_conversation()
        self.chat.use_model(path)

    @Slot(str)
    def _reload_model(self, path: str) -> None:
        if self.chat.busy:
            self.ctx.error.emit("Wait for the reply to finish (or stop it) before reloading the model.")
            return
        self.chat.load_model(path)
        self.show_page("Chat")

    @Slot()
    def new_chat(self) -> None:
        self.show_page("Chat")
        self.chat.new_conversation()

    @Slot()
    def choose_model_file(self) -> None:
        start = str(self.settings.value("ui/last_dir", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", start, "GGUF models (*.gguf)")
        if path:
            self.settings.set_value("ui/last_dir", str(Path(path).parent))
            self.open_in_chat(path)

    # -- status ---------------------------------------------------------------------------

    @Slot(object)
    def _model_loaded(self, info: dict[str, Any]) -> None:
        self.settings.set_value("chat/last_model", info["file"])
        self.model_status.setText(f"{info['name']} · {Path(info['file']).name}")

    @Slot()
    def _update_memory(self) -> None:
        rss = psutil.Process().memory_info().rss / 2**20
        avail = psutil.virtual_memory().available / 2**30
        self.memory_status.setText(f"Lowbit {rss:.0f} MiB · {avail:.1f} GiB available")

    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.set_value("ui/geometry", self.saveGeometry())
        self.chat.stop()
        self.chat.save_partial()
        self.bridge.shutdown(timeout=3.0)
        self.store.close()
        super().closeEvent(event)
