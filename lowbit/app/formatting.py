"""Small display helpers the pages share."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PySide6.QtWidgets import QProgressBar

from lowbit.core.library import LibraryEntry


def format_eta(seconds: float | None) -> str:
    """Time left, in words; "" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = round(seconds)
    if s < 60:
        return f"about {s} s left"
    m, s = divmod(s, 60)
    if m < 60:
        return f"about {m} min {s:02d} s left"
    h, m = divmod(m, 60)
    return f"about {h} h {m:02d} min left"


def show_fraction(bar: QProgressBar, done: float, total: float | None) -> bool:
    """Show done/total on a 0..1000 bar. False, and the bar untouched, when the total is unknown."""
    if not total:
        return False
    bar.setRange(0, 1000)
    bar.setValue(int(1000 * min(1.0, done / total)))
    return True


def latest_evaluation(entry: LibraryEntry) -> dict[str, Any] | None:
    """The model's results in its latest evaluation that has a mean KLD, if any.

    A record is a candidate's results (``kld_mean``, ``same_top_pct``...) or a whole
    report whose ``candidates`` include this model's file.
    """
    for record in reversed(entry.evaluations):
        if isinstance(record.get("kld_mean"), int | float):
            return record
        candidates = record.get("candidates")
        if isinstance(candidates, list):
            name = Path(entry.path).name
            mine = [
                c for c in candidates if isinstance(c, dict) and Path(str(c.get("file", ""))).name == name
            ]
            pick = mine or (candidates if len(candidates) == 1 else [])
            if pick and isinstance(pick[0].get("kld_mean"), int | float):
                return pick[0]
    return None


def latest_kld(entry: LibraryEntry) -> float | None:
    """Mean KL divergence of the model's latest evaluation, if it has one."""
    ev = latest_evaluation(entry)
    return None if ev is None else float(ev["kld_mean"])
