"""Data files shipped with Lowbit (texts, style sheets, icons)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def icon_path() -> Path:
    """The application icon (SVG; Qt renders it at any size)."""
    return HERE / "icons" / "lowbit.svg"
