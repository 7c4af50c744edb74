"""Lowbit's GGUF parser against the ``gguf`` package's reader, and against hostile headers."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.errors import ModelFormatError
from lowbit.core.gguf_file import open_gguf
from tests.gguf_reference import read_metadata
from tests.tiny_models import make_tiny_model


def _reference(path: Path) -> tuple[dict, dict, dict]:
    r = gguf.GGUFReader(path)
    meta = {k: v for k, v in read_metadata(r).items() if not k.startswith("GGUF.")}
    types = {k: tuple(int(t) for t in f.types) for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = {t.name: (int(t.data_offset), np.asarray(t.data).reshape(-1).view(np.uint8)) for t in r.tensors}
    return meta, types, tensors


def _assert_same_as_reference(path: Path) -> None:
    gf = open_gguf(path)
    meta, types, tensors = _reference(path)
    assert list(gf.metadata) == list(meta)
    for k, v in meta.items():
        assert gf.metadata[k] == v, k
        assert type(gf.metadata[k]) is type(v), k
    assert gf.value_types == types
    assert list(gf.tensors) == list(tensors)
    for name, (offset, data) in tensors.items():
        t = gf.tensors[name]
        assert t.offset == offset
        assert np.array_equal(t.data, data), name


def test_every_value_type_reads_as_gguf_reads_it(tmp_path: Path) -> None:
    p = tmp_path / "kv.gguf"
    w = gguf.GGUFWriter(p, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 1 << 63)
    w.add_int64("t.i64", -(1 << 62))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo, wörld ✓")
    w.add_string("t.empty", "")
    w.add_array("t.strs", ["a", "", "ü", "日本"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.none", [])
    w.add_tensor("w", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("v", np.ones(7, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _assert_same_as_reference(p)
    gf = open_gguf(p)
    assert gf.metadata["t.f64"] == 1e-300
    assert gf.metadata["t.bools"] == [True, False, True]
    assert np.array_equal(gf.tensors["w"].data.view(np.float32), np.arange(64, dtype=np.float32))


@pytest.mark.parametrize("qtype", [QT.F32, QT.Q4_K, QT.IQ4_NL])
def test_tiny_models_read_as_gguf_reads_them(tmp_path: Path, qtype: QT) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=qtype)
    _assert_same_as_reference(tm.path)


@pytest.mark.slow
def test_smollm2_reads_as_gguf_reads_it(smollm2_gguf: Path) -> None:
    _assert_same_as_reference(smollm2_gguf)


# ---- hand-made headers: what a hostile file can claim --------------------------


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def _file(tmp_path: Path, n_tensors: int, n_kv: int, body: bytes, pad: int = 64) -> Path:
    p = tmp_path / "h.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + body + b"\0" * pad)
    return p


def _tensor_entry(name: str, dims: list[int], type_id: int, offset: int) -> bytes:
    return (
        _s(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", type_id, offset)
    )


def test_a_well_formed_hand_made_file_opens(tmp_path: Path) -> None:
    # The control for the hostile cases below: the same builder, honest values.
    body = _s("general.architecture") + struct.pack("<I", 8) + _s("llama") + _tensor_entry("w", [32, 2], 0, 0)
    header = 4 + 4 + 16 + len(body)
    p = tmp_path / "ok.gguf"
    pad = -header % 32
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + body + b"\0" * pad + b"\1" * 256)
    gf = open_gguf(p)
    assert gf.metadata == {"general.architecture": "llama"}
    assert gf.tensors["w"].shape == (32, 2) and gf.tensors["w"].offset == header + pad


@pytest.mark.parametrize(
    ("n_tensors", "n_kv", "body", "message"),
    [
        # counts far beyond what the file could hold
        (1 << 60, 0, b"", "tensor entries"),
        (0, 1 << 62, b"", "metadata entries"),
        # a key whose length runs past the end
        (0, 1, struct.pack("<Q", 1 << 40), "metadata key"),
        # a string array claiming 2^60 elements
        (0, 1, _s("a") + struct.pack("<IIQ", 9, 8, 1 << 60), "elements"),
        # a float array longer than the file
        (0, 1, _s("a") + struct.pack("<IIQ", 9, 6, 1 << 20), "elements"),
        # arrays nested 100 deep
        (0, 1, _s("a") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100, "deep"),
        # an unknown value type, an unknown array type
        (0, 1, _s("a") + struct.pack("<I", 77), "unknown value type"),
        (0, 1, _s("a") + struct.pack("<IIQ", 9, 77, 1), "unknown array type"),
        # the same key twice
        (0, 2, (_s("a") + struct.pack("<IB", 0, 1)) * 2, "twice"),
        # seven dimensions, a zero dimension, a misaligned offset, data past the end
        (1, 0, _tensor_entry("w", [32] * 7, 0, 0), "dimensions"),
        (1, 0, _tensor_entry("w", [32, 0], 0, 0), "invalid shape"),
        (1, 0, _tensor_entry("w", [32], 0, 4), "multiple of 32"),
        (1, 0, _tensor_entry("w", [1 << 20, 1 << 20], 0, 0), "truncated"),
        (1, 0, _tensor_entry("w", [33], 2, 0), "whole number"),
        # a non-power-of-two alignment
        (0, 1, _s("general.alignment") + struct.pack("<II", 4, 48), "power of two"),
    ],
)
def test_hostile_headers_are_refused(
    tmp_path: Path, n_tensors: int, n_kv: int, body: bytes, message: str
) -> None:
    p = _file(tmp_path, n_tensors, n_kv, body)
    with pytest.raises(ModelFormatError, match=message):
        open_gguf(p)


def test_every_truncation_of_a_header_is_refused(tmp_path: Path) -> None:
    tm = make_tiny_model(tmp_path / "m.gguf", weight_type=QT.Q8_0)
    data = tm.path.read_bytes()
    gf = open_gguf(tm.path)
    header_end = min(t.offset for t in gf.tensors.values())
    cut = tmp_path / "cut.gguf"
    for n in range(24, header_end, max(1, header_end // 300)):
        cut.write_bytes(data[:n])
        with pytest.raises(ModelFormatError):
            open_gguf(cut)
