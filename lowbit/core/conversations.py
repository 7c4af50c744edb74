"""Chat conversations, stored in SQLite.

Every message is committed as soon as it exists, and a reply being streamed is
saved every second or so, so killing the app mid-reply loses at most the last
second of that reply and nothing before it. The database runs in WAL mode: a
commit is one append to the log, cheap enough to do while tokens stream, and a
reader never waits for a writer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LowbitError

SCHEMA_VERSION = 1
DB_NAME = "conversations.sqlite3"
ROLES = ("user", "assistant")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    model_path TEXT,
    params TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: views and edits refer to ids
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    stats TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


class ConversationStoreError(LowbitError):
    """The conversation database cannot be opened or is damaged."""


@dataclass
class Conversation:
    id: int
    title: str
    system_prompt: str = ""
    model_path: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # sampling settings, max tokens
    created: float = 0.0
    updated: float = 0.0


@dataclass
class Message:
    id: int
    conversation_id: int
    role: str
    content: str
    stats: dict[str, Any] | None = None  # per-reply numbers (ttft_s, decode_tps, finish_reason...)
    created: float = 0.0

    def as_chat(self) -> dict[str, str]:
        """The message as a chat template expects it."""
        return {"role": self.role, "content": self.content}


def default_db_path() -> Path:
    """``conversations.sqlite3`` in the user data directory."""
    import platformdirs

    return Path(platformdirs.user_data_dir("lowbit", appauthor=False)) / DB_NAME


class ConversationStore:
    """Conversations and their messages. Use it from one thread."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_db_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed message survives the app being killed;
            # only a power cut can lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConversationStoreError(
                    f"{self.path} was written by a newer Lowbit (schema {version}); update Lowbit to open it"
                )
            # executescript commits on its own: the script is its own transaction
            self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except sqlite3.DatabaseError as e:
            raise ConversationStoreError(
                f"the conversation database {self.path} cannot be opened: {e}"
            ) from e

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- conversations -------------------------------------------------------------

    def create(
        self,
        title: str = "New chat",
        *,
        system_prompt: str = "",
        model_path: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Conversation:
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO conversations (title, system_prompt, model_path, params, created, updated)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (title, system_prompt, model_path, json.dumps(dict(params or {})), now, now),
            )
        return self.get(int(cur.lastrowid or 0))

    def list(self) -> list[Conversation]:
        """All conversations, the most recently used first."""
        rows = self._db.execute("SELECT * FROM conversations ORDER BY updated DESC, id DESC").fetchall()
        return [_conversation(r) for r in rows]

    def get(self, conversation_id: int) -> Conversation:
        row = self._db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        if row is None:
            raise KeyError(f"no conversation {conversation_id}")
        return _conversation(row)

    def update(self, conversation_id: int, **changes: Any) -> Conversation:
        """Change title, system_prompt, model_path or params."""
        allowed = {"title", "system_prompt", "model_path", "params"}
        unknown = set(changes) - allowed
        if unknown:
            raise TypeError(f"unknown fields: {', '.join(sorted(unknown))}")
        if "params" in changes:
            changes["params"] = json.dumps(dict(changes["params"] or {}))
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            with self._transaction() as db:
                cur = db.execute(
                    f"UPDATE conversations SET {sets}, updated = ? WHERE id = ?",
                    (*changes.values(), time.time(), conversation_id),
                )
                if cur.rowcount == 0:
                    raise KeyError(f"no conversation {conversation_id}")
        return self.get(conversation_id)

    def rename(self, conversation_id: int, title: str) -> Conversation:
        title = title.strip()
        if not title:
            raise ValueError("a conversation needs a title")
        return self.update(conversation_id, title=title)

    def delete(self, conversation_id: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # -- messages ------------------------------------------------------------------

    def messages(self, conversation_id: int) -> list[Message]:
        rows = self._db.execute(
            "SELECT * FROM messages WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
        return [_message(r) for r in rows]

    def add_message(
        self, conversation_id: int, role: str, content: str, stats: Mapping[str, Any] | None = None
    ) -> Message:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        now = time.time()
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO messages (conversation_id, role, content, stats, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation_id, role, content, _dumps(stats), now),
            )
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        row = self._db.execute("SELECT * FROM messages WHERE id = ?", (cur.lastrowid,)).fetchone()
        return _message(row)

    def update_message(self, message_id: int, content: str, stats: Mapping[str, Any] | None = None) -> None:
        """Replace a message's text (a streamed reply as it grows) and, if given, its stats."""
        with self._transaction() as db:
            if stats is None:
                db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))
            else:
                db.execute(
                    "UPDATE messages SET content = ?, stats = ? WHERE id = ?",
                    (content, _dumps(stats), message_id),
                )

    def truncate(self, conversation_id: int, from_message_id: int) -> int:
        """Delete a message and every later one of its conversation (regenerate, edit). Returns the count."""
        with self._transaction() as db:
            cur = db.execute(
                "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
                (conversation_id, from_message_id),
            )
        return cur.rowcount


def _dumps(stats: Mapping[str, Any] | None) -> str | None:
    return None if stats is None else json.dumps(dict(stats))


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a damaged field loses its extras, not the conversation
        return default


def _conversation(row: tuple[Any, ...]) -> Conversation:
    cid, title, system_prompt, model_path, params, created, updated = row
    return Conversation(cid, title, system_prompt, model_path, _loads(params, {}), created, updated)


def _message(row: tuple[Any, ...]) -> Message:
    mid, cid, role, content, stats, created = row
    return Message(mid, cid, role, content, _loads(stats, None), created)
