"""The Models page, offscreen, against the local Hub server: search, details with memory
verdicts, the download queue (pause, resume, cancel), and the library (import, remove)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from gguf import GGMLQuantizationType as QT

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QMessageBox

from lowbit.app.bridge import WorkerBridge
from lowbit.app.models_page import VERDICTS, ModelsPage, format_bytes
from lowbit.app.settings import AppContext, AppSettings
from lowbit.core import fit, hub
from lowbit.core.hub import HubFile, HubModel
from lowbit.core.quantize import QUANT_PRESETS
from tests.hub_server import FakeHub, use_fake_hub
from tests.tiny_models import make_tiny_model

LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
TIMEOUT = 30000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from lowbit.core.convert import gguf_to_hf

    folder = tmp_path_factory.mktemp("tiny-app-models")
    f32 = folder / "tiny-F32.gguf"
    tm = make_tiny_model(f32)
    q8 = folder / "tiny-Q8_0.gguf"
    make_tiny_model(q8, weight_type=QT.Q8_0)
    hf = Path(gguf_to_hf(f32, folder / "tiny-hf", dtype="f32"))
    hf_files = {p.name: p.read_bytes() for p in hf.iterdir() if p.is_file()}
    n_params = tm.n_vocab * tm.n_embd + tm.n_layer * 4 * tm.n_embd**2
    return SimpleNamespace(f32=f32, q8=q8, hf_files=hf_files, n_params=n_params)


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny: SimpleNamespace):
    server = FakeHub(tmp_path / "hub")
    use_fake_hub(server, tmp_path / "hf-home", monkeypatch)
    server.add_repo(
        "org/tiny-GGUF",
        {"tiny-Q8_0.gguf": tiny.q8.read_bytes(), "tiny-F32.gguf": tiny.f32.read_bytes(), "README.md": b"#"},
        tags=("gguf",),
        downloads=20,
        gguf={"architecture": "llama", "total": tiny.n_params},
    )
    server.add_repo("org/tiny", tiny.hf_files, config=LLAMA_CONFIG, n_params=tiny.n_params, downloads=10)
    yield server
    server.close()


@pytest.fixture
def ctx(qtbot, tmp_path: Path):
    settings = AppSettings(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    settings.library_dir = tmp_path / "lib"
    bridge = WorkerBridge()
    context = AppContext(settings, bridge)
    yield context
    assert bridge.shutdown(timeout=10)


@pytest.fixture
def page(qtbot, ctx: AppContext) -> ModelsPage:
    p = ModelsPage(ctx)
    qtbot.addWidget(p)
    p.resize(1100, 720)
    p.show()
    return p


@pytest.fixture
def gate(ctx: AppContext, monkeypatch: pytest.MonkeyPatch):
    """Holds every download after each chunk until released, so Pause and Cancel act mid-file.
    Released before the bridge shuts down (this fixture ends first)."""
    release = threading.Event()
    advance = hub._Transfer.advance

    def held(self, name: str, n: float) -> None:
        advance(self, name, n)
        release.wait(10)

    monkeypatch.setattr(hub._Transfer, "advance", held)
    yield release
    release.set()


def _partials(ctx: AppContext, repo_id: str) -> list[Path]:
    return sorted((ctx.library.download_dir(repo_id) / hub.PARTIAL_DIR).glob("*.incomplete"))


def _served(fake_hub: FakeHub) -> bytes:
    return fake_hub.file_bytes("org/tiny-GGUF", "tiny-F32.gguf") or b""


def _column(table, col: int) -> list[str]:
    return [table.item(r, col).text() for r in range(table.rowCount())]


# -- search, details, download ---------------------------------------------------------------


def test_search_details_download_and_remove(
    qtbot, page: ModelsPage, ctx: AppContext, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    with qtbot.waitSignal(page.results_shown, timeout=TIMEOUT) as shown:
        page.search("tiny")
    assert shown.args == [2]
    assert [m.repo_id for m in page.results()] == ["org/tiny-GGUF", "org/tiny"]
    assert _column(page.results_table, 0)[0].startswith("org/tiny-GGUF")
    assert not page.search_busy.isVisible() and not page.message()

    with qtbot.waitSignal(page.details_shown, timeout=TIMEOUT):
        page.select_result(0)
    assert [lv.level for lv in page.level_fits()] == ["Q8_0", "F32"]  # smallest first
    assert _column(page.files_table, 0) == ["README.md", "tiny-F32.gguf", "tiny-Q8_0.gguf"]
    assert page.download_button.isEnabled()  # the quantized file that fits is ticked for the user
    assert "tiny-Q8_0.gguf" in page._chosen_files()

    qtbot.mouseClick(page.download_button, Qt.MouseButton.LeftButton)
    (item,) = page.downloads()
    assert page.queue_box.isVisible() and item.files == ("tiny-Q8_0.gguf",)
    with qtbot.waitSignal(item.completed, timeout=TIMEOUT) as done:
        pass
    (entry,) = done.args[0]
    assert page.downloads() == [] and not page.queue_box.isVisible()
    qtbot.waitUntil(lambda: page.library_table.rowCount() == 1)
    path = ctx.library.path_of(entry)
    assert path.read_bytes() == fake_hub.file_bytes("org/tiny-GGUF", "tiny-Q8_0.gguf")
    assert entry.managed and entry.quant_type == "Q8_0"
    assert _column(page.library_table, 4) == ["Ready"]

    page.select_entry(entry.id)
    with qtbot.waitSignal(ctx.open_in_chat) as opened:
        qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert opened.args == [str(path)]
    with qtbot.waitSignal(ctx.quantize_source) as quant:
        qtbot.mouseClick(page.quantize_button, Qt.MouseButton.LeftButton)
    assert quant.args == [str(path)]

    asked: list[str] = []
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]

    def question(parent, title, text):
        asked.append(text)
        return answers.pop(0)

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    assert page.remove_entry(entry.id) is None  # declined
    assert path.exists()
    handle = page.remove_entry(entry.id)
    assert handle is not None and "delete its files" in asked[-1]
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: page.library_table.rowCount() == 0)
    assert not path.exists() and ctx.library.is_empty()


def test_verdicts_match_direct_computation(
    qtbot, page: ModelsPage, ctx: AppContext, fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    details = hub.model_details("org/tiny")
    config = json.loads(fake_hub.file_bytes("org/tiny", "config.json") or b"{}")
    shape = fit.shape_from_config(config)
    assert shape is not None
    n_ctx = 2048
    page.set_context_length(n_ctx)
    options = {"n_ctx": n_ctx, "cache_type": ctx.settings.kv_type, "n_threads": ctx.settings.threads}
    q4 = fit.preset_size(shape, "Q4_K_M")
    q4_need = fit.estimate_memory_from_shape(
        shape, weights_bytes=q4.weights_bytes, act_encoding=q4.act_encoding, **options
    ).total_bytes
    available = q4_need  # Q4_K_M just fits in all of it (tight); F16 does not
    monkeypatch.setattr(fit, "available_memory", lambda: available)

    with qtbot.waitSignal(page.details_shown, timeout=TIMEOUT):
        page.open_details("org/tiny")
    levels = page.level_fits()
    assert [lv.level for lv in levels] == ["F16", *QUANT_PRESETS]
    expected = fit.hub_level_fits(details, config=config, available=available, **options)
    assert levels == expected and all(lv.exact for lv in levels)  # the config was read from the Hub
    by_level = {lv.level: lv for lv in levels}
    assert by_level["Q4_K_M"].verdict == "tight"
    assert by_level["F16"].verdict == "will not fit"
    for level in ("Q8_0", "Q4_K_M"):
        ps = fit.preset_size(shape, level)
        est = fit.estimate_memory_from_shape(
            shape, weights_bytes=ps.weights_bytes, act_encoding=ps.act_encoding, **options
        )
        assert by_level[level].fit == fit.check_fit(est, available=available)
    # the table says it in words (and colour)
    verdicts = _column(page.levels_table, 3)
    assert verdicts == [VERDICTS[lv.verdict][0] for lv in levels]
    assert _column(page.levels_table, 2) == [format_bytes(lv.total_bytes) for lv in levels]
    assert page.download_button.isEnabled() and "Download the model" in page.download_button.text()

    page.set_context_length(8 * n_ctx)  # a longer context needs more memory
    longer = {lv.level: lv.total_bytes for lv in page.level_fits()}
    assert all(longer[k] > by_level[k].total_bytes for k in longer)
    assert page.level_fits() == fit.hub_level_fits(
        details, config=config, available=available, **{**options, "n_ctx": 8 * n_ctx}
    )


def test_show_results_and_details_without_a_network(qtbot, page: ModelsPage) -> None:
    files = (
        HubFile("m-Q4_K_M.gguf", 4_900_000_000, kind="gguf", quant_type="Q4_K_M"),
        HubFile("m-Q8_0.gguf", 8_500_000_000, kind="gguf", quant_type="Q8_0"),
    )
    model = HubModel("org/m-GGUF", architecture="llama", supported=True, n_params=8_030_000_000, is_gguf=True)
    page.show_results([model])
    assert page.results_table.rowCount() == 1 and page.tabs.currentIndex() == 1
    page.show_details(HubModel(**{**model.__dict__, "files": files}))
    assert [lv.level for lv in page.level_fits()] == ["Q4_K_M", "Q8_0"]
    assert all(not lv.exact for lv in page.level_fits())
    assert all(t.startswith("≈ ") for t in _column(page.levels_table, 2))
    page.choose_levels(["Q8_0"])
    assert page._chosen_files() == ["m-Q8_0.gguf"] and page.download_button.isEnabled()
    hint = page.minimumSizeHint()
    assert hint.width() <= 1100 and hint.height() <= 720


# -- the queue ----------------------------------------------------------------------------------


def test_pause_then_resume_completes_with_the_right_bytes(
    qtbot, page: ModelsPage, ctx: AppContext, fake_hub: FakeHub, gate: threading.Event
) -> None:
    item = page.download("org/tiny-GGUF", ["tiny-F32.gguf"])
    qtbot.waitUntil(lambda: item.state == item.RUNNING, timeout=TIMEOUT)
    page.pause_download(item)
    assert page._rows[item].status.text() == "Pausing…"
    gate.set()
    qtbot.waitUntil(lambda: item.state == item.PAUSED, timeout=TIMEOUT)
    row = page._rows[item]
    assert row.resume.isVisibleTo(row) and not row.pause.isVisibleTo(row)
    (partial,) = _partials(ctx, "org/tiny-GGUF")
    total = len(_served(fake_hub))
    kept = partial.stat().st_size
    assert 0 < kept < total
    assert ctx.library.is_empty()

    page.resume_download(item)
    with qtbot.waitSignal(item.completed, timeout=TIMEOUT) as done:
        pass
    (entry,) = done.args[0]
    data = ctx.library.path_of(entry).read_bytes()
    assert hashlib.sha256(data).digest() == hashlib.sha256(_served(fake_hub)).digest()
    ranges = [
        r["range"] for r in fake_hub.requests if r["method"] == "GET" and r["path"].endswith("F32.gguf")
    ]
    assert ranges[-1] == f"bytes={kept}-"  # it continued from the partial file
    assert _partials(ctx, "org/tiny-GGUF") == []
    qtbot.waitUntil(lambda: page.library_table.rowCount() == 1)


def test_cancel_removes_partial_files(
    qtbot, page: ModelsPage, ctx: AppContext, fake_hub: FakeHub, gate: threading.Event
) -> None:
    first = page.download("org/tiny-GGUF", ["tiny-F32.gguf"])
    second = page.download("org/tiny", None)  # waits for the first: one download at a time
    assert page.download("org/tiny", None) is second  # the same request is not queued twice
    qtbot.waitUntil(lambda: first.state == first.RUNNING, timeout=TIMEOUT)
    assert page._rows[second].status.text() == "Queued"
    page.pause_download(second)  # still waiting: it never starts
    with qtbot.waitSignal(first.removed, timeout=TIMEOUT):
        page.cancel_download(first)
        gate.set()
    assert first not in page.downloads()
    assert not ctx.library.download_dir("org/tiny-GGUF").exists()  # partial files and folder gone

    qtbot.waitUntil(lambda: second.state == second.PAUSED, timeout=TIMEOUT)
    assert page._rows[second].status.text() == "Paused"
    with qtbot.waitSignal(second.removed, timeout=TIMEOUT):
        page.cancel_download(second)  # a paused download is cancelled at once
    assert page.downloads() == [] and not page.queue_box.isVisible()
    assert not list(Path(ctx.library.root).rglob("*.incomplete"))
    assert ctx.library.is_empty()


# -- errors ---------------------------------------------------------------------------------------


def test_unreachable_hub_shows_a_message(
    qtbot, page: ModelsPage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    use_fake_hub(f"http://127.0.0.1:{port}", tmp_path / "hf-home", monkeypatch)
    with qtbot.waitSignal(page.search_failed, timeout=TIMEOUT) as failed:
        page.search("anything")
    assert "cannot be reached" in failed.args[0] and "library still work" in failed.args[0]
    assert page.message() == failed.args[0] and page.hub_message.isVisible()
    assert "Traceback" not in page.message() and not page.search_busy.isVisible()
    handle = page.open_details("org/anything")
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    assert "cannot be reached" in page.details_info.text()


# -- library --------------------------------------------------------------------------------------


def test_import_missing_evaluations_and_remove(
    qtbot, page: ModelsPage, ctx: AppContext, tiny: SimpleNamespace, tmp_path: Path
) -> None:
    from lowbit.core.quantize import quantize_model

    outside = tmp_path / "elsewhere" / "mine.Q8_0.gguf"
    outside.parent.mkdir()
    quantize_model(tiny.f32, outside, preset="Q8_0")  # a Lowbit file: it carries provenance
    errors: list[str] = []
    ctx.error.connect(errors.append)

    handle = page.import_path(outside)
    with qtbot.waitSignal(handle.done, timeout=TIMEOUT) as added:
        pass
    entry = added.args[0]
    qtbot.waitUntil(lambda: page.library_table.rowCount() == 1)
    assert page.selected_entry() is not None and page.selected_entry().id == entry.id
    assert not entry.managed and _column(page.library_table, 2) == ["Q8_0"]
    text = page.entry_details.toPlainText()
    assert str(outside) in text and "preset" in text and "Not evaluated yet" in text

    ctx.library.record_evaluation(entry.id, {"kld_mean": 0.0012, "same_top_pct": 99.1})
    ctx.library_changed.emit()
    assert _column(page.library_table, 5) == ["KLD 0.0012"]
    assert "mean KLD 0.00120" in page.entry_details.toPlainText()

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    handle = page.import_path(bad)
    with qtbot.waitSignal(handle.failed, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: bool(errors))
    assert "Traceback" not in errors[-1] and page.library_table.rowCount() == 1

    outside.unlink()
    page.refresh_library()
    assert _column(page.library_table, 4) == ["Missing"]
    page.select_entry(entry.id)
    assert not page.open_button.isEnabled() and page.remove_button.isEnabled()

    handle = page.remove_entry(entry.id, confirm=False)
    assert handle is not None
    with qtbot.waitSignal(handle.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: page.library_table.rowCount() == 0)
    assert ctx.library.is_empty() and page.library_empty.isVisible()
