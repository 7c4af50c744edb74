"""A/B compare: one prompt, two models side by side, the tokens where they part highlighted."""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from lowbit.core.compare import Answer, Comparison, compare_models

from .bridge import JobHandle
from .formatting import show_fraction
from .settings import AppContext

DIVERGED = "background-color: rgba(255, 196, 0, 0.35);"
FIRST = "background-color: rgba(255, 120, 0, 0.65); font-weight: bold;"


def _compare_job(ctx, a: str, b: str, prompt: str, max_tokens: int, load: dict[str, Any]) -> Comparison:
    messages = [{"role": "user", "content": prompt}]
    return compare_models(
        a, b, messages, max_tokens=max_tokens, progress=ctx.progress, cancel=ctx.cancel, **load
    )


def answer_html(answer: Answer, diverge_at: int) -> str:
    """The answer's tokens as HTML, those from the first difference on highlighted."""
    out = []
    for i, piece in enumerate(answer.pieces):
        text = html.escape(piece).replace("\n", "<br>")
        if i < diverge_at:
            out.append(text)
        else:
            style = FIRST if i == diverge_at else DIVERGED
            out.append(f'<span style="{style}">{text}</span>')
    return "".join(out)


class CompareDialog(QDialog):
    def __init__(self, ctx: AppContext, prompt: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.job: JobHandle | None = None
        self.result: Comparison | None = None
        self.setWindowTitle("Compare two models")
        self.resize(980, 620)
        self.model_a = QComboBox()
        self.model_a.setAccessibleName("Model A")
        self.model_b = QComboBox()
        self.model_b.setAccessibleName("Model B")
        for e in ctx.library.entries():
            if e.kind == "gguf" and e.status == "ok":
                label = f"{e.name} · {e.quant_type}" if e.quant_type else e.name
                for combo in (self.model_a, self.model_b):
                    combo.addItem(label, str(ctx.library.path_of(e)))
        if self.model_b.count() > 1:
            self.model_b.setCurrentIndex(1)
        self.prompt = QPlainTextEdit(prompt)
        self.prompt.setAccessibleName("Prompt")
        self.prompt.setPlaceholderText("One prompt for both models")
        self.prompt.setFixedHeight(70)
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.max_tokens.setAccessibleName("Longest answer in tokens")
        form = QFormLayout()
        form.addRow("Model A", self.model_a)
        form.addRow("Model B", self.model_b)
        form.addRow("Prompt", self.prompt)
        form.addRow("Longest answer", self.max_tokens)
        self.run_button = QPushButton("Compare")
        self.run_button.setAccessibleName("Run the comparison")
        self.run_button.setDefault(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setAccessibleName("Cancel the comparison")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setAccessibleName("Progress of the comparison")
        self.summary = QLabel(
            "Both models answer greedily (always the most likely token), so differences come from "
            "the models, not from chance."
        )
        self.summary.setWordWrap(True)
        self.view_a = QTextBrowser()
        self.view_a.setAccessibleName("Answer of model A")
        self.view_b = QTextBrowser()
        self.view_b.setAccessibleName("Answer of model B")
        self.title_a = QLabel("A")
        self.title_b = QLabel("B")
        grid = QGridLayout()
        grid.addWidget(self.title_a, 0, 0)
        grid.addWidget(self.title_b, 0, 1)
        grid.addWidget(self.view_a, 1, 0)
        grid.addWidget(self.view_b, 1, 1)
        buttons = QHBoxLayout()
        buttons.addWidget(self.progress, 1)
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addLayout(grid, 1)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)

    @Slot()
    def run(self) -> JobHandle | None:
        a, b = self.model_a.currentData(), self.model_b.currentData()
        prompt = self.prompt.toPlainText().strip()
        if not a or not b or not prompt:
            self.summary.setText("Choose two models from the library and write a prompt.")
            return None
        self.job = self.ctx.bridge.call(
            "model",
            _compare_job,
            "Comparing two models",
            a,
            b,
            prompt,
            self.max_tokens.value(),
            self.ctx.settings.load_options(),  # the engine settings, as for chat
        )
        self.job.progress.connect(self._progress)
        self.job.done.connect(self.show_result)
        self.job.failed.connect(self._failed)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.summary.setText("Running…")
        return self.job

    @Slot()
    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()

    def reject(self) -> None:
        self.cancel()
        super().reject()

    @Slot(object)
    def _progress(self, p) -> None:
        show_fraction(self.progress, p.done, p.total)
        self.summary.setText(p.message)

    @Slot(object)
    def show_result(self, result: Comparison) -> None:
        self.result = result
        self._idle()
        self.progress.setValue(self.progress.maximum())
        for title, view, ans in (
            (self.title_a, self.view_a, result.a),
            (self.title_b, self.view_b, result.b),
        ):
            title.setText(
                f"<b>{html.escape(ans.name)}</b> · {html.escape(ans.path.rsplit('/', 1)[-1])} · "
                f"{ans.stats.decode_tps:.1f} tokens/s"
            )
            view.setHtml(answer_html(ans, result.diverge_at))
        if result.identical:
            self.summary.setText(f"The answers are identical ({len(result.a.pieces)} tokens).")
        else:
            self.summary.setText(
                f"The answers agree for {result.diverge_at} tokens, then part: the first different token "
                "is marked in orange, and what follows in yellow."
            )

    @Slot(str)
    def _failed(self, message: str) -> None:
        self._idle()
        self.summary.setText("Cancelled." if message == "Cancelled." else f"The comparison failed. {message}")

    def _idle(self) -> None:
        self.job = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
