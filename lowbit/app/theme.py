"""Light and dark themes: Qt's Fusion style with a palette, and a little style sheet."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

_STYLE = """
#navigation { border: none; font-size: 11pt; padding-top: 8px; }
#navigation::item { padding: 10px 14px; }
#errorBanner { background: #fdecea; border-bottom: 1px solid #f5c2c0; }
#errorBanner QLabel { color: #7a1c17; }
#userMessage { background: palette(alternate-base); border-radius: 8px; }
#modelMessage { border-radius: 8px; }
#messageRole { font-weight: bold; }
#messageStats, #qualityLabel, #placeholder { color: palette(placeholder-text); }
#editNote { color: #9a6700; }
#smallButton { padding: 1px 6px; }
"""


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(30, 31, 34), QColor(43, 45, 48), QColor(223, 225, 229)
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, QColor(50, 53, 58))
    p.setColor(QPalette.ColorRole.ToolTipBase, window)
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, window)
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, Qt.GlobalColor.red)
    p.setColor(QPalette.ColorRole.Link, QColor(110, 168, 254))
    p.setColor(QPalette.ColorRole.Highlight, QColor(53, 116, 240))
    p.setColor(QPalette.ColorRole.HighlightedText, Qt.GlobalColor.white)
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor(140, 143, 150))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(110, 112, 118))
    return p


def apply_theme(theme: str) -> None:
    """The "system" theme follows the desktop's colour scheme; "light" and "dark" force one."""
    app = QApplication.instance()
    if not isinstance(app, QApplication):
        return
    app.setStyle("Fusion")
    hints = QGuiApplication.styleHints()
    if theme == "dark":
        hints.setColorScheme(Qt.ColorScheme.Dark)
        app.setPalette(_dark_palette())
    elif theme == "light":
        hints.setColorScheme(Qt.ColorScheme.Light)
        app.setPalette(app.style().standardPalette())
    else:
        hints.unsetColorScheme()
        dark = hints.colorScheme() == Qt.ColorScheme.Dark
        app.setPalette(_dark_palette() if dark else app.style().standardPalette())
    app.setStyleSheet(_STYLE)


def is_dark() -> bool:
    app = QApplication.instance()
    return isinstance(app, QApplication) and app.palette().color(QPalette.ColorRole.Window).lightness() < 128
