"""Start the desktop app."""

from __future__ import annotations

import sys


def run_app(argv: list[str] | None = None) -> int:
    """Create the QApplication and the main window; returns the exit code."""
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    args = list(sys.argv if argv is None else argv)
    app = QApplication.instance() or QApplication(args)
    app.setApplicationName("Lowbit")
    app.setOrganizationName("Lowbit")
    model = next((a for a in args[1:] if a.endswith(".gguf")), None)
    window = MainWindow(model)
    window.show()
    return app.exec()
