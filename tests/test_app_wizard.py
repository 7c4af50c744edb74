"""The quantize wizard and page, offscreen: a whole run on a tiny model, cancelling, bad sources,
a Hub source, and the quality/size chart's Pareto front."""

from __future__ import annotations

import itertools
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QWizard

from lowbit.app.bridge import WorkerBridge
from lowbit.app.charts import QualitySizeChart, pareto_front
from lowbit.app.quantize_wizard import (
    CALIBRATION_PAGE,
    LEVELS_PAGE,
    REPORT_PAGE,
    RUN_PAGE,
    SOURCE_PAGE,
    QuantizePage,
    QuantizeWizard,
)
from lowbit.app.settings import AppContext, AppSettings
from lowbit.core import plan
from lowbit.core.convert import gguf_to_hf
from lowbit.core.evaluate import EvalSettings
from lowbit.core.library import Library
from lowbit.core.quantize import QUANT_PRESETS

from .tiny_models import make_tiny_model

MIB = 2**20
TIMEOUT = 120_000
# Short chunks: the tiny model's run then takes seconds (its context is 2048).
EVAL = EvalSettings(n_ctx=64, n_chunks=2, spread=True)


@pytest.fixture
def ctx(qtbot, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LOWBIT_LIBRARY", str(tmp_path / "lib"))
    settings = AppSettings(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    settings.library_dir = tmp_path / "lib"
    settings.threads = 1
    settings.n_ctx = 1024
    bridge = WorkerBridge()
    context = AppContext(settings, bridge)
    yield context
    assert bridge.shutdown(timeout=30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("src") / "tiny.gguf", tied=False).path


def _wizard(qtbot, ctx: AppContext, tmp_path: Path, source: str | None) -> QuantizeWizard:
    wiz = QuantizeWizard(ctx, source=source)
    wiz.eval_settings = EVAL
    wiz.eval_cache_dir = tmp_path / "cache"
    wiz.speed_tokens = 8
    wiz.available_bytes = 4 << 30  # the same recommendation on every machine
    qtbot.addWidget(wiz)
    wiz.show()
    return wiz


def _to_levels(qtbot, wiz: QuantizeWizard) -> None:
    wiz.next()
    assert wiz.currentId() == LEVELS_PAGE
    qtbot.waitUntil(lambda: wiz.levels_page.table.rowCount() == len(QUANT_PRESETS), timeout=TIMEOUT)


def _outputs(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".gguf", ".incomplete")))


