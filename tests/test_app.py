"""The chat page, offscreen: streaming into the view and the store, Stop, Regenerate, Edit,
conversations, errors shown as messages, and A/B compare."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as QT

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt

from lowbit.app.bridge import WorkerBridge, user_message
from lowbit.app.chat_page import ChatPage, MessageView
from lowbit.app.settings import AppContext, AppSettings
from lowbit.core.conversations import ConversationStore
from lowbit.core.engine import Engine
from lowbit.core.errors import CancelledError, ModelFormatError
from lowbit.core.model import Model
from lowbit.core.sampling import SamplingParams
from tests.tiny_models import make_tiny_model


@pytest.fixture()
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.gguf", weight_type=QT.Q8_0).path


@pytest.fixture()
def app_ctx(qtbot, tmp_path: Path):
    settings = AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    settings.library_dir = tmp_path / "library"
    settings.n_ctx = 2048
    bridge = WorkerBridge()
    ctx = AppContext(settings, bridge)
    ctx.errors = []  # type: ignore[attr-defined]
    ctx.error.connect(ctx.errors.append)  # type: ignore[attr-defined]
    yield ctx
    bridge.shutdown()


@pytest.fixture()
def chat(qtbot, app_ctx, tiny: Path, tmp_path: Path):
    store = ConversationStore(tmp_path / "chats.sqlite3")
    page = ChatPage(app_ctx, store)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    page.use_model(str(tiny))
    qtbot.waitUntil(lambda: app_ctx.bridge.model_info is not None and not page.busy, timeout=30000)
    yield page
    page.stop()
    qtbot.waitUntil(lambda: not page.busy, timeout=10000)
    store.close()


def _send(qtbot, page: ChatPage, text: str, timeout: int = 30000):
    page.input.setPlainText(text)
    qtbot.mouseClick(page.send_button, Qt.MouseButton.LeftButton)
    handle = page.generation
    assert handle is not None
    with qtbot.waitSignal(handle.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: not page.busy)
    return handle


def _greedy_reference(path: Path, messages: list[dict[str, str]], max_tokens: int) -> str:
    with Model.load(path, n_ctx=256, n_threads=1) as m:
        e = Engine(m)
        ids = e.encode_prompt(e.render_chat(messages))
        *_, done = e.generate(ids, params=SamplingParams(temperature=0.0), max_tokens=max_tokens)
        return done.stats.text


def test_send_streams_a_reply_into_the_view_and_the_store(chat: ChatPage, qtbot, tiny: Path) -> None:
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(12)
    tokens: list[str] = []
    chat.input.setPlainText("hello there")
    qtbot.mouseClick(chat.send_button, Qt.MouseButton.LeftButton)
    chat.generation.event.connect(lambda ev: tokens.append(ev.text))
    with qtbot.waitSignal(chat.generation.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: not chat.busy)
    expected = _greedy_reference(tiny, [{"role": "user", "content": "hello there"}], 12)
    msgs = chat.store.messages(chat.conversation.id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[0].content == "hello there"
    assert msgs[1].content == expected  # greedy: the same text as the engine on its own
    assert "".join(tokens) == expected
    assert msgs[1].stats["generated_tokens"] == 12 and msgs[1].stats["decode_tps"] > 0
    assert chat.views[-1].message.content == expected
    assert "tokens/s" in chat.views[-1].stats.text()
    assert chat.conversation.title == "hello there"  # named after the first message
    assert chat.context_bar.value() == msgs[1].stats["prompt_tokens"] + 12
    assert chat.send_button.isEnabled() and not chat.stop_button.isEnabled()


def test_system_prompt_and_params_are_per_conversation(chat: ChatPage, qtbot, tiny: Path) -> None:
    chat.system_prompt.setPlainText("You are terse.")
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(6)
    first = chat.conversation.id
    _send(qtbot, chat, "hi")
    expected = _greedy_reference(
        tiny, [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}], 6
    )
    assert chat.store.messages(first)[-1].content == expected
    chat.new_conversation()
    assert chat.system_prompt.toPlainText() == ""
    assert chat.max_tokens.value() == 6  # a new chat starts from the last one's settings
    chat.open_conversation(first)
    assert chat.system_prompt.toPlainText() == "You are terse."
    assert chat.temperature.value() == 0.0


def test_stop_halts_generation_at_once(chat: ChatPage, qtbot, monkeypatch) -> None:
    """Esc stops the reply within a token or two of the request, whatever the machine's speed."""
    original = Engine.generate

    def paced(self, *args, **kwargs):  # the tiny model would fill its context before Esc
        for ev in original(self, *args, **kwargs):
            time.sleep(0.005)
            yield ev

    monkeypatch.setattr(Engine, "generate", paced)
    chat.max_tokens.setValue(32768)
    chat.input.setPlainText("tell me everything")
    chat.send()
    handle = chat.generation
    with qtbot.waitSignal(handle.event, timeout=30000):
        pass
    qtbot.wait(200)
    chat.ctx.bridge._drain()  # every token made so far has reached the page
    seen = len(chat._reply_text)
    chat.activateWindow()  # shortcuts go to the active window, which offscreen Qt may not have set
    qtbot.waitUntil(chat.isActiveWindow, timeout=5000)
    qtbot.keyClick(chat.input, Qt.Key.Key_Escape)
    with qtbot.waitSignal(handle.finished, timeout=5000):
        pass
    qtbot.waitUntil(lambda: not chat.busy)
    reply = chat.store.messages(chat.conversation.id)[-1]
    assert reply.stats["finish_reason"] == "cancelled"
    assert reply.content  # what was said so far is kept
    # the cancel interrupts the forward pass: at most the token in flight and one drain's worth
    assert reply.stats["generated_tokens"] - seen <= 4


