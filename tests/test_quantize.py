"""The quantization pipeline: presets, methods, budget, provenance and a job that loses nothing."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core import quantize as qmod
from lowbit.core.cli import main as cli_main
from lowbit.core.convert import open_source
from lowbit.core.engine import CancelToken
from lowbit.core.errors import CancelledError, DiskFullError, QuantizeError
from lowbit.core.gguf_file import open_gguf
from lowbit.core.mixture import relative_error
from lowbit.core.model import Model
from lowbit.core.quantize import PRESETS, plan_preset, quantize_model

from .tiny_models import make_tiny_model

GGUF_PY_TYPES = {QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "tiny.gguf", arch="llama", tied=False, n_layer=2)


def _values(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, QT(t.type_id)).reshape(tuple(reversed(t.shape)))


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_0", "Q4_1", "Q5_K_S", "Q4_K_M", "Q2_K", "IQ4_NL", "BF16"])
def test_rtn_bytes_and_errors(tiny, tmp_path, preset):
    out = tmp_path / f"{preset}.gguf"
    r = quantize_model(tiny.path, out, preset=preset, n_threads=2)
    g = open_gguf(out)
    plan = plan_preset(open_source(tiny.path), preset)
    assert r.file_bytes == out.stat().st_size
    for name, t in g.tensors.items():
        w = tiny.weights[name]
        assert QT(t.type_id) == plan.types[name], name
        if QT(t.type_id) in GGUF_PY_TYPES:
            want = gguf.quants.quantize(w, QT(t.type_id)).reshape(-1).view(np.uint8)
            np.testing.assert_array_equal(t.data, want, err_msg=name)
        else:
            bpw = qmod.bits_per_weight(QT(t.type_id))
            rel = np.sqrt(np.mean((_values(t) - w) ** 2) / np.mean(w**2))
            # uniform grid of ~2^(bpw-1.5) levels over a few standard deviations
            assert rel < 6.0 / 2 ** (bpw - 1.5), (name, QT(t.type_id).name, rel)
    assert g.metadata["lowbit.quantize.method"] == "rtn"
    assert g.metadata["general.file_type"] == PRESETS[preset][1]


def test_source_is_never_modified_and_output_not_overwritten(tiny, tmp_path):
    before = _sha(tiny.path)
    out = tmp_path / "o.gguf"
    quantize_model(tiny.path, out, preset="Q4_0")
    assert _sha(tiny.path) == before
    with pytest.raises(FileExistsError):
        quantize_model(tiny.path, out, preset="Q4_0")
    with pytest.raises(QuantizeError, match="overwrite the source"):
        quantize_model(tiny.path, tiny.path, preset="Q4_0", overwrite=True)
    assert _sha(tiny.path) == before


def test_unknown_preset_and_method(tiny, tmp_path):
    with pytest.raises(QuantizeError, match="unknown preset"):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q9_X")
    with pytest.raises(QuantizeError, match="unknown method"):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q4_0", method="magic")


def test_cancel_leaves_no_file(tiny, tmp_path):
    cancel = CancelToken()
    seen = []

    def progress(stage, done, total, message):
        seen.append(message)
        if len(seen) == 3:
            cancel.cancel()

    with pytest.raises(CancelledError):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q4_K_M", progress=progress, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_too_little_disk_is_refused_before_work(tiny, tmp_path, monkeypatch):
    import shutil

    real = shutil.disk_usage

    def small(path):
        u = real(path)
        return type(u)(u.total, u.total - 1000, 1000)

    monkeypatch.setattr(qmod.shutil, "disk_usage", small)
    with pytest.raises(DiskFullError, match="MiB free"):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_disk_filling_up_midway_leaves_nothing(tiny, tmp_path, monkeypatch):
    calls = []
    orig = gguf.GGUFWriter.write_tensor_data

    def failing(self, tensor, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, tensor, *a, **k)

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", failing)
    with pytest.raises(DiskFullError, match="filled up"):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf"]


def test_imatrix_records_provenance_and_runs(tiny, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    out = tmp_path / "o.gguf"
    r = quantize_model(tiny.path, out, preset="Q4_K_M", method="imatrix", calibration=text)
    md = open_gguf(out).metadata
    assert md["lowbit.quantize.method"] == "imatrix"
    assert md["lowbit.quantize.calibration.sha256"] == hashlib.sha256(text.read_bytes()).hexdigest()
    assert md["lowbit.quantize.calibration.tokens"] == r.calibration_tokens > 64
    with Model.load(out, n_ctx=64, n_threads=1) as m:
        assert np.isfinite(m.forward([1, 2, 3], 0)).all()


def test_too_short_calibration_text(tiny, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("too short", encoding="utf-8")
    with pytest.raises(QuantizeError, match="at least 64"):
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q4_0", method="imatrix", calibration=text)
    assert not (tmp_path / "o.gguf").exists()


def test_budget_is_never_exceeded_and_buys_accuracy(tiny, tmp_path):
    src = open_source(tiny.path)
    base = plan_preset(src, "Q4_K_M")
    results = {}
    for label, budget in (("tight", f"{base.data_bytes * 0.8 / 2**20:.6f}MiB"), ("loose", "6bpw")):
        out = tmp_path / f"{label}.gguf"
        quantize_model(tiny.path, out, preset="Q4_K_M", budget=budget)
        g = open_gguf(out)
        data = sum(t.nbytes for t in g.tensors.values())
        assert data <= qmod.parse_budget(budget, base.n_weights)
        noise = 0.0
        for name, t in g.tensors.items():
            if len(t.shape) == 2:
                w = tiny.weights[name]
                noise += float(np.sum((_values(t) - w) ** 2) / np.sum(w**2))
        results[label] = noise
    assert results["loose"] < results["tight"]
    with pytest.raises(QuantizeError, match="below the smallest mixture"):
        quantize_model(tiny.path, tmp_path / "x.gguf", preset="Q4_K_M", budget="0.1MiB")


def test_relative_error_matches_numpy_definition(tiny):
    w = tiny.weights["blk.0.ffn_up.weight"]
    imp = np.random.default_rng(0).uniform(0.1, 2.0, w.shape[1]).astype(np.float32)
    got = relative_error(np.ascontiguousarray(w), QT.Q8_0, None)
    d = gguf.quants.dequantize(gguf.quants.quantize(w, QT.Q8_0), QT.Q8_0)
    assert got == pytest.approx(float(np.sum((d - w) ** 2) / np.sum(w**2)), rel=1e-6)
    got_w = relative_error(np.ascontiguousarray(w), QT.Q4_0, imp)
    assert 0 < got_w < 0.05


def test_cli_quantize_json(tiny, tmp_path, capsys):
    import json

    out = tmp_path / "o.gguf"
    assert cli_main(["quantize", str(tiny.path), "--type", "Q5_K_M", "-o", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["file"] == str(out) and info["preset"] == "Q5_K_M" and info["method"] == "rtn"
    assert info["size_mib"] == round(out.stat().st_size / 2**20, 3)
    assert cli_main(["quantize", str(tiny.path), "--type", "Q5_K_M", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