def test_whole_run_on_a_tiny_model(qtbot, ctx: AppContext, tiny: Path, tmp_path: Path) -> None:
    entry = ctx.library.import_path(tiny)
    wiz = _wizard(qtbot, ctx, tmp_path, str(tiny))
    assert wiz.source_page.from_library.isChecked()  # preselected from the library
    assert wiz.size().width() >= 900 and wiz.size().height() >= 640

    _to_levels(qtbot, wiz)
    page = wiz.levels_page
    assert wiz.source == ctx.library.path_of(entry)
    # the memory column is the core's computation at the chosen context
    assert page.context_spin.value() == 1024
    for row, lv in enumerate(wiz.levels):
        got = page.table.item(row, 3).data(Qt.ItemDataRole.UserRole)
        want = plan.memory_needed(lv, n_ctx=1024, cache_type="f16", n_threads=1) / MIB
        assert got == pytest.approx(want)
        assert page.table.item(row, 2).data(Qt.ItemDataRole.UserRole) == pytest.approx(lv.data_bytes / MIB)
    # the recommended level is marked and pre-checked: here every level fits, so the best estimate
    best = min(wiz.levels, key=lambda lv: (lv.kld_estimate, lv.data_bytes)).preset
    assert page.recommended_preset == best and page.checked_presets() == [best]
    assert "recommended" in page.table.item([lv.preset for lv in wiz.levels].index(best), 0).text()
    page.context_spin.setValue(2048)
    row = [lv.preset for lv in wiz.levels].index("Q8_0")
    want = plan.memory_needed(wiz.levels[row], n_ctx=2048, cache_type="f16", n_threads=1) / MIB
    assert page.table.item(row, 3).data(Qt.ItemDataRole.UserRole) == pytest.approx(want)
    page.set_checked([])
    assert not wiz.button(QWizard.WizardButton.NextButton).isEnabled()
    page.set_checked(["Q4_0", "Q8_0"])
    assert wiz.button(QWizard.WizardButton.NextButton).isEnabled()

    wiz.next()
    assert wiz.currentId() == CALIBRATION_PAGE
    wiz.next()
    assert wiz.currentId() == RUN_PAGE
    assert not wiz.button(QWizard.WizardButton.NextButton).isEnabled()
    qtbot.waitUntil(wiz.run_page.isComplete, timeout=TIMEOUT)
    assert wiz.button(QWizard.WizardButton.NextButton).isEnabled()
    root = ctx.library.root
    assert _outputs(root) == ["tiny-llama.Q4_0.gguf", "tiny-llama.Q8_0.gguf"]

    wiz.next()
    assert wiz.currentId() == REPORT_PAGE
    outcome = wiz.outcome
    assert outcome is not None
    table = wiz.report_page.table
    assert table.rowCount() == 2
    for row, (o, cand) in enumerate(zip(outcome.outputs, outcome.report.candidates, strict=True)):
        size = (root / f"tiny-llama.{o.label}.gguf").stat().st_size
        values = [table.item(row, c).data(Qt.ItemDataRole.UserRole) for c in range(1, 6)]
        assert table.item(row, 0).text() == o.label
        assert values[0] == pytest.approx(size / MIB)
        assert values[1] == cand.kld_mean and f"± {cand.kld_stderr:.2g}" in table.item(row, 2).text()
        assert values[2] == cand.same_top_pct
        assert values[3] == pytest.approx(100 * (cand.ppl_ratio - 1))
        assert values[4] == o.decode_tps > 0
    chart = wiz.report_page.chart
    assert chart.points == [(o.label, o.file_bytes / MIB, o.result.kld_mean) for o in outcome.outputs]
    assert chart.pareto_labels == pareto_front(chart.points)
    assert chart.pareto_labels  # at least the smallest file is on the front

    with qtbot.waitSignal(ctx.library_changed, timeout=TIMEOUT):
        wiz.next()
    qtbot.waitUntil(wiz.finish_page.isComplete, timeout=TIMEOUT)
    best_out = wiz.best_output()
    assert best_out is not None and best_out.result.kld_mean == min(
        c.kld_mean for c in outcome.report.candidates
    )
    with qtbot.waitSignal(ctx.open_in_chat, timeout=5000) as opened:
        wiz.accept()
    assert opened.args == [str(best_out.path)]

    lib = Library(ctx.library.root)  # what is on disk, read afresh
    made = {Path(lib.path_of(e)).name: e for e in lib.entries() if e.id != entry.id}
    assert sorted(made) == ["tiny-llama.Q4_0.gguf", "tiny-llama.Q8_0.gguf"]
    for o in outcome.outputs:
        e = made[o.path.name]
        assert e.managed and e.quant_type == o.label
        (record,) = e.evaluations
        assert record["kld_mean"] == o.result.kld_mean and record["same_top_pct"] == o.result.same_top_pct
        assert record["reference"] == outcome.report.reference and record["decode_tps"] == o.decode_tps

    # the levels and the report alone, as screenshots open them: no job needed
    again = _wizard(qtbot, ctx, tmp_path, None)
    again.show_levels_for(tiny, wiz.shape, wiz.levels)
    assert again.currentId() == LEVELS_PAGE and again.levels_page.table.rowCount() == len(QUANT_PRESETS)
    assert again.levels_page.checked_presets() == [best]
    again.show_report_for(outcome)
    assert again.currentId() == REPORT_PAGE and again.report_page.table.rowCount() == 2


