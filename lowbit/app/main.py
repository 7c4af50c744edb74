"""Start the desktop app."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QFileOpenEvent, QGuiApplication, QIcon
from PySide6.QtWidgets import QApplication, QWidget

from lowbit.resources import icon_path


def _application(args: list[str]) -> QApplication:
    # fractional scale factors (125%, 150%) render sharp instead of rounding
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(args)
    app.setApplicationName("Lowbit")
    app.setOrganizationName("Lowbit")
    app.setApplicationDisplayName("Lowbit")
    app.setDesktopFileName("lowbit")
    app.setWindowIcon(QIcon(str(icon_path())))
    return app


class FileOpener(QObject):
    """Opens a .gguf that the desktop hands over as an event (macOS Finder), not in argv."""

    def __init__(self, window: QObject) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FileOpen and isinstance(event, QFileOpenEvent):
            path = event.file()
            if path.lower().endswith(".gguf"):
                self.window.open_in_chat(path)  # type: ignore[attr-defined]
                return True
        return False


def _main_window(args: list[str], model: str | None = None) -> tuple[QApplication, QWidget]:
    """The application, themed from the saved settings, and its main window (not shown yet)."""
    from .main_window import MainWindow
    from .settings import AppSettings
    from .theme import apply_theme

    app = _application(args)
    settings = AppSettings()
    apply_theme(settings.theme)
    return app, MainWindow(model, settings=settings)


def run_app(argv: list[str] | None = None, model: str | None = None) -> int:
    """Create the QApplication and the main window; returns the exit code."""
    app, window = _main_window(list(sys.argv if argv is None else argv)[:1], model)
    app.installEventFilter(FileOpener(window))
    window.show()
    return app.exec()


def _process_age() -> Callable[[], float]:
    """A clock of seconds since this process started (its executable, not Python)."""
    try:
        # Linux: both in ticks since boot; psutil's create_time adds the boot time,
        # which the kernel gives only in whole seconds
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat", encoding="ascii") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19]) / ticks

        def age() -> float:
            with open("/proc/uptime", encoding="ascii") as f:
                return float(f.read().split()[0]) - start

        return age
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        created = psutil.Process().create_time()
        return lambda: time.time() - created


def self_check_gui(timeout_s: float = 30.0) -> dict[str, float]:
    """Open the main window, wait until it has been painted, close it and quit.

    Returns the seconds from process start to the window shown and to the event
    loop's clean exit. Raises RuntimeError when the window does not close cleanly.
    """
    age = _process_age()
    app, window = _main_window(sys.argv[:1])
    result: dict[str, float] = {}

    def shown() -> None:
        result["shown_s"] = round(age(), 3)
        window.close()
        app.quit()

    window.show()
    QTimer.singleShot(0, shown)
    # a stuck window must fail the check, not hang it
    QTimer.singleShot(int(timeout_s * 1000), lambda: app.exit(3))
    code = app.exec()
    if code != 0 or "shown_s" not in result or window.isVisible():
        raise RuntimeError(f"the main window did not close cleanly (event loop exit code {code})")
    result["closed_s"] = round(age(), 3)
    return result
