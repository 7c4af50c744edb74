"""Render the app icon (an SVG) to the PNG, ICO and ICNS files installers need.

    python packaging/icons.py [OUT_DIR]      # default: packaging/build

Writes ``icons/lowbit-<size>.png`` for the Linux icon theme, and ``lowbit.png``,
``lowbit.ico`` (Windows) and ``lowbit.icns`` (macOS) for the executables. The ICO and
ICNS files need Pillow; without it only the PNGs are written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SIZES = (16, 32, 48, 64, 128, 256, 512)
BUILD = Path(__file__).resolve().parent / "build"


def render(out: Path = BUILD) -> dict[int, Path]:
    """Qt renders the SVG at each size (QtSvg ships with the app anyway)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    from lowbit.resources import icon_path

    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(icon_path()))
    if not renderer.isValid():
        raise SystemExit(f"cannot read the icon {icon_path()}")
    (out / "icons").mkdir(parents=True, exist_ok=True)
    pngs = {}
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        renderer.render(painter)
        painter.end()
        pngs[size] = out / "icons" / f"lowbit-{size}.png"
        if not image.save(str(pngs[size])):
            raise SystemExit(f"cannot write {pngs[size]}")
    (out / "lowbit.png").write_bytes(pngs[256].read_bytes())
    try:
        from PIL import Image
    except ImportError:
        return pngs
    big = Image.open(pngs[512])
    big.save(out / "lowbit.ico", sizes=[(s, s) for s in SIZES if s <= 256])
    big.save(out / "lowbit.icns")
    return pngs


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else BUILD)
