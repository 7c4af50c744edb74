"""Settings: engine (threads, context, KV cache), library folder, theme, Hugging Face token."""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Signal, Slot
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lowbit.core import hub

from .bridge import JobHandle
from .settings import KV_TYPES, THEMES, AppContext

CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768)


def _login_job(_ctx: object, token: str) -> str:
    return hub.login(token)


def _logout_job(_ctx: object) -> None:
    hub.logout()


class SettingsPage(QWidget):
    theme_changed = Signal(str)
    reload_requested = Signal(str)  # the loaded model's path, to load again with new settings

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        s = ctx.settings
        self.threads = QSpinBox()
        self.threads.setRange(1, max(1, os.cpu_count() or 1))
        self.threads.setValue(min(s.threads, self.threads.maximum()))
        self.threads.setAccessibleName("Threads")
        self.context = QComboBox()
        self.context.setAccessibleName("Context length")
        for n in CONTEXTS:
            self.context.addItem(f"{n} tokens", n)
        if self.context.findData(s.n_ctx) < 0:
            self.context.addItem(f"{s.n_ctx} tokens", s.n_ctx)
        self.context.setCurrentIndex(self.context.findData(s.n_ctx))
        self.kv_type = QComboBox()
        self.kv_type.setAccessibleName("KV cache type")
        labels = {"f16": "F16 (exact, 2 bytes a value)", "q8_0": "Q8_0 (half the memory, tiny loss)"}
        for k in KV_TYPES:
            self.kv_type.addItem(labels[k], k)
        self.kv_type.setCurrentIndex(self.kv_type.findData(s.kv_type))
        self.reload_button = QPushButton("Reload the model now")
        self.reload_button.setAccessibleName("Reload the model with these settings")
        engine_note = QLabel("Engine settings apply the next time a model is loaded.")
        engine_note.setWordWrap(True)
        engine = QFormLayout()
        engine.addRow("Threads", self.threads)
        engine.addRow("Context length", self.context)
        engine.addRow("KV cache", self.kv_type)
        engine.addRow(engine_note)
        engine.addRow(self.reload_button)
        engine_box = QGroupBox("Engine")
        engine_box.setLayout(engine)

        self.library_dir = QLineEdit(str(s.library_dir))
        self.library_dir.setAccessibleName("Library folder")
        self.library_dir.setReadOnly(True)
        browse = QPushButton("Change…")
        browse.setAccessibleName("Change the library folder")
        browse.clicked.connect(self.choose_library)
        row = QHBoxLayout()
        row.addWidget(self.library_dir, 1)
        row.addWidget(browse)
        self.theme = QComboBox()
        self.theme.setAccessibleName("Theme")
        for t, label in zip(THEMES, ("Follow the system", "Light", "Dark"), strict=True):
            self.theme.addItem(label, t)
        self.theme.setCurrentIndex(self.theme.findData(s.theme))
        app = QFormLayout()
        app.addRow("Library folder", row)
        app.addRow("Theme", self.theme)
        app_box = QGroupBox("App")
        app_box.setLayout(app)

        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("hf_…")
        self.token.setAccessibleName("Hugging Face access token")
        self.login_button = QPushButton("Save token")
        self.login_button.setAccessibleName("Check and save the token")
        self.logout_button = QPushButton("Forget token")
        self.logout_button.setAccessibleName("Forget the saved token")
        self.token_status = QLabel()
        self.token_status.setWordWrap(True)
        trow = QHBoxLayout()
        trow.addWidget(self.token, 1)
        trow.addWidget(self.login_button)
        trow.addWidget(self.logout_button)
        hub_form = QFormLayout()
        hub_form.addRow("Access token", trow)
        hub_form.addRow(self.token_status)
        hub_box = QGroupBox("Hugging Face")
        hub_box.setLayout(hub_form)
        self._show_token_state()

        layout = QVBoxLayout(self)
        for box in (engine_box, app_box, hub_box):
            box.setMaximumWidth(720)
            layout.addWidget(box)
        layout.addStretch(1)

        self.threads.valueChanged.connect(lambda n: setattr(s, "threads", n))
        self.context.currentIndexChanged.connect(lambda _i: setattr(s, "n_ctx", self.context.currentData()))
        self.kv_type.currentIndexChanged.connect(lambda _i: setattr(s, "kv_type", self.kv_type.currentData()))
        self.theme.currentIndexChanged.connect(self._theme_chosen)
        self.reload_button.clicked.connect(self.reload_model)
        self.login_button.clicked.connect(self.save_token)
        self.logout_button.clicked.connect(self.forget_token)

    @Slot()
    def _theme_chosen(self) -> None:
        self.ctx.settings.theme = self.theme.currentData()
        self.theme_changed.emit(self.ctx.settings.theme)

    @Slot()
    def reload_model(self) -> None:
        info = self.ctx.bridge.model_info
        if info is None:
            self.ctx.notice.emit("No model is loaded.")
            return
        self.reload_requested.emit(info["file"])

    @Slot()
    def choose_library(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Library folder", str(self.ctx.settings.library_dir))
        if folder:
            self.set_library_dir(folder)

    def set_library_dir(self, folder: str | Path) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self.ctx.error.emit(f"The folder {folder} cannot be used: {e.strerror or e}.")
            return
        self.ctx.settings.library_dir = folder
        self.library_dir.setText(str(self.ctx.settings.library_dir))
        self.ctx.reopen_library()

    def _show_token_state(self) -> None:
        have = hub.get_token() is not None
        self.token_status.setText(
            "A token is saved: gated models you were granted can be downloaded."
            if have
            else "No token saved. Public models need none; gated ones (e.g. Llama) do."
        )
        self.logout_button.setEnabled(have)

    @Slot()
    def save_token(self) -> JobHandle | None:
        token = self.token.text().strip()
        if not token:
            return None
        self.login_button.setEnabled(False)
        self.token_status.setText("Checking the token with the Hub…")
        job = self.ctx.bridge.call("search", _login_job, "Checking the token", token)
        job.done.connect(lambda user: self._token_saved(user))
        job.failed.connect(self._token_failed)
        return job

    def _token_saved(self, user: str) -> None:
        self.token.clear()
        self.login_button.setEnabled(True)
        self._show_token_state()
        self.token_status.setText(f"Saved: the token belongs to {user or 'your account'}.")

    @Slot(str)
    def _token_failed(self, message: str) -> None:
        self.login_button.setEnabled(True)
        self.token_status.setText(f"The token was not saved. {message}")

    @Slot()
    def forget_token(self) -> None:
        job = self.ctx.bridge.call("search", _logout_job, "Forgetting the token")
        job.finished.connect(self._show_token_state)
