"""The quick preview: quantize to several presets, measure each, leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.core import evaluate as ev
from lowbit.core.convert import gguf_to_hf
from lowbit.core.engine import CancelToken
from lowbit.core.errors import CancelledError
from lowbit.core.preview import preview
from lowbit.core.quantize import quantize_model
from lowbit.core.worker import Worker

from .test_evaluate import SMALL, TEXT
from .tiny_models import make_tiny_model


@pytest.fixture
def setup(tmp_path: Path):
    ref = make_tiny_model(tmp_path / "ref.gguf", tied=False).path
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    return ref, text, tmp_path / "cache"


def test_preview_measures_each_preset_like_evaluate_does(setup, tmp_path: Path) -> None:
    ref, text, cache = setup
    res = preview(ref, ["Q4_0", "Q8_0"], settings=SMALL, text_file=text, cache_dir=cache, n_threads=1)
    assert res.presets == ["Q4_0", "Q8_0"] and res.files == {}
    q4, q8 = res.report.candidates
    assert q8.kld_mean < q4.kld_mean
    # the same numbers as quantizing and evaluating by hand
    mine = [quantize_model(ref, tmp_path / f"{p}.gguf", preset=p).path for p in res.presets]
    want = ev.evaluate(ref, mine, text_file=text, settings=SMALL, cache_dir=cache, n_threads=1)
    for a, b in zip(res.report.candidates, want.candidates, strict=True):
        assert a.kld_mean == pytest.approx(b.kld_mean, rel=1e-9, abs=1e-12)
        assert a.size_bytes == b.size_bytes
    assert [p.name for p in cache.iterdir() if p.name.startswith(".preview")] == []


def test_preview_from_a_hugging_face_folder_keeps_files_when_asked(setup, tmp_path: Path) -> None:
    ref, text, cache = setup
    hf = gguf_to_hf(ref, tmp_path / "hf", dtype="f32")
    res = preview(hf, ["Q8_0"], settings=SMALL, text_file=text, cache_dir=cache, keep_dir=tmp_path / "kept")
    assert res.files["Q8_0"].exists() and res.files["Q8_0"].parent == tmp_path / "kept"
    # the reference was the folder's own weights: Q8_0 of them is close
    assert res.report.candidates[0].kld_mean < 0.01
    assert res.report.reference == str(hf)  # the evaluator converted the folder for the run
    assert [p.name for p in cache.iterdir() if p.name.startswith(".preview")] == []


def test_cancelled_preview_leaves_nothing(setup) -> None:
    ref, text, cache = setup
    cancel = CancelToken()

    def progress(stage: str, done: float, total: float | None, message: str) -> None:
        if stage == "quantize" and done == 1:
            cancel.cancel()

    with pytest.raises(CancelledError):
        preview(
            ref,
            ["Q4_0", "Q8_0"],
            settings=SMALL,
            text_file=text,
            cache_dir=cache,
            progress=progress,
            cancel=cancel,
        )
    assert [p.name for p in cache.iterdir() if p.name.startswith(".preview")] == []


def test_worker_preview(setup) -> None:
    ref, text, cache = setup
    worker = Worker()
    try:
        job = worker.preview(ref, ["Q4_K_M"], settings=SMALL, text_file=text, cache_dir=cache, n_threads=1)
        assert job.result(60).report.candidates[0].kld_mean > 0
    finally:
        worker.shutdown()
