"""Start the desktop app."""

from __future__ import annotations

import sys


def run_app(argv: list[str] | None = None) -> int:
    """Create the QApplication and the main window; returns the exit code."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow
    from .settings import AppSettings
    from .theme import apply_theme

    args = list(sys.argv if argv is None else argv)
    # fractional scale factors (125%, 150%) render sharp instead of rounding
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication.instance() or QApplication(args)
    app.setApplicationName("Lowbit")
    app.setOrganizationName("Lowbit")
    app.setApplicationDisplayName("Lowbit")
    app.setDesktopFileName("lowbit")
    settings = AppSettings()
    apply_theme(settings.theme)
    model = next((a for a in args[1:] if a.endswith(".gguf")), None)
    window = MainWindow(model, settings=settings)
    window.show()
    return app.exec()
