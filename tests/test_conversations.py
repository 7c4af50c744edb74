"""The conversation store: CRUD, ordering, truncation, and surviving a kill mid-reply."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lowbit.core.conversations import ConversationStore, ConversationStoreError


@pytest.fixture()
def store(tmp_path: Path):
    s = ConversationStore(tmp_path / "c.sqlite3")
    yield s
    s.close()


def test_wal_mode_and_schema(store: ConversationStore) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_create_rename_update_delete(store: ConversationStore) -> None:
    a = store.create("first", system_prompt="be brief", params={"temperature": 0.2})
    b = store.create()
    assert [c.id for c in store.list()] == [b.id, a.id]
    assert store.get(a.id).params == {"temperature": 0.2}
    store.rename(a.id, "  renamed ")
    assert store.get(a.id).title == "renamed"
    assert store.list()[0].id == a.id  # touched last, listed first
    store.update(b.id, model_path="/m.gguf", params={"top_p": 0.9})
    assert store.get(b.id).model_path == "/m.gguf"
    with pytest.raises(ValueError):
        store.rename(a.id, " ")
    with pytest.raises(TypeError):
        store.update(a.id, colour="red")
    store.add_message(a.id, "user", "hi")
    store.delete(a.id)
    assert [c.id for c in store.list()] == [b.id]
    assert store.messages(a.id) == []  # cascaded
    with pytest.raises(KeyError):
        store.get(a.id)


def test_messages_in_order_with_stats_and_truncate(store: ConversationStore) -> None:
    c = store.create()
    m1 = store.add_message(c.id, "user", "question one")
    m2 = store.add_message(c.id, "assistant", "")
    store.update_message(m2.id, "partial")
    store.update_message(m2.id, "answer one", {"decode_tps": 12.5, "finish_reason": "stop"})
    m3 = store.add_message(c.id, "user", "question two")
    store.add_message(c.id, "assistant", "answer two")
    msgs = store.messages(c.id)
    assert [m.content for m in msgs] == ["question one", "answer one", "question two", "answer two"]
    assert msgs[1].stats == {"decode_tps": 12.5, "finish_reason": "stop"}
    assert msgs[0].as_chat() == {"role": "user", "content": "question one"}
    assert store.truncate(c.id, m3.id) == 2
    assert [m.id for m in store.messages(c.id)] == [m1.id, m2.id]
    with pytest.raises(ValueError):
        store.add_message(c.id, "system", "no")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.sqlite3"
    ConversationStore(p).close()
    db = sqlite3.connect(p)
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(ConversationStoreError, match="newer Lowbit"):
        ConversationStore(p)


def test_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "c.sqlite3"
    p.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConversationStoreError, match="cannot be opened"):
        ConversationStore(p)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_mid_reply_keeps_earlier_messages(tmp_path: Path) -> None:
    """A process killed while it streams a reply loses nothing that was committed before."""
    db = tmp_path / "c.sqlite3"
    script = textwrap.dedent(
        f"""
        import sys, time
        from lowbit.core.conversations import ConversationStore
        s = ConversationStore({str(db)!r})
        c = s.create("killed")
        for i in range(3):
            s.add_message(c.id, "user", f"q{{i}}")
            s.add_message(c.id, "assistant", f"a{{i}}")
        s.add_message(c.id, "user", "last question")
        reply = s.add_message(c.id, "assistant", "")
        text = ""
        for i in range(100000):
            text += "tok "
            s.update_message(reply.id, text)
            if i == 50:
                print("streaming", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=dict(os.environ))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"streaming"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = ConversationStore(db)
    (conv,) = s.list()
    msgs = s.messages(conv.id)
    assert [m.content for m in msgs[:7]] == ["q0", "a0", "q1", "a1", "q2", "a2", "last question"]
    assert msgs[7].role == "assistant" and msgs[7].content.startswith("tok " * 50)
    s.close()
