"""A small live line chart (pyqtgraph): the last minute of one quantity."""

from __future__ import annotations

from collections import deque

import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

WINDOW_S = 60.0


class LiveChart(QWidget):
    """A titled sparkline that keeps the last WINDOW_S seconds of samples.

    Drawing costs one setData of at most a few hundred points; it runs on the GUI
    thread's timer, never per token, so it cannot slow generation.
    """

    def __init__(self, title: str, *, color: str = "#2f7fd1", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self._x: deque[float] = deque()
        self._y: deque[float] = deque()
        self.value_label = QLabel(f"{title}: –")
        self.plot = pg.PlotWidget(background=None)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.showGrid(x=False, y=True, alpha=0.2)
        self.plot.getPlotItem().hideAxis("bottom")
        self.plot.setMinimumHeight(70)
        self.curve = self.plot.plot(pen=pg.mkPen(color, width=2), fillLevel=0, brush=pg.mkBrush(color + "33"))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.value_label)
        layout.addWidget(self.plot, 1)

    def append(self, t: float, value: float) -> None:
        self._x.append(t)
        self._y.append(value)
        while self._x and self._x[0] < t - WINDOW_S:
            self._x.popleft()
            self._y.popleft()
        self.curve.setData(list(self._x), list(self._y))
        self.plot.setXRange(t - WINDOW_S, t, padding=0)
        self.plot.setYRange(0, max(1.0, max(self._y) * 1.15), padding=0)
        self.value_label.setText(
            f"{self.title}: {value:.1f}" if value < 100 else f"{self.title}: {value:.0f}"
        )

    def samples(self) -> list[tuple[float, float]]:
        return list(zip(self._x, self._y, strict=True))
