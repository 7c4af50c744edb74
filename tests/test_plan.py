"""The wizard's numbers without Qt: per-level memory and speed against the finished files,
the recommendation against brute force, and the run's progress, outputs and clean-up."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lowbit.core import plan
from lowbit.core.bench import decode_bytes_per_token
from lowbit.core.engine import CancelToken
from lowbit.core.errors import CancelledError
from lowbit.core.evaluate import EvalSettings
from lowbit.core.fit import FITS_BELOW, estimate_memory
from lowbit.core.gguf_file import open_gguf
from lowbit.core.quantize import QUANT_PRESETS, quantize_model

from .tiny_models import make_tiny_model

EVAL = EvalSettings(n_ctx=64, n_chunks=2, spread=True)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def source(request, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plan")
    return make_tiny_model(d / "tiny.gguf", tied=request.param).path


def test_levels_match_the_finished_files(source: Path, tmp_path: Path) -> None:
    shape, levels = plan.describe_levels(source, ["Q2_K", "Q4_K_M", "Q8_0"], n_threads=1)
    assert [lv.preset for lv in levels] == ["Q2_K", "Q4_K_M", "Q8_0"]
    assert shape.name == "tiny-llama" and shape.n_ctx_train == 2048
    assert shape.n_params == open_gguf(source).n_params()
    for lv in levels:
        out = quantize_model(source, tmp_path / f"{lv.preset}.gguf", preset=lv.preset, n_threads=1)
        gf = open_gguf(out.path)
        assert lv.data_bytes == sum(t.nbytes for t in gf.tensors.values())
        assert lv.decode_bytes == decode_bytes_per_token(gf)
        assert math.isfinite(lv.kld_estimate) and lv.kld_estimate > 0
        for n_ctx, cache, threads in ((512, "f16", 2), (2048, "q8_0", 1), (100, "f16", 3)):
            want = estimate_memory(gf, n_ctx=n_ctx, cache_type=cache, n_threads=threads).total_bytes
            got = plan.memory_needed(lv, n_ctx=n_ctx, cache_type=cache, n_threads=threads)
            assert got == want, (lv.preset, n_ctx, cache)
    # fewer bits: smaller, and a larger estimated loss
    assert levels[0].data_bytes < levels[1].data_bytes < levels[2].data_bytes
    assert levels[0].kld_estimate > levels[2].kld_estimate


def test_decode_speed_is_bandwidth_over_bytes(source: Path) -> None:
    _, (lv,) = plan.describe_levels(source, ["Q4_0"], n_threads=1)
    assert plan.decode_speed(lv, 12.5) == pytest.approx(12.5e9 / lv.decode_bytes)
    assert plan.decode_speed(lv, 0.0) == 0.0


def _brute_recommend(levels: list[plan.Level], memory: dict[str, int], available: int) -> str | None:
    best = None
    for lv in levels:
        if memory[lv.preset] > FITS_BELOW * available:
            continue
        key = (lv.kld_estimate if math.isfinite(lv.kld_estimate) else math.inf, lv.data_bytes)
        if best is None or key < best[0]:
            best = (key, lv.preset)
    return None if best is None else best[1]


@pytest.mark.parametrize("seed", range(20))
def test_recommend_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    levels = [
        plan.Level(
            preset=QUANT_PRESETS[i],
            data_bytes=int(rng.integers(1, 6)) * 1000,  # ties on purpose
            bpw=4.0,
            kld_estimate=float(rng.choice([0.01, 0.02, 0.05, math.nan])),
            decode_bytes=1,
        )
        for i in range(n)
    ]
    memory = {lv.preset: int(rng.integers(1000, 10000)) for lv in levels}
    available = int(rng.integers(1000, 12000))
    assert plan.recommend(levels, memory, available) == _brute_recommend(levels, memory, available)


def test_recommend_none_when_nothing_fits() -> None:
    lv = plan.Level("Q4_0", 100, 4.5, 0.1, 100)
    assert plan.recommend([lv], {"Q4_0": 900}, 1000) is None  # 90 % > FITS_BELOW
    assert plan.recommend([lv], {"Q4_0": 800}, 1000) == "Q4_0"


def test_output_paths_never_collide(tmp_path: Path) -> None:
    assert plan.safe_stem("Org/My model: v2") == "Org-My-model-v2"
    assert plan.safe_stem("///") == "model"
    first = plan.output_path(tmp_path, "tiny", "Q4_0")
    assert first == tmp_path / "tiny.Q4_0.gguf"
    first.write_bytes(b"x")
    second = plan.output_path(tmp_path, "tiny", "Q4_0")
    assert second == tmp_path / "tiny.Q4_0-2.gguf"
    assert plan.output_path(tmp_path, "tiny", "Q4_0", {second}) == tmp_path / "tiny.Q4_0-3.gguf"
    (tmp_path / ".tiny.Q8_0.gguf.123.incomplete").write_bytes(b"")  # another run is writing it
    assert plan.output_path(tmp_path, "tiny", "Q8_0") == tmp_path / "tiny.Q8_0-2.gguf"


def _request(src: Path, out: Path, cache: Path, **kw) -> plan.RunRequest:
    return plan.RunRequest(
        src=src,
        out_dir=out,
        model_name="tiny",
        presets=("Q4_0", "Q8_0"),
        eval_settings=EVAL,
        eval_cache_dir=cache,
        n_threads=1,
        speed_tokens=4,
        **kw,
    )


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("src") / "tiny.gguf", tied=False).path


def test_run_makes_measures_and_reports_progress(untied: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, float, float | None]] = []
    req = _request(untied, tmp_path / "lib", tmp_path / "cache")
    outcome = plan.run_levels(req, progress=lambda s, d, t, m: seen.append((s, d, t)))
    assert [o.label for o in outcome.outputs] == ["Q4_0", "Q8_0"]
    for o, cand in zip(outcome.outputs, outcome.report.candidates, strict=True):
        assert o.path == tmp_path / "lib" / f"tiny.{o.label}.gguf"
        assert o.file_bytes == o.path.stat().st_size == cand.size_bytes
        assert o.result is cand and o.decode_tps > 0
        record = o.evaluation_record(outcome.report)
        assert record["kld_mean"] == cand.kld_mean and record["reference"] == str(untied)
        assert record["decode_tps"] == o.decode_tps
    assert outcome.outputs[1].result.kld_mean < outcome.outputs[0].result.kld_mean
    # one overall count: never backwards, same total, ends complete
    dones = [d for _, d, _ in seen]
    assert dones == sorted(dones) and {t for _, _, t in seen} == {seen[-1][2]}
    assert seen[-1][1] == seen[-1][2]
    assert [s for s, _, _ in seen][-1] == "speed"
    assert {s for s, _, _ in seen} == {"quantize", "evaluate", "speed"}


def test_run_with_a_budget_adds_a_labelled_output(untied: Path, tmp_path: Path) -> None:
    _, levels = plan.describe_levels(untied, ["Q4_0", "Q8_0"], n_threads=1)
    mib = math.ceil((levels[0].data_bytes + levels[1].data_bytes) / 2 / 2**20 * 10) / 10
    budget = max(1, round(mib))
    req = plan.RunRequest(
        src=untied,
        out_dir=tmp_path / "lib",
        model_name="tiny",
        presets=("Q4_0",),
        budget_mib=budget,
        budget_preset="Q4_0",
        eval_settings=EVAL,
        eval_cache_dir=tmp_path / "cache",
        n_threads=1,
        speed_tokens=4,
    )
    outcome = plan.run_levels(req)
    assert [o.label for o in outcome.outputs] == ["Q4_0", f"{budget}MiB"]
    mixed = outcome.outputs[1]
    assert mixed.quantized.method == "rtn" and mixed.path.name == f"tiny.{budget}MiB.gguf"
    data = sum(t.nbytes for t in open_gguf(mixed.path).tensors.values())
    assert data <= budget * 2**20


@pytest.mark.parametrize("stage", ["quantize", "evaluate", "speed"])
def test_cancelled_run_leaves_no_file(untied: Path, tmp_path: Path, stage: str) -> None:
    cancel = CancelToken()
    out = tmp_path / "lib"

    def progress(s: str, done: float, total: float | None, message: str) -> None:
        # in the quantize stage: once the first output is complete and the second has begun
        if s == stage and (s != "quantize" or done > 10):
            cancel.cancel()

    with pytest.raises(CancelledError):
        plan.run_levels(_request(untied, out, tmp_path / "cache"), progress=progress, cancel=cancel)
    assert sorted(p.name for p in out.iterdir()) == []


def test_failed_run_leaves_no_file(untied: Path, tmp_path: Path, monkeypatch) -> None:
    def broken(*a, **kw):
        raise OSError("no speed today")

    monkeypatch.setattr(plan, "measure_speed", broken)
    out = tmp_path / "lib"
    with pytest.raises(OSError, match="no speed"):
        plan.run_levels(_request(untied, out, tmp_path / "cache"))
    assert list(out.iterdir()) == []


def test_plan_does_not_import_qt() -> None:
    code = "import sys, lowbit.core.plan; sys.exit(any(m.startswith('PySide6') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