def test_cancel_during_the_run_keeps_nothing(
    qtbot, ctx: AppContext, tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    real = plan.measure_speed

    def endless(path: Path, *, n_threads: int | None, n_tokens: int, cancel=None) -> float:
        while True:  # until cancelled: both outputs exist by now
            cancel.raise_if_cancelled()
            time.sleep(0.01)

    monkeypatch.setattr(plan, "measure_speed", endless)
    wiz = _wizard(qtbot, ctx, tmp_path, str(tiny))
    assert wiz.source_page.from_disk.isChecked()
    _to_levels(qtbot, wiz)
    wiz.levels_page.set_checked(["Q4_0", "Q8_0"])
    wiz.next()
    wiz.next()
    run = wiz.run_page
    qtbot.waitUntil(lambda: run.last_stage == "speed", timeout=TIMEOUT)
    root = ctx.library.root
    assert len(_outputs(root)) == 2
    qtbot.mouseClick(run.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not run.again_button.isHidden(), timeout=TIMEOUT)
    assert "Cancelled" in run.stage.text() and not run.message.isVisible()
    assert _outputs(root) == [] and not run.isComplete()
    assert not wiz.button(QWizard.WizardButton.NextButton).isEnabled()

    # still usable: back, forward, and this time it completes
    monkeypatch.setattr(plan, "measure_speed", real)
    wiz.back()
    assert wiz.currentId() == CALIBRATION_PAGE
    wiz.next()
    qtbot.waitUntil(run.isComplete, timeout=TIMEOUT)
    assert _outputs(root) == ["tiny-llama.Q4_0.gguf", "tiny-llama.Q8_0.gguf"]
    # leaving the wizard without finishing deletes what was not added
    wiz.reject()
    assert _outputs(root) == []


def test_cancel_while_quantizing_and_back_leave_no_file(
    qtbot, ctx: AppContext, tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    wiz = _wizard(qtbot, ctx, tmp_path, str(tiny))
    _to_levels(qtbot, wiz)
    wiz.levels_page.set_checked(["Q8_0"])
    wiz.next()
    wiz.next()
    qtbot.waitUntil(lambda: wiz.run_page.last_stage != "", timeout=TIMEOUT)
    wiz.back()  # cancels the run at once, or discards its outputs if it had just finished
    assert wiz.currentId() == CALIBRATION_PAGE
    qtbot.waitUntil(lambda: not ctx.bridge.running(), timeout=TIMEOUT)
    assert _outputs(ctx.library.root) == []


def test_bad_sources_show_a_message(qtbot, ctx: AppContext, tiny: Path, tmp_path: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(tiny.read_bytes()[:5000])
    wiz = _wizard(qtbot, ctx, tmp_path, str(bad))
    wiz.next()
    page = wiz.levels_page
    qtbot.waitUntil(lambda: page.message.isVisibleTo(wiz), timeout=TIMEOUT)
    assert "truncated.gguf cannot be quantized" in page.message.text()
    assert not page.isComplete() and page.table.rowCount() == 0
    wiz.back()
    assert wiz.currentId() == SOURCE_PAGE

    # an already quantized model: the core's explanation reaches the page
    q8 = make_tiny_model(tmp_path / "q8.gguf", weight_type=QT.Q8_0).path
    wiz.source_page.path_edit.setText(str(q8))
    wiz.next()
    qtbot.waitUntil(lambda: page.message.isVisibleTo(wiz), timeout=TIMEOUT)
    assert "already quantized" in page.message.text()
    wiz.back()

    # a path that does not exist never leaves the first page
    wiz.source_page.path_edit.setText(str(tmp_path / "nothing.gguf"))
    wiz.next()
    assert wiz.currentId() == SOURCE_PAGE
    assert "does not exist" in wiz.source_page.message.text()


def test_hub_source_downloads_then_continues(
    qtbot, ctx: AppContext, tiny: Path, tmp_path: Path, monkeypatch
) -> None:
    hf = gguf_to_hf(tiny, tmp_path / "hf", dtype="f32")

    def fake_download(self: Library, repo_id: str, *, progress=None, cancel=None, **kw):
        dest = self.download_dir(repo_id)
        for i, f in enumerate(sorted(Path(hf).iterdir())):
            cancel.raise_if_cancelled()
            progress("download", i, 4, f.name)
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest / f.name)
        return [self.import_path(dest, source={"repo_id": repo_id})]

    monkeypatch.setattr(Library, "download", fake_download)
    wiz = _wizard(qtbot, ctx, tmp_path, None)
    src = wiz.source_page
    src.from_hub.setChecked(True)
    src.repo_edit.setText("not a repo")
    assert not src.isComplete()
    src.repo_edit.setText("tiny-org/tiny")
    with qtbot.waitSignal(ctx.library_changed, timeout=TIMEOUT):
        wiz.next()
        assert wiz.currentId() == SOURCE_PAGE and not src.isComplete()  # downloading
    qtbot.waitUntil(lambda: wiz.currentId() == LEVELS_PAGE, timeout=TIMEOUT)
    assert wiz.source is not None
    assert wiz.source.resolve() == ctx.library.download_dir("tiny-org/tiny").resolve()
    assert src.from_library.isChecked()
    qtbot.waitUntil(lambda: wiz.levels_page.table.rowCount() == len(QUANT_PRESETS), timeout=TIMEOUT)
    wiz.reject()


def test_quantize_page_opens_the_wizard_and_lists_outputs(qtbot, ctx: AppContext, tiny: Path) -> None:
    page = QuantizePage(ctx)
    qtbot.addWidget(page)
    page.resize(1100, 720)
    page.show()
    ctx.quantize_source.emit(str(tiny))
    wiz = page.wizard
    assert wiz is not None and wiz.isVisible()
    assert wiz.source_page.path_edit.text() == str(tiny)
    assert page.open_wizard() is wiz  # one at a time
    wiz.reject()

    fake = _fake_outcome(tiny)
    page.add_outputs(fake)
    assert page.outputs.count() == 1 and "tiny.Q4_0.gguf" in page.outputs.item(0).text()
    page.outputs.setCurrentRow(0)
    assert page.open_button.isEnabled()
    with qtbot.waitSignal(ctx.open_in_chat) as opened:
        qtbot.mouseClick(page.open_button, Qt.MouseButton.LeftButton)
    assert opened.args == [str(fake[0].path)]


def _fake_outcome(path: Path) -> list[plan.LevelOutcome]:
    from lowbit.core.evaluate import CandidateResult
    from lowbit.core.quantize import QuantizeResult

    q = QuantizeResult(path.with_name("tiny.Q4_0.gguf"), "Q4_0", "rtn", 3 * MIB, 4.5, {}, 1.0)
    values = dict.fromkeys(CandidateResult.__dataclass_fields__, 0.0)
    values.update(file=str(q.path), size_bytes=q.file_bytes, n_tokens=10, kld_mean=0.01)
    return [plan.LevelOutcome("Q4_0", q.path, q.file_bytes, q, CandidateResult(**values), 12.0)]


# -- the chart ----------------------------------------------------------------------------------


def _brute_front(points: list[tuple[str, float, float]]) -> list[str]:
    def dominated(p, q) -> bool:  # q dominates p
        return q[1] <= p[1] and q[2] <= p[2] and (q[1] < p[1] or q[2] < p[2])

    valid = [p for p in points if not (math.isnan(p[1]) or math.isnan(p[2]))]
    front = [p for p in valid if not any(dominated(p, q) for q in valid)]
    return [p[0] for p in sorted(front, key=lambda p: (p[1], p[2]))]


@pytest.mark.parametrize("seed", range(40))
def test_pareto_front_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 12))
    # few distinct values, so that ties in size, in KLD and in both are common
    sizes = rng.choice([10.0, 20.0, 30.0, 40.0, math.nan], size=n, p=[0.3, 0.25, 0.2, 0.2, 0.05])
    klds = rng.choice([0.001, 0.01, 0.1, 1.0, math.inf], size=n)
    points = [(f"p{i}", float(s), float(k)) for i, (s, k) in enumerate(zip(sizes, klds, strict=True))]
    got = pareto_front(points)
    want = _brute_front(points)
    assert sorted(got) == sorted(want)
    # smallest file first
    by = {p[0]: p for p in points}
    assert [by[label][1] for label in got] == sorted(by[label][1] for label in got)


