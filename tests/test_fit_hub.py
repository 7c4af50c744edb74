"""Memory fit of Hub models before download: shapes from config.json or the parameter count,
per-level weights, and verdicts that agree with the estimate of the real file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.core.convert import open_source
from lowbit.core.fit import (
    act_encoding_of_level,
    check_fit,
    estimate_memory,
    estimate_memory_from_shape,
    gguf_groups,
    hub_level_fits,
    kv_cache_bytes,
    level_bits_per_weight,
    preset_size,
    shape_from_config,
    shape_from_params,
)
from lowbit.core.hub import HubFile, HubModel
from lowbit.core.quantize import QUANT_PRESETS, plan_preset, quantize_model
from tests.tiny_models import make_tiny_model

LLAMA_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from lowbit.core.convert import gguf_to_hf

    folder = tmp_path_factory.mktemp("fit-hub")
    gguf = folder / "tiny.gguf"
    make_tiny_model(gguf, n_layer=3)
    hf = Path(gguf_to_hf(gguf, folder / "tiny-hf", dtype="f32"))
    config = json.loads((hf / "config.json").read_text())
    return gguf, hf, config


def test_shape_from_config(tiny: tuple[Path, Path, dict]) -> None:
    _, _, config = tiny
    s = shape_from_config(config)
    assert s is not None and s.exact
    assert (s.n_layer, s.n_embd, s.n_head, s.n_head_kv, s.head_dim, s.n_ff, s.n_vocab) == (
        3, 256, 4, 2, 64, 512, 288,
    )  # fmt: skip
    assert s.tied_embeddings and not s.qkv_bias
    big = shape_from_config(LLAMA_8B)
    assert big is not None and not big.tied_embeddings and big.n_params == pytest.approx(8.03e9, rel=0.01)
    nested = shape_from_config({"model_type": "x", "text_config": LLAMA_8B})
    assert nested == big
    assert shape_from_config({**LLAMA_8B, "model_type": "qwen2"}).qkv_bias  # type: ignore[union-attr]
    assert shape_from_config(None) is None and shape_from_config({"hidden_size": 8}) is None


@pytest.mark.parametrize("preset", ["F16", "Q8_0", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_NL"])
def test_preset_weights_match_the_quantizer_plan(tiny: tuple[Path, Path, dict], preset: str) -> None:
    _, hf, config = tiny
    shape = shape_from_config(config)
    assert shape is not None
    with open_source(hf) as src:
        assert preset_size(shape, preset).weights_bytes == plan_preset(src, preset).data_bytes


@pytest.mark.parametrize("preset", ["Q8_0", "Q4_K_M"])
def test_shape_estimate_matches_the_estimate_of_the_quantized_file(
    tiny: tuple[Path, Path, dict], tmp_path: Path, preset: str
) -> None:
    gguf, _, config = tiny
    out = tmp_path / f"tiny-{preset}.gguf"
    quantize_model(gguf, out, preset=preset)
    shape = shape_from_config(config)
    assert shape is not None
    ps = preset_size(shape, preset)
    for n_ctx, cache in ((128, "f16"), (1000, "q8_0")):
        real = estimate_memory(out, n_ctx=n_ctx, cache_type=cache, n_threads=2)
        guess = estimate_memory_from_shape(
            shape, weights_bytes=ps.weights_bytes, n_ctx=n_ctx, cache_type=cache, n_threads=2,
            act_encoding=ps.act_encoding,
        )  # fmt: skip
        assert guess.weights_bytes == real.weights_bytes
        assert guess.kv_bytes == real.kv_bytes
        assert guess.scratch_bytes == real.scratch_bytes
        # the file's tokenizer has 2 merges; the shape assumes one per token
        assert guess.overhead_bytes >= real.overhead_bytes
        assert guess.overhead_bytes - real.overhead_bytes < 2**20


def test_guessed_shape_is_plausible() -> None:
    s = shape_from_params(8_000_000_000)
    assert not s.exact and s.n_layer == 32 and s.n_embd == 4096
    assert kv_cache_bytes(s, 1) == 2 * 32 * 8 * 128 * 2
    small = shape_from_params(135_000_000)
    assert 10_000 < kv_cache_bytes(small, 1) < 50_000  # SmolLM2-135M: 23040 bytes per token
    sizes = [kv_cache_bytes(shape_from_params(int(n)), 1) for n in (1e8, 1e9, 1e10, 1e11)]
    assert sizes == sorted(sizes)
    with pytest.raises(ValueError):
        shape_from_params(0)


def test_level_helpers() -> None:
    assert level_bits_per_weight("Q4_K_M") == 4.5 and level_bits_per_weight("q8_0") == 8.5
    assert level_bits_per_weight("F16") == 16 and level_bits_per_weight("IQ2_XXS") is not None
    assert level_bits_per_weight("weird") is None and level_bits_per_weight(None) is None
    assert act_encoding_of_level("F16") == (4, 1) and act_encoding_of_level("Q4_0") == (34, 32)
    assert act_encoding_of_level("Q4_1") == (36, 32) and act_encoding_of_level("Q5_K_S") == (292, 256)


def _file(name: str, size: int | None, kind: str = "gguf") -> HubFile:
    from lowbit.core.hub import quant_type_from_name

    return HubFile(
        name=name, size=size, kind=kind, quant_type=quant_type_from_name(name) if kind == "gguf" else None
    )


def test_gguf_groups_join_shards_and_skip_projectors() -> None:
    files = [
        _file("m-Q8_0.gguf", 900),
        _file("big/m-F16-00001-of-00002.gguf", 1000),
        _file("big/m-F16-00002-of-00002.gguf", 800),
        _file("m-Q4_K_M.gguf", 500),
        _file("mmproj-m-f16.gguf", 100),
        _file("plain.gguf", 50),
        _file("README.md", 1, "other"),
    ]
    groups = gguf_groups(files)
    assert [label for label, _ in groups] == ["plain", "Q4_K_M", "Q8_0", "F16"]
    assert [f.name for f in groups[-1][1]] == [
        "big/m-F16-00001-of-00002.gguf",
        "big/m-F16-00002-of-00002.gguf",
    ]


def test_levels_of_a_gguf_repository_agree_with_direct_computation() -> None:
    files = (
        _file("m-Q4_K_M.gguf", 4_900_000_000),
        _file("m-Q8_0.gguf", 8_500_000_000),
        _file("x.txt", 3, "other"),
    )
    model = HubModel(repo_id="org/m-GGUF", n_params=8_030_000_000, files=files, is_gguf=True)
    avail = 8 * 2**30
    with_cfg = hub_level_fits(model, n_ctx=8192, config=LLAMA_8B, n_threads=2, available=avail)
    assert [(lv.level, lv.files) for lv in with_cfg] == [
        ("Q4_K_M", ("m-Q4_K_M.gguf",)),
        ("Q8_0", ("m-Q8_0.gguf",)),
    ]
    shape = shape_from_config(LLAMA_8B)
    assert shape is not None
    for lv, f in zip(with_cfg, files[:2], strict=True):
        direct = estimate_memory_from_shape(
            shape,
            weights_bytes=f.size or 0,
            n_ctx=8192,
            n_threads=2,
            act_encoding=act_encoding_of_level(lv.level),
        )
        assert lv.exact and lv.weights_bytes == f.size
        assert lv.fit == check_fit(direct, available=avail)
    assert [lv.verdict for lv in with_cfg] == ["fits", "will not fit"]
    guessed = hub_level_fits(model, n_ctx=8192, n_threads=2, available=avail)
    assert [lv.exact for lv in guessed] == [False, False]
    unknown = HubModel(repo_id="org/x", files=(_file("m-Q4_0.gguf", None),))
    assert hub_level_fits(unknown, n_ctx=512, available=avail) == []


def test_levels_of_a_full_precision_repository(tiny: tuple[Path, Path, dict]) -> None:
    _, _, config = tiny
    files = (_file("model.safetensors", 10**6, "safetensors"), _file("config.json", 500, "config"))
    model = HubModel(repo_id="org/tiny", n_params=None, files=files)
    levels = hub_level_fits(model, n_ctx=512, config=config, n_threads=1, available=2**40)
    assert [lv.level for lv in levels] == ["F16", *QUANT_PRESETS]
    assert all(lv.exact and lv.verdict == "fits" and lv.files == () for lv in levels)
    sizes = {lv.level: lv.weights_bytes for lv in levels}
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"] > sizes["Q2_K"]
    shape = shape_from_config(config)
    assert shape is not None
    ps = preset_size(shape, "Q4_K_M")
    direct = estimate_memory_from_shape(
        shape, weights_bytes=ps.weights_bytes, n_ctx=512, n_threads=1, act_encoding=ps.act_encoding
    )
    q4 = next(lv for lv in levels if lv.level == "Q4_K_M")
    assert q4.total_bytes == direct.total_bytes
    # the verdict moves with the memory available: below 80% fits, up to 100% tight
    need = q4.total_bytes
    for avail, verdict in ((need * 2, "fits"), (int(need * 1.1), "tight"), (need - 1, "will not fit")):
        again = hub_level_fits(model, n_ctx=512, config=config, n_threads=1, available=avail)
        assert next(lv for lv in again if lv.level == "Q4_K_M").verdict == verdict
    # without a config, the parameter count gives an approximate answer
    by_params = hub_level_fits(
        HubModel(repo_id="org/tiny", n_params=1_000_000_000, files=files), n_ctx=512, available=2**40
    )
    assert len(by_params) == len(levels) and not any(lv.exact for lv in by_params)
    assert next(lv for lv in by_params if lv.level == "Q8_0").weights_bytes == round(1e9 * 8.5 / 8)
    assert hub_level_fits(HubModel(repo_id="org/tiny", files=files), n_ctx=512, available=2**40) == []
    with pytest.raises(ValueError):
        hub_level_fits(model, n_ctx=0, config=config)