def test_regenerate_replaces_the_last_reply(chat: ChatPage, qtbot) -> None:
    chat.temperature.setValue(1.0)
    chat.max_tokens.setValue(8)
    _send(qtbot, chat, "a question")
    before = chat.store.messages(chat.conversation.id)
    assert chat.views[-1].regenerate_button.isVisible()
    qtbot.mouseClick(chat.views[-1].regenerate_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(chat.generation.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: not chat.busy)
    after = chat.store.messages(chat.conversation.id)
    assert [m.role for m in after] == ["user", "assistant"]
    assert after[0].id == before[0].id and after[1].id != before[1].id
    assert len(chat.views) == 2


def test_edit_and_resend_replaces_what_follows(chat: ChatPage, qtbot) -> None:
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(4)
    _send(qtbot, chat, "first")
    _send(qtbot, chat, "second")
    first_user = chat.views[0]
    qtbot.mouseClick(first_user.edit_button, Qt.MouseButton.LeftButton)
    assert chat.input.toPlainText() == "first" and chat.edit_note.isVisibleTo(chat)
    chat.input.setPlainText("first, edited")
    chat.send()
    with qtbot.waitSignal(chat.generation.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: not chat.busy)
    msgs = chat.store.messages(chat.conversation.id)
    assert [(m.role, m.content) for m in msgs][:1] == [("user", "first, edited")]
    assert len(msgs) == 2 and len(chat.views) == 2


def test_copy_puts_the_message_on_the_clipboard(chat: ChatPage, qtbot) -> None:
    from PySide6.QtGui import QGuiApplication

    chat.max_tokens.setValue(3)
    _send(qtbot, chat, "copy me")
    qtbot.mouseClick(chat.views[0].copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "copy me"


def test_conversations_rename_delete_and_survive_a_new_page(chat: ChatPage, qtbot, app_ctx) -> None:
    chat.max_tokens.setValue(3)
    _send(qtbot, chat, "keep me")
    cid = chat.conversation.id
    chat.rename("Renamed chat")
    assert chat.conv_list.currentItem().text() == "Renamed chat"
    other = chat.new_conversation()
    assert chat.conv_list.count() == 2
    shown = [v for v in chat.messages_box.findChildren(MessageView) if v.isVisibleTo(chat)]
    assert shown == []  # the old conversation's messages are gone from the view at once
    chat.delete_conversation()
    assert [c.id for c in chat.store.list()] == [cid]
    assert other.id != cid
    page2 = ChatPage(app_ctx, chat.store)  # the app started again on the same database
    qtbot.addWidget(page2)
    assert page2.conversation.id == cid
    assert page2.views[0].message.content == "keep me"


def test_a_load_error_reaches_the_window_as_words(chat: ChatPage, qtbot, app_ctx, tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a model at all")
    handle = chat.load_model(str(bad))
    with qtbot.waitSignal(handle.finished, timeout=30000):
        pass
    qtbot.waitUntil(lambda: bool(app_ctx.errors))
    assert "not a GGUF file" in app_ctx.errors[-1]
    assert "Traceback" not in app_ctx.errors[-1]
    qtbot.waitUntil(lambda: not chat.busy)
    assert app_ctx.bridge.model_info is None  # the old model was freed before the new one was read
    assert not chat.send_button.isEnabled()


def test_send_without_a_model_explains(qtbot, app_ctx, tmp_path: Path) -> None:
    page = ChatPage(app_ctx, ConversationStore(tmp_path / "c.sqlite3"))
    qtbot.addWidget(page)
    page.input.setPlainText("hello")
    page.send()
    assert "Choose a model" in app_ctx.errors[-1]
    assert not page.busy


def test_live_charts_sample_while_generating(chat: ChatPage, qtbot) -> None:
    chat.max_tokens.setValue(32768)
    chat.input.setPlainText("go on")
    chat.send()
    qtbot.waitUntil(lambda: any(v > 0 for _t, v in chat.speed_chart.samples()), timeout=30000)
    chat.stop()
    qtbot.waitUntil(lambda: not chat.busy, timeout=10000)
    assert chat.memory_chart.samples()[-1][1] > 10  # MiB of this process


def test_user_message_never_shows_a_traceback() -> None:
    assert user_message(CancelledError("x")) == "Cancelled."
    assert user_message(ModelFormatError("bad header")) == "bad header"
    assert "not enough memory" in user_message(MemoryError()).lower()
    assert "/x/y" in user_message(FileNotFoundError(2, "No such file", "/x/y"))
    assert user_message(RuntimeError("boom")).startswith("Something went wrong")


def test_compare_highlights_where_answers_part(qtbot, app_ctx, tmp_path: Path) -> None:
    from lowbit.app.compare import CompareDialog, answer_html
    from lowbit.core.compare import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 4]) == 2
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    a = make_tiny_model(tmp_path / "a.gguf", weight_type=QT.Q8_0, seed=1).path
    b = make_tiny_model(tmp_path / "b.gguf", weight_type=QT.Q4_0, seed=1).path
    for p in (a, b):
        app_ctx.library.import_path(p)
    dlg = CompareDialog(app_ctx, "compare this")
    qtbot.addWidget(dlg)
    dlg.max_tokens.setValue(16)
    dlg.model_a.setCurrentIndex(dlg.model_a.findData(str(a)))
    dlg.model_b.setCurrentIndex(dlg.model_b.findData(str(b)))
    handle = dlg.run()
    with qtbot.waitSignal(handle.finished, timeout=60000):
        pass
    r = dlg.result
    msgs = [{"role": "user", "content": "compare this"}]
    assert r.a.text == _greedy_reference(a, msgs, 16)
    assert r.b.text == _greedy_reference(b, msgs, 16)
    assert r.diverge_at == first_divergence(r.a.pieces, r.b.pieces)
    html_a = answer_html(r.a, r.diverge_at)
    assert html_a.count("<span") == len(r.a.pieces) - r.diverge_at
    assert dlg.view_a.toPlainText().replace("\n", "") == r.a.text.replace("\n", "")


def test_measured_quality_is_shown_for_a_library_model(chat: ChatPage, qtbot, app_ctx, tiny: Path) -> None:
    entry = app_ctx.library.import_path(tiny)
    app_ctx.library.record_evaluation(entry.id, {"file": str(tiny), "kld_mean": 0.0123, "same_top_pct": 91.5})
    handle = chat.load_model(str(tiny))
    with qtbot.waitSignal(handle.finished, timeout=30000):
        pass
    assert "mean KLD 0.0123" in chat.quality_label.text() and "91.5%" in chat.quality_label.text()
