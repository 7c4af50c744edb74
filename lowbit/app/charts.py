"""Small pyqtgraph charts shared by the pages: themed plot widgets and the quality/size chart."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyqtgraph as pg
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QVBoxLayout, QWidget

pg.setConfigOptions(antialias=True)

Point = tuple[str, float, float]  # (label, size in MiB, mean KLD)

# Colours that read on both backgrounds; the front stands out from the other levels.
_FRONT = "#d9480f"
_OTHER_LIGHT = "#5c7cfa"
_OTHER_DARK = "#91a7ff"
# A log axis cannot show zero: an exact output is drawn at this KLD.
_KLD_FLOOR = 1e-6


def themed_plot(dark: bool = False, parent: QWidget | None = None) -> pg.PlotWidget:
    """A PlotWidget on pyqtgraph's white background, or a dark one, with matching axes."""
    fg = "#dddddd" if dark else "#222222"
    w = pg.PlotWidget(parent=parent, background="#1e1e1e" if dark else "w")
    item = w.getPlotItem()
    for name in ("left", "bottom"):
        axis = item.getAxis(name)
        axis.setPen(pg.mkPen(fg))
        axis.setTextPen(pg.mkPen(fg))
        axis.enableAutoSIPrefix(False)  # it would rescale the ticks of unitless or MiB axes
    item.showGrid(x=True, y=True, alpha=0.25)
    return w


def pareto_front(points: Sequence[Point]) -> list[str]:
    """Labels of the points that no other point beats in both size and KLD.

    A point is dominated when another is no larger and no worse, and strictly better in
    one of the two. Identical points do not dominate each other. Points with a NaN
    coordinate are never on the front. The labels come smallest file first.
    """
    valid = [p for p in points if not (math.isnan(p[1]) or math.isnan(p[2]))]
    ordered = sorted(valid, key=lambda p: (p[1], p[2]))
    front: list[Point] = []
    best_smaller: float | None = None  # the least KLD among strictly smaller sizes
    i = 0
    while i < len(ordered):
        size = ordered[i][1]
        group = [p for p in ordered[i:] if p[1] == size]
        least = group[0][2]  # sorted by KLD within a size
        if best_smaller is None or least < best_smaller:
            front.extend(p for p in group if p[2] == least)
            best_smaller = least
        i += len(group)
    return [p[0] for p in front]


class QualitySizeChart(QWidget):
    """Mean KLD (log scale) against file size, one labelled point per level, with the
    Pareto front joined by a line and drawn larger."""

    def __init__(self, parent: QWidget | None = None, *, dark: bool = False) -> None:
        super().__init__(parent)
        self.points: list[Point] = []
        self.pareto_labels: list[str] = []
        self._dark = dark
        self.plot = themed_plot(dark, self)
        self.plot.setAccessibleName("Quality against size chart")
        self.plot.setMinimumHeight(220)
        item = self.plot.getPlotItem()
        item.setLogMode(x=False, y=True)
        item.setLabel("bottom", "File size (MiB)")
        item.setLabel("left", "Mean KLD (lower is better)")
        self._legend = item.addLegend(offset=(-10, 10), labelTextColor="#dddddd" if dark else "#222222")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self._texts: list[pg.TextItem] = []

    def set_points(self, points: Sequence[Point]) -> None:
        """Show these (label, size MiB, mean KLD) points; recompute and draw the front."""
        self.points = [(str(label), float(size), float(kld)) for label, size, kld in points]
        self.pareto_labels = pareto_front(self.points)
        self._draw()

    def _draw(self) -> None:
        item = self.plot.getPlotItem()
        item.clear()
        self._legend.clear()
        self._texts = []
        if not self.points:
            return
        fg = "#dddddd" if self._dark else "#222222"
        other = _OTHER_DARK if self._dark else _OTHER_LIGHT
        on_front = set(self.pareto_labels)
        rest = [p for p in self.points if p[0] not in on_front]
        by_label = {p[0]: p for p in self.points}
        front = [by_label[label] for label in self.pareto_labels]
        if rest:
            item.addItem(
                pg.PlotDataItem(
                    [p[1] for p in rest],
                    [max(p[2], _KLD_FLOOR) for p in rest],
                    pen=None,
                    symbol="o",
                    symbolSize=9,
                    symbolBrush=pg.mkBrush(other),
                    symbolPen=pg.mkPen(other),
                    name="Level",
                )
            )
        if front:
            item.addItem(
                pg.PlotDataItem(
                    [p[1] for p in front],
                    [max(p[2], _KLD_FLOOR) for p in front],
                    pen=pg.mkPen(_FRONT, width=2),
                    symbol="d",
                    symbolSize=13,
                    symbolBrush=pg.mkBrush(_FRONT),
                    symbolPen=pg.mkPen(_FRONT),
                    name="Best trade-off (Pareto front)",
                )
            )
        for label, size, kld in self.points:
            # Text items live in view coordinates: log10 of the KLD on this axis.
            text = pg.TextItem(label, color=QColor(fg), anchor=(0.5, 1.3))
            text.setPos(size, math.log10(max(kld, _KLD_FLOOR)))
            item.addItem(text)
            self._texts.append(text)
        # Room for the labels above the highest point and beside the outer ones.
        xs = [p[1] for p in self.points if math.isfinite(p[1])]
        ys = [math.log10(max(p[2], _KLD_FLOOR)) for p in self.points if math.isfinite(p[2])]
        if xs:
            span = (max(xs) - min(xs)) or max(abs(max(xs)) * 0.2, 1.0)
            item.setXRange(min(xs) - 0.08 * span, max(xs) + 0.08 * span, padding=0)
        if ys:
            span = max(max(ys) - min(ys), 0.5)
            item.setYRange(min(ys) - 0.12 * span, max(ys) + 0.22 * span, padding=0)
