"""Hub search, download, resume, checksums, disk check, gated models and offline mode,
against the local server in tests/hub_server.py."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
from collections import namedtuple
from pathlib import Path

import pytest

from lowbit.core import hub
from lowbit.core.engine import CancelToken
from lowbit.core.errors import (
    CancelledError,
    DiskFullError,
    DownloadError,
    GatedModelError,
    HubError,
    OfflineError,
    RepoNotFoundError,
    UnsafeCheckpointError,
)
from tests.hub_server import FakeHub, use_fake_hub
from tests.tiny_models import make_tiny_model

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
QWEN_CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}


def _blob(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n]


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = FakeHub(tmp_path / "hub")
    use_fake_hub(server, tmp_path / "hf-home", monkeypatch)
    yield server
    server.close()


def _populate(h: FakeHub) -> None:
    h.add_repo(
        "org/llama-small",
        {
            "config.json": json.dumps(LLAMA_CONFIG).encode(),
            "model.safetensors": _blob(300_000, 1),
            "tokenizer.json": b'{"model": {}}',
            "tokenizer_config.json": b"{}",
            "pytorch_model.bin": _blob(1000, 2),
            "README.md": b"# small",
        },
        downloads=100,
        likes=5,
        config=LLAMA_CONFIG,
        n_params=135_000_000,
        created_at="2024-03-01T00:00:00.000Z",
    )
    h.add_repo(
        "org/qwen-tiny",
        {"config.json": json.dumps(QWEN_CONFIG).encode(), "model.safetensors": _blob(1000, 3)},
        downloads=500,
        likes=1,
        config=QWEN_CONFIG,
        license="mit",
        created_at="2024-05-01T00:00:00.000Z",
    )
    h.add_repo(
        "org/bert-thing",
        {"config.json": b'{"model_type": "bert"}', "model.safetensors": _blob(100, 4)},
        downloads=1000,
        config={"architectures": ["BertForMaskedLM"], "model_type": "bert"},
    )
    h.add_repo(
        "org/llama-gguf",
        {"llama-Q4_K_M.gguf": _blob(50_000, 5), "llama-Q8_0.gguf": _blob(90_000, 6), "README.md": b"#"},
        tags=("gguf",),
        downloads=50,
        likes=50,
        gguf={"architecture": "llama", "total": 135_000_000, "context_length": 2048},
        created_at="2024-01-01T00:00:00.000Z",
    )
    h.add_repo(
        "org/pickle-only",
        {"config.json": json.dumps(LLAMA_CONFIG).encode(), "pytorch_model.bin": _blob(1000, 7)},
        config=LLAMA_CONFIG,
    )


# -- search --------------------------------------------------------------------


def test_search_filters_sorts_and_describes(fake_hub: FakeHub) -> None:
    _populate(fake_hub)
    found = hub.search("", sort="downloads", limit=10)
    assert [m.repo_id for m in found] == [
        "org/qwen-tiny",
        "org/llama-small",
        "org/llama-gguf",
        "org/pickle-only",
    ]
    first = found[0]
    assert first.architecture == "qwen2" and first.supported and first.license == "mit"
    small = found[1]
    assert small.n_params == 135_000_000 and not small.gated and small.downloads == 100
    q = fake_hub.requests[-1]["query"]
    assert q["pipeline_tag"] == ["text-generation"] and q["sort"] == ["downloads"]

    assert hub.search("", sort="likes")[0].repo_id == "org/llama-gguf"
    assert hub.search("", sort="created")[0].repo_id == "org/qwen-tiny"
    assert [m.repo_id for m in hub.search("llama")] == ["org/llama-small", "org/llama-gguf"]
    assert [m.repo_id for m in hub.search("", gguf_only=True)] == ["org/llama-gguf"]
    assert "org/bert-thing" in [m.repo_id for m in hub.search("", supported_only=False)]
    assert len(hub.search("", limit=2)) == 2
    with pytest.raises(ValueError, match="sort"):
        hub.search("", sort="size")


def test_search_with_files_gives_sizes_checksums_and_gguf_types(fake_hub: FakeHub) -> None:
    _populate(fake_hub)
    (m,) = hub.search("gguf", with_files=True)
    by_name = {f.name: f for f in m.files or ()}
    q4 = by_name["llama-Q4_K_M.gguf"]
    assert q4.kind == "gguf" and q4.quant_type == "Q4_K_M" and q4.size == 50_000
    assert q4.sha256 == hashlib.sha256(_blob(50_000, 5)).hexdigest()
    assert by_name["llama-Q8_0.gguf"].quant_type == "Q8_0"
    assert m.is_gguf and m.total_size == 50_000 + 90_000 + 1
    assert [f.quant_type for f in m.gguf_files] == ["Q4_K_M", "Q8_0"]


def test_quant_type_from_file_names() -> None:
    assert hub.quant_type_from_name("SmolLM2-135M-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert hub.quant_type_from_name("qwen2.5-0.5b-instruct-q8_0.gguf") == "Q8_0"
    assert hub.quant_type_from_name("model.IQ4_NL.gguf") == "IQ4_NL"
    assert hub.quant_type_from_name("ggml-model-f16.gguf") == "F16"
    assert hub.quant_type_from_name("model.gguf") is None


def test_select_files(fake_hub: FakeHub) -> None:
    _populate(fake_hub)
    small = hub.model_details("org/llama-small")
    names = [f.name for f in hub.select_files(small)]
    assert sorted(names) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    gg = hub.model_details("org/llama-gguf")
    with pytest.raises(HubError, match="choose one"):
        hub.select_files(gg)
    assert [f.name for f in hub.select_files(gg, ["*Q8_0*"])] == ["llama-Q8_0.gguf"]
    with pytest.raises(HubError, match="no file"):
        hub.select_files(gg, ["*Q2_K*"])
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        hub.select_files(hub.model_details("org/pickle-only"))
    with pytest.raises(UnsafeCheckpointError):
        hub.select_files(small, ["pytorch_model.bin"])


# -- download ------------------------------------------------------------------


def _gets(h: FakeHub, name: str) -> list[dict]:
    return [r for r in h.requests if r["method"] == "GET" and r["path"].endswith("/" + name)]


def test_download_picks_the_needed_files_and_skips_them_the_second_time(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    _populate(fake_hub)
    updates: list[hub.DownloadProgress] = []
    res = hub.download("org/llama-small", tmp_path / "out", on_update=updates.append)
    got = sorted(p.name for p in res.files)
    assert got == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == _blob(300_000, 1)
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert res.revision == fake_hub.meta("org/llama-small")["sha"]
    last = updates[-1]
    assert last.done == last.total == res.bytes_downloaded and last.files_done == last.files_total == 4
    assert all(u.total == last.total for u in updates) and all(u.speed_bps >= 0 for u in updates)
    n_gets = len([r for r in fake_hub.requests if r["method"] == "GET"])
    again = hub.download("org/llama-small", tmp_path / "out")
    assert again.bytes_downloaded == 0 and len(again.files) == 4
    assert len([r for r in fake_hub.requests if r["method"] == "GET"]) == n_gets + 1  # model info only


def test_download_resumes_after_the_server_breaks_off(fake_hub: FakeHub, tmp_path: Path) -> None:
    data = _blob(1_000_000, 9)
    fake_hub.add_repo("org/big", {"model.gguf": data}, tags=("gguf",), gguf={"architecture": "llama"})
    fake_hub.break_after[("org/big", "model.gguf")] = 300_000
    res = hub.download("org/big", tmp_path / "out")
    assert (tmp_path / "out" / "model.gguf").read_bytes() == data
    gets = _gets(fake_hub, "model.gguf")
    assert len(gets) == 2 and gets[0]["range"] is None
    # huggingface_hub's retry continued the same file from the last whole chunk it had written.
    resumed_at = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 300_000
    assert res.bytes_downloaded == len(data)
    assert not (tmp_path / "out" / hub.PARTIAL_DIR).exists()


def test_cancelled_download_resumes_in_a_new_run(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _blob(2_000_000, 10)
    fake_hub.add_repo("org/big", {"model.gguf": data}, tags=("gguf",), gguf={"architecture": "llama"})
    cancel = CancelToken()

    def on_chunk(self: hub._Transfer, name: str, n: float) -> None:
        # Cancel as the user would, between two chunks, once half a megabyte has arrived.
        if self.done >= 500_000:
            cancel.cancel()
        advance(self, name, n)

    advance = hub._Transfer.advance
    monkeypatch.setattr(hub._Transfer, "advance", on_chunk)
    with pytest.raises(CancelledError):
        hub.download("org/big", tmp_path / "out", cancel=cancel)
    monkeypatch.undo()
    use_fake_hub(fake_hub, tmp_path / "hf-home", monkeypatch)
    assert not (tmp_path / "out" / "model.gguf").exists()
    (partial,) = (tmp_path / "out" / hub.PARTIAL_DIR).iterdir()
    kept = partial.stat().st_size
    assert 500_000 <= kept < len(data)

    res = hub.download("org/big", tmp_path / "out")  # as after an app restart: a new call
    assert (tmp_path / "out" / "model.gguf").read_bytes() == data
    assert _gets(fake_hub, "model.gguf")[-1]["range"] == f"bytes={kept}-"
    assert res.bytes_resumed == kept and res.bytes_downloaded == len(data) - kept


def test_content_that_does_not_match_the_checksum_is_detected(fake_hub: FakeHub, tmp_path: Path) -> None:
    _populate(fake_hub)
    fake_hub.corrupt.add(("org/llama-small", "model.safetensors"))
    with pytest.raises(DownloadError, match="checksum"):
        hub.download("org/llama-small", tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert not list((tmp_path / "out").rglob("*.incomplete"))
    # Small files are checked against their git blob id.
    fake_hub.corrupt = {("org/llama-small", "config.json")}
    with pytest.raises(DownloadError, match="checksum"):
        hub.download("org/llama-small", tmp_path / "out2", files=["config.json"])


def test_too_little_disk_is_refused_before_any_byte(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(fake_hub)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 200_000, 200_000))
    with pytest.raises(DiskFullError, match="disk space"):
        hub.download("org/llama-small", tmp_path / "out")
    assert not _gets(fake_hub, "model.safetensors")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_gated_model_asks_to_log_in_and_works_after_login(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_hub.add_repo(
        "org/gated",
        {"config.json": json.dumps(LLAMA_CONFIG).encode(), "model.safetensors": _blob(1000, 11)},
        gated=True,
        config=LLAMA_CONFIG,
    )
    assert hub.search("gated")[0].gated
    with pytest.raises(GatedModelError, match="log in"):
        hub.download("org/gated", tmp_path / "out")
    assert not _gets(fake_hub, "model.safetensors")
    # The server's own 401 is translated too (e.g. a token saved in HF_TOKEN without access).
    monkeypatch.setenv("HF_TOKEN", "hf_no_access")
    with pytest.raises(GatedModelError, match="accept its conditions"):
        hub.download("org/gated", tmp_path / "out")
    monkeypatch.delenv("HF_TOKEN")

    with pytest.raises(HubError, match="rejected"):
        hub.login("hf_wrong")
    assert hub.login("hf_valid_token") == "tester"
    token_file = tmp_path / "hf-home" / "token"
    assert token_file.read_text().strip() == "hf_valid_token"
    assert hub.get_token() == "hf_valid_token"
    res = hub.download("org/gated", tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == _blob(1000, 11)
    assert _gets(fake_hub, "model.safetensors")[-1]["auth"] == "Bearer hf_valid_token"
    assert len(res.files) == 2
    hub.logout()
    assert hub.get_token() is None


def test_unknown_repository_and_revision(fake_hub: FakeHub, tmp_path: Path) -> None:
    _populate(fake_hub)
    with pytest.raises(RepoNotFoundError):
        hub.model_details("org/nothing")
    with pytest.raises(RepoNotFoundError, match="revision"):
        hub.download("org/llama-small", tmp_path / "out", revision="v9")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_no_network_gives_the_offline_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_hub(f"http://127.0.0.1:{_closed_port()}", tmp_path / "hf-home", monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(OfflineError, match="cannot reach the Hugging Face Hub"):
        hub.search("llama")
    with pytest.raises(OfflineError, match="still work"):
        hub.download("org/llama-small", tmp_path / "out")
    with pytest.raises(OfflineError):
        hub.login("hf_valid_token")
    assert time.monotonic() - t0 < 10  # no long retry loops
    assert not (tmp_path / "out").exists()


def test_offline_mode_gives_the_offline_message(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _populate(fake_hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        hub.search("llama")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        hub.download("org/llama-small", tmp_path / "out")
    assert not fake_hub.requests


def test_errors_translate_network_failures_during_calls(
    fake_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The quick probe passes but the request itself fails: still the offline message.
    _populate(fake_hub)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub, "_ensure_online", lambda: None)
    from huggingface_hub.utils import _http

    monkeypatch.setattr(_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())
    with pytest.raises(OfflineError):
        hub.model_details("org/llama-small")


# -- command line ------------------------------------------------------------------


def test_cli_search_and_download(
    fake_hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lowbit.core.cli import main

    _populate(fake_hub)
    assert main(["search", "llama", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [m["repo_id"] for m in found] == ["org/llama-small", "org/llama-gguf"]
    assert main(["search", "gguf", "--files"]) == 0
    out = capsys.readouterr().out
    assert "org/llama-gguf" in out and "Q4_K_M" in out

    make_tiny_model(tmp_path / "tiny.gguf")
    tiny = (tmp_path / "tiny.gguf").read_bytes()
    fake_hub.add_repo("org/tiny-gguf", {"tiny-F32.gguf": tiny, "tiny-copy-F32.gguf": tiny}, tags=("gguf",))
    lib = tmp_path / "lib"
    rc = main(["download", "org/tiny-gguf", "--files", "tiny-F32.gguf", "--library", str(lib), "--json"])
    assert rc == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["source"]["repo_id"] == "org/tiny-gguf" and entry["source"]["file"] == "tiny-F32.gguf"
    assert entry["architecture"] == "llama" and entry["quant_type"] == "F32" and entry["managed"]
    assert main(["models", "--library", str(lib)]) == 0
    assert entry["id"] in capsys.readouterr().out
    assert main(["download", "org/llama-gguf", "--library", str(lib)]) == 1
    assert "choose one" in capsys.readouterr().err


def test_worker_download_reports_progress_and_events(fake_hub: FakeHub, tmp_path: Path) -> None:
    from lowbit.core.library import Library
    from lowbit.core.worker import Worker

    make_tiny_model(tmp_path / "tiny.gguf")
    fake_hub.add_repo(
        "org/tiny-gguf", {"tiny-F32.gguf": (tmp_path / "tiny.gguf").read_bytes()}, tags=("gguf",)
    )
    progress: list = []
    events: list = []
    worker = Worker(name="test-download")
    try:
        job = worker.download(
            Library(tmp_path / "lib"), "org/tiny-gguf", on_progress=progress.append, on_event=events.append
        )
        (entry,) = job.result(timeout=120)
    finally:
        worker.shutdown()
    assert entry.source["repo_id"] == "org/tiny-gguf"
    assert progress[-1].stage == "download" and progress[-1].done == progress[-1].total
    assert isinstance(events[-1], hub.DownloadProgress) and events[-1].files_done == 1


@pytest.mark.parametrize("name", ["../x.gguf", "a/../../x", "/etc/passwd", "a\\b", "C:x", "a//b", "./a", ""])
def test_hostile_file_names_are_refused(tmp_path, name):
    from lowbit.core.errors import DownloadError
    from lowbit.core.hub import safe_target

    with pytest.raises(DownloadError, match="outside"):
        safe_target(tmp_path, name)
    assert safe_target(tmp_path, "sub/model.safetensors") == tmp_path / "sub" / "model.safetensors"
