"""The Models page: the local library, Hugging Face Hub search, and the download queue.

Everything that touches the network or large files runs as a bridge job: searches and
model details on the ``search`` lane, downloads on the ``download`` lane (one at a time,
so the lane is the queue), and imports and removals on the ``search`` lane too, since
they only read headers or unlink files and must not wait behind a download. Widgets
are only touched here, on the GUI thread, from the jobs' signals.

Pause cancels a download and keeps its partial file, which the core resumes with a
Range request when the same download is submitted again; Cancel also deletes the
partial files.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot
from PySide6.QtGui import QAction, QBrush, QColor, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from lowbit.core import hub
from lowbit.core.errors import LowbitError, OfflineError
from lowbit.core.fit import LevelFit, available_memory, hub_level_fits
from lowbit.core.hub import DownloadProgress, HubModel
from lowbit.core.library import LibraryEntry
from lowbit.core.worker import Progress

from .bridge import JobHandle
from .formatting import format_eta, latest_kld
from .settings import AppContext

log = logging.getLogger(__name__)

SORTS = (
    ("Most downloaded", "downloads"),
    ("Most liked", "likes"),
    ("Newest", "created"),
    ("Recently updated", "modified"),
)
SEARCH_LIMIT = 30
OFFLINE_MESSAGE = "The Hugging Face Hub cannot be reached. Models already in your library still work."
# Text first, colour second: the verdict must read the same without colour.
VERDICTS = {
    "fits": ("✓ Fits", "#2e7d32"),
    "tight": ("! Tight", "#b26a00"),
    "will not fit": ("✗ Will not fit", "#c62828"),
}
FLOAT_LEVELS = ("F32", "F16", "BF16")
ROLE_DATA = Qt.ItemDataRole.UserRole + 1


# -- formatting -------------------------------------------------------------------------


def format_bytes(n: float | None) -> str:
    """Sizes as the CLI prints them: GiB from 1 GiB, else MiB ("?" when unknown)."""
    if n is None:
        return "?"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20 or n == 0:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.0f} KiB"


def format_params(n: int | None) -> str:
    """A parameter count as the CLI prints it: "1.24B", "135M" ("?" when unknown)."""
    if not n:
        return "?"
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def offline_text(message: str) -> str:
    """What the page says when the Hub cannot be reached (the core's detail goes in a tooltip)."""
    if "HF_HUB_OFFLINE" in message:
        return (
            "Offline mode is on (HF_HUB_OFFLINE), so the Hugging Face Hub is not contacted. "
            "Models already in your library still work."
        )
    return f"{OFFLINE_MESSAGE} Check the network connection and try again."


def _sentence(message: str) -> str:
    message = message.strip()
    return message[:1].upper() + message[1:] if message else message


def _first_sentence(message: str, limit: int = 100) -> str:
    head = message.split(". ", 1)[0].split(": ", 1)[0] if len(message) > limit else message
    return head if len(head) <= limit else head[: limit - 1] + "…"


# -- jobs (run on a worker thread) --------------------------------------------------------------


def read_details(
    job: Any, repo_id: str, *, n_ctx: int, cache_type: str, n_threads: int
) -> tuple[HubModel, dict[str, Any] | None]:
    """A model's files and config; also plans every preset once, here rather than in the
    GUI thread (the plans are remembered by ``lowbit.core.fit``)."""
    job.progress("details", 0, None, f"Reading {repo_id}")
    model = hub.model_details(repo_id)
    job.cancel.raise_if_cancelled()
    config = hub.read_config(model)
    job.cancel.raise_if_cancelled()
    try:
        hub_level_fits(model, n_ctx=n_ctx, config=config, cache_type=cache_type, n_threads=n_threads)
    except (LowbitError, ValueError, ArithmeticError) as e:  # the page shows it when it asks again
        log.info("estimating %s: %s", repo_id, e)
    return model, config


def _import_job(job: Any, library: Any, path: str, copy: bool) -> LibraryEntry:
    job.progress("import", 0, None, f"Adding {Path(path).name}")
    return library.import_path(path, copy=copy)


def _remove_job(job: Any, library: Any, entry_id: str) -> LibraryEntry:
    job.progress("remove", 0, None, f"Removing {entry_id}")
    return library.remove(entry_id, delete_files=True)


# -- the download queue ---------------------------------------------------------------------


class DownloadItem(QObject):
    """One download in the queue, across pauses and resumes (each run is a new job)."""

    changed = Signal()
    completed = Signal(list)  # the new library entries
    removed = Signal()  # cancelled, or done and taken off the queue

    QUEUED, RUNNING, PAUSED, FAILED, DONE = "queued", "running", "paused", "failed", "done"

    def __init__(self, repo_id: str, files: Sequence[str] | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.repo_id = repo_id
        self.files = tuple(files) if files else None
        self.state = self.QUEUED
        self.handle: JobHandle | None = None
        self.intent = ""  # "pause" or "cancel" while the job is being stopped
        self.seq = 0  # submission order of the current run
        self.done_bytes = 0
        self.total_bytes: int | None = None
        self.speed_bps = 0.0
        self.eta_s: float | None = None
        self.current_file = ""
        self.files_done = 0
        self.files_total = 0
        self.message = ""  # why the last run failed, in full
        self.summary = ""  # the same, short enough for the row
        self.entries: list[LibraryEntry] = []

    @property
    def title(self) -> str:
        if not self.files:
            return self.repo_id
        shown = ", ".join(Path(f).name for f in self.files[:2])
        more = f" and {len(self.files) - 2} more" if len(self.files) > 2 else ""
        return f"{self.repo_id} — {shown}{more}"

    @property
    def live(self) -> bool:
        return self.handle is not None and not self.handle.is_finished

    def status_text(self, queued_behind: bool) -> str:
        if self.state == self.QUEUED:
            return "Queued" if queued_behind else "Starting…"
        if self.state == self.PAUSED:
            if self.total_bytes:
                return f"Paused at {format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}"
            return "Paused"
        if self.state == self.FAILED:
            return self.summary
        if self.state == self.DONE:
            return "Done: in the library"
        if self.intent == "pause":
            return "Pausing…"
        if self.intent == "cancel":
            return "Cancelling…"
        parts = []
        if self.total_bytes:
            parts.append(f"{format_bytes(self.done_bytes)} of {format_bytes(self.total_bytes)}")
        if self.speed_bps > 0:
            parts.append(f"{format_bytes(self.speed_bps)}/s")
        eta = format_eta(self.eta_s)
        if eta:
            parts.append(eta)
        if self.files_total > 1:
            parts.append(f"file {min(self.files_done + 1, self.files_total)} of {self.files_total}")
        return " · ".join(parts) or "Connecting…"


class _DownloadRow(QFrame):
    """A queue item's row: name, progress bar, bytes/speed/ETA, Pause, Resume, Cancel."""

    def __init__(self, item: DownloadItem, page: ModelsPage) -> None:
        super().__init__()
        self.item = item
        self.page = page
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.name = QLabel(item.title)
        self.name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.name.setMinimumWidth(120)
        self.name.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedWidth(200)
        self.bar.setAccessibleName(f"Download progress of {item.repo_id}")
        self.status = QLabel()
        self.status.setMinimumWidth(260)
        self.status.setWordWrap(True)
        self.pause = QPushButton("Pause")
        self.pause.setAccessibleName(f"Pause download of {item.repo_id}")
        self.resume = QPushButton("Resume")
        self.resume.setAccessibleName(f"Resume download of {item.repo_id}")
        self.cancel = QPushButton("Cancel")
        self.cancel.setAccessibleName(f"Cancel download of {item.repo_id} and delete its partial files")
        self.pause.clicked.connect(lambda: page.pause_download(item))
        self.resume.clicked.connect(lambda: page.resume_download(item))
        self.cancel.clicked.connect(lambda: page.cancel_download(item))
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 2, 4, 2)
        row.addWidget(self.name, 3)
        row.addWidget(self.bar)
        row.addWidget(self.status, 3)
        row.addWidget(self.pause)
        row.addWidget(self.resume)
        row.addWidget(self.cancel)
        item.changed.connect(self.update_view)
        self.update_view()

    @Slot()
    def update_view(self) -> None:
        it = self.item
        self.status.setText(it.status_text(self.page.is_queued_behind(it)))
        self.status.setToolTip(it.message if it.state == it.FAILED else it.current_file)
        if it.total_bytes:
            self.bar.setRange(0, 1000)
            self.bar.setValue(round(1000 * it.done_bytes / max(1, it.total_bytes)))
        elif it.state == it.RUNNING and it.intent == "":
            self.bar.setRange(0, 0)  # busy until the sizes are known
        else:
            self.bar.setRange(0, 1000)
            self.bar.setValue(0)
        stopping = bool(it.intent)
        self.pause.setVisible(it.state in (it.QUEUED, it.RUNNING))
        self.pause.setEnabled(not stopping)
        self.resume.setVisible(it.state in (it.PAUSED, it.FAILED))
        self.resume.setText("Retry" if it.state == it.FAILED else "Resume")
        self.cancel.setEnabled(it.intent != "cancel" and it.state != it.DONE)


# -- the page --------------------------------------------------------------------------------


class ModelsPage(QWidget):
    """The "Models" page: library, Hub search with memory verdicts, download queue."""

    results_shown = Signal(int)  # the number of search results now in the table
    details_shown = Signal(str)  # the repository whose details (with files) are shown
    search_failed = Signal(str)  # the message shown in the page
    downloads_changed = Signal()

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self._results: list[HubModel] = []
        self._search_handle: JobHandle | None = None
        self._details_handle: JobHandle | None = None
        self._model: HubModel | None = None
        self._config: dict[str, Any] | None = None
        self._levels: list[LevelFit] = []
        self._chosen: set[str] = set()  # GGUF levels ticked for download
        self._preselected: str | None = None
        self._items: list[DownloadItem] = []
        self._seq = 0
        self._rows: dict[DownloadItem, _DownloadRow] = {}
        self._entries: list[LibraryEntry] = []
        self._jobs: set[JobHandle] = set()
        self._build()
        ctx.library_changed.connect(self.refresh_library)
        self.refresh_library()

    # -- layout ----------------------------------------------------------------------------

    def _build(self) -> None:
        self.tabs = QTabWidget()
        self.tabs.setAccessibleName("Models sections")
        self.tabs.addTab(self._build_library(), "Library")
        self.tabs.addTab(self._build_hub(), "Hugging Face Hub")

        self.queue_box = QFrame()
        self.queue_box.setFrameShape(QFrame.Shape.StyledPanel)
        self.queue_box.setAccessibleName("Download queue")
        self.queue_title = QLabel("<b>Downloads</b>")
        self._queue_rows = QVBoxLayout()
        self._queue_rows.setContentsMargins(0, 0, 0, 0)
        self._queue_rows.setSpacing(0)
        rows_host = QWidget()
        host_layout = QVBoxLayout(rows_host)
        host_layout.setContentsMargins(0, 0, 0, 0)
        host_layout.addLayout(self._queue_rows)
        host_layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(rows_host)
        scroll.setMaximumHeight(132)
        queue_layout = QVBoxLayout(self.queue_box)
        queue_layout.setContentsMargins(8, 4, 8, 4)
        queue_layout.addWidget(self.queue_title)
        queue_layout.addWidget(scroll)
        self.queue_box.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.queue_box)

    def _build_library(self) -> QWidget:
        self.library_table = QTableWidget(0, 6)
        self.library_table.setHorizontalHeaderLabels(
            ["Name", "Kind", "Quantization", "Size", "Status", "Measured quality"]
        )
        self.library_table.setAccessibleName("Models in the library")
        self._setup_table(self.library_table, stretch=0)
        self.library_table.horizontalHeaderItem(5).setToolTip(
            "Mean KL divergence from the full-precision model in the latest evaluation (lower is better)"
        )
        self.library_table.itemSelectionChanged.connect(self._library_selection_changed)
        self.library_table.itemDoubleClicked.connect(lambda _item: self.open_selected_in_chat())

        self.library_empty = QLabel(
            "Your library is empty. Search the Hugging Face Hub for a model, or import a GGUF file or a "
            "Hugging Face model folder from disk."
        )
        self.library_empty.setWordWrap(True)

        self.open_button = QPushButton("Open in chat")
        self.open_button.setAccessibleName("Open the selected model in chat")
        self.open_button.clicked.connect(self.open_selected_in_chat)
        self.quantize_button = QPushButton("Quantize…")
        self.quantize_button.setAccessibleName("Quantize the selected model")
        self.quantize_button.clicked.connect(self.quantize_selected)
        self.remove_button = QPushButton("Remove")
        self.remove_button.setAccessibleName("Remove the selected model from the library")
        self.remove_button.clicked.connect(self.remove_selected)
        self.details_button = QPushButton("Details")
        self.details_button.setCheckable(True)
        self.details_button.setChecked(True)
        self.details_button.setAccessibleName("Show the selected model's provenance and evaluations")
        self.import_button = QToolButton()
        self.import_button.setText("Import from disk…")
        self.import_button.setAccessibleName("Import a model from disk")
        self.import_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.import_button)
        file_action = QAction("GGUF file…", menu)
        file_action.triggered.connect(self._choose_import_file)
        folder_action = QAction("Hugging Face model folder…", menu)
        folder_action.triggered.connect(self._choose_import_folder)
        menu.addAction(file_action)
        menu.addAction(folder_action)
        self.import_button.setMenu(menu)

        buttons = QHBoxLayout()
        for b in (self.open_button, self.quantize_button, self.remove_button, self.details_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.import_button)

        self.entry_details = QTextBrowser()
        self.entry_details.setAccessibleName("Model details: provenance and evaluations")
        self.entry_details.setOpenLinks(False)
        self.entry_details.setMinimumWidth(260)
        self.details_button.toggled.connect(self.entry_details.setVisible)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(buttons)
        left_layout.addWidget(self.library_empty)
        left_layout.addWidget(self.library_table, 1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.entry_details)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([640, 380])
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(4, 8, 4, 4)
        layout.addWidget(split)
        return page

    def _build_hub(self) -> QWidget:
        self.query = QLineEdit()
        self.query.setPlaceholderText("Search models, e.g. SmolLM2, Qwen2.5 or Llama")
        self.query.setAccessibleName("Search the Hugging Face Hub")
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(lambda: self.search())
        self.sort = QComboBox()
        self.sort.setAccessibleName("Sort results by")
        for label, key in SORTS:
            self.sort.addItem(label, key)
        self.gguf_only = QCheckBox("GGUF only")
        self.gguf_only.setAccessibleName("Only repositories with GGUF files")
        self.gguf_only.setToolTip(
            "GGUF files run as they are; other models are quantized here after download"
        )
        self.search_button = QPushButton("Search")
        self.search_button.setAccessibleName("Search")
        self.search_button.clicked.connect(lambda: self.search())
        self.search_busy = QProgressBar()
        self.search_busy.setRange(0, 0)
        self.search_busy.setFixedWidth(90)
        self.search_busy.setTextVisible(False)
        self.search_busy.setAccessibleName("Searching")
        self.search_busy.setVisible(False)
        self.sort.currentIndexChanged.connect(self._search_again)
        self.gguf_only.toggled.connect(self._search_again)
        bar = QHBoxLayout()
        bar.addWidget(self.query, 1)
        bar.addWidget(self.sort)
        bar.addWidget(self.gguf_only)
        bar.addWidget(self.search_button)
        bar.addWidget(self.search_busy)

        self.hub_message = QLabel()
        self.hub_message.setWordWrap(True)
        self.hub_message.setAccessibleName("Search message")
        self.hub_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hub_message.setVisible(False)

        self.results_table = QTableWidget(0, 7)
        self.results_table.setHorizontalHeaderLabels(
            ["Model", "Architecture", "Parameters", "Downloads", "Likes", "License", "Gated"]
        )
        self.results_table.setAccessibleName("Search results")
        self._setup_table(self.results_table, stretch=0)
        self.results_table.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # keep owner and model name
        self.results_table.itemSelectionChanged.connect(self._result_selection_changed)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.results_table)
        split.addWidget(self._build_details())
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([560, 500])
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(4, 8, 4, 4)
        layout.addLayout(bar)
        layout.addWidget(self.hub_message)
        layout.addWidget(split, 1)
        return page

    def _build_details(self) -> QWidget:
        self.details_title = QLabel("Choose a model on the left to see its files and whether it fits.")
        self.details_title.setWordWrap(True)
        self.details_title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_info = QLabel()
        self.details_info.setWordWrap(True)
        self.details_info.setOpenExternalLinks(True)
        self.context = QSpinBox()
        self.context.setRange(256, 262144)
        self.context.setSingleStep(1024)
        self.context.setSuffix(" tokens")
        self.context.setValue(self.ctx.settings.n_ctx)
        self.context.setAccessibleName("Context length for the memory estimate")
        self.context.valueChanged.connect(self._update_levels)
        self.memory_label = QLabel()
        ctx_row = QHBoxLayout()
        ctx_row.addWidget(QLabel("Context length"))
        ctx_row.addWidget(self.context)
        ctx_row.addWidget(self.memory_label, 1)

        self.levels_table = QTableWidget(0, 4)
        self.levels_table.setHorizontalHeaderLabels(["Quantization", "File size", "Memory needed", "Verdict"])
        self.levels_table.setAccessibleName("Memory needed and fit for each quantization level")
        self._setup_table(self.levels_table, stretch=3)
        self.levels_table.itemChanged.connect(self._level_checked)
        self.levels_note = QLabel()
        self.levels_note.setWordWrap(True)

        self.files_table = QTableWidget(0, 3)
        self.files_table.setHorizontalHeaderLabels(["File", "Size", "Type"])
        self.files_table.setAccessibleName("Files of the model")
        self._setup_table(self.files_table, stretch=0)

        self.download_button = QPushButton("Download")
        self.download_button.setAccessibleName("Download the model into the library")
        self.download_button.setEnabled(False)
        self.download_button.clicked.connect(lambda: self.download_selected())

        levels_box = QWidget()
        lv = QVBoxLayout(levels_box)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.levels_table, 1)
        lv.addWidget(self.levels_note)
        tables = QSplitter(Qt.Orientation.Vertical)
        tables.addWidget(levels_box)
        tables.addWidget(self.files_table)
        tables.setStretchFactor(0, 3)
        tables.setStretchFactor(1, 1)

        panel = QWidget()
        panel.setAccessibleName("Model details")
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 0, 0, 0)
        layout.addWidget(self.details_title)
        layout.addWidget(self.details_info)
        layout.addLayout(ctx_row)
        layout.addWidget(tables, 1)
        layout.addWidget(self.download_button, 0, Qt.AlignmentFlag.AlignRight)
        self._set_details_enabled(False)
        return panel

    @staticmethod
    def _setup_table(table: QTableWidget, *, stretch: int) -> None:
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.verticalHeader().setVisible(False)
        table.setWordWrap(False)
        table.setAlternatingRowColors(True)
        header = table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)

    # -- library ---------------------------------------------------------------------------

    @Slot()
    def refresh_library(self) -> None:
        """Re-read the library (noticing moved or deleted files) and show it."""
        library = self.ctx.library
        keep = self.selected_entry()
        self._entries = library.refresh()
        table = self.library_table
        table.setRowCount(len(self._entries))
        for row, e in enumerate(self._entries):
            kld = latest_kld(e)
            kind = "GGUF" if e.kind == "gguf" else "Full precision (HF)"
            status = "Ready" if e.status == "ok" else "Missing"
            cells = [
                e.name or e.id,
                kind,
                e.quant_type or "?",
                format_bytes(e.size_bytes),
                status,
                f"KLD {kld:.4f}" if kld is not None else "",
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:
                    item.setData(ROLE_DATA, e.id)
                    item.setToolTip(str(library.path_of(e)))
                if col == 4 and e.status != "ok":
                    item.setForeground(QBrush(QColor(VERDICTS["will not fit"][1])))
                    item.setToolTip(
                        f"The model is not at {library.path_of(e)} any more. Put it back, or remove it "
                        "from the library."
                    )
                if col == 5 and kld is not None:
                    item.setToolTip("Mean KL divergence in the latest evaluation (lower is better)")
                if col in (3, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(row, col, item)
        self.library_empty.setVisible(not self._entries)
        if keep is not None:
            for row, e in enumerate(self._entries):
                if e.id == keep.id:
                    table.selectRow(row)
        self._library_selection_changed()

    def entries(self) -> list[LibraryEntry]:
        """The library entries as the table shows them, in order."""
        return list(self._entries)

    def selected_entry(self) -> LibraryEntry | None:
        rows = self.library_table.selectionModel().selectedRows() if self.library_table.model() else []
        if not rows or rows[0].row() >= len(self._entries):
            return None
        return self._entries[rows[0].row()]

    def select_entry(self, entry_id: str) -> None:
        """Select a library model by id."""
        for row, e in enumerate(self._entries):
            if e.id == entry_id:
                self.library_table.selectRow(row)
                return

    @Slot()
    def _library_selection_changed(self) -> None:
        e = self.selected_entry()
        ok = e is not None and e.status == "ok"
        self.open_button.setEnabled(ok and e is not None and e.kind == "gguf")
        self.open_button.setToolTip(
            "" if e is None or e.kind == "gguf" else "Quantize this model to GGUF to chat with it"
        )
        self.quantize_button.setEnabled(ok)
        self.remove_button.setEnabled(e is not None)
        self.entry_details.setHtml(self._entry_html(e) if e is not None else self._library_summary_html())

    def _library_summary_html(self) -> str:
        root = html.escape(str(self.ctx.library.root))
        n = len(self._entries)
        return f"<p>{n} model{'s' if n != 1 else ''} in the library.</p><p>Folder: {root}</p>"

    def _entry_html(self, e: LibraryEntry) -> str:
        esc = html.escape
        path = self.ctx.library.path_of(e)
        rows = [
            ("Id", e.id),
            ("File" if e.kind == "gguf" else "Folder", str(path)),
            ("Kept", "in the library folder" if e.managed else "where it is (referenced)"),
            ("Architecture", e.architecture or "?"),
            ("Parameters", format_params(e.n_params)),
            ("Quantization", e.quant_type or "?"),
            ("Size", format_bytes(e.size_bytes)),
            ("Added", e.added or "?"),
        ]
        if e.status != "ok":
            rows.insert(0, ("Status", "missing: the file was moved or deleted"))
        for key in ("repo_id", "revision", "file", "package"):
            if e.source.get(key):
                rows.append((f"Source {key.replace('_', ' ')}", str(e.source[key])))
        out = [f"<h3>{esc(e.name or e.id)}</h3>", "<table cellspacing='2'>"]
        out += [f"<tr><td><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>" for k, v in rows]
        out.append("</table>")
        out.append("<h4>Provenance</h4>")
        if e.provenance:
            out.append("<table cellspacing='2'>")
            for k, v in sorted(e.provenance.items()):
                text = v if isinstance(v, str) else json.dumps(v, default=str)
                out.append(f"<tr><td><b>{esc(str(k))}</b></td><td>{esc(str(text)[:300])}</td></tr>")
            out.append("</table>")
        else:
            out.append("<p>No quantization record: this file was not made by Lowbit.</p>")
        out.append("<h4>Evaluations</h4>")
        if e.evaluations:
            for record in reversed(e.evaluations):
                out.append(_evaluation_html(record))
        else:
            out.append("<p>Not evaluated yet.</p>")
        return "".join(out)

    @Slot()
    def open_selected_in_chat(self) -> None:
        e = self.selected_entry()
        if e is None or e.kind != "gguf" or e.status != "ok":
            return
        self.ctx.open_in_chat.emit(str(self.ctx.library.path_of(e)))

    @Slot()
    def quantize_selected(self) -> None:
        e = self.selected_entry()
        if e is not None and e.status == "ok":
            self.ctx.quantize_source.emit(str(self.ctx.library.path_of(e)))

    @Slot()
    def remove_selected(self) -> None:
        e = self.selected_entry()
        if e is not None:
            self.remove_entry(e.id)

    def remove_entry(self, entry_id: str, *, confirm: bool = True) -> JobHandle | None:
        """Take a model out of the library; its files are deleted when they are inside the
        library folder. Asks first when ``confirm``; returns the job, or None if declined."""
        e = next((x for x in self._entries if x.id == entry_id), None)
        if e is None:
            return None
        if confirm:
            path = self.ctx.library.path_of(e)
            if e.managed:
                text = (
                    f"Remove {e.name or e.id} from the library and delete its files "
                    f"({format_bytes(e.size_bytes)})?\n\n{path}"
                )
            else:
                text = f"Remove {e.name or e.id} from the library? The file stays where it is:\n\n{path}"
            answer = QMessageBox.question(self, "Remove model", text)
            if answer != QMessageBox.StandardButton.Yes:
                return None
        handle = self.ctx.bridge.call("search", _remove_job, f"Removing {e.id}", self.ctx.library, e.id)
        self._track(handle)
        handle.done.connect(lambda entry: self.ctx.notice.emit(f"Removed {entry.name or entry.id}."))
        handle.failed.connect(self._job_failed)
        handle.finished.connect(self.ctx.library_changed.emit)
        return handle

    @Slot()
    def _choose_import_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a GGUF model", "", "GGUF models (*.gguf)")
        if path:
            self.import_path(path)

    @Slot()
    def _choose_import_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Import a Hugging Face model folder")
        if path:
            self.import_path(path)

    def import_path(self, path: str | Path, *, copy: bool = False) -> JobHandle:
        """Add a GGUF file or Hugging Face folder to the library (referenced where it is,
        unless ``copy``). Runs as a job; the library refreshes when it is done."""
        handle = self.ctx.bridge.call(
            "search", _import_job, f"Importing {Path(path).name}", self.ctx.library, str(path), copy
        )
        self._track(handle)

        def added(entry: LibraryEntry) -> None:
            self.ctx.library_changed.emit()
            self.tabs.setCurrentIndex(0)
            self.select_entry(entry.id)
            self.ctx.notice.emit(f"Added {entry.name or entry.id} to the library.")

        handle.done.connect(added)
        handle.failed.connect(self._job_failed)
        return handle

    @Slot(str)
    def _job_failed(self, message: str) -> None:
        if message != "Cancelled.":
            self.ctx.error.emit(_sentence(message))

    def _track(self, handle: JobHandle) -> None:
        # Keep a reference until the job ends, so that its connections live that long.
        self._jobs.add(handle)
        handle.finished.connect(lambda: self._jobs.discard(handle))

    # -- search ----------------------------------------------------------------------------

    def search(self, query: str | None = None) -> JobHandle:
        """Search the Hub with the query box (or ``query``), the sort and the GGUF filter."""
        if isinstance(query, str):
            self.query.setText(query)
        if self._search_handle is not None and not self._search_handle.is_finished:
            self._search_handle.cancel()  # its answer is ignored: only the latest counts
        handle = self.ctx.bridge.run(
            "search",
            "search",
            "Searching the Hugging Face Hub",
            self.query.text().strip(),
            sort=self.sort.currentData(),
            gguf_only=self.gguf_only.isChecked(),
            limit=SEARCH_LIMIT,
        )
        self._search_handle = handle
        self.tabs.setCurrentIndex(1)  # results and messages show there
        self.search_busy.setVisible(True)
        self._set_message("")
        handle.done.connect(lambda models: self._search_done(handle, models))
        handle.failed.connect(lambda message: self._search_failed(handle, message))
        return handle

    @Slot()
    def _search_again(self) -> None:
        if self._search_handle is not None:
            self.search()

    def _search_done(self, handle: JobHandle, models: list[HubModel]) -> None:
        if handle is not self._search_handle:
            return
        self.search_busy.setVisible(False)
        self.show_results(models)
        if not models:
            words = self.query.text().strip()
            what = f"match “{words}”" if words else "were found"
            self._set_message(
                f"No models {what}. Lowbit lists the models it can run (llama and qwen2 architectures)"
                + (" that have GGUF files." if self.gguf_only.isChecked() else ".")
            )

    def _search_failed(self, handle: JobHandle, message: str) -> None:
        if handle is not self._search_handle:
            return
        self.search_busy.setVisible(False)
        if message == "Cancelled.":
            return
        if isinstance(handle.error, OfflineError):
            text = offline_text(message)
        else:
            text = f"The search did not work: {message}"
        self._set_message(text, error=True)
        self.hub_message.setToolTip(_sentence(message))
        self.search_failed.emit(text)

    def _set_message(self, text: str, *, error: bool = False) -> None:
        self.hub_message.setText(text)
        self.hub_message.setVisible(bool(text))
        self.hub_message.setStyleSheet(
            f"color: {VERDICTS['will not fit'][1]}; font-weight: 600;" if error else ""
        )

    def message(self) -> str:
        """The message the Hub section shows now ("" when none)."""
        return self.hub_message.text()

    def show_results(self, models: Sequence[HubModel]) -> None:
        """Fill the results table (also for screenshots, without a network)."""
        self._results = list(models)
        table = self.results_table
        table.blockSignals(True)
        table.clearSelection()
        table.setRowCount(len(self._results))
        for row, m in enumerate(self._results):
            name = m.repo_id + ("  [GGUF]" if m.is_gguf else "")
            cells = [
                name,
                m.architecture or "?",
                format_params(m.n_params),
                f"{m.downloads:,}" if m.downloads is not None else "?",
                f"{m.likes:,}" if m.likes is not None else "?",
                m.license or "?",
                "Gated" if m.gated else "",
            ]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col == 0:
                    item.setData(ROLE_DATA, m.repo_id)
                    item.setToolTip(m.repo_id)
                if col == 6 and m.gated:
                    item.setToolTip("Accept the model's conditions on the Hub and log in to download it")
                if col in (2, 3, 4):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(row, col, item)
        table.blockSignals(False)
        self.tabs.setCurrentIndex(1)
        self.results_shown.emit(len(self._results))

    def results(self) -> list[HubModel]:
        return list(self._results)

    def select_result(self, row: int) -> None:
        """Select a search result; its details are fetched."""
        self.results_table.selectRow(row)

    @Slot()
    def _result_selection_changed(self) -> None:
        rows = self.results_table.selectionModel().selectedRows()
        if rows and rows[0].row() < len(self._results):
            self.open_details(self._results[rows[0].row()])

    # -- details -----------------------------------------------------------------------------

    def open_details(self, model: HubModel | str) -> JobHandle:
        """Show what is known of a model now and fetch its files and config as a job."""
        repo_id = model if isinstance(model, str) else model.repo_id
        if isinstance(model, HubModel):
            self.show_details(dataclasses.replace(model, files=None))  # the files come with the details
        if self._details_handle is not None and not self._details_handle.is_finished:
            self._details_handle.cancel()
        handle = self.ctx.bridge.call(
            "search",
            read_details,
            f"Reading {repo_id}",
            repo_id,
            n_ctx=self.context.value(),
            cache_type=self.ctx.settings.kv_type,
            n_threads=self.ctx.settings.threads,
        )
        self._details_handle = handle

        def done(result: tuple[HubModel, dict[str, Any] | None]) -> None:
            if handle is self._details_handle:
                self.show_details(*result)

        def failed(message: str) -> None:
            if handle is self._details_handle and message != "Cancelled.":
                offline = isinstance(handle.error, OfflineError)
                self.details_info.setText(
                    html.escape(offline_text(message) if offline else _sentence(message))
                )
                self.details_info.setToolTip(_sentence(message))

        handle.done.connect(done)
        handle.failed.connect(failed)
        return handle

    def show_details(self, model: HubModel, config: dict[str, Any] | None = None) -> None:
        """Show a model's details: its files and, per quantization level, the memory it needs
        and whether it fits. ``model.files`` None means they are still being read."""
        new_model = self._model is None or self._model.repo_id != model.repo_id
        self._model = model
        self._config = config
        if new_model:
            self._chosen = set()
        esc = html.escape
        self.details_title.setText(f"<b style='font-size: 14pt'>{esc(model.repo_id)}</b>")
        facts = [
            model.architecture or "unknown architecture",
            f"{format_params(model.n_params)} parameters",
            f"license {model.license}" if model.license else "license unknown",
        ]
        if model.total_size is not None:
            facts.append(f"{format_bytes(model.total_size)} in all files")
        info = " · ".join(esc(f) for f in facts)
        link = f"{hub.endpoint()}/{model.repo_id}"
        info += f" · <a href='{esc(link)}'>page on the Hub</a>"
        if model.gated:
            info += (
                "<br><b>Gated:</b> accept the model's conditions on its Hub page and log in with a "
                "Hugging Face token before downloading."
            )
        if not model.supported and model.architecture:
            info += f"<br>Lowbit does not run the {esc(model.architecture)} architecture."
        if model.files is None:
            info += "<br><i>Reading the model's files…</i>"
        self.details_info.setText(info)
        self._fill_files(model)
        self._set_details_enabled(model.files is not None)
        self._update_levels()
        if model.files is not None and self._preselected != model.repo_id:
            self._preselected = model.repo_id  # once per model: later ticks are the user's
            if not self._chosen:
                self._preselect_level()
        if model.files is not None:
            self.details_shown.emit(model.repo_id)

    def _set_details_enabled(self, enabled: bool) -> None:
        self.levels_table.setEnabled(enabled)
        self.files_table.setEnabled(enabled)
        if not enabled:
            self.download_button.setEnabled(False)

    def _fill_files(self, model: HubModel) -> None:
        files = list(model.files or ())
        table = self.files_table
        table.setRowCount(len(files))
        for row, f in enumerate(files):
            kind = f.quant_type or ("GGUF" if f.kind == "gguf" else f.kind)
            for col, text in enumerate((f.name, format_bytes(f.size), kind)):
                item = QTableWidgetItem(text)
                if col == 1:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(row, col, item)

    def set_context_length(self, n_ctx: int) -> None:
        """The context length the verdicts are computed for."""
        self.context.setValue(n_ctx)

    def level_fits(self) -> list[LevelFit]:
        """The levels shown, with their memory need and verdict."""
        return list(self._levels)

    @Slot()
    def _update_levels(self) -> None:
        model = self._model
        table = self.levels_table
        table.blockSignals(True)
        table.setRowCount(0)
        self._levels = []
        self.levels_note.setText("")
        if model is None or model.files is None:
            table.blockSignals(False)
            self.memory_label.setText("")
            return
        try:
            self._levels = hub_level_fits(
                model,
                n_ctx=self.context.value(),
                config=self._config,
                cache_type=self.ctx.settings.kv_type,
                n_threads=self.ctx.settings.threads,
            )
        except (LowbitError, ValueError, ArithmeticError) as e:  # an odd config: say so, keep the page
            self.levels_note.setText(_sentence(str(e)))
        have = self._levels[0].fit.available_bytes if self._levels else available_memory()
        self.memory_label.setText(f"{format_bytes(have)} of memory available now")
        gguf = bool(model.gguf_files)
        table.setRowCount(len(self._levels))
        for row, lv in enumerate(self._levels):
            approx = "" if lv.exact else "≈ "
            label, colour = VERDICTS[lv.verdict]
            size = QTableWidgetItem(format_bytes(lv.weights_bytes))
            if not gguf:
                size.setToolTip("The size of the GGUF file after quantizing here")
            level = QTableWidgetItem(lv.level)
            level.setData(ROLE_DATA, lv.level)
            level.setToolTip("\n".join(lv.files) if lv.files else "Made here from the full-precision model")
            if gguf:
                level.setFlags(level.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                checked = lv.level in self._chosen
                level.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            need = QTableWidgetItem(approx + format_bytes(lv.total_bytes))
            est = lv.fit.estimate
            need.setToolTip(
                f"weights {format_bytes(est.weights_bytes)} + KV cache ({est.cache_type}, "
                f"{est.n_ctx} tokens) {format_bytes(est.kv_bytes)} + buffers "
                f"{format_bytes(est.scratch_bytes)} + runtime {format_bytes(est.overhead_bytes)}"
            )
            verdict = QTableWidgetItem(label)
            verdict.setForeground(QBrush(QColor(colour)))
            verdict.setToolTip(lv.fit.message)
            verdict.setData(Qt.ItemDataRole.AccessibleTextRole, lv.fit.message)
            for col, item in enumerate((level, size, need, verdict)):
                if col in (1, 2):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(row, col, item)
        table.blockSignals(False)
        notes = []
        if self._levels and not all(lv.exact for lv in self._levels):
            notes.append(
                "≈ The model's config is not available: its memory is estimated from its size, "
                "and may be off by a few hundred MiB."
            )
        if self._levels and not gguf:
            notes.append(
                "The full-precision model is downloaded; choose a level when you quantize it "
                "(Quantize… in the library)."
            )
        if not self._levels and not self.levels_note.text():
            if not any(f.kind in ("gguf", "safetensors") for f in model.files):
                notes.append("This repository has no GGUF or safetensors weights that Lowbit can use.")
            else:
                notes.append("The model's size is not known, so the memory it needs cannot be estimated.")
        if notes:
            self.levels_note.setText("\n".join(notes))
        self._update_download_button()

    def _preselect_level(self) -> None:
        """Tick Q4_K_M when it fits (the usual balance of size and quality), else the largest
        quantized level that fits; a float file is never ticked for the user."""
        fitting = [
            lv for lv in self._levels if lv.files and lv.verdict == "fits" and lv.level not in FLOAT_LEVELS
        ]
        best = next((lv for lv in fitting if lv.level == "Q4_K_M"), fitting[-1] if fitting else None)
        if best is not None:
            self.choose_levels([best.level])

    def choose_levels(self, levels: Sequence[str]) -> None:
        """Tick these GGUF levels for download (and untick the others)."""
        self._chosen = set(levels)
        table = self.levels_table
        table.blockSignals(True)
        for row in range(table.rowCount()):
            item = table.item(row, 0)
            if item is not None and item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
                on = item.data(ROLE_DATA) in self._chosen
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        table.blockSignals(False)
        self._update_download_button()

    @Slot(QTableWidgetItem)
    def _level_checked(self, item: QTableWidgetItem) -> None:
        if item.column() != 0:
            return
        level = item.data(ROLE_DATA)
        if item.checkState() == Qt.CheckState.Checked:
            self._chosen.add(level)
        else:
            self._chosen.discard(level)
        self._update_download_button()

    def _chosen_files(self) -> list[str]:
        return [f for lv in self._levels if lv.level in self._chosen for f in lv.files]

    def _update_download_button(self) -> None:
        model = self._model
        if model is None or model.files is None:
            self.download_button.setEnabled(False)
            return
        if model.gguf_files:
            files = self._chosen_files()
            size = sum(lv.weights_bytes for lv in self._levels if lv.level in self._chosen)
            if files:
                n = len([lv for lv in self._levels if lv.level in self._chosen])
                what = "the ticked GGUF file" if n == 1 else f"{n} ticked GGUF files"
                self.download_button.setText(f"Download {what} ({format_bytes(size)})")
            else:
                self.download_button.setText("Tick a GGUF file above to download it")
            self.download_button.setEnabled(bool(files))
        else:
            has_weights = any(f.kind == "safetensors" for f in model.files)
            size = sum(f.size or 0 for f in model.files if f.kind in ("safetensors", "index", "config"))
            self.download_button.setText(f"Download the model ({format_bytes(size)})")
            self.download_button.setEnabled(has_weights)

    # -- downloads ---------------------------------------------------------------------------

    def download_selected(self) -> DownloadItem | None:
        """Download the ticked GGUF file(s), or the whole model for a full-precision repository."""
        model = self._model
        if model is None or model.files is None:
            return None
        if model.gguf_files:
            files = self._chosen_files()
            if not files:
                return None
            return self.download(model.repo_id, files)
        return self.download(model.repo_id)

    def download(self, repo_id: str, files: Sequence[str] | None = None) -> DownloadItem:
        """Queue a download (``files``: names or globs; default: what the core picks)."""
        key = (repo_id, tuple(files) if files else None)
        for item in self._items:
            if (item.repo_id, item.files) == key and item.state != item.DONE:
                if item.state in (item.PAUSED, item.FAILED):
                    self.resume_download(item)
                return item
        item = DownloadItem(repo_id, files, self)
        self._items.append(item)
        row = _DownloadRow(item, self)
        self._rows[item] = row
        self._queue_rows.addWidget(row)
        self._submit(item)
        self._queue_changed()
        return item

    def downloads(self) -> list[DownloadItem]:
        return list(self._items)

    def is_queued_behind(self, item: DownloadItem) -> bool:
        """Whether another download of this page, submitted earlier, runs or waits."""
        return any(o is not item and o.live and o.seq < item.seq for o in self._items)

    def _submit(self, item: DownloadItem) -> None:
        self._seq += 1
        item.seq = self._seq  # the lane runs jobs in the order they were submitted
        item.state = item.QUEUED
        item.intent = ""
        item.message = item.summary = ""
        handle = self.ctx.bridge.run(
            "download",
            "download",
            f"Downloading {item.title}",
            self.ctx.library,
            item.repo_id,
            files=list(item.files) if item.files else None,
        )
        item.handle = handle
        handle.progress.connect(lambda p: self._download_progress(item, handle, p))
        handle.event.connect(lambda ev: self._download_event(item, handle, ev))
        handle.done.connect(lambda entries: self._download_done(item, handle, entries))
        handle.failed.connect(lambda message: self._download_failed(item, handle, message))
        item.changed.emit()

    def _download_progress(self, item: DownloadItem, handle: JobHandle, p: Progress) -> None:
        if handle is not item.handle:
            return
        item.state = item.RUNNING
        if p.total:
            item.done_bytes, item.total_bytes = int(p.done), int(p.total)
        item.changed.emit()

    def _download_event(self, item: DownloadItem, handle: JobHandle, ev: Any) -> None:
        if handle is not item.handle or not isinstance(ev, DownloadProgress):
            return
        item.state = item.RUNNING
        item.done_bytes, item.total_bytes = ev.done, ev.total
        item.speed_bps, item.eta_s = ev.speed_bps, ev.eta_s
        item.current_file = ev.file
        item.files_done, item.files_total = ev.files_done, ev.files_total
        item.changed.emit()

    def _download_done(self, item: DownloadItem, handle: JobHandle, entries: list[LibraryEntry]) -> None:
        if handle is not item.handle:
            return
        item.state = item.DONE
        item.intent = ""
        item.entries = list(entries)
        if item.total_bytes:
            item.done_bytes = item.total_bytes
        self.ctx.library_changed.emit()
        names = ", ".join(e.name or e.id for e in entries) or item.repo_id
        hint = " Quantize it to chat with it." if any(e.kind == "hf" for e in entries) else ""
        self.ctx.notice.emit(f"Downloaded {names} into the library.{hint}")
        item.completed.emit(item.entries)
        self._take_off(item)

    def _download_failed(self, item: DownloadItem, handle: JobHandle, message: str) -> None:
        if handle is not item.handle:
            return
        intent, item.intent = item.intent, ""
        if intent == "cancel":
            self._discard(item)
            self._take_off(item)
            return
        if intent == "pause" or message == "Cancelled.":
            item.state = item.PAUSED
        else:
            item.state = item.FAILED
            item.message = _sentence(message)
            if isinstance(handle.error, OfflineError):
                item.summary = "The Hugging Face Hub cannot be reached. Retry when the network is back."
            else:
                item.summary = _first_sentence(item.message)
            self.ctx.error.emit(f"Downloading {item.repo_id} failed: {message}")
        item.speed_bps, item.eta_s = 0.0, None
        self._queue_changed()

    def pause_download(self, item: DownloadItem) -> None:
        """Stop a download, keeping what arrived; Resume continues from there."""
        if item.live and item.handle is not None:
            item.intent = "pause"
            item.handle.cancel()
            item.changed.emit()

    def resume_download(self, item: DownloadItem) -> None:
        """Submit a paused or failed download again; it continues from its partial files."""
        if item.state in (item.PAUSED, item.FAILED) and not item.live:
            self._submit(item)
            self._queue_changed()

    def cancel_download(self, item: DownloadItem) -> None:
        """Stop a download and delete its partial files."""
        if item.live and item.handle is not None:
            item.intent = "cancel"
            item.handle.cancel()
            item.changed.emit()
            return
        self._discard(item)
        self._take_off(item)

    def _discard(self, item: DownloadItem) -> None:
        """Delete a download's partial files (a few unlinks: fine on the GUI thread).

        Another queued download of the same repository shares the folder and may resume
        from those files, so then only this download's own files are deleted.
        """
        dest = self.ctx.library.download_dir(item.repo_id)
        others = [o for o in self._items if o is not item and o.repo_id == item.repo_id and o.state != o.DONE]
        try:
            if not others:
                hub.discard_partial(dest)
            elif item.files:
                partial = dest / hub.PARTIAL_DIR
                for name in item.files:
                    prefix = name.replace("/", "__") + "."
                    for f in partial.glob("*.incomplete"):
                        if f.name.startswith(prefix):
                            f.unlink(missing_ok=True)
        except OSError as e:
            self.ctx.error.emit(f"The partial files of {item.repo_id} could not all be deleted: {e}")
            return
        try:
            dest.rmdir()
        except OSError:
            pass  # absent, or it holds other downloads' files or models in the library

    def _take_off(self, item: DownloadItem) -> None:
        if item in self._items:
            self._items.remove(item)
        row = self._rows.pop(item, None)
        if row is not None:
            self._queue_rows.removeWidget(row)
            row.deleteLater()
        item.removed.emit()
        self._queue_changed()

    def _queue_changed(self) -> None:
        for it in self._items:
            it.changed.emit()  # the first waiting item now shows "Starting…"
        active = [it for it in self._items if it.state in (it.QUEUED, it.RUNNING)]
        self.queue_title.setText(f"<b>Downloads</b> ({len(active)} active)" if active else "<b>Downloads</b>")
        self.queue_box.setVisible(bool(self._items))
        self.downloads_changed.emit()

    # -- Qt --------------------------------------------------------------------------------

    def showEvent(self, event: QShowEvent) -> None:
        # Files moved or deleted while the page was hidden show as missing now.
        self.refresh_library()
        super().showEvent(event)


def _evaluation_html(record: dict[str, Any]) -> str:
    esc = html.escape
    date = esc(str(record.get("date", "")))
    metrics = []
    for key, label, fmt in (
        ("kld_mean", "mean KLD", "{:.5f}"),
        ("same_top_pct", "same top token", "{:.1f}%"),
        ("ppl", "perplexity", "{:.3f}"),
        ("ppl_ratio", "perplexity ratio", "{:.4f}"),
    ):
        value = record.get(key)
        if isinstance(value, int | float):
            metrics.append(f"{label} {fmt.format(value)}")
    others = [
        f"{esc(str(k))}: {esc(str(v))[:80]}"
        for k, v in record.items()
        if k not in ("date", "kld_mean", "same_top_pct", "ppl", "ppl_ratio", "candidates")
        and isinstance(v, str | int | float)
    ]
    out = f"<p><b>{date or 'Evaluation'}</b><br>{esc(', '.join(metrics)) or 'no summary numbers'}"
    if others:
        out += "<br><small>" + "; ".join(others[:8]) + "</small>"
    return out + "</p>"
