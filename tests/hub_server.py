"""A local stand-in for the Hugging Face Hub, serving fake repositories from a folder.

It answers the endpoints Lowbit reaches through huggingface_hub: ``/api/models``
(search with ``search``, ``pipeline_tag``, ``filter``, ``sort``, ``limit``),
``/api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (info, with file sizes,
blob ids and LFS SHA-256 when ``blobs`` is asked for), ``/api/whoami-v2``, and HEAD/GET
``/{repo}/resolve/{rev}/{file}`` with ETag, X-Repo-Commit, Content-Length and Range.
Gated repositories answer 401 to requests without a known token, as the Hub does.
It never sends Xet headers, so huggingface_hub uses plain HTTP.

Switches for failure tests: ``break_after[(repo, file)] = n`` sends the first n bytes of
the first GET of that file and drops the connection; ``corrupt.add((repo, file))`` serves
bytes that differ from the file (same length). ``requests`` records every request.

Layout on disk: ``<root>/<owner>/<name>/meta.json`` and ``<root>/<owner>/<name>/files/...``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """The server; ``url`` is its address (set HF_ENDPOINT to it)."""

    def __init__(self, root: Path, *, tokens: tuple[str, ...] = ("hf_valid_token",)) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tokens = set(tokens)
        self.break_after: dict[tuple[str, str], int] = {}
        self.corrupt: set[tuple[str, str]] = set()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        gated: bool = False,
        tags: tuple[str, ...] = (),
        downloads: int = 0,
        likes: int = 0,
        created_at: str = "2024-01-01T00:00:00.000Z",
        last_modified: str = "2024-06-01T00:00:00.000Z",
        config: dict[str, Any] | None = None,
        gguf: dict[str, Any] | None = None,
        n_params: int | None = None,
        license: str = "apache-2.0",  # noqa: A002 - the Hub's own field name
        pipeline_tag: str = "text-generation",
    ) -> str:
        """Write a repository; returns its commit id."""
        folder = self.root / repo_id
        for name, data in files.items():
            p = folder / "files" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        sha = hashlib.sha1(
            repr((repo_id, sorted((k, len(v)) for k, v in files.items()))).encode()
        ).hexdigest()
        meta = {
            "id": repo_id,
            "sha": sha,
            "gated": "manual" if gated else False,
            "private": False,
            "tags": [*tags, f"license:{license}"],
            "downloads": downloads,
            "likes": likes,
            "createdAt": created_at,
            "lastModified": last_modified,
            "pipeline_tag": pipeline_tag,
            "config": config,
            "gguf": gguf,
            "safetensors": {"parameters": {"BF16": n_params}, "total": n_params} if n_params else None,
            "cardData": {"license": license},
        }
        (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        return sha

    # -- data -----------------------------------------------------------------

    def repos(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/*/meta.json"))]

    def meta(self, repo_id: str) -> dict[str, Any] | None:
        p = self.root / repo_id / "meta.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def files(self, repo_id: str) -> list[str]:
        base = self.root / repo_id / "files"
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())

    def file_bytes(self, repo_id: str, name: str) -> bytes | None:
        p = self.root / repo_id / "files" / name
        return p.read_bytes() if p.is_file() else None

    def sibling(self, repo_id: str, name: str, blobs: bool) -> dict[str, Any]:
        s: dict[str, Any] = {"rfilename": name}
        if blobs:
            data = self.file_bytes(repo_id, name) or b""
            s["size"] = len(data)
            s["blobId"] = git_blob_sha1(data)
            if name.endswith(LFS_SUFFIXES):
                s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return s

    def info(self, meta: dict[str, Any], blobs: bool) -> dict[str, Any]:
        out = {k: v for k, v in meta.items() if v is not None}
        out["siblings"] = [self.sibling(meta["id"], n, blobs) for n in self.files(meta["id"])]
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    # -- helpers ------------------------------------------------------------------

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(extra or {})}
        self._send(status, json.dumps({"error": message}).encode(), headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.server_hub.tokens

    # -- routes ---------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self._route()

    def do_GET(self) -> None:
        self._route()

    def _route(self) -> None:
        hub = self.server_hub
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        path = urllib.parse.unquote(url.path)
        with hub._lock:
            hub.requests.append(
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "range": self.headers.get("Range"),
                    "auth": self.headers.get("Authorization"),
                }
            )
        if path == "/api/whoami-v2":
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return self._json(
                {"name": "tester", "auth": {"accessToken": {"displayName": "test", "role": "read"}}}
            )
        if path == "/api/models":
            return self._search(query)
        if path.startswith("/api/models/"):
            return self._info(path[len("/api/models/") :], query)
        parts = path.strip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
        self._error(404, "NotFound", f"no route for {path}")

    def _search(self, query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        items = hub.repos()
        words = (query.get("search") or [""])[0].lower()
        if words:
            items = [m for m in items if words in m["id"].lower()]
        if query.get("pipeline_tag"):
            items = [m for m in items if m.get("pipeline_tag") == query["pipeline_tag"][0]]
        for tag in query.get("filter", []):
            items = [m for m in items if tag in m.get("tags", [])]
        sort = (query.get("sort") or [""])[0]
        if sort:
            items.sort(key=lambda m: m.get(sort) or 0, reverse=True)
        limit = int((query.get("limit") or ["1000"])[0])
        self._json([hub.info(m, blobs=False) for m in items[:limit]])

    def _info(self, rest: str, query: dict[str, list[str]]) -> None:
        hub = self.server_hub
        if "/revision/" in rest:
            repo_id, rev = rest.split("/revision/", 1)
        else:
            repo_id, rev = rest, "main"
        meta = hub.meta(repo_id)
        if meta is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if rev not in ("main", meta["sha"]):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        self._json(hub.info(meta, blobs="blobs" in query))

    def _resolve(self, repo_id: str, rev: str, name: str) -> None:
        hub = self.server_hub
        meta = hub.meta(repo_id)
        if meta is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if rev not in ("main", meta["sha"]):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        commit = {"X-Repo-Commit": meta["sha"]}
        if meta.get("gated") and not self._authorized():
            return self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                commit,
            )
        data = hub.file_bytes(repo_id, name)
        if data is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit)
        etag = hashlib.sha256(data).hexdigest() if name.endswith(LFS_SUFFIXES) else git_blob_sha1(data)
        key = (repo_id, name)
        if key in hub.corrupt:
            data = bytes(b ^ 0x5A for b in data)
        start = 0
        rng = self.headers.get("Range")
        status = 200
        headers = {**commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if rng and rng.startswith("bytes="):
            first = rng[len("bytes=") :].split("-")[0]
            start = int(first) if first else 0
            if start >= len(data) and len(data) > 0:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        if self.command == "HEAD":
            return self._send(status, body, headers)
        cut = None
        if key in hub.break_after and self.command == "GET":
            with hub._lock:
                cut = hub.break_after.pop(key)
        if cut is None:
            return self._send(status, body, headers)
        # Announce the whole body, send part of it, and drop the connection.
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True


def use_fake_hub(hub: FakeHub | str, home: Path, monkeypatch: Any) -> None:
    """Point huggingface_hub and Lowbit at ``hub`` (a FakeHub or an address), with the
    token store in ``home`` and small download chunks (so that Cancel can act mid-file).

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported,
    so its constants are patched as well as the environment.
    """
    from huggingface_hub import constants, hf_api

    url = hub.url if isinstance(hub, FakeHub) else hub
    home.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_TOKEN_PATH", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    # login() checks the token with the module-level HfApi, created at import time.
    monkeypatch.setattr(hf_api.api, "endpoint", url)
