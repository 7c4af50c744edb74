"""The chat page: conversations, a streaming transcript, per-chat settings and live stats."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import psutil
from PySide6.QtCore import Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lowbit.core.conversations import Conversation, ConversationStore, Message
from lowbit.core.engine import GenerationStats, TokenEvent
from lowbit.core.sampling import SamplingParams

from .bridge import JobHandle
from .formatting import latest_evaluation
from .live_chart import LiveChart
from .settings import AppContext

DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "max_tokens": 512}
SAVE_EVERY_S = 1.0  # a streamed reply is committed this often: a kill loses at most this much


class MessageView(QFrame):
    """One message: who, the text rendered as Markdown, its numbers, and its actions."""

    copy_requested = Signal(object)  # Message
    edit_requested = Signal(object)
    regenerate_requested = Signal(object)

    def __init__(self, message: Message, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.message = message
        self.setObjectName("userMessage" if message.role == "user" else "modelMessage")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        who = QLabel("You" if message.role == "user" else "Model")
        who.setObjectName("messageRole")
        self.body = QLabel()
        self.body.setTextFormat(Qt.TextFormat.MarkdownText)
        self.body.setWordWrap(True)
        self.body.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextSelectableByMouse | Qt.TextInteractionFlag.LinksAccessibleByMouse
        )
        self.body.setOpenExternalLinks(True)
        self.body.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        self.body.setAccessibleName("User message" if message.role == "user" else "Model reply")
        self.stats = QLabel()
        self.stats.setObjectName("messageStats")
        self.copy_button = _small_button(
            "Copy", "Copy this message", lambda: self.copy_requested.emit(self.message)
        )
        self.edit_button = _small_button(
            "Edit", "Edit this message and send it again", lambda: self.edit_requested.emit(self.message)
        )
        self.regenerate_button = _small_button(
            "Regenerate", "Answer this again", lambda: self.regenerate_requested.emit(self.message)
        )
        self.edit_button.setVisible(message.role == "user")
        self.regenerate_button.setVisible(False)
        actions = QHBoxLayout()
        actions.addWidget(who)
        actions.addStretch(1)
        for b in (self.copy_button, self.edit_button, self.regenerate_button):
            actions.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.addLayout(actions)
        layout.addWidget(self.body)
        layout.addWidget(self.stats)
        self.set_text(message.content)
        self.set_stats(message.stats)

    def set_text(self, text: str) -> None:
        self.message.content = text
        # a reply cut mid code-fence still renders the fence as code
        shown = text + ("\n```" if text.count("```") % 2 else "")
        self.body.setText(shown if shown.strip() else "…")

    def set_stats(self, stats: dict[str, Any] | None) -> None:
        self.message.stats = stats
        self.stats.setText(format_stats(stats) if stats else "")
        self.stats.setVisible(bool(stats))

    def set_actions_enabled(self, enabled: bool, *, last_reply: bool = False) -> None:
        self.edit_button.setEnabled(enabled)
        self.regenerate_button.setVisible(last_reply)
        self.regenerate_button.setEnabled(enabled)


def format_stats(stats: dict[str, Any]) -> str:
    """A reply's numbers, one line."""
    parts = [f"{stats.get('generated_tokens', 0)} tokens"]
    if stats.get("ttft_s") is not None:
        parts.append(f"first token after {stats['ttft_s']:.2f} s")
    if stats.get("prompt_tps"):
        parts.append(f"prompt {stats['prompt_tps']:.0f} tokens/s")
    if stats.get("decode_tps"):
        parts.append(f"{stats['decode_tps']:.1f} tokens/s")
    note = {"cancelled": "stopped", "context": "context full: start a new chat", "length": "length limit"}
    if stats.get("finish_reason") in note:
        parts.append(note[stats["finish_reason"]])
    return " · ".join(parts)


def _small_button(text: str, accessible: str, slot: Any) -> QPushButton:
    b = QPushButton(text)
    b.setObjectName("smallButton")
    b.setAccessibleName(accessible)
    b.setToolTip(accessible)
    b.setFlat(True)
    b.clicked.connect(slot)
    return b


