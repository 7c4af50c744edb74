"""Time from a cold interpreter to the main window shown and painted (the app's start-up).

    python -m tests.bench_startup [--runs 5]

Each run is a fresh process with an empty scratch library and settings, so it measures
what a person sees on first start: Python, Qt, Lowbit's imports, the window. Prints the
median and each run, and whether torch was imported (it must not be).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_CHILD = r"""
import time
t0 = time.perf_counter()
import sys, json
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
from lowbit.app.main_window import MainWindow
w = MainWindow()
w.show()
def shown():
    print(json.dumps({"seconds": time.perf_counter() - t0, "torch": "torch" in sys.modules}), flush=True)
    w.close()
    app.quit()
QTimer.singleShot(0, shown)
app.exec()
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    times = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, LOWBIT_LIBRARY=f"{tmp}/lib", XDG_DATA_HOME=f"{tmp}/data")
            env.setdefault("QT_QPA_PLATFORM", "offscreen")
            env["XDG_CONFIG_HOME"] = f"{tmp}/config"
            out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            r = json.loads(out.stdout.strip().splitlines()[-1])
            times.append(r["seconds"])
            if r["torch"]:
                print("torch was imported at start-up", file=sys.stderr)
                return 1
    print(
        f"window shown after {statistics.median(times):.2f} s (median of {len(times)}): "
        + ", ".join(f"{t:.2f}" for t in times)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
