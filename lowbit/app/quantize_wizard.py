"""The Quantize page and its wizard: source, levels, calibration, run, report, finish.

Every step that opens, estimates, quantizes, measures or imports a model runs as a
job on the bridge (the "model" lane; downloads on "download"), so the GUI thread only
shows results. Each page keeps the handle of its own job and ignores signals from an
older one, so Back, Next and Cancel can be pressed at any moment.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QFont, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from lowbit.core.evaluate import QUICK, EvalSettings
from lowbit.core.fit import FITS_BELOW, available_memory
from lowbit.core.library import Library, LibraryEntry
from lowbit.core.plan import (
    SPEED_TOKENS,
    Level,
    LevelOutcome,
    ModelShape,
    RunOutcome,
    RunRequest,
    budget_label,
    decode_speed,
    describe_levels,
    discard_outputs,
    memory_needed,
    recommend,
    run_levels,
)
from lowbit.core.worker import Progress

from .bridge import JobHandle
from .charts import QualitySizeChart
from .formatting import format_eta, show_fraction
from .settings import AppContext
from .theme import is_dark

SOURCE_PAGE, LEVELS_PAGE, CALIBRATION_PAGE, RUN_PAGE, REPORT_PAGE, FINISH_PAGE = range(6)
FLOAT_TYPES = ("F32", "F16", "BF16")
METHOD_CHOICES = (
    ("rtn", "Round to nearest — fastest"),
    ("imatrix", "Importance matrix — better at 2 to 4 bits; runs the model on the text first"),
    ("gptq", "GPTQ — best at 2 to 4 bits, slowest"),
)
_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ERROR_STYLE = "color: #c92a2a;"
MIB = 2**20


def can_quantize(entry: LibraryEntry) -> bool:
    """Whether a library entry is a full-precision model (a folder, or an F32/F16/BF16 GGUF)."""
    if entry.status != "ok":
        return False
    return entry.kind == "hf" or (entry.quant_type or "").upper() in FLOAT_TYPES


def torch_available() -> bool:
    """Whether PyTorch is installed (looked up, not imported: importing it takes seconds)."""
    return importlib.util.find_spec("torch") is not None


def _message_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(_ERROR_STYLE)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setAccessibleName("Message")
    label.hide()
    return label


def _show_message(label: QLabel, text: str) -> None:
    label.setText(text)
    label.setVisible(bool(text))


def _note(text: str) -> QLabel:
    label = QLabel(text)
    label.setObjectName("placeholder")
    label.setWordWrap(True)
    return label


def _num_item(text: str, value: float | None = None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    if value is not None:
        item.setData(Qt.ItemDataRole.UserRole, value)
    return item


# -- jobs (run on a worker thread: plain data in and out) -----------------------------------


def estimate_levels(job: Any, src: str, n_threads: int) -> tuple[ModelShape, list[Level]]:
    return describe_levels(src, n_threads=n_threads, progress=job.progress, cancel=job.cancel)


def measure_memory_speed(job: Any, n_threads: int) -> float:
    from lowbit.core.bench import measure_bandwidth

    job.progress("bandwidth", 0, None, "Measuring memory speed")
    # Small buffers: a few hundred milliseconds, enough for an estimate's accuracy.
    return measure_bandwidth(n_threads, buffer_mib=64, repeats=3)


def quantize_levels(job: Any, request: RunRequest) -> RunOutcome:
    return run_levels(request, progress=job.progress, cancel=job.cancel)


def add_to_library(
    job: Any, library: Library, outcome: RunOutcome, source: str
) -> list[tuple[LevelOutcome, LibraryEntry]]:
    """Import each output (already inside the library folder) and record its evaluation."""
    added = []
    for i, out in enumerate(outcome.outputs):
        job.cancel.raise_if_cancelled()
        job.progress("library", i, len(outcome.outputs), f"Adding {out.path.name}")
        entry = library.import_path(out.path, source={"quantized_from": source})
        entry = library.record_evaluation(entry.id, out.evaluation_record(outcome.report))
        added.append((out, entry))
    return added


# -- the wizard ---------------------------------------------------------------------------


class QuantizeWizard(QWizard):
    """Make quantized GGUFs of a full-precision model, measure them, and add them to the library.

    Attributes that tests and screenshots may change before running: ``eval_settings``
    (default :data:`evaluate.QUICK`), ``eval_cache_dir``, ``speed_tokens`` and
    ``available_bytes`` (None: the memory available now).
    """

    outputs_added = Signal(list)  # LevelOutcome of each output, once they are in the library

    # Memory bandwidth is a property of the machine: measured once per session.
    session_bandwidth_gbs: float | None = None

    def __init__(self, ctx: AppContext, source: str | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.setWindowTitle("New quantization")
        self.setAccessibleName("Quantize wizard")
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.resize(900, 640)
        self.eval_settings: EvalSettings = QUICK
        self.eval_cache_dir: Path | None = None
        self.speed_tokens = SPEED_TOKENS
        self.available_bytes: int | None = None
        # what the pages decide, in order
        self.source: Path | None = None
        self.shape: ModelShape | None = None
        self.levels: list[Level] = []
        self.levels_source: Path | None = None
        self.n_ctx = ctx.settings.n_ctx
        self.presets: list[str] = []
        self.method = "rtn"
        self.calibration: Path | None = None
        self.budget_mib: int | None = None
        self.outcome: RunOutcome | None = None
        # Whether this wizard made the outcome's files (and may delete them if they are not added).
        self.owns_outcome = False
        self.added: list[tuple[LevelOutcome, LibraryEntry]] = []

        self.source_page = SourcePage(self)
        self.levels_page = LevelsPage(self)
        self.calibration_page = CalibrationPage(self)
        self.run_page = RunPage(self)
        self.report_page = ReportPage(self)
        self.finish_page = FinishPage(self)
        for pid, page in (
            (SOURCE_PAGE, self.source_page),
            (LEVELS_PAGE, self.levels_page),
            (CALIBRATION_PAGE, self.calibration_page),
            (RUN_PAGE, self.run_page),
            (REPORT_PAGE, self.report_page),
            (FINISH_PAGE, self.finish_page),
        ):
            self.setPage(pid, page)
        if source:
            self.source_page.preselect(source)

    # -- shared state ----------------------------------------------------------------

    @property
    def threads(self) -> int:
        return self.ctx.settings.threads

    @property
    def model_name(self) -> str:
        if self.shape is not None and self.shape.name:
            return self.shape.name
        return self.source.stem if self.source is not None else "model"

    def set_source(self, path: Path) -> None:
        if path != self.source:
            self.source = path
            self.presets = []

    def memory_available(self) -> int:
        return self.available_bytes if self.available_bytes is not None else available_memory()

    def memory_of(self, level: Level) -> int | None:
        if level.file is None:
            return None
        return memory_needed(
            level, n_ctx=self.n_ctx, cache_type=self.ctx.settings.kv_type, n_threads=self.threads
        )

    def recommended(self) -> str | None:
        if self.shape is None or not self.levels:
            return None
        memory = {lv.preset: self.memory_of(lv) or 0 for lv in self.levels}
        return recommend(self.levels, memory, self.memory_available())

    def fitting_labels(self) -> set[str]:
        """Levels (and the budget output) whose memory need fits this machine now."""
        limit = FITS_BELOW * self.memory_available()
        fits = {lv.preset for lv in self.levels if (self.memory_of(lv) or 0) <= limit}
        if self.budget_mib and fits:
            largest = max(lv.data_bytes for lv in self.levels if lv.preset in fits)
            if self.budget_mib * MIB <= largest:
                fits.add(budget_label(self.budget_mib))
        return fits

    def best_output(self) -> LevelOutcome | None:
        """The most accurate output that fits in memory (else the most accurate)."""
        if self.outcome is None or not self.outcome.outputs:
            return None
        fits = self.fitting_labels()
        pool = [o for o in self.outcome.outputs if o.label in fits] or self.outcome.outputs
        return min(pool, key=lambda o: (o.result.kld_mean, o.file_bytes))

    def make_request(self) -> RunRequest:
        assert self.source is not None
        budget_preset = "Q4_K_M"
        if self.budget_mib:
            # The budget output's label is the largest standard mixture within the budget.
            under = [lv for lv in self.levels if lv.data_bytes <= self.budget_mib * MIB]
            if under:
                budget_preset = max(under, key=lambda lv: lv.data_bytes).preset
            elif self.levels:
                budget_preset = min(self.levels, key=lambda lv: lv.data_bytes).preset
        return RunRequest(
            src=self.source,
            out_dir=self.ctx.library.root,
            model_name=self.model_name,
            presets=tuple(self.presets),
            method=self.method,
            calibration=self.calibration,
            budget_mib=self.budget_mib,
            budget_preset=budget_preset,
            eval_settings=self.eval_settings,
            eval_cache_dir=self.eval_cache_dir,
            n_threads=self.threads,
            speed_tokens=self.speed_tokens,
        )

    def discard_unadded(self) -> None:
        """Delete the files of a finished run that never made it into the library."""
        if self.outcome is not None and self.owns_outcome and not self.added and not self.finish_page.adding:
            discard_outputs(self.outcome)
        if not self.added:
            self.outcome = None

    # -- for screenshots and tests ---------------------------------------------------------

    def show_levels_for(
        self, source: str | Path, shape: ModelShape | None = None, levels: Sequence[Level] | None = None
    ) -> None:
        """Open the wizard at the Levels page for a source (with known levels: no estimate job)."""
        self.set_source(Path(source))
        if shape is not None and levels is not None:
            self.shape, self.levels, self.levels_source = shape, list(levels), Path(source)
        self.setStartId(LEVELS_PAGE)
        self.restart()

    def show_report_for(self, outcome: RunOutcome) -> None:
        """Open the wizard at the Report page for a finished run (whose files it leaves alone)."""
        self.outcome = outcome
        self.owns_outcome = False
        if outcome.request is not None:
            self.set_source(outcome.request.src)
        self.setStartId(REPORT_PAGE)
        self.restart()

    # -- closing ---------------------------------------------------------------------------

    def done(self, result: int) -> None:
        if result == QWizard.DialogCode.Rejected:
            adding = self.finish_page.adding
            for page in (self.source_page, self.levels_page, self.run_page, self.finish_page):
                page.detach()
            if not adding:
                self.discard_unadded()
        else:
            best = self.finish_page.open_target()
            self.levels_page.detach()
            if best is not None:
                self.ctx.open_in_chat.emit(str(best))
        super().done(result)


# -- 1. source ----------------------------------------------------------------------------------


class SourcePage(QWizardPage):
    """Where the full-precision model comes from: the library, the Hub, or disk."""

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.ctx = wiz.ctx
        self._download: JobHandle | None = None
        self.setTitle("Choose the model to quantize")
        self.setSubTitle(
            "Quantizing starts from the full-precision model: a Hugging Face folder, "
            "or a GGUF file in F32, F16 or BF16."
        )
        self.from_library = QRadioButton("From the library")
        self.from_library.setAccessibleName("Source from the library")
        self.library_combo = QComboBox()
        self.library_combo.setAccessibleName("Library model")
        self.from_hub = QRadioButton("From Hugging Face (downloaded into the library first)")
        self.from_hub.setAccessibleName("Source from Hugging Face")
        self.repo_edit = QLineEdit()
        self.repo_edit.setPlaceholderText("owner/name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
        self.repo_edit.setAccessibleName("Hugging Face repository")
        self.download_bar = QProgressBar()
        self.download_bar.setAccessibleName("Download progress")
        self.download_bar.setRange(0, 1000)
        self.download_bar.hide()
        self.download_status = _note("")
        self.download_status.hide()
        self.cancel_download = QPushButton("Cancel download")
        self.cancel_download.setAccessibleName("Cancel download")
        self.cancel_download.hide()
        self.from_disk = QRadioButton("From disk")
        self.from_disk.setAccessibleName("Source from disk")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a .gguf file or a model folder")
        self.path_edit.setAccessibleName("Model path")
        self.file_button = QPushButton("File…")
        self.file_button.setAccessibleName("Choose a GGUF file")
        self.folder_button = QPushButton("Folder…")
        self.folder_button.setAccessibleName("Choose a model folder")
        self.message = _message_label()

        self.group = QButtonGroup(self)
        for b in (self.from_library, self.from_hub, self.from_disk):
            self.group.addButton(b)
        grid = QGridLayout()
        grid.addWidget(self.from_library, 0, 0, 1, 3)
        grid.addWidget(self.library_combo, 1, 0, 1, 3)
        grid.addWidget(self.from_hub, 2, 0, 1, 3)
        grid.addWidget(self.repo_edit, 3, 0, 1, 2)
        grid.addWidget(self.cancel_download, 3, 2)
        grid.addWidget(self.download_bar, 4, 0, 1, 3)
        grid.addWidget(self.download_status, 5, 0, 1, 3)
        grid.addWidget(self.from_disk, 6, 0, 1, 3)
        grid.addWidget(self.path_edit, 7, 0)
        grid.addWidget(self.file_button, 7, 1)
        grid.addWidget(self.folder_button, 7, 2)
        grid.setColumnStretch(0, 1)
        grid.setVerticalSpacing(8)
        layout = QVBoxLayout(self)
        layout.addLayout(grid)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self.group.buttonToggled.connect(self._changed)
        self.library_combo.currentIndexChanged.connect(self._changed)
        self.repo_edit.textChanged.connect(self._changed)
        self.path_edit.textChanged.connect(self._changed)
        self.library_combo.activated.connect(lambda _i: self.from_library.setChecked(True))
        self.repo_edit.textEdited.connect(lambda _t: self.from_hub.setChecked(True))
        self.path_edit.textEdited.connect(lambda _t: self.from_disk.setChecked(True))
        self.file_button.clicked.connect(self._choose_file)
        self.folder_button.clicked.connect(self._choose_folder)
        self.cancel_download.clicked.connect(self.cancel_jobs)
        self.ctx.library_changed.connect(self.refresh_library)
        self.refresh_library()
        (self.from_library if self.library_combo.count() else self.from_disk).setChecked(True)

    @Slot()
    def refresh_library(self) -> None:
        current = self.library_combo.currentData()
        self.library_combo.clear()
        lib = self.ctx.library
        for e in lib.entries():
            if can_quantize(e):
                kind = "Hugging Face folder" if e.kind == "hf" else f"GGUF {e.quant_type}"
                size = f"{e.size_bytes / MIB:,.0f} MiB" if e.size_bytes else ""
                text = " · ".join(x for x in (e.name, kind, size) if x)
                self.library_combo.addItem(text, str(lib.path_of(e)))
        empty = self.library_combo.count() == 0
        if empty:
            self.library_combo.addItem("No full-precision models in the library yet")
        self.library_combo.setEnabled(not empty)
        self.from_library.setEnabled(not empty)
        if current is not None:
            i = self.library_combo.findData(current)
            if i >= 0:
                self.library_combo.setCurrentIndex(i)

    def preselect(self, path: str) -> None:
        """Start from this model: its library entry if it has one, else the path."""
        target = Path(path).expanduser()
        for i in range(self.library_combo.count()):
            data = self.library_combo.itemData(i)
            if data and Path(data) == target:
                self.library_combo.setCurrentIndex(i)
                self.from_library.setChecked(True)
                return
        self.path_edit.setText(str(target))
        self.from_disk.setChecked(True)

    def _changed(self, *_args: object) -> None:
        _show_message(self.message, "")
        self.completeChanged.emit()

    @Slot()
    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a full-precision GGUF", "", "GGUF models (*.gguf)"
        )
        if path:
            self.path_edit.setText(path)
            self.from_disk.setChecked(True)

    @Slot()
    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a Hugging Face model folder")
        if path:
            self.path_edit.setText(path)
            self.from_disk.setChecked(True)

    @property
    def downloading(self) -> bool:
        return self._download is not None and not self._download.is_finished

    def isComplete(self) -> bool:
        if self.downloading:
            return False
        if self.from_library.isChecked():
            return self.library_combo.isEnabled() and self.library_combo.currentData() is not None
        if self.from_hub.isChecked():
            return bool(_REPO_RE.match(self.repo_edit.text().strip()))
        return bool(self.path_edit.text().strip())

    def validatePage(self) -> bool:
        if not self.isComplete():
            return False
        if self.from_library.isChecked():
            self.wiz.set_source(Path(self.library_combo.currentData()))
            return True
        if self.from_hub.isChecked():
            self._start_download(self.repo_edit.text().strip())
            return False
        p = Path(self.path_edit.text().strip()).expanduser()
        if not p.exists():
            _show_message(self.message, f"{p} does not exist.")
            return False
        self.wiz.set_source(p)
        return True

    def cancel_jobs(self) -> None:
        if self.downloading:
            assert self._download is not None
            self._download.cancel()

    def detach(self) -> None:
        """Cancel the download and stop listening to it (the wizard is closing)."""
        self.cancel_jobs()
        self._download = None

    def _start_download(self, repo: str) -> None:
        _show_message(self.message, "")
        h = self.ctx.bridge.run("download", "download", f"Downloading {repo}", self.ctx.library, repo)
        self._download = h
        h.progress.connect(lambda p, h=h: self._download_progress(h, p))
        h.done.connect(lambda entries, h=h: self._downloaded(h, repo, entries))
        h.failed.connect(lambda msg, h=h: self._download_failed(h, msg))
        self.download_bar.setValue(0)
        self.download_status.setText(f"Downloading {repo}…")
        for w in (self.download_bar, self.download_status, self.cancel_download):
            w.show()
        self.completeChanged.emit()

    def _download_progress(self, h: JobHandle, p: Progress) -> None:
        if h is not self._download:
            return
        show_fraction(self.download_bar, p.done, p.total)
        text = p.message or "Downloading…"
        eta = format_eta(p.eta_s)
        self.download_status.setText(f"{text} — {eta}" if eta else text)

    def _download_finished(self) -> None:
        self.download_bar.hide()
        self.cancel_download.hide()
        self.completeChanged.emit()

    def _downloaded(self, h: JobHandle, repo: str, entries: list[LibraryEntry]) -> None:
        if h is not self._download:
            return
        self._download_finished()
        self.ctx.library_changed.emit()
        usable = [e for e in entries if can_quantize(e)]
        if not usable:
            self.download_status.hide()
            _show_message(
                self.message,
                f"{repo} was added to the library, but it has no full-precision weights to quantize "
                "(only already quantized files). Choose the original model's repository.",
            )
            return
        entry = next((e for e in usable if e.kind == "hf"), usable[0])
        self.download_status.setText(f"Downloaded {repo}.")
        path = self.ctx.library.path_of(entry)
        self.refresh_library()
        self.preselect(str(path))
        self.wiz.set_source(path)
        if self.wiz.currentPage() is self:
            self.wiz.next()

    def _download_failed(self, h: JobHandle, message: str) -> None:
        if h is not self._download:
            return
        self._download_finished()
        self.download_status.hide()
        if message == "Cancelled.":
            message = "The download was cancelled. It resumes where it stopped when you start it again."
        _show_message(self.message, message)


# -- 2. levels ---------------------------------------------------------------------------------


class LevelsPage(QWizardPage):
    """The presets with size, memory at a context, estimated speed and estimated quality."""

    COLUMNS = (
        "Level",
        "Bits/weight",
        "Size (MiB)",
        "Memory (MiB)",
        "Speed (est. tok/s)",
        "Quality loss (est. KLD)",
    )

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.ctx = wiz.ctx
        self._job: JobHandle | None = None
        self._bandwidth_job: JobHandle | None = None
        self._filling = False
        self.setTitle("Choose the levels")
        self.setSubTitle(
            "Each level trades file size and speed against accuracy. Check the ones to make; "
            "the recommended one is the most accurate that fits this computer's memory."
        )
        self.context_spin = QSpinBox()
        self.context_spin.setRange(256, 1 << 20)
        self.context_spin.setSingleStep(512)
        self.context_spin.setValue(wiz.n_ctx)
        self.context_spin.setSuffix(" tokens")
        self.context_spin.setAccessibleName("Context length for the memory column")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setAccessibleName("Quantization levels")
        self.table.verticalHeader().hide()
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        tips = {
            2: "Tensor data; the file adds its metadata (vocabulary, settings).",
            3: "Weights, KV cache, buffers and the runtime at the chosen context.",
            4: "Estimated from this computer's memory bandwidth; the report measures it.",
            5: "Estimated from the weights alone, in seconds; the report measures it. Lower is better.",
        }
        for col, tip in tips.items():
            item = self.table.horizontalHeaderItem(col)
            if item is not None:
                item.setToolTip(tip)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setAccessibleName("Estimate progress")
        self.status = _note("")
        self.message = _message_label()
        self.note = _note("")

        top = QHBoxLayout()
        top.addWidget(QLabel("Memory at a context of"))
        top.addWidget(self.context_spin)
        top.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.note)
        layout.addWidget(self.message)
        self.context_spin.valueChanged.connect(self._context_changed)
        self.table.itemChanged.connect(self._item_changed)

    # -- lifecycle ---------------------------------------------------------------------

    def initializePage(self) -> None:
        _show_message(self.message, "")
        self.context_spin.setValue(self.wiz.n_ctx)
        src = self.wiz.source
        if src is not None and self.wiz.levels_source == src and self.wiz.levels:
            self._fill(keep_checks=True)
        else:
            self._start_estimate()
        if QuantizeWizard.session_bandwidth_gbs is None and self._bandwidth_job is None:
            h = self.ctx.bridge.call(
                "model", measure_memory_speed, "Measuring memory speed", self.wiz.threads
            )
            self._bandwidth_job = h
            h.done.connect(lambda gbs, h=h: self._bandwidth_measured(h, gbs))
            h.failed.connect(lambda _m, h=h: self._bandwidth_failed(h))

    def cleanupPage(self) -> None:
        self.cancel_jobs()

    def cancel_jobs(self) -> None:
        if self._job is not None and not self._job.is_finished:
            self._job.cancel()
        self._job = None

    def detach(self) -> None:
        """Stop listening to jobs (the wizard is closing)."""
        self.cancel_jobs()
        self._bandwidth_job = None

    def isComplete(self) -> bool:
        return self._job is None and bool(self.wiz.levels) and bool(self.checked_presets())

    def validatePage(self) -> bool:
        if not self.isComplete():
            return False
        self.wiz.presets = self.checked_presets()
        return True

    # -- the estimate job ------------------------------------------------------------------

    def _start_estimate(self) -> None:
        self.cancel_jobs()
        self.wiz.levels, self.wiz.shape, self.wiz.levels_source = [], None, None
        self.table.setRowCount(0)
        src = self.wiz.source
        if src is None:
            return
        h = self.ctx.bridge.call(
            "model", estimate_levels, f"Estimating {src.name}", str(src), self.wiz.threads
        )
        self._job = h
        h.progress.connect(lambda p, h=h: self._estimate_progress(h, p))
        h.done.connect(lambda r, h=h: self._estimated(h, r))
        h.failed.connect(lambda m, h=h: self._estimate_failed(h, m))
        self.progress.setRange(0, 0)
        self.progress.show()
        self.status.setText(f"Reading {src.name} and estimating every level…")
        self.status.show()
        self.completeChanged.emit()

    def _estimate_progress(self, h: JobHandle, p: Progress) -> None:
        if h is not self._job:
            return
        show_fraction(self.progress, p.done, p.total)

    def _estimated(self, h: JobHandle, result: tuple[ModelShape, list[Level]]) -> None:
        if h is not self._job:
            return
        self._job = None
        self.wiz.shape, self.wiz.levels = result
        self.wiz.levels_source = self.wiz.source
        self._fill(keep_checks=False)
        self.completeChanged.emit()

    def _estimate_failed(self, h: JobHandle, message: str) -> None:
        if h is not self._job:
            return
        self._job = None
        self.progress.hide()
        self.status.hide()
        name = self.wiz.source.name if self.wiz.source else "the model"
        _show_message(self.message, f"{name} cannot be quantized: {message} Go back to choose another model.")
        self.completeChanged.emit()

    def _bandwidth_measured(self, h: JobHandle, gbs: float) -> None:
        QuantizeWizard.session_bandwidth_gbs = gbs
        if h is self._bandwidth_job:
            self._bandwidth_job = None
            self._update_numbers()

    def _bandwidth_failed(self, h: JobHandle) -> None:
        if h is self._bandwidth_job:
            self._bandwidth_job = None

    # -- the table ---------------------------------------------------------------------------

    def _fill(self, *, keep_checks: bool) -> None:
        shape = self.wiz.shape
        assert shape is not None
        self.progress.hide()
        self.status.hide()
        previous = set(self.checked_presets()) if keep_checks else set(self.wiz.presets)
        self.context_spin.blockSignals(True)
        self.context_spin.setMaximum(max(256, shape.n_ctx_train))
        self.context_spin.setValue(min(self.wiz.n_ctx, shape.n_ctx_train))
        self.context_spin.blockSignals(False)
        self.wiz.n_ctx = self.context_spin.value()
        self._filling = True
        self.table.setRowCount(len(self.wiz.levels))
        for row, lv in enumerate(self.wiz.levels):
            level = QTableWidgetItem(lv.preset)
            level.setFlags(
                Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable
            )
            level.setData(Qt.ItemDataRole.UserRole, lv.preset)
            level.setCheckState(Qt.CheckState.Unchecked)
            self.table.setItem(row, 0, level)
            self.table.setItem(row, 1, _num_item(f"{lv.bpw:.2f}", lv.bpw))
            self.table.setItem(row, 2, _num_item(f"{lv.data_bytes / MIB:,.1f}", lv.data_bytes / MIB))
            kld = lv.kld_estimate
            self.table.setItem(row, 5, _num_item(f"≈ {kld:.3g}" if math.isfinite(kld) else "?", kld))
        self._filling = False
        self._update_numbers()
        best = self.recommended_preset
        if not previous and best is not None:
            previous = {best}
        self.set_checked(previous)
        name = shape.name or (self.wiz.source.name if self.wiz.source else "the model")
        self.note.setText(
            f"{name}: {shape.n_params / 1e6:,.0f} million weights. Speed and quality are estimates; "
            "the report after the run measures them."
        )

    @property
    def recommended_preset(self) -> str | None:
        return self.wiz.recommended()

    def _update_numbers(self) -> None:
        if not self.wiz.levels or self.table.rowCount() != len(self.wiz.levels):
            return
        self._filling = True
        bandwidth = QuantizeWizard.session_bandwidth_gbs
        have = self.wiz.memory_available()
        best = self.wiz.recommended()
        for row, lv in enumerate(self.wiz.levels):
            need = self.wiz.memory_of(lv) or 0
            cell = _num_item(f"{need / MIB:,.0f}", need / MIB)
            if need > have:
                cell.setText(f"{need / MIB:,.0f} — too big")
                cell.setToolTip(f"More than the {have / MIB:,.0f} MiB available now.")
            elif need > FITS_BELOW * have:
                cell.setText(f"{need / MIB:,.0f} — tight")
                cell.setToolTip(f"Close to the {have / MIB:,.0f} MiB available now.")
            self.table.setItem(row, 3, cell)
            if bandwidth:
                tps = decode_speed(lv, bandwidth)
                self.table.setItem(row, 4, _num_item(f"≈ {tps:,.0f}" if tps >= 10 else f"≈ {tps:.1f}", tps))
            else:
                self.table.setItem(row, 4, _num_item("…"))
            item = self.table.item(row, 0)
            if item is not None:
                font = QFont(item.font())
                font.setBold(lv.preset == best)
                item.setFont(font)
                item.setText(f"{lv.preset}  ★ recommended" if lv.preset == best else lv.preset)
                item.setToolTip(
                    "The most accurate level (estimated) that fits this computer's memory at this context."
                    if lv.preset == best
                    else ""
                )
        self._filling = False
        if best is None:
            _show_message(
                self.message,
                f"None of the levels fits in the {have / MIB:,.0f} MiB available now at a context of "
                f"{self.wiz.n_ctx} tokens. Choose a shorter context, or make a level to use elsewhere.",
            )
        elif self.message.text().startswith("None of the levels"):
            _show_message(self.message, "")

    @Slot(int)
    def _context_changed(self, value: int) -> None:
        self.wiz.n_ctx = value
        self._update_numbers()

    @Slot(QTableWidgetItem)
    def _item_changed(self, item: QTableWidgetItem) -> None:
        if not self._filling and item.column() == 0:
            self.completeChanged.emit()

    def checked_presets(self) -> list[str]:
        out = []
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                out.append(str(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def set_checked(self, presets: Sequence[str] | set[str]) -> None:
        """Check exactly these presets."""
        wanted = set(presets)
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None:
                on = item.data(Qt.ItemDataRole.UserRole) in wanted
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
        self.completeChanged.emit()


# -- 3. calibration -------------------------------------------------------------------------------


class CalibrationPage(QWizardPage):
    """The method, the calibration text and an optional size budget."""

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self._budget_for: Path | None = None
        self.setTitle("Method and calibration")
        self.setSubTitle(
            "Round to nearest needs nothing else. The importance matrix and GPTQ first run the model "
            "on a calibration text to learn which weights matter most."
        )
        self.method_combo = QComboBox()
        self.method_combo.setAccessibleName("Quantization method")
        for key, text in METHOD_CHOICES:
            self.method_combo.addItem(text, key)
        self.gptq_note = _note("")
        if not torch_available():
            model = self.method_combo.model()
            if isinstance(model, QStandardItemModel):
                model.item(self.method_combo.findData("gptq")).setEnabled(False)
            self.gptq_note.setText(
                "GPTQ needs PyTorch, which is not installed (pip install torch, the CPU build is enough)."
            )
        else:
            self.gptq_note.hide()
        self.builtin_text = QRadioButton("Built-in text (a mix of prose, code and conversation)")
        self.builtin_text.setAccessibleName("Use the built-in calibration text")
        self.builtin_text.setChecked(True)
        self.own_text = QRadioButton("My own text file:")
        self.own_text.setAccessibleName("Use my own calibration text")
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("a UTF-8 text file like what the model will see")
        self.text_edit.setAccessibleName("Calibration text file")
        self.text_button = QPushButton("Choose…")
        self.text_button.setAccessibleName("Choose a calibration text file")
        self.budget_check = QCheckBox("Also make the best quality under")
        self.budget_check.setAccessibleName("Make a level under a size budget")
        self.budget_spin = QSpinBox()
        self.budget_spin.setRange(1, 1 << 20)
        self.budget_spin.setSuffix(" MiB")
        self.budget_spin.setAccessibleName("Size budget in MiB")
        self.budget_spin.setEnabled(False)
        self.budget_note = _note(
            "Chooses a type for every tensor by how much each one matters, so that the weights stay "
            "under the budget. Uses the calibration text."
        )
        self.text_note = _note("The calibration text is not used by round to nearest.")
        self.message = _message_label()

        group = QButtonGroup(self)
        group.addButton(self.builtin_text)
        group.addButton(self.own_text)
        text_row = QHBoxLayout()
        text_row.addWidget(self.own_text)
        text_row.addWidget(self.text_edit, 1)
        text_row.addWidget(self.text_button)
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget_check)
        budget_row.addWidget(self.budget_spin)
        budget_row.addStretch(1)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Method"))
        layout.addWidget(self.method_combo)
        layout.addWidget(self.gptq_note)
        layout.addSpacing(10)
        layout.addWidget(QLabel("Calibration text"))
        layout.addWidget(self.builtin_text)
        layout.addLayout(text_row)
        layout.addWidget(self.text_note)
        layout.addSpacing(10)
        layout.addLayout(budget_row)
        layout.addWidget(self.budget_note)
        layout.addWidget(self.message)
        layout.addStretch(1)

        self.method_combo.currentIndexChanged.connect(self._changed)
        self.budget_check.toggled.connect(self._changed)
        group.buttonToggled.connect(self._changed)
        self.text_edit.textChanged.connect(self._changed)
        self.text_edit.textEdited.connect(lambda _t: self.own_text.setChecked(True))
        self.text_button.clicked.connect(self._choose_text)
        self._changed()

    def initializePage(self) -> None:
        levels = self.wiz.levels
        if levels and self._budget_for != self.wiz.source:
            self._budget_for = self.wiz.source
            smallest = min(lv.data_bytes for lv in levels)
            self.budget_spin.setMinimum(max(1, math.ceil(smallest / MIB)))
            chosen = [lv for lv in levels if lv.preset in self.wiz.presets] or levels
            self.budget_spin.setValue(
                max(self.budget_spin.minimum(), round(min(lv.data_bytes for lv in chosen) / MIB))
            )

    def _changed(self, *_args: object) -> None:
        calibrated = self.method_combo.currentData() != "rtn" or self.budget_check.isChecked()
        for w in (self.builtin_text, self.own_text, self.text_edit, self.text_button):
            w.setEnabled(calibrated)
        self.text_note.setVisible(not calibrated)
        self.budget_spin.setEnabled(self.budget_check.isChecked())
        _show_message(self.message, "")
        self.completeChanged.emit()

    @Slot()
    def _choose_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a calibration text", "", "Text (*.txt);;All files (*)"
        )
        if path:
            self.text_edit.setText(path)
            self.own_text.setChecked(True)

    @property
    def uses_text(self) -> bool:
        return self.method_combo.currentData() != "rtn" or self.budget_check.isChecked()

    def set_method(self, method: str) -> None:
        i = self.method_combo.findData(method)
        if i >= 0:
            self.method_combo.setCurrentIndex(i)

    def isComplete(self) -> bool:
        return not (self.uses_text and self.own_text.isChecked() and not self.text_edit.text().strip())

    def validatePage(self) -> bool:
        if not self.isComplete():
            return False
        calibration = None
        if self.uses_text and self.own_text.isChecked():
            calibration = Path(self.text_edit.text().strip()).expanduser()
            if not calibration.is_file():
                _show_message(self.message, f"{calibration} is not a file.")
                return False
        self.wiz.method = str(self.method_combo.currentData())
        self.wiz.calibration = calibration
        self.wiz.budget_mib = self.budget_spin.value() if self.budget_check.isChecked() else None
        return True


# -- 4. run ------------------------------------------------------------------------------------------


class RunPage(QWizardPage):
    """Quantize, measure quality, measure speed: one job with one overall progress."""

    STAGES: ClassVar[dict[str, str]] = {
        "quantize": "Quantizing",
        "evaluate": "Measuring quality",
        "speed": "Measuring speed",
    }

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.ctx = wiz.ctx
        self._job: JobHandle | None = None
        self.last_stage = ""
        self.setTitle("Quantizing")
        self.setSubTitle("Stop at any time: nothing of an unfinished run is kept.")
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setAccessibleName("Overall progress")
        self.stage = QLabel()
        self.stage.setAccessibleName("Current step")
        self.eta = _note("")
        self.eta.setAccessibleName("Time left")
        self.cancel_button = QPushButton("Stop")
        self.cancel_button.setAccessibleName("Stop the run; nothing is kept")
        self.again_button = QPushButton("Run again")
        self.again_button.setAccessibleName("Run again")
        self.again_button.hide()
        self.message = _message_label()
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.again_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addSpacing(8)
        layout.addWidget(self.bar)
        layout.addWidget(self.stage)
        layout.addWidget(self.eta)
        layout.addLayout(buttons)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.cancel_button.clicked.connect(self.cancel_jobs)
        self.again_button.clicked.connect(self.start)

    @property
    def running(self) -> bool:
        return self._job is not None and not self._job.is_finished

    def initializePage(self) -> None:
        self.start()

    def cleanupPage(self) -> None:
        self.detach()
        self.wiz.discard_unadded()

    @Slot()
    def cancel_jobs(self) -> None:
        """Cancel the run; the page reports it when the job has stopped."""
        if self.running:
            assert self._job is not None
            self._job.cancel()
            self.stage.setText("Cancelling…")
            self.cancel_button.setEnabled(False)

    def detach(self) -> None:
        """Cancel the run and ignore what it still reports (the page is being left)."""
        if self.running:
            assert self._job is not None
            self._job.cancel()
        self._job = None

    def isComplete(self) -> bool:
        return self.wiz.outcome is not None and not self.running

    @Slot()
    def start(self) -> None:
        if self.running:
            return
        self.wiz.discard_unadded()
        request = self.wiz.make_request()
        method = dict(METHOD_CHOICES)[request.method].split(" — ")[0].lower()
        outputs = ", ".join(request.labels)
        self.summary.setText(
            f"Making {outputs} of {request.model_name} with {method}, in {request.out_dir}; then measuring "
            "each against the original (a quick measurement) and timing a short generation."
        )
        _show_message(self.message, "")
        self.bar.setValue(0)
        self.stage.setText("Starting…")
        self.eta.setText("")
        self.again_button.hide()
        self.cancel_button.setEnabled(True)
        h = self.ctx.bridge.call("model", quantize_levels, f"Quantizing {request.model_name}", request)
        self._job = h
        h.progress.connect(lambda p, h=h: self._progress(h, p))
        h.done.connect(lambda r, h=h: self._done(h, r))
        h.failed.connect(lambda m, h=h: self._failed(h, m))
        self.completeChanged.emit()

    def _progress(self, h: JobHandle, p: Progress) -> None:
        if h is not self._job or h.cancelled:
            return
        self.last_stage = p.stage
        show_fraction(self.bar, p.done, p.total)
        self.stage.setText(p.message or self.STAGES.get(p.stage, p.stage))
        self.eta.setText(format_eta(p.eta_s))

    def _done(self, h: JobHandle, outcome: RunOutcome) -> None:
        if h is not self._job:
            discard_outputs(outcome)  # a run the user already left
            return
        self.wiz.outcome = outcome
        self.wiz.owns_outcome = True
        self.wiz.added = []
        self.bar.setValue(1000)
        self.stage.setText(f"Done in {outcome.seconds:.0f} s. Next shows the report.")
        self.eta.setText("")
        self.cancel_button.setEnabled(False)
        self.completeChanged.emit()

    def _failed(self, h: JobHandle, message: str) -> None:
        if h is not self._job:
            return
        self.cancel_button.setEnabled(False)
        self.again_button.show()
        self.eta.setText("")
        if message == "Cancelled.":
            self.stage.setText("Cancelled. Nothing was kept.")
            _show_message(self.message, "")
        else:
            self.stage.setText("The run stopped; nothing was kept.")
            _show_message(self.message, message)
        self.completeChanged.emit()


# -- 5. report -----------------------------------------------------------------------------------------


class ReportPage(QWizardPage):
    """Measured size, quality and speed of every output, and the quality/size chart."""

    COLUMNS = (
        "Level",
        "Size (MiB)",
        "Mean KLD",
        "Same top token (%)",
        "Perplexity change (%)",
        "Speed (tok/s)",
    )

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.setTitle("Report")
        self.setSubTitle("Measured against the original model. Lower KLD means closer to the original.")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setAccessibleName("Measured levels")
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setMaximumHeight(220)
        theme = wiz.ctx.settings.theme
        self.chart = QualitySizeChart(dark=theme == "dark" or (theme == "system" and is_dark()))
        self.note = _note("")
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.chart, 1)
        layout.addWidget(self.note)

    def initializePage(self) -> None:
        outcome = self.wiz.outcome
        if outcome is None:
            return
        report = outcome.report
        self.table.setRowCount(len(outcome.outputs))
        for row, o in enumerate(outcome.outputs):
            c = o.result
            label = QTableWidgetItem(o.label)
            label.setToolTip(str(o.path))
            self.table.setItem(row, 0, label)
            self.table.setItem(row, 1, _num_item(f"{o.size_mib:,.1f}", o.size_mib))
            self.table.setItem(row, 2, _num_item(f"{c.kld_mean:.4g} ± {c.kld_stderr:.2g}", c.kld_mean))
            self.table.setItem(
                row, 3, _num_item(f"{c.same_top_pct:.1f} ± {c.same_top_stderr:.1f}", c.same_top_pct)
            )
            change = 100 * (c.ppl_ratio - 1)
            err = 100 * c.ppl_ratio * c.ln_ppl_ratio_stderr
            self.table.setItem(row, 4, _num_item(f"{change:+.2f} ± {err:.2f}", change))
            self.table.setItem(row, 5, _num_item(f"{o.decode_tps:,.1f}", o.decode_tps))
        self.chart.set_points([(o.label, o.size_mib, o.result.kld_mean) for o in outcome.outputs])
        text = "the built-in text" if report.text == "built-in" else Path(report.text).name
        front = ", ".join(self.chart.pareto_labels)
        self.note.setText(
            f"Measured on {report.n_tokens} tokens of {text} ({report.n_chunks} chunk(s) of {report.n_ctx}) "
            f"against {Path(report.reference).name}, whose perplexity is {report.ppl_ref:.3f}. "
            f"± is one standard error. The line joins the levels no other level beats in both size and "
            f"quality: {front}. Next adds the files to the library; Cancel deletes them."
        )


# -- 6. finish -------------------------------------------------------------------------------------------


class FinishPage(QWizardPage):
    """Adds the outputs to the library with their evaluations; offers to open the best one."""

    def __init__(self, wiz: QuantizeWizard) -> None:
        super().__init__()
        self.wiz = wiz
        self.ctx = wiz.ctx
        self._job: JobHandle | None = None
        self.setTitle("Finish")
        self.setFinalPage(True)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setAccessibleName("Library status")
        self.open_check = QCheckBox("Open in chat")
        self.open_check.setAccessibleName("Open the best level in chat")
        self.open_check.setChecked(True)
        self.message = _message_label()
        layout = QVBoxLayout(self)
        layout.addWidget(self.status)
        layout.addWidget(self.open_check)
        layout.addWidget(self.message)
        layout.addStretch(1)

    @property
    def adding(self) -> bool:
        return self._job is not None and not self._job.is_finished

    def initializePage(self) -> None:
        best = self.wiz.best_output()
        self.open_check.setText(f"Open {best.path.name} in chat" if best else "Open in chat")
        self.open_check.setEnabled(best is not None)
        _show_message(self.message, "")
        if self.wiz.added or self.adding or self.wiz.outcome is None:
            return
        outcome = self.wiz.outcome
        self.status.setText(f"Adding {len(outcome.outputs)} file(s) to the library…")
        src = str(self.wiz.source) if self.wiz.source else ""
        h = self.ctx.bridge.call(
            "model", add_to_library, "Adding to the library", self.ctx.library, outcome, src
        )
        self._job = h
        h.done.connect(lambda r, h=h: self._added(h, r))
        h.failed.connect(lambda m, h=h: self._failed(h, m))
        self.completeChanged.emit()

    def detach(self) -> None:
        """Ignore the import job from now on (the wizard is closing; the import completes)."""
        self._job = None

    def _added(self, h: JobHandle, added: list[tuple[LevelOutcome, LibraryEntry]]) -> None:
        if h is not self._job:
            self.ctx.library_changed.emit()  # added after the wizard closed
            return
        self.wiz.added = added
        names = ", ".join(o.path.name for o, _e in added)
        self.status.setText(
            f"Added to the library with their measurements: {names}. "
            "They are on the Models page and can be chosen in the chat."
        )
        self.ctx.library_changed.emit()
        self.wiz.outputs_added.emit([o for o, _e in added])
        self.completeChanged.emit()

    def _failed(self, h: JobHandle, message: str) -> None:
        if h is not self._job:
            return
        self.status.setText("The files were made but could not be added to the library.")
        _show_message(self.message, message)
        self.completeChanged.emit()

    def isComplete(self) -> bool:
        return bool(self.wiz.added)

    def open_target(self) -> Path | None:
        """The file to open in chat when the wizard finishes, if asked for."""
        best = self.wiz.best_output()
        if best is None or not self.wiz.added or not self.open_check.isChecked():
            return None
        return best.path


# -- the navigation page --------------------------------------------------------------------------------


class QuantizePage(QWidget):
    """The "Quantize" page: what quantizing is, a button for the wizard, and this session's outputs.

    It listens to ``ctx.quantize_source`` itself and opens the wizard on that model.
    """

    def __init__(self, ctx: AppContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.wizard: QuantizeWizard | None = None
        title = QLabel("<h2>Quantize</h2>")
        intro = QLabel(
            "Quantizing stores a model's weights in fewer bits: the file gets smaller and the model "
            "answers faster on this computer's processor, at some cost in accuracy. Start from the "
            "full-precision model (a Hugging Face folder, or an F32/F16/BF16 GGUF). The wizard shows "
            "what each level costs before anything is made, then makes the levels you choose, "
            "measures how close each stays to the original, and adds them to the library."
        )
        intro.setWordWrap(True)
        self.new_button = QPushButton("New quantization…")
        self.new_button.setAccessibleName("New quantization")
        self.outputs = QListWidget()
        self.outputs.setAccessibleName("Quantized in this session")
        self.open_button = QPushButton("Open in chat")
        self.open_button.setAccessibleName("Open the selected output in chat")
        self.open_button.setEnabled(False)
        self.empty_note = _note("Nothing quantized yet in this session.")
        row = QHBoxLayout()
        row.addWidget(self.new_button)
        row.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addStretch(1)
        bottom.addWidget(self.open_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 16, 24, 16)
        layout.addWidget(title)
        layout.addWidget(intro)
        layout.addSpacing(8)
        layout.addLayout(row)
        layout.addSpacing(16)
        layout.addWidget(QLabel("<b>Made in this session</b>"))
        layout.addWidget(self.empty_note)
        layout.addWidget(self.outputs, 1)
        layout.addLayout(bottom)

        self.new_button.clicked.connect(lambda: self.open_wizard())
        self.outputs.itemSelectionChanged.connect(
            lambda: self.open_button.setEnabled(bool(self.outputs.selectedItems()))
        )
        self.outputs.itemActivated.connect(self._open_item)
        self.open_button.clicked.connect(self._open_selected)
        ctx.quantize_source.connect(self.open_wizard)

    @Slot(str)
    def open_wizard(self, source: str | None = None) -> QuantizeWizard:
        """Show the wizard (one at a time), starting from ``source`` if given."""
        if self.wizard is not None and self.wizard.isVisible():
            if source and self.wizard.currentId() in (-1, SOURCE_PAGE):
                self.wizard.source_page.preselect(source)
            self.wizard.raise_()
            self.wizard.activateWindow()
            return self.wizard
        wiz = QuantizeWizard(self.ctx, source=source or None, parent=self.window())
        wiz.setWindowModality(Qt.WindowModality.NonModal)
        wiz.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, True)
        wiz.outputs_added.connect(self.add_outputs)
        wiz.destroyed.connect(lambda _o=None: self._forget(wiz))
        self.wizard = wiz
        wiz.show()
        return wiz

    def _forget(self, wiz: QuantizeWizard) -> None:
        if self.wizard is wiz:
            self.wizard = None

    @Slot(list)
    def add_outputs(self, outputs: list[LevelOutcome]) -> None:
        """List outputs made in this session."""
        for o in outputs:
            item = QListWidgetItem(
                f"{o.path.name} — {o.size_mib:,.1f} MiB, mean KLD {o.result.kld_mean:.4g}, "
                f"{o.decode_tps:,.1f} tokens/s"
            )
            item.setData(Qt.ItemDataRole.UserRole, str(o.path))
            item.setToolTip(str(o.path))
            self.outputs.addItem(item)
        self.empty_note.setVisible(self.outputs.count() == 0)

    def _open_item(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole)
        if path:
            self.ctx.open_in_chat.emit(str(path))

    @Slot()
    def _open_selected(self) -> None:
        items = self.outputs.selectedItems()
        if items:
            self._open_item(items[0])