class ChatPage(QWidget):
    """Conversations on the left, the transcript in the middle, settings and live stats on the right."""

    busy_changed = Signal(bool)
    speed_measured = Signal(float)  # decode tokens/s of the last reply

    def __init__(self, ctx: AppContext, store: ConversationStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.ctx = ctx
        self.store = store
        self.conversation: Conversation | None = None
        self.views: list[MessageView] = []
        self.generation: JobHandle | None = None
        self._reply_view: MessageView | None = None
        self._reply_text: list[str] = []
        self._last_save = 0.0
        self._editing: Message | None = None
        self._token_times: deque[float] = deque(maxlen=4096)
        self._n_context = 0
        self._t0 = time.monotonic()
        self._build()
        self._wire()
        self.refresh_conversations()
        convs = self.store.list()
        if convs:
            self.open_conversation(convs[0].id)
        else:
            self._show_conversation(None)

    # -- layout ----------------------------------------------------------------------

    def _build(self) -> None:
        # conversations
        self.conv_list = QListWidget()
        self.conv_list.setAccessibleName("Conversations")
        self.conv_list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.conv_list.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.conv_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.conv_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.new_button = QPushButton("New chat")
        self.new_button.setAccessibleName("New chat")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        rename = QAction("Rename…", self.conv_list)
        rename.triggered.connect(self.rename_current)
        delete = QAction("Delete", self.conv_list)
        delete.triggered.connect(self.delete_current)
        self.conv_list.addAction(rename)
        self.conv_list.addAction(delete)
        self.rename_button = QPushButton("Rename")
        self.rename_button.setAccessibleName("Rename conversation")
        self.rename_button.clicked.connect(self.rename_current)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setAccessibleName("Delete conversation")
        self.delete_button.clicked.connect(self.delete_current)
        left = QVBoxLayout()
        left.addWidget(self.new_button)
        left.addWidget(self.conv_list, 1)
        row = QHBoxLayout()
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        left.addLayout(row)
        left_w = QWidget()
        left_w.setLayout(left)

        # transcript
        self.model_label = QLabel("No model loaded")
        self.model_label.setObjectName("modelLabel")
        self.model_label.setWordWrap(True)
        self.quality_label = QLabel("")
        self.quality_label.setObjectName("qualityLabel")
        self.quality_label.setWordWrap(True)
        self.context_bar = QProgressBar()
        self.context_bar.setAccessibleName("Context used")
        self.context_bar.setFormat("context %v / %m tokens")
        self.context_bar.setTextVisible(True)
        self.context_bar.setRange(0, 1)
        self.context_bar.setValue(0)
        self.messages_box = QWidget()
        self.messages_layout = QVBoxLayout(self.messages_box)
        self.messages_layout.setSpacing(8)
        self.messages_layout.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.messages_box)
        self.scroll.setAccessibleName("Conversation")
        self.scroll.verticalScrollBar().rangeChanged.connect(self._follow_bottom)
        self.placeholder = QLabel()
        self.placeholder.setObjectName("placeholder")
        self.placeholder.setWordWrap(True)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setTextFormat(Qt.TextFormat.RichText)
        self.messages_layout.insertWidget(0, self.placeholder)
        self.edit_note = QLabel("Editing a message: Send replaces it and everything after it. Esc cancels.")
        self.edit_note.setObjectName("editNote")
        self.edit_note.setVisible(False)
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message the model. Ctrl+Enter sends, Esc stops.")
        self.input.setAccessibleName("Message")
        self.input.setFixedHeight(84)
        self.send_button = QPushButton("Send")
        self.send_button.setAccessibleName("Send message")
        self.send_button.setToolTip("Send (Ctrl+Enter)")
        self.send_button.setDefault(True)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setAccessibleName("Stop reply")
        self.stop_button.setToolTip("Stop (Esc)")
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        input_row = QHBoxLayout()
        input_row.addWidget(self.input, 1)
        input_row.addLayout(buttons)
        head = QHBoxLayout()
        head_text = QVBoxLayout()
        head_text.addWidget(self.model_label)
        head_text.addWidget(self.quality_label)
        head.addLayout(head_text, 1)
        self.compare_button = QPushButton("Compare…")
        self.compare_button.setAccessibleName("Compare two models on one prompt")
        head.addWidget(self.compare_button)
        center = QVBoxLayout()
        center.addLayout(head)
        center.addWidget(self.context_bar)
        center.addWidget(self.scroll, 1)
        center.addWidget(self.edit_note)
        center.addLayout(input_row)
        center_w = QWidget()
        center_w.setLayout(center)

        # per-chat settings and live stats
        self.model_combo = QComboBox()
        self.model_combo.setAccessibleName("Model for this chat")
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(12)
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setPlaceholderText("Optional instructions for the model in this chat")
        self.system_prompt.setFixedHeight(70)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setAccessibleName("Temperature")
        self.temperature.setToolTip("0 always picks the most likely token")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setAccessibleName("Top p")
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setAccessibleName("Top k")
        self.top_k.setSpecialValueText("off")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 32768)
        self.max_tokens.setAccessibleName("Longest reply in tokens")
        form = QFormLayout()
        form.addRow("Model", self.model_combo)
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top p", self.top_p)
        form.addRow("Top k", self.top_k)
        form.addRow("Longest reply", self.max_tokens)
        settings_box = QGroupBox("This chat")
        settings_box.setLayout(form)
        self.speed_chart = LiveChart("tokens/s", color="#2f7fd1")
        self.speed_chart.setAccessibleName("Tokens per second over time")
        self.memory_chart = LiveChart("memory MiB", color="#d1702f")
        self.memory_chart.setAccessibleName("Process memory over time")
        live = QVBoxLayout()
        live.addWidget(self.speed_chart)
        live.addWidget(self.memory_chart)
        live_box = QGroupBox("Live")
        live_box.setLayout(live)
        right = QVBoxLayout()
        right.addWidget(settings_box)
        right.addWidget(live_box, 1)
        right_w = QWidget()
        right_w.setLayout(right)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left_w)
        split.addWidget(center_w)
        split.addWidget(right_w)
        split.setStretchFactor(0, 0)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 0)
        split.setSizes([190, 640, 270])
        split.setChildrenCollapsible(False)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(split)

        send_sc = QAction(self)
        send_sc.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
        send_sc.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        send_sc.triggered.connect(self.send)
        self.addAction(send_sc)
        stop_sc = QAction(self)
        stop_sc.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        # the whole window: after Send the focus may be anywhere, and Esc must still stop
        stop_sc.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        stop_sc.triggered.connect(self.escape)
        self.addAction(stop_sc)

        # streamed text is shown a few times a second, not per token
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(50)
        self._flush_timer.timeout.connect(self._flush)
        # live charts: twice a second, from data the token callback only appends to
        self._live_timer = QTimer(self)
        self._live_timer.setInterval(500)
        self._live_timer.timeout.connect(self._sample_live)
        self._live_timer.start()
        self._set_busy(False)

    def _wire(self) -> None:
        self.new_button.clicked.connect(self.new_conversation)
        self.conv_list.currentItemChanged.connect(self._conversation_selected)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)
        self.compare_button.clicked.connect(self.open_compare)
        self.model_combo.activated.connect(self._model_chosen)
        for w in (self.temperature, self.top_p):
            w.valueChanged.connect(self._save_params)
        for w in (self.top_k, self.max_tokens):
            w.valueChanged.connect(self._save_params)
        self.system_prompt.textChanged.connect(self._save_system_prompt)
        self.ctx.bridge.model_loaded.connect(self._model_loaded)
        self.ctx.library_changed.connect(self._fill_models)
        self._fill_models()

    # -- conversations -----------------------------------------------------------------

    def refresh_conversations(self) -> None:
        self.conv_list.blockSignals(True)
        self.conv_list.clear()
        for c in self.store.list():
            item = QListWidgetItem(c.title)
            item.setData(Qt.ItemDataRole.UserRole, c.id)
            item.setToolTip(c.title)
            self.conv_list.addItem(item)
            if self.conversation is not None and c.id == self.conversation.id:
                self.conv_list.setCurrentItem(item)
        self.conv_list.blockSignals(False)

    @Slot()
    def new_conversation(self) -> Conversation | None:
        if self.busy:
            return None
        model = self.ctx.bridge.model_info["file"] if self.ctx.bridge.model_info else None
        params = dict(self.conversation.params) if self.conversation else dict(DEFAULT_PARAMS)
        conv = self.store.create(model_path=model, params=params)
        self.refresh_conversations()
        self.open_conversation(conv.id)
        self.input.setFocus()
        return conv

    def open_conversation(self, conversation_id: int) -> None:
        if self.busy:
            return
        self._show_conversation(self.store.get(conversation_id))
        self.refresh_conversations()

    @Slot(QListWidgetItem, QListWidgetItem)
    def _conversation_selected(self, item: QListWidgetItem | None, _previous: Any) -> None:
        if item is None:
            return
        cid = int(item.data(Qt.ItemDataRole.UserRole))
        if self.busy:  # the reply being streamed belongs to the open conversation
            self.refresh_conversations()
            return
        if self.conversation is None or cid != self.conversation.id:
            self._show_conversation(self.store.get(cid))

    def _show_conversation(self, conv: Conversation | None) -> None:
        self._cancel_edit()
        self.conversation = conv
        for v in self.views:
            self._drop_widget(v)
        self.views = []
        params = {**DEFAULT_PARAMS, **(conv.params if conv else {})}
        for w, key in (
            (self.temperature, "temperature"),
            (self.top_p, "top_p"),
            (self.top_k, "top_k"),
            (self.max_tokens, "max_tokens"),
        ):
            w.blockSignals(True)
            w.setValue(params[key])
            w.blockSignals(False)
        self.system_prompt.blockSignals(True)
        self.system_prompt.setPlainText(conv.system_prompt if conv else "")
        self.system_prompt.blockSignals(False)
        if conv is not None:
            for m in self.store.messages(conv.id):
                self._add_view(m)
            self._select_model_in_combo(conv.model_path)
            loaded = self.ctx.bridge.model_info["file"] if self.ctx.bridge.model_info else None
            if conv.model_path and conv.model_path != loaded and Path(conv.model_path).is_file():
                self.load_model(conv.model_path)
        self._n_context = 0
        self._update_placeholder()
        self._update_actions()
        self._update_context_bar()

    @Slot()
    def rename_current(self) -> None:
        if self.conversation is None:
            return
        title, ok = QInputDialog.getText(self, "Rename conversation", "Title:", text=self.conversation.title)
        if ok and title.strip():
            self.rename(title)

    def rename(self, title: str) -> None:
        if self.conversation is not None:
            self.conversation = self.store.rename(self.conversation.id, title)
            self.refresh_conversations()

    @Slot()
    def delete_current(self) -> None:
        if self.conversation is None or self.busy:
            return
        answer = QMessageBox.question(
            self, "Delete conversation", f"Delete “{self.conversation.title}” and all its messages?"
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_conversation()

    def delete_conversation(self) -> None:
        if self.conversation is None:
            return
        self.store.delete(self.conversation.id)
        self.conversation = None
        convs = self.store.list()
        self.refresh_conversations()
        if convs:
            self.open_conversation(convs[0].id)
        else:
            self._show_conversation(None)

    # -- the model -----------------------------------------------------------------------

    def _fill_models(self) -> None:
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("Choose a model…", None)
        for e in self.ctx.library.entries():
            if e.kind == "gguf" and e.status == "ok":
                label = f"{e.name} · {e.quant_type}" if e.quant_type else e.name
                self.model_combo.addItem(label, str(self.ctx.library.path_of(e)))
        self.model_combo.addItem("Open a GGUF file…", "__file__")
        self.model_combo.blockSignals(False)
        self._select_model_in_combo(current or (self.ctx.bridge.model_info or {}).get("file"))

    def _select_model_in_combo(self, path: str | None) -> None:
        if not path:
            self.model_combo.setCurrentIndex(0)
            return
        i = self.model_combo.findData(str(path))
        if i < 0:
            self.model_combo.insertItem(1, Path(path).name, str(path))
            i = 1
        self.model_combo.setCurrentIndex(i)

    @Slot(int)
    def _model_chosen(self, index: int) -> None:
        data = self.model_combo.itemData(index)
        if data == "__file__":
            start = str(self.ctx.settings.value("ui/last_dir", str(Path.home())))
            path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", start, "GGUF models (*.gguf)")
            if not path:
                self._select_model_in_combo((self.ctx.bridge.model_info or {}).get("file"))
                return
            self.ctx.settings.set_value("ui/last_dir", str(Path(path).parent))
            data = path
        if data:
            self.use_model(str(data))

    def use_model(self, path: str) -> None:
        """Chat with this GGUF in the open conversation (a new one if there is none)."""
        if self.busy:
            return
        if self.conversation is None:
            self.new_conversation()
        if self.conversation is not None:
            self.conversation = self.store.update(self.conversation.id, model_path=path)
        self._select_model_in_combo(path)
        self.load_model(path)

    def load_model(self, path: str) -> JobHandle:
        self.model_label.setText(f"Loading {Path(path).name}…")
        handle = self.ctx.bridge.load_model(path, **self.ctx.settings.load_options())
        handle.failed.connect(self._load_failed)
        self._set_busy(True, loading=True)
        handle.finished.connect(lambda: self._set_busy(False))
        return handle

    @Slot(str)
    def _load_failed(self, message: str) -> None:
        self.model_label.setText("No model loaded")
        self.quality_label.setText("")
        self._update_placeholder()
        if message != "Cancelled.":
            self.ctx.error.emit(f"The model could not be loaded. {message}")

    @Slot(object)
    def _model_loaded(self, info: dict[str, Any]) -> None:
        types = sorted(info["types"].items(), key=lambda kv: -kv[1])
        main_type = types[0][0] if types else "?"
        self.model_label.setText(
            f"<b>{_esc(str(info['name']))}</b> · {main_type} · {info['file_mib']:.0f} MiB · "
            f"{info['bpw']:.2f} bits/weight · context {info['n_ctx']}"
        )
        self.quality_label.setText(self._quality_text(info["file"]))
        self._select_model_in_combo(info["file"])
        self._update_context_bar()
        self._update_placeholder()
        self._update_actions()

    def _quality_text(self, path: str) -> str:
        entry = self.ctx.library.find_path(path)
        ev = latest_evaluation(entry) if entry is not None else None
        if ev is None:
            return "Quality loss against full precision: not measured (Quantize measures it)"
        top = ev.get("same_top_pct")
        extra = f", same top token {top:.1f}%" if isinstance(top, int | float) else ""
        return f"Quality loss against full precision (measured): mean KLD {ev['kld_mean']:.4f}{extra}"

    # -- sending and streaming --------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._busy

    @Slot()
    def send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.busy:
            return
        if self.ctx.bridge.model_info is None:
            self.ctx.error.emit("Choose a model for this chat first (the Model box on the right).")
            return
        if self.conversation is None:
            self.new_conversation()
        assert self.conversation is not None
        if self._editing is not None:
            self._truncate_from(self._editing)
            self._cancel_edit()
        self.input.clear()
        if not self.views:  # the view holds the open conversation's messages
            self.rename(_title_from(text))
        self._add_view(self.store.add_message(self.conversation.id, "user", text))
        self._start_reply()

    def _start_reply(self) -> None:
        assert self.conversation is not None
        history = [m.as_chat() for m in self.store.messages(self.conversation.id)]
        if self.conversation.system_prompt.strip():
            history.insert(0, {"role": "system", "content": self.conversation.system_prompt.strip()})
        reply = self.store.add_message(self.conversation.id, "assistant", "")
        self._reply_view = self._add_view(reply)
        self._reply_text = []
        self._last_save = time.monotonic()
        self._token_times.clear()
        self._update_placeholder()
        self._set_busy(True)
        self._flush_timer.start()
        handle = self.ctx.bridge.generate(history, self._sampling(), self.max_tokens.value())
        self.generation = handle
        handle.event.connect(self._on_token)
        handle.done.connect(self._on_done)
        handle.failed.connect(self._on_failed)

    def _sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature.value(),
            top_p=self.top_p.value(),
            top_k=self.top_k.value(),
            seed=None,
        )

    @Slot()
    def stop(self) -> None:
        if self.generation is not None and not self.generation.is_finished:
            self.generation.cancel()

    def save_partial(self) -> None:
        """Commit the reply streamed so far (the app is closing mid-reply)."""
        if self._reply_view is not None:
            text = "".join(self._reply_text)
            stats = {"finish_reason": "cancelled", "generated_tokens": len(self._reply_text)}
            self.store.update_message(self._reply_view.message.id, text, stats)

    @Slot()
    def escape(self) -> None:
        if self._editing is not None and not self.busy:
            self._cancel_edit()
            self.input.clear()
        else:
            self.stop()

    @Slot(object)
    def _on_token(self, ev: Any) -> None:
        if isinstance(ev, TokenEvent):
            self._reply_text.append(ev.text)
            self._token_times.append(time.monotonic())
            self._n_context = ev.n_context

    @Slot()
    def _flush(self) -> None:
        if self._reply_view is None:
            return
        text = "".join(self._reply_text)
        if text != self._reply_view.message.content:
            self._reply_view.set_text(text)
            self._update_context_bar()
        if time.monotonic() - self._last_save >= SAVE_EVERY_S:
            self.store.update_message(self._reply_view.message.id, text)
            self._last_save = time.monotonic()

    @Slot(object)
    def _on_done(self, stats: GenerationStats) -> None:
        self._finish_reply(stats.text, _stats_dict(stats))
        self._n_context = stats.prompt_tokens + stats.generated_tokens
        self._update_context_bar()
        self.speed_measured.emit(stats.decode_tps)

    @Slot(str)
    def _on_failed(self, message: str) -> None:
        text = "".join(self._reply_text)
        view = self._reply_view
        self._finish_reply(text, {"finish_reason": "cancelled", "generated_tokens": len(self._reply_text)})
        if message != "Cancelled.":
            if view is not None and not text:
                # nothing was said: drop the empty reply so Regenerate is the next step
                self.store.truncate(view.message.conversation_id, view.message.id)
                self._remove_view(view)
            self.ctx.error.emit(f"The reply failed. {message}")

    def _finish_reply(self, text: str, stats: dict[str, Any]) -> None:
        self._flush_timer.stop()
        view = self._reply_view
        self._reply_view = None
        self.generation = None
        if view is not None:
            view.set_text(text)
            view.set_stats(stats)
            self.store.update_message(view.message.id, text, stats)
        self._set_busy(False)
        self.refresh_conversations()

    # -- regenerate, edit, copy ------------------------------------------------------------

    def regenerate(self, message: Message | None = None) -> None:
        """Answer the last user message again, replacing the reply."""
        if self.busy or self.conversation is None or self.ctx.bridge.model_info is None:
            return
        msgs = self.store.messages(self.conversation.id)
        if not msgs:
            return
        last = msgs[-1]
        if last.role == "assistant":
            self._truncate_from(message or last)
        self._start_reply()

    def edit(self, message: Message) -> None:
        """Put a user message in the input box; sending replaces it and what follows."""
        if self.busy:
            return
        self._editing = message
        self.input.setPlainText(message.content)
        self.edit_note.setVisible(True)
        self.input.setFocus()

    def _cancel_edit(self) -> None:
        self._editing = None
        self.edit_note.setVisible(False)

    def _truncate_from(self, message: Message) -> None:
        self.store.truncate(message.conversation_id, message.id)
        for v in [v for v in self.views if v.message.id >= message.id]:
            self._remove_view(v)

    @staticmethod
    def copy(message: Message) -> None:
        QGuiApplication.clipboard().setText(message.content)

    # -- views ------------------------------------------------------------------------------

    def _add_view(self, message: Message) -> MessageView:
        view = MessageView(message)
        view.copy_requested.connect(self.copy)
        view.edit_requested.connect(self.edit)
        view.regenerate_requested.connect(self.regenerate)
        self.messages_layout.insertWidget(self.messages_layout.count() - 1, view)
        self.views.append(view)
        self._update_actions()
        return view

    def _drop_widget(self, view: MessageView) -> None:
        # out of the layout at once: deleteLater waits for the event loop, and until then
        # the old conversation would still show
        view.hide()
        self.messages_layout.removeWidget(view)
        view.deleteLater()

    def _remove_view(self, view: MessageView) -> None:
        self.views.remove(view)
        self._drop_widget(view)
        self._update_actions()
        self._update_placeholder()

    def _update_actions(self) -> None:
        last_reply = next((v for v in reversed(self.views) if v.message.role == "assistant"), None)
        for v in self.views:
            v.set_actions_enabled(not self.busy, last_reply=v is last_reply and v is self.views[-1])

    def _update_placeholder(self) -> None:
        if self.views:
            self.placeholder.setVisible(False)
            return
        self.placeholder.setVisible(True)
        if self.ctx.bridge.model_info is None:
            self.placeholder.setText(
                "<h2>No model loaded</h2><p>Choose one in the <b>Model</b> box on the right, "
                "or get one on the <b>Models</b> page.</p>"
            )
        else:
            self.placeholder.setText(
                f"<h2>{_esc(str(self.ctx.bridge.model_info['name']))}</h2>"
                "<p>Runs on this computer, offline. Say hello.</p>"
            )

    @Slot(int, int)
    def _follow_bottom(self, _min: int, maximum: int) -> None:
        bar = self.scroll.verticalScrollBar()
        if self.busy or bar.value() >= bar.maximum() - 80:
            bar.setValue(maximum)

    def _update_context_bar(self) -> None:
        info = self.ctx.bridge.model_info
        n_ctx = int(info["n_ctx"]) if info else 1
        self.context_bar.setRange(0, n_ctx)
        self.context_bar.setValue(min(self._n_context, n_ctx))
        self.context_bar.setEnabled(info is not None)

    # -- settings of this chat ---------------------------------------------------------------

    @Slot()
    def _save_params(self) -> None:
        if self.conversation is None:
            return
        params = {
            "temperature": self.temperature.value(),
            "top_p": self.top_p.value(),
            "top_k": self.top_k.value(),
            "max_tokens": self.max_tokens.value(),
        }
        self.conversation = self.store.update(self.conversation.id, params=params)

    @Slot()
    def _save_system_prompt(self) -> None:
        if self.conversation is not None:
            self.conversation = self.store.update(
                self.conversation.id, system_prompt=self.system_prompt.toPlainText()
            )

    # -- live stats -----------------------------------------------------------------------------

    @Slot()
    def _sample_live(self) -> None:
        now = time.monotonic()
        t = now - self._t0
        recent = [x for x in self._token_times if x >= now - 1.0]
        self.speed_chart.append(t, float(len(recent)) if self.busy else 0.0)
        self.memory_chart.append(t, psutil.Process().memory_info().rss / 2**20)

    def _set_busy(self, busy: bool, *, loading: bool = False) -> None:
        self._busy = busy
        can_send = not busy and self.ctx.bridge.model_info is not None
        self.send_button.setEnabled(can_send)
        self.stop_button.setEnabled(busy and not loading)
        self.model_combo.setEnabled(not busy)
        self.new_button.setEnabled(not busy)
        self.delete_button.setEnabled(not busy)
        self.compare_button.setEnabled(not busy)
        self._update_actions()
        self.busy_changed.emit(busy)

    @Slot()
    def open_compare(self) -> None:
        from .compare import CompareDialog

        CompareDialog(self.ctx, self.input.toPlainText().strip(), self).open()


def _stats_dict(stats: GenerationStats) -> dict[str, Any]:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "generated_tokens": stats.generated_tokens,
        "ttft_s": round(stats.ttft_s, 4),
        "prompt_tps": round(stats.prompt_tps, 2),
        "decode_tps": round(stats.decode_tps, 2),
        "finish_reason": stats.finish_reason,
    }


def _title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 40 else line[:39].rstrip() + "…"


def _esc(text: str) -> str:
    import html

    return html.escape(text)