def test_pareto_front_small_cases() -> None:
    assert pareto_front([]) == []
    pts = [("Q2_K", 60.0, 0.5), ("Q4_0", 80.0, 0.1), ("Q4_1", 90.0, 0.12), ("Q8_0", 140.0, 0.002)]
    assert pareto_front(pts) == ["Q2_K", "Q4_0", "Q8_0"]  # Q4_1: bigger and worse than Q4_0
    same = [("a", 1.0, 1.0), ("b", 1.0, 1.0)]
    assert pareto_front(same) == ["a", "b"]  # equal points do not dominate each other


def test_chart_shows_points_and_front(qtbot) -> None:
    for dark in (False, True):
        chart = QualitySizeChart(dark=dark)
        qtbot.addWidget(chart)
        pts = [("Q2_K", 60.0, 0.5), ("Q4_0", 80.0, 0.1), ("Q4_1", 90.0, 0.12), ("Q8_0", 140.0, 0.0)]
        chart.set_points(pts)
        assert chart.points == pts and chart.pareto_labels == ["Q2_K", "Q4_0", "Q8_0"]
        # one labelled point each; the front drawn as one line through its points
        items = chart.plot.getPlotItem().listDataItems()
        xs = sorted(itertools.chain.from_iterable(item.getData()[0] for item in items))
        assert xs == [60.0, 80.0, 90.0, 140.0]
        chart.set_points([])
        assert chart.pareto_labels == [] and not chart.plot.getPlotItem().listDataItems()


def test_gptq_is_explained_when_torch_is_missing(qtbot, ctx: AppContext, tmp_path: Path, monkeypatch) -> None:
    import lowbit.app.quantize_wizard as qw

    monkeypatch.setattr(qw, "torch_available", lambda: False)
    page = _wizard(qtbot, ctx, tmp_path, None).calibration_page
    combo = page.method_combo
    assert not combo.model().item(combo.findData("gptq")).isEnabled()
    assert combo.model().item(combo.findData("imatrix")).isEnabled()
    assert "PyTorch" in page.gptq_note.text() and not page.gptq_note.isHidden()
    # round to nearest needs no text; a method that calibrates does
    assert not page.text_edit.isEnabled()
    page.set_method("imatrix")
    assert page.text_edit.isEnabled()
    page.own_text.setChecked(True)
    assert not page.isComplete()
    page.text_edit.setText(str(tmp_path / "missing.txt"))
    assert page.isComplete() and not page.validatePage()
    assert "is not a file" in page.message.text()
