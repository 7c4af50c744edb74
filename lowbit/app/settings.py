"""The app's settings, typed, persisted with QSettings; and what the pages share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from lowbit.core.library import Library, default_library_dir
from lowbit.core.model import default_threads

from .bridge import WorkerBridge

THEMES = ("system", "light", "dark")
KV_TYPES = ("f16", "q8_0")
DEFAULT_CONTEXT = 4096


class AppSettings:
    """Settings that outlive the app. Read and written on the GUI thread only."""

    def __init__(self, store: QSettings | None = None) -> None:
        self.store = store if store is not None else QSettings("Lowbit", "Lowbit")

    def _get(self, key: str, default: Any, kind: type) -> Any:
        value = self.store.value(key, default)
        try:
            return kind(value)
        except (TypeError, ValueError):
            return default

    def _set(self, key: str, value: Any) -> None:
        self.store.setValue(key, value)
        self.store.sync()

    @property
    def threads(self) -> int:
        return max(1, self._get("engine/threads", default_threads(), int))

    @threads.setter
    def threads(self, n: int) -> None:
        self._set("engine/threads", int(n))

    @property
    def n_ctx(self) -> int:
        return max(256, self._get("engine/context", DEFAULT_CONTEXT, int))

    @n_ctx.setter
    def n_ctx(self, n: int) -> None:
        self._set("engine/context", int(n))

    @property
    def kv_type(self) -> str:
        value = self._get("engine/kv_type", "f16", str)
        return value if value in KV_TYPES else "f16"

    @kv_type.setter
    def kv_type(self, value: str) -> None:
        if value not in KV_TYPES:
            raise ValueError(f"unknown KV cache type {value!r}")
        self._set("engine/kv_type", value)

    @property
    def library_dir(self) -> Path:
        value = self._get("library/folder", "", str)
        return Path(value) if value else default_library_dir()

    @library_dir.setter
    def library_dir(self, path: str | Path | None) -> None:
        self._set("library/folder", str(path) if path else "")

    @property
    def theme(self) -> str:
        value = self._get("ui/theme", "system", str)
        return value if value in THEMES else "system"

    @theme.setter
    def theme(self, value: str) -> None:
        if value not in THEMES:
            raise ValueError(f"unknown theme {value!r}")
        self._set("ui/theme", value)

    def value(self, key: str, default: Any = None) -> Any:
        return self.store.value(key, default)

    def set_value(self, key: str, value: Any) -> None:
        self._set(key, value)

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments for Model.load from the settings."""
        return {"n_ctx": self.n_ctx, "n_threads": self.threads, "kv_type": self.kv_type}


class AppContext(QObject):
    """What every page shares: settings, the worker bridge, the library, and app-wide requests."""

    library_changed = Signal()
    open_in_chat = Signal(str)  # a GGUF path to load and chat with
    quantize_source = Signal(str)  # a model (folder or GGUF) to open the quantize wizard on
    error = Signal(str)  # a message for a person, shown in the window's banner
    notice = Signal(str)  # a short status message

    def __init__(self, settings: AppSettings, bridge: WorkerBridge, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.bridge = bridge
        self.library = Library(settings.library_dir)

    def reopen_library(self) -> None:
        """Follow a change of the library folder setting."""
        self.library = Library(self.settings.library_dir)
        self.library_changed.emit()
