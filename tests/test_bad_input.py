"""Damaged, hostile or unsupported input gives a typed error a person understands."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.engine import Engine
from lowbit.core.errors import (
    ContextFullError,
    InvalidArgumentError,
    ModelFormatError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedModelError,
)
from lowbit.core.model import Model
from lowbit.core.native import ffi, lib
from lowbit.core.worker import Worker
from tests.tiny_models import c_model_config, make_tiny_model, rewrite_gguf


@pytest.fixture()
def tiny(tmp_path: Path):
    return make_tiny_model(tmp_path / "tiny.gguf", weight_type=QT.Q8_0)


def _tensor_info_offsets(path: Path, name: str) -> tuple[int, int]:
    """File offsets of a tensor's type field and data-offset field."""
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    pos = t.field.offset + 8 + len(name.encode()) + 4 + 8 * len(t.shape)
    return pos, pos + 4


def _patch(path: Path, pos: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(pos)
        f.write(data)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="not found"):
        Model.load(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path: Path) -> None:
    p = tmp_path / "notes.gguf"
    p.write_text("just some text, not a model\n" * 10)
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        Model.load(p)


@pytest.mark.parametrize("keep", [0.001, 0.3, 0.9, 0.999])
def test_truncated_file(tiny, keep: float) -> None:
    data = tiny.path.read_bytes()
    tiny.path.write_bytes(data[: max(10, int(len(data) * keep))])
    with pytest.raises(ModelFormatError, match=r"truncated|damaged"):
        Model.load(tiny.path)


def test_tensor_data_past_end_of_file(tiny) -> None:
    _, off_pos = _tensor_info_offsets(tiny.path, "blk.1.ffn_down.weight")
    _patch(tiny.path, off_pos, struct.pack("<Q", 1 << 40))
    with pytest.raises(ModelFormatError):
        Model.load(tiny.path)


def test_unknown_tensor_type(tiny) -> None:
    type_pos, _ = _tensor_info_offsets(tiny.path, "blk.0.attn_q.weight")
    _patch(tiny.path, type_pos, struct.pack("<I", 99))
    with pytest.raises((UnsupportedModelError, ModelFormatError), match="type"):
        Model.load(tiny.path)


def test_unsupported_tensor_type(tmp_path: Path) -> None:
    # TQ2_0 is a valid GGML type that Lowbit does not run
    tm = make_tiny_model(tmp_path / "t.gguf", weight_type=QT.Q8_0)

    def to_tq2(t):
        if t.name != "blk.0.ffn_up.weight":
            return t.data, t.tensor_type
        return gguf.quants.quantize(np.zeros((t.shape[1], t.shape[0]), np.float32), QT.TQ2_0), QT.TQ2_0

    rewrite_gguf(tm.path, tmp_path / "tq.gguf", to_tq2)
    with pytest.raises(UnsupportedModelError, match="TQ2_0"):
        Model.load(tmp_path / "tq.gguf")


def test_unsupported_architecture(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", arch="mamba")
    with pytest.raises(UnsupportedModelError, match="mamba"):
        Model.load(tm.path)


def test_missing_required_metadata(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", drop_keys=("llama.feed_forward_length",))
    with pytest.raises(ModelFormatError, match="feed_forward_length"):
        Model.load(tm.path)


def test_missing_vocabulary(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", with_vocab=False)
    with pytest.raises(TokenizerError, match="vocabulary"):
        Model.load(tm.path)


def test_missing_tensor(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf")
    rewrite_gguf(
        tm.path,
        tmp_path / "cut.gguf",
        lambda t: None if t.name == "blk.1.attn_v.weight" else (t.data, t.tensor_type),
    )
    with pytest.raises(ModelFormatError, match=r"blk\.1\.attn_v"):
        Model.load(tmp_path / "cut.gguf")


def test_prompt_longer_than_context(tiny) -> None:
    with Model.load(tiny.path, n_ctx=16, n_threads=1) as m:
        with pytest.raises(ContextFullError, match="context"):
            list(Engine(m).generate(list(range(20)), max_tokens=4))
        with pytest.raises(ContextFullError):
            m.forward(list(range(17)), 0)
        # the model is still usable afterwards
        assert m.forward([1, 2, 3], 0).shape == (m.n_vocab,)


def test_generation_stops_when_context_fills(tiny) -> None:
    with Model.load(tiny.path, n_ctx=16, n_threads=1) as m:
        events = list(Engine(m).generate(list(range(10)), max_tokens=100, stop_ids=frozenset()))
    stats = events[-1].stats
    assert stats.finish_reason == "context"
    assert stats.prompt_tokens + stats.generated_tokens == 16


def test_token_outside_vocabulary(tiny) -> None:
    with Model.load(tiny.path, n_ctx=16, n_threads=1) as m:
        with pytest.raises(InvalidArgumentError):
            m.forward([1, 100000], 0)
        with pytest.raises(InvalidArgumentError):
            m.forward([-1], 0)


def test_failed_load_leaves_worker_usable(tiny, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    w = Worker()
    try:
        with pytest.raises(ModelFormatError):
            w.load_model(bad).result(timeout=30)
        assert w.model is None  # nothing half-loaded
        model = w.load_model(tiny.path, n_ctx=32, n_threads=1).result(timeout=30)
        assert model.n_vocab == tiny.n_vocab
    finally:
        w.shutdown()


# ---- the C API checks sizes itself ------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_head=3, n_head_kv=2),
        dict(head_dim=31),
        dict(rope_dim=64),
        dict(n_ctx=0),
        dict(arch=7),
        dict(kv_type=0),
    ],
)
def test_c_rejects_badc_model_config(bad: dict) -> None:
    out = ffi.new("lb_model **")
    assert lib.lb_model_create(c_model_config(**bad), out) != 0
    assert out[0] == ffi.NULL
    assert ffi.string(lib.lb_last_error())


def test_c_checks_tensor_shapes_and_sizes() -> None:
    out = ffi.new("lb_model **")
    assert lib.lb_model_create(c_model_config(), out) == 0
    m = out[0]
    try:
        buf = np.zeros(64 * 64, np.float32)
        p = ffi.from_buffer(buf)
        # wrong shape for the role
        assert lib.lb_model_set_tensor(m, 5, 0, 0, 64, 32, p, 64 * 32 * 4) == 1
        assert b"shape" in ffi.string(lib.lb_last_error())
        # byte size that does not match the shape
        assert lib.lb_model_set_tensor(m, 5, 0, 0, 64, 64, p, 100) == 1
        # norms must be F32; an unknown type is refused
        assert lib.lb_model_set_tensor(m, 4, 0, 1, 64, 1, p, 128) == 2
        assert lib.lb_model_set_tensor(m, 5, 0, 99, 64, 64, p, 4096) == 2
        # layer out of range
        assert lib.lb_model_set_tensor(m, 5, 3, 0, 64, 64, p, 64 * 64 * 4) == 1
        # incomplete model
        assert lib.lb_model_ready(m) == 1
        assert b"missing" in ffi.string(lib.lb_last_error())
    finally:
        lib.lb_model_free(m)
