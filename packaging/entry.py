"""Entry point of the packaged app: the same ``lowbit`` command as a pip install."""

import sys
from pathlib import Path

import platformdirs

from lowbit.core.cli import main


def _console_streams() -> None:
    """A window-only executable (Windows, macOS) starts with no stdout or stderr: send
    what would go there to a log file the user can find, instead of failing on a write."""
    if sys.stdout is not None and sys.stderr is not None:
        return
    log = Path(platformdirs.user_log_dir("lowbit", appauthor=False)) / "lowbit.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    stream = open(log, "a", encoding="utf-8", buffering=1)  # open for the life of the app
    sys.stdout = sys.stdout or stream
    sys.stderr = sys.stderr or stream


if __name__ == "__main__":
    _console_streams()
    sys.exit(main())
