"""The desktop app, offscreen: load a model, stream a reply, stop a reply, show errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox

from lowbit.app.main_window import MainWindow
from tests.tiny_models import make_tiny_model


@pytest.fixture()
def window(qtbot, tmp_path: Path, monkeypatch):
    QSettings.setPath(QSettings.Format.NativeFormat, QSettings.Scope.UserScope, str(tmp_path / "settings"))
    monkeypatch.delenv("LOWBIT_MODEL", raising=False)
    messages: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda parent, title, text: messages.append(text))
    tm = make_tiny_model(tmp_path / "tiny.gguf", weight_type=QT.Q8_0)
    w = MainWindow(str(tm.path))
    w.messages_shown = messages
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w._model_info is not None, timeout=30000)
    yield w
    w.close()


def test_send_streams_a_reply(window, qtbot) -> None:
    window._input.setPlainText("hello")
    with qtbot.waitSignal(window._bridge.generation_done, timeout=30000) as done:
        qtbot.mouseClick(window._send, Qt.MouseButton.LeftButton)
    stats = done.args[0]
    qtbot.waitUntil(lambda: not window._busy)
    assert window._messages[0] == {"role": "user", "content": "hello"}
    assert window._messages[1]["role"] == "assistant"
    assert window._messages[1]["content"] == stats.text
    assert "tokens/s" in window._transcript.toPlainText()
    assert window._send.isEnabled() and not window._stop.isEnabled()


def test_stop_halts_generation(window, qtbot, monkeypatch) -> None:
    from lowbit.core import worker as worker_mod

    original = worker_mod.Worker.generate

    def long_generate(self, **kw):
        kw["max_tokens"] = 100000
        return original(self, **kw)

    monkeypatch.setattr(worker_mod.Worker, "generate", long_generate)
    window._input.setPlainText("tell me everything")
    with qtbot.waitSignal(window._bridge.token, timeout=30000):
        window._on_send()
    with qtbot.waitSignal(window._bridge.generation_done, timeout=5000) as done:
        qtbot.keyClick(window, Qt.Key.Key_Escape)
    assert done.args[0].finish_reason in ("cancelled", "context")


def test_load_error_is_shown_as_a_message(window, qtbot, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model")
    with qtbot.waitSignal(window._bridge.failed, timeout=30000):
        window._load(str(bad))
    qtbot.waitUntil(lambda: bool(window.messages_shown))
    assert "not a GGUF file" in window.messages_shown[-1]
    assert "Traceback" not in window.messages_shown[-1]
