"""GPTQ on GGML block types (lowbit/core/gptq.py) and ``quantize_model(method="gptq")``."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core import quants
from lowbit.core.calibrate import gram_matrix
from lowbit.core.engine import CancelToken
from lowbit.core.errors import CancelledError, QuantizeError
from lowbit.core.gguf_file import open_gguf
from lowbit.core.gptq import DAMP, factor_hessian, gptq_quantize, output_error
from lowbit.core.model import Model
from lowbit.core.quantize import quantize_model

from .tiny_models import make_tiny_model


def reference_gptq(w: np.ndarray, qtype: QT, h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """GPTQ straight from the paper, one column at a time, in float64 numpy.

    Each group's codes and scales are chosen by the C encoder when the group's
    first column comes up (from the columns as updated so far); then for every
    column q of the group, with F the columns not yet quantized,
    ``delta_F = -(w_q - quant(w_q)) / [H_F^-1]_qq * (H_F^-1)_{:,q}`` and
    ``H_{-q}^-1 = H^-1 - H^-1_{:,q} H^-1_{q,:} / [H^-1]_qq`` (Gaussian elimination
    of q), with no Cholesky factor and no lazy batches.
    """
    bs = quants.block_size(qtype)
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64).copy()
    imp = np.diag(h).astype(np.float32)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    hinv = np.linalg.inv(h)
    out = np.zeros(w.shape, dtype=np.float32)
    for g0 in range(0, w.shape[1], bs):
        group = np.ascontiguousarray(w[:, g0 : g0 + bs], dtype=np.float32)
        enc = quants.quantize_rows(qtype, group, importance=imp[g0 : g0 + bs])
        out[:, g0 : g0 + bs] = quants.dequantize_rows(qtype, enc, bs)
        for q in range(g0, g0 + bs):
            err = (w[:, q] - out[:, q]) / hinv[q, q]
            w[:, q:] -= np.outer(err, hinv[q, q:])
            hinv = hinv - np.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
    return out


def correlated_inputs(rng: np.random.Generator, n: int, tokens: int = 4096) -> np.ndarray:
    """Activations with strong correlations between channels (a few shared factors plus a
    little independent noise) and uneven channel scales, as in a transformer."""
    factors = rng.standard_normal((tokens, 8))
    mix = rng.standard_normal((8, n))
    x = factors @ mix + 0.3 * rng.standard_normal((tokens, n))
    return (x * np.exp(rng.uniform(-1, 1, n))).astype(np.float32)


@pytest.mark.parametrize("qtype", [QT.Q8_0, QT.Q4_0], ids=lambda t: t.name)
def test_matches_sequential_reference(qtype):
    rng = np.random.default_rng(1)
    x = correlated_inputs(rng, 64, tokens=512)
    x[:, 5] = 0.0  # a dead channel
    h = gram_matrix(x)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    got = gptq_quantize(w, qtype, factor_hessian(h), lazy_columns=32)
    want = reference_gptq(w, qtype, h)
    # Both work in float64 and differ only in the order of their roundings (the
    # Cholesky form and the lazy updates against the explicit inverse), ~1e-13 of
    # the weights; the encoder sees the columns in float32, where such a difference
    # almost never changes a value, so the codes come out the same.
    np.testing.assert_array_equal(got.values, want)
    assert np.all(got.values[:, 5] == 0)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q5_1, QT.IQ4_NL, QT.Q4_K, QT.Q6_K], ids=lambda t: t.name)
def test_assembled_bytes_decode_to_the_q_used(qtype):
    rng = np.random.default_rng(2)
    h = gram_matrix(correlated_inputs(rng, 512, tokens=1024))
    w = (rng.standard_normal((16, 512)) * 0.05).astype(np.float32)
    r = gptq_quantize(w, qtype, factor_hessian(h), n_threads=2)
    assert r.data.shape == (16, quants.row_bytes(qtype, 512))
    np.testing.assert_array_equal(quants.dequantize_rows(qtype, r.data, 512), r.values)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_K], ids=lambda t: t.name)
def test_output_error_below_rtn_and_imatrix(qtype):
    rng = np.random.default_rng(3)
    n = 768  # three Q4_K super-blocks: error feedback reaches the second and third
    h = gram_matrix(correlated_inputs(rng, n))
    w = (rng.standard_normal((64, n)) * 0.05).astype(np.float32)
    imp = np.diag(h).astype(np.float32)

    def decoded(data: np.ndarray) -> np.ndarray:
        return quants.dequantize_rows(qtype, data, n)

    rtn = output_error(w, decoded(quants.quantize_rows(qtype, w)), h)
    imatrix = output_error(w, decoded(quants.quantize_rows(qtype, w, importance=imp)), h)
    gptq = output_error(w, gptq_quantize(w, qtype, factor_hessian(h)).values, h)
    assert imatrix < rtn
    assert gptq < 0.5 * imatrix, (rtn, imatrix, gptq)


def test_factor_is_the_cholesky_of_the_inverse():
    rng = np.random.default_rng(4)
    h = gram_matrix(correlated_inputs(rng, 48, tokens=256))
    f = factor_hessian(h)
    u = f.upper.numpy()
    hd = h + DAMP * np.mean(np.diag(h)) * np.eye(48)
    assert np.allclose(u, np.triu(u))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(hd), rtol=1e-8, atol=1e-10)


def test_bad_shapes_are_refused():
    h = np.eye(64)
    with pytest.raises(QuantizeError, match="whole blocks"):
        gptq_quantize(np.zeros((4, 48), np.float32), QT.Q4_0, factor_hessian(np.eye(48)))
    with pytest.raises(QuantizeError, match="Hessian of shape"):
        gptq_quantize(np.zeros((4, 32), np.float32), QT.Q4_0, factor_hessian(h))
    with pytest.raises(QuantizeError, match="finite square"):
        factor_hessian(np.ones((3, 4)))


# ---- quantize_model --------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_model(tmp_path / "tiny.gguf", arch="llama", tied=True, n_layer=2)


@pytest.fixture
def calib_text(tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    return text


def test_quantize_model_gptq_writes_a_valid_file(tiny, tmp_path, calib_text):
    out = tmp_path / "o.gguf"
    r = quantize_model(tiny.path, out, preset="Q4_K_M", method="gptq", calibration=calib_text, n_threads=2)
    g = open_gguf(out)
    md = g.metadata
    assert r.method == "gptq" and md["lowbit.quantize.method"] == "gptq"
    assert md["lowbit.quantize.calibration.sha256"] == hashlib.sha256(calib_text.read_bytes()).hexdigest()
    assert md["lowbit.quantize.calibration.tokens"] == r.calibration_tokens > 64
    assert set(g.tensors) == set(tiny.weights)
    for name, t in g.tensors.items():
        if len(t.shape) == 2:  # close to the source, though not the nearest encoding
            qt = QT(t.type_id)
            w = tiny.weights[name]
            d = quants.dequantize_rows(qt, np.ascontiguousarray(t.data).reshape(w.shape[0], -1), w.shape[1])
            assert np.sqrt(np.mean((d - w) ** 2) / np.mean(w**2)) < 0.2, name
    with Model.load(out, n_ctx=64, n_threads=1) as m:
        assert np.isfinite(m.forward([1, 2, 3], 0)).all()


def test_gptq_cancel_leaves_no_file(tiny, tmp_path, calib_text):
    cancel = CancelToken()
    seen = []

    def progress(stage, done, total, message):
        seen.append(message)
        if len(seen) == 5:
            cancel.cancel()

    with pytest.raises(CancelledError):
        quantize_model(
            tiny.path, tmp_path / "o.gguf", preset="Q4_0", method="gptq", calibration=calib_text,
            progress=progress, cancel=cancel,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.txt", "tiny.gguf"]


def test_missing_torch_is_explained(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(QuantizeError, match="GPTQ needs PyTorch") as e:
        quantize_model(tiny.path, tmp_path / "o.gguf", preset="Q4_0", method="gptq")
    assert "pip install torch" in str(e.value) and "--method imatrix" in str(e.value)
    assert not (tmp_path / "o.gguf").exists()


def test_gptq_with_budget_and_from_the_cli(tiny, tmp_path, calib_text, capsys):
    import json

    from lowbit.core.cli import main as cli_main

    out = tmp_path / "b.gguf"
    quantize_model(tiny.path, out, preset="Q4_K_M", method="gptq", calibration=calib_text, budget="5bpw")
    assert open_gguf(out).metadata["lowbit.quantize.method"] == "gptq+budget"
    out2 = tmp_path / "c.gguf"
    argv = ["quantize", str(tiny.path), "--type", "Q4_0", "--method", "gptq", "-o", str(out2), "--json"]
    assert cli_main([*argv, "--calibration", str(calib_text)]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "gptq"
