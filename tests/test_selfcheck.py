"""``lowbit self-check`` (what the installer tests run) and how a model file opens the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from PySide6.QtCore import QObject
from PySide6.QtGui import QFileOpenEvent
from PySide6.QtWidgets import QApplication

import lowbit.app.main as app_main
from lowbit.core.cli import main
from lowbit.core.model import Model
from lowbit.core.selfcheck import PROMPT
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.gguf", weight_type=QT.Q8_0).path


def _greedy_ignoring_stops(path: Path, n: int) -> list[int]:
    """Reference: argmax over the real vocabulary, one forward call per token, no stop tokens."""
    with Model.load(path, n_threads=1) as m:
        ids = m.tokenizer.encode(PROMPT, parse_special=True)
        n_real = m.tokenizer.vocab_size
        logits = m.forward(ids, 0)
        out = []
        for _ in range(n):
            tok = int(np.argmax(logits[:n_real]))
            out.append(tok)
            logits = m.forward([tok], len(ids) + len(out) - 1)
    return out


def test_self_check_generates_exactly_the_asked_tokens(tiny_path: Path, capsys) -> None:
    assert main(["self-check", str(tiny_path), "--tokens", "12", "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["packaged"] is False and report["isa"]
    assert report["generate"]["tokens"] == _greedy_ignoring_stops(tiny_path, 12)


def test_self_check_fails_in_words_on_a_bad_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert main(["self-check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lowbit: ") and "Traceback" not in err


def test_self_check_gui_opens_and_closes_the_window(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        QT_QPA_PLATFORM="offscreen",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        XDG_DATA_HOME=str(tmp_path / "data"),
        LOWBIT_LIBRARY=str(tmp_path / "lib"),
    )
    out = subprocess.run(
        [sys.executable, "-m", "lowbit.core.cli", "self-check", "--gui", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    gui = json.loads(out.stdout.strip().splitlines()[-1])["gui"]
    assert 0 < gui["shown_s"] <= gui["closed_s"]


def test_a_gguf_argument_starts_the_app_on_it(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(app_main, "run_app", lambda argv=None, model=None: calls.append(model) or 0)
    assert main(["/models/m.GGUF"]) == 0
    assert main(["app", "/models/n.gguf"]) == 0
    assert main([]) == 0
    assert calls == ["/models/m.GGUF", "/models/n.gguf", None]


class _Window(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []

    def open_in_chat(self, path: str) -> None:
        self.opened.append(path)


def test_a_file_open_event_opens_the_model_in_chat(qapp: QApplication) -> None:
    window = _Window()
    opener = app_main.FileOpener(window)
    qapp.installEventFilter(opener)
    try:
        target = QObject()
        QApplication.sendEvent(target, QFileOpenEvent("/models/m.gguf"))
        QApplication.sendEvent(target, QFileOpenEvent("/notes/readme.txt"))
    finally:
        qapp.removeEventFilter(opener)
    assert window.opened == ["/models/m.gguf"]
