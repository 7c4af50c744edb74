"""The instant quality estimate: its weight noise against gguf-py, its fit, and its ranking on SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.cli import main as cli_main
from lowbit.core.convert import open_source
from lowbit.core.errors import CancelledError, QuantizeError
from lowbit.core.estimate import estimate, estimate_presets, fit_noise_model, kld_from_noise
from lowbit.core.quantize import QUANT_PRESETS, is_matrix, plan_preset
from lowbit.core.worker import Worker

from . import quant_ref
from .tiny_models import make_tiny_model


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "tiny.gguf", tied=False, n_layer=2)


def _nsr_reference(w: np.ndarray, qtype: QT) -> float:
    # the numpy mirror of the encoders, decoded by gguf-py
    d = gguf.quants.dequantize(quant_ref.quantize(int(qtype), w), qtype)
    return float(np.square(d - w, dtype=np.float64).sum() / np.square(w, dtype=np.float64).sum())


def test_noise_is_the_sum_of_relative_errors(tiny) -> None:
    src = open_source(tiny.path)
    for est in estimate_presets(src, QUANT_PRESETS, n_sample=10**6):
        types = {n: q for n, q in plan_preset(src, est.preset).types.items() if is_matrix(src.tensors[n])}
        want = sum(_nsr_reference(tiny.weights[n], q) for n, q in types.items())
        assert est.noise == pytest.approx(want, rel=1e-6), est.preset


def test_estimates_follow_bits_and_say_they_are_estimates(tiny) -> None:
    by = {e.preset: e for e in estimate(tiny.path, ["Q2_K", "Q4_0", "Q5_1", "Q8_0"], n_threads=2)}
    assert by["Q2_K"].noise > by["Q4_0"].noise > by["Q5_1"].noise > by["Q8_0"].noise > 0
    assert by["Q2_K"].kld_estimate > by["Q4_0"].kld_estimate > by["Q8_0"].kld_estimate > 0
    assert by["Q4_0"].data_bytes == plan_preset(open_source(tiny.path), "Q4_0").data_bytes
    d = by["Q4_0"].to_dict()
    assert d["estimate"] is True and d["kld_estimate"] == by["Q4_0"].kld_estimate


def test_fit_recovers_floor_and_power_law() -> None:
    s = np.array([3e-4, 6e-3, 2e-2, 0.1, 0.4, 1.0, 2.5])
    floor, a, b = fit_noise_model(s, 0.002 + 0.15 * s**0.85, steps=2000)
    assert floor == pytest.approx(0.002, rel=0.02)
    assert a == pytest.approx(0.15, rel=0.02) and b == pytest.approx(0.85, rel=0.02)
    assert kld_from_noise(0.1, floor=floor, a=a, b=b) == pytest.approx(0.002 + 0.15 * 0.1**0.85, rel=0.01)
    assert kld_from_noise(0.0, floor=0.002) == 0.002
    with pytest.raises(ValueError, match="three"):
        fit_noise_model([0.1, 0.2, 0.0], [0.2, 0.3, 0.0])


def test_fit_recovers_the_floor_scaled_by_the_8bit_share() -> None:
    s = np.array([3e-4, 6e-3, 2e-2, 0.1, 0.4, 1.0, 2.5])
    r = np.array([0.0, 0.2, 1.0, 0.8, 1.0, 1.0, 0.9])  # a Q8_0-like preset pays no floor
    kld = 0.002 * r + 0.15 * s**0.85
    floor, a, b = fit_noise_model(s, kld, r, steps=2000)
    assert floor == pytest.approx(0.002, rel=0.02)
    assert a == pytest.approx(0.15, rel=0.02) and b == pytest.approx(0.85, rel=0.02)
    assert kld_from_noise(3e-4, 0.0, floor=floor, a=a, b=b) == pytest.approx(kld[0], rel=0.02)


def test_8bit_share_follows_the_weight_types(tiny) -> None:
    by = {e.preset: e for e in estimate(tiny.path, ["Q8_0", "Q4_0", "Q4_K_M"], n_threads=1)}
    assert by["Q8_0"].act8_share == 0.0  # Q8_0 weights meet 16-bit activations
    assert by["Q4_0"].act8_share == 1.0  # every ffn_down is Q4_0, with Q8_0 inputs
    assert by["Q4_K_M"].act8_share == 1.0  # Q4_K and Q6_K: Q8_K inputs
    assert by["Q8_0"].kld_estimate < by["Q4_K_M"].kld_estimate < by["Q4_0"].kld_estimate


def test_bad_requests(tiny, tmp_path) -> None:
    with pytest.raises(QuantizeError, match="unknown preset"):
        estimate(tiny.path, ["Q9_X"])
    with pytest.raises(QuantizeError, match="unknown method"):
        estimate(tiny.path, ["Q4_0"], method="magic")
    assert cli_main(["estimate", str(tmp_path / "missing")]) == 1


def test_worker_runs_and_cancels_estimates(tiny) -> None:
    worker = Worker()
    try:
        events = []
        res = worker.estimate(tiny.path, presets=["Q4_0", "Q8_0"], on_progress=events.append).result(60)
        assert [e.preset for e in res] == ["Q4_0", "Q8_0"]
        assert events[-1].done == events[-1].total and events[-1].job == "estimate"
        job = worker.estimate(tiny.path, on_progress=lambda p: p.done and worker.cancel_current())
        with pytest.raises(CancelledError):
            job.result(60)
    finally:
        worker.shutdown()


def test_cli_json(tiny, capsys) -> None:
    assert cli_main(["estimate", str(tiny.path), "--presets", "Q4_K_M", "Q8_0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["preset"] for e in out["presets"]] == ["Q4_K_M", "Q8_0"]
    assert out["estimate"] is True and all(e["kld_estimate"] > 0 for e in out["presets"])
    assert cli_main(["estimate", str(tiny.path), "--presets", "Q4_0"]) == 0
    assert "estimate" in capsys.readouterr().out.lower()


def _spearman(x: list[float], y: list[float]) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


@pytest.mark.slow
def test_estimate_ranks_presets_as_measured_on_smollm2(smollm2_gguf: Path, tmp_path: Path) -> None:
    from lowbit.core.convert import gguf_to_hf
    from lowbit.core.evaluate import EvalSettings, evaluate
    from lowbit.core.quantize import quantize_model

    hf = gguf_to_hf(smollm2_gguf, tmp_path / "hf", dtype="bf16")
    f32 = tmp_path / "f32.gguf"
    quantize_model(hf, f32, preset="F32")
    est = estimate(f32, QUANT_PRESETS, n_threads=2)
    files = []
    for p in QUANT_PRESETS:
        files.append(tmp_path / f"{p}.gguf")
        quantize_model(f32, files[-1], preset=p, n_threads=2)
    rep = evaluate(f32, files, settings=EvalSettings(n_ctx=256, n_chunks=4, spread=True), cache_dir=tmp_path)
    measured = [c.kld_mean for c in rep.candidates]
    rho = _spearman([e.kld_estimate for e in est], measured)
    assert rho >= 0.9, list(zip(QUANT_PRESETS, [e.kld_estimate for e in est], measured, strict=True))
