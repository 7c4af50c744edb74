"""The main window: a chat with a local GGUF model, with live stats."""

from __future__ import annotations

import html
import os
from pathlib import Path

import psutil
from PySide6.QtCore import QSettings, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lowbit.core.engine import GenerationStats, TokenEvent
from lowbit.core.sampling import SamplingParams

from .bridge import WorkerBridge


class MainWindow(QMainWindow):
    def __init__(self, model_path: str | None = None) -> None:
        super().__init__()
        self.setWindowTitle("Lowbit")
        self._settings = QSettings("Lowbit", "Lowbit")
        self._bridge = WorkerBridge(self)
        self._messages: list[dict[str, str]] = []
        self._reply: list[str] = []
        self._pending = ""  # streamed text not yet shown (batched by a timer)
        self._model_info: dict | None = None
        self._busy = False
        self._build()
        self._connect()
        geometry = self._settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(900, 640)
        path = model_path or os.environ.get("LOWBIT_MODEL") or self._settings.value("last_model")
        if path and Path(str(path)).is_file():
            self._load(str(path))
        else:
            self._show_welcome()

    # -- layout ------------------------------------------------------------------

    def _build(self) -> None:
        open_act = QAction("&Open model…", self)
        open_act.setShortcut(QKeySequence.StandardKey.Open)
        open_act.triggered.connect(self._choose_model)
        new_act = QAction("&New chat", self)
        new_act.setShortcut(QKeySequence("Ctrl+N"))
        new_act.triggered.connect(self._new_chat)
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(open_act)
        file_menu.addAction(new_act)

        self._transcript = QTextBrowser()
        self._transcript.setOpenExternalLinks(True)
        self._transcript.setAccessibleName("Conversation")
        self._input = QPlainTextEdit()
        self._input.setPlaceholderText("Message the model — Ctrl+Enter sends, Esc stops")
        self._input.setAccessibleName("Message")
        self._input.setFixedHeight(90)
        self._send = QPushButton("Send")
        self._send.setAccessibleName("Send message")
        self._stop = QPushButton("Stop")
        self._stop.setAccessibleName("Stop reply")
        self._stop.setEnabled(False)
        self._open = QPushButton("Open model…")
        self._open.clicked.connect(self._choose_model)

        buttons = QVBoxLayout()
        buttons.addWidget(self._send)
        buttons.addWidget(self._stop)
        row = QHBoxLayout()
        row.addWidget(self._input, 1)
        row.addLayout(buttons)
        top = QHBoxLayout()
        self._model_label = QLabel("No model loaded")
        top.addWidget(self._model_label, 1)
        top.addWidget(self._open)
        layout = QVBoxLayout()
        layout.addLayout(top)
        layout.addWidget(self._transcript, 1)
        layout.addLayout(row)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)

        self._speed_label = QLabel("")
        self._mem_label = QLabel("")
        self.statusBar().addPermanentWidget(self._speed_label)
        self._ctx_label = QLabel("")
        self.statusBar().addPermanentWidget(self._ctx_label)
        self.statusBar().addPermanentWidget(self._mem_label)

        send_sc = QAction(self)
        send_sc.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        send_sc.triggered.connect(self._on_send)
        self.addAction(send_sc)
        stop_sc = QAction(self)
        stop_sc.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        stop_sc.triggered.connect(self._on_stop)
        self.addAction(stop_sc)

        # streamed text and live stats are shown a few times a second, not per token
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(50)
        self._flush_timer.timeout.connect(self._flush_pending)
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(500)
        self._stats_timer.timeout.connect(self._update_memory)
        self._stats_timer.start()
        self._update_memory()
        self._set_busy(False)

    def _connect(self) -> None:
        self._send.clicked.connect(self._on_send)
        self._stop.clicked.connect(self._on_stop)
        b = self._bridge
        b.model_loaded.connect(self._on_model_loaded, Qt.ConnectionType.QueuedConnection)
        b.token.connect(self._on_token, Qt.ConnectionType.QueuedConnection)
        b.generation_done.connect(self._on_done, Qt.ConnectionType.QueuedConnection)
        b.failed.connect(self._on_failed, Qt.ConnectionType.QueuedConnection)
        b.progress.connect(self._on_progress, Qt.ConnectionType.QueuedConnection)

    # -- actions -------------------------------------------------------------------

    def _show_welcome(self) -> None:
        self._transcript.setHtml(
            "<h2>Welcome to Lowbit</h2>"
            "<p>Lowbit runs language models on this computer's processor, offline.</p>"
            "<p>Open a model file in GGUF format (<b>File → Open model…</b>) to start chatting. "
            "Any GGUF made for llama.cpp, LM Studio or Ollama with a Llama or Qwen2 architecture works.</p>"
        )

    @Slot()
    def _choose_model(self) -> None:
        start = str(self._settings.value("last_dir", str(Path.home())))
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", start, "GGUF models (*.gguf)")
        if path:
            self._settings.setValue("last_dir", str(Path(path).parent))
            self._load(path)

    def _load(self, path: str) -> None:
        self._model_label.setText(f"Loading {Path(path).name}…")
        self._set_busy(True)
        self._bridge.load_model(path)

    @Slot()
    def _new_chat(self) -> None:
        if self._busy:
            return
        self._messages = []
        self._transcript.clear()
        self._ctx_label.setText("")

    @Slot()
    def _on_send(self) -> None:
        text = self._input.toPlainText().strip()
        if not text or self._busy or self._model_info is None:
            return
        self._input.clear()
        if not self._messages:
            self._transcript.clear()  # drop the welcome / "loaded" note
        self._messages.append({"role": "user", "content": text})
        self._append_html(f"<p><b>You</b><br>{_escape(text)}</p><p><b>Model</b><br>")
        self._reply = []
        self._set_busy(True)
        self._flush_timer.start()
        self._bridge.generate(list(self._messages), SamplingParams(temperature=0.7, seed=None), 512)

    @Slot()
    def _on_stop(self) -> None:
        if self._busy:
            self._bridge.stop()

    # -- results ---------------------------------------------------------------------

    @Slot(object)
    def _on_model_loaded(self, info: dict) -> None:
        self._model_info = info
        self._settings.setValue("last_model", info["file"])
        types = ", ".join(f"{k}×{v}" for k, v in sorted(info["types"].items(), key=lambda kv: -kv[1]))
        self._model_label.setText(
            f"<b>{_escape(str(info['name']))}</b> — {info['file_mib']:.0f} MiB, "
            f"{info['bpw']:.2f} bits/weight ({types}), context {info['n_ctx']}"
        )
        self._set_busy(False)
        self._new_chat()
        self._transcript.setHtml("<p><i>Model loaded. Say hello.</i></p>")

    @Slot(object)
    def _on_token(self, ev: TokenEvent) -> None:
        self._reply.append(ev.text)
        self._pending += ev.text
        if self._model_info:
            self._ctx_label.setText(f"context {ev.n_context}/{self._model_info['n_ctx']}")

    @Slot()
    def _flush_pending(self) -> None:
        if self._pending:
            self._append_text(self._pending)
            self._pending = ""

    @Slot(object)
    def _on_done(self, stats: GenerationStats) -> None:
        self._flush_timer.stop()
        self._flush_pending()
        self._messages.append({"role": "assistant", "content": "".join(self._reply)})
        note = {"cancelled": " — stopped", "context": " — context full, start a new chat"}.get(
            stats.finish_reason, ""
        )
        self._append_html(
            f"<br><span style='color:gray'>{stats.generated_tokens} tokens · first after "
            f"{stats.ttft_s:.2f} s · {stats.decode_tps:.1f} tokens/s{note}</span></p>"
        )
        self._speed_label.setText(f"{stats.decode_tps:.1f} tok/s")
        self._set_busy(False)

    @Slot(str, str)
    def _on_failed(self, job: str, message: str) -> None:
        self._flush_timer.stop()
        self._flush_pending()
        self._set_busy(False)
        if job == "generate" and self._messages and self._messages[-1]["role"] == "user":
            self._messages.pop()
        if job == "load":
            self._model_label.setText("No model loaded")
            self._model_info = None
        QMessageBox.warning(self, "Lowbit", message)

    @Slot(object)
    def _on_progress(self, p) -> None:
        self.statusBar().showMessage(p.message, 3000)

    # -- helpers ---------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._send.setEnabled(not busy and self._model_info is not None)
        self._stop.setEnabled(busy)
        self._open.setEnabled(not busy)

    def _append_html(self, fragment: str) -> None:
        cursor = self._transcript.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertHtml(fragment)
        self._transcript.ensureCursorVisible()

    def _append_text(self, text: str) -> None:
        cursor = self._transcript.textCursor()
        cursor.movePosition(cursor.MoveOperation.End)
        cursor.insertText(text)
        self._transcript.ensureCursorVisible()

    @Slot()
    def _update_memory(self) -> None:
        rss = psutil.Process().memory_info().rss / 2**20
        avail = psutil.virtual_memory().available / 2**30
        self._mem_label.setText(f"RAM {rss:.0f} MiB · {avail:.1f} GiB free")

    def closeEvent(self, event: QCloseEvent) -> None:
        self._settings.setValue("geometry", self.saveGeometry())
        self._bridge.shutdown(timeout=3.0)
        super().closeEvent(event)


def _escape(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")
