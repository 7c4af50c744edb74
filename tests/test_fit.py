"""The memory fit estimate: its parts, the verdicts, and the estimate against measured RSS."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.core.fit import (
    KV_CACHE_TYPES,
    MemoryEstimate,
    check_fit,
    compare_measured,
    estimate_memory,
    kv_bytes_per_value,
    kv_cache_bytes,
    measure_resident,
)
from lowbit.core.gguf_file import open_gguf
from lowbit.core.model import Model, read_hparams
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("fit") / "tiny.gguf"
    make_tiny_model(p, n_layer=3)
    return p


def test_kv_cache_sizes(tiny: Path) -> None:
    hp = read_hparams(open_gguf(tiny))
    kv_dim = hp.n_head_kv * hp.head_dim  # 2 heads of 64
    assert kv_cache_bytes(hp, 1000) == 2 * hp.n_layer * 1000 * kv_dim * 2
    assert kv_cache_bytes(hp, 1000, "q8_0") == 2 * hp.n_layer * 1000 * (kv_dim // 32) * 34
    assert kv_bytes_per_value("f16") == 2 and kv_bytes_per_value("Q8_0") == 34 / 32
    assert set(KV_CACHE_TYPES) == {"f16", "q8_0"}
    with pytest.raises(ValueError, match="cache type"):
        kv_bytes_per_value("q4_0")


@pytest.mark.parametrize("n_ctx", [16, 300, 2048])
@pytest.mark.parametrize("n_threads", [1, 3])
@pytest.mark.parametrize("cache_type", ["f16", "q8_0"])
def test_cache_and_buffers_match_what_the_library_allocates(
    tiny: Path, n_ctx: int, n_threads: int, cache_type: str
) -> None:
    est = estimate_memory(tiny, n_ctx=n_ctx, n_threads=n_threads, cache_type=cache_type)
    with Model.load(tiny, n_ctx=n_ctx, n_threads=n_threads, kv_type=cache_type) as m:
        assert est.kv_bytes + est.scratch_bytes == m.stats().state_bytes
        assert est.weights_bytes == sum(t.nbytes for t in m.file.tensors.values())


def test_weights_are_exact_from_the_tensor_types(tiny: Path, tmp_path: Path) -> None:
    from lowbit.core.quantize import quantize_model

    q = tmp_path / "q4.gguf"
    quantize_model(tiny, q, preset="Q4_0")
    gf = open_gguf(q)
    est = estimate_memory(gf, n_ctx=64, n_threads=1)
    assert est.weights_bytes == sum(t.nbytes for t in gf.tensors.values())
    assert est.weights_bytes < estimate_memory(tiny, n_ctx=64, n_threads=1).weights_bytes / 4


def test_verdicts() -> None:
    est = MemoryEstimate(
        weights_bytes=600, kv_bytes=200, scratch_bytes=100, overhead_bytes=100, n_ctx=512, cache_type="f16"
    )
    assert est.total_bytes == 1000
    assert check_fit(est, available=2000).verdict == "fits"
    tight = check_fit(est, available=1100)
    assert tight.verdict == "tight" and "Tight" in tight.message
    no = check_fit(est, available=900)
    assert no.verdict == "will not fit" and "shorter context" in no.message
    assert check_fit(est).available_bytes > 0  # psutil
    assert compare_measured(est, 1000) == 0 and compare_measured(est, 800) == pytest.approx(0.25)
    assert no.to_dict()["estimate"]["total_bytes"] == 1000


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [512, 2048])
def test_estimate_is_within_ten_percent_of_measured_memory(smollm2_gguf: Path, n_ctx: int) -> None:
    est = estimate_memory(smollm2_gguf, n_ctx=n_ctx, n_threads=2)
    measured = measure_resident(smollm2_gguf, n_ctx=n_ctx, n_threads=2)
    assert measured["state_bytes"] == est.kv_bytes + est.scratch_bytes
    err = compare_measured(est, measured["rss_increase_bytes"])
    print(
        f"n_ctx {n_ctx}: estimate {est.total_bytes / 2**20:.1f} MiB, measured "
        f"{measured['rss_increase_bytes'] / 2**20:.1f} MiB ({100 * err:+.1f}%)"
    )
    assert abs(err) < 0.10
