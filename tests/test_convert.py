"""Hugging Face folder <-> GGUF conversion, checked against independent references.

The Hugging Face folders here are written with the ``safetensors`` package and
torch_ref's own Q/K un-permutation, so Lowbit's reader, permutation and vocabulary
conversion are checked against code that is not theirs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

from lowbit.core.cli import main as cli_main
from lowbit.core.convert import gguf_to_hf, open_source, permute_qk, unpermute_qk
from lowbit.core.errors import (
    ModelFormatError,
    TokenizerError,
    UnsafeCheckpointError,
    UnsupportedModelError,
)
from lowbit.core.gguf_file import open_gguf
from lowbit.core.quantize import quantize_model
from lowbit.core.tokenizer import Tokenizer

from .tiny_models import make_tiny_model
from .torch_ref import unpermute_qk as ref_unpermute

HF_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _hf_name(name: str) -> str:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
    if name in top:
        return top[name]
    if name == "output.weight":
        return "lm_head.weight"
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{HF_LAYER[rest]}"


def write_hf_folder(tm, folder: Path, *, dtype: str = "f32") -> Path:
    """A Hugging Face folder for a tiny model, written with the reference libraries."""
    folder.mkdir(parents=True)
    tensors = {}
    for name, w in tm.weights.items():
        if name == "rope_freqs.weight":
            continue
        w = np.asarray(w, dtype=np.float32)
        if tm.arch == "llama" and (".attn_q.weight" in name or ".attn_k.weight" in name):
            w = ref_unpermute(w, tm.n_head if "attn_q" in name else tm.n_head_kv)
        tensors[_hf_name(name)] = np.ascontiguousarray(w)
    if dtype == "bf16":
        save_torch(
            {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, folder / "m.safetensors"
        )
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM" if tm.arch == "llama" else "Qwen2ForCausalLM"],
        "hidden_size": tm.n_embd,
        "intermediate_size": tm.n_ff,
        "num_hidden_layers": tm.n_layer,
        "num_attention_heads": tm.n_head,
        "num_key_value_heads": tm.n_head_kv,
        "max_position_embeddings": 2048,
        "rms_norm_eps": tm.rms_eps,
        "rope_theta": tm.rope_theta,
        "vocab_size": tm.n_vocab,
        "tie_word_embeddings": tm.tied,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_gguf_metadata(open_gguf(tm.path).metadata)
    tok.save_hf(folder / "tokenizer.json")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ x }}"})
    )
    return folder


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("tied", [True, False])
def test_hf_folder_converts_to_the_original_gguf_tensors(tmp_path, arch, tied):
    tm = make_tiny_model(tmp_path / "tiny.gguf", arch=arch, tied=tied)
    hf = write_hf_folder(tm, tmp_path / "hf")
    out = tmp_path / "out.gguf"
    quantize_model(hf, out, preset="F32")
    g = open_gguf(out)
    want = {n for n in tm.weights if n != "rope_freqs.weight"}
    assert set(g.tensors) == want
    for name in want:
        t = g.tensors[name]
        got = t.data.view(np.float32).reshape(tuple(reversed(t.shape)))
        np.testing.assert_array_equal(got, tm.weights[name], err_msg=name)
    md = g.metadata
    assert md["general.architecture"] == arch
    assert md[f"{arch}.attention.head_count_kv"] == tm.n_head_kv
    assert md["tokenizer.ggml.bos_token_id"] == open_gguf(tm.path).metadata["tokenizer.ggml.tokens"].index(
        "<|im_start|>"
    )
    assert md["tokenizer.chat_template"] == "{{ x }}"


def test_bf16_folder_is_read_exactly(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf", arch="qwen2")
    hf = write_hf_folder(tm, tmp_path / "hf", dtype="bf16")
    src = open_source(hf)
    w = tm.weights["blk.0.ffn_up.weight"]
    want = torch.from_numpy(w).to(torch.bfloat16).to(torch.float32).numpy()
    np.testing.assert_array_equal(src.load("blk.0.ffn_up.weight"), want)


def test_permutation_round_trip_and_reference():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 4), 4), w)
    np.testing.assert_array_equal(unpermute_qk(w, 4), ref_unpermute(w, 4))
    b = rng.standard_normal(32).astype(np.float32)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(b, 4), 4), b)


@pytest.fixture(scope="module")
def smollm2_hf(tmp_path_factory, smollm2_gguf):
    return gguf_to_hf(smollm2_gguf, tmp_path_factory.mktemp("hf") / "smollm2", dtype="f32")


@pytest.mark.slow
def test_to_hf_and_back_restores_smollm2(smollm2_hf, smollm2_gguf, tmp_path):
    names = sorted(p.name for p in smollm2_hf.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    out = tmp_path / "f32.gguf"
    quantize_model(smollm2_hf, out, preset="F32")
    a, b = open_gguf(smollm2_gguf), open_gguf(out)
    assert set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        want = gguf.quants.dequantize(t.data, QT(t.type_id)).reshape(-1)
        assert b.tensors[name].shape == t.shape
        np.testing.assert_array_equal(b.tensors[name].data.view(np.float32), want, err_msg=name)
    keys = [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.context_length",
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
        "llama.vocab_size",
    ]
    for k in keys:
        assert b.metadata[k] == a.metadata[k], k


@pytest.mark.slow
def test_hf_tokenizer_of_the_folder_matches_the_gguf_one(smollm2_hf, smollm2_gguf):
    text = "Hello world! 12345 don't\n\n  <|im_start|>user ünïcödé 中文"
    gguf_tok = Tokenizer.from_gguf_metadata(open_gguf(smollm2_gguf).metadata)
    hf_tok = Tokenizer.from_hf_file(smollm2_hf / "tokenizer.json", smollm2_hf / "tokenizer_config.json")
    assert hf_tok.encode(text) == gguf_tok.encode(text)
    ids = gguf_tok.encode(text)
    assert hf_tok.backend.decode(ids, skip_special_tokens=False) == text


# ------------------------------------------------------------------ bad input


def test_pickle_only_folder_is_refused_with_the_reason(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    hf = write_hf_folder(tm, tmp_path / "hf")
    (hf / "model.safetensors").unlink()
    (hf / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(UnsafeCheckpointError, match="run arbitrary code"):
        quantize_model(hf, tmp_path / "o.gguf", preset="Q8_0")
    assert not (tmp_path / "o.gguf").exists()


def test_unsupported_architecture(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    hf = write_hf_folder(tm, tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        open_source(hf)


def test_missing_tokenizer(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    hf = write_hf_folder(tm, tmp_path / "hf")
    (hf / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match=r"tokenizer\.json"):
        quantize_model(hf, tmp_path / "o.gguf", preset="Q8_0")
    assert list(tmp_path.glob("*.gguf")) == [tmp_path / "tiny.gguf"]


def test_mismatched_shapes(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    hf = write_hf_folder(tm, tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["intermediate_size"] = 384
    (hf / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match=r"mlp\..*_proj.weight.*has shape"):
        open_source(hf)


def test_truncated_safetensors(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    hf = write_hf_folder(tm, tmp_path / "hf")
    f = hf / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFormatError, match="truncated"):
        quantize_model(hf, tmp_path / "o.gguf", preset="Q8_0")
    assert not (tmp_path / "o.gguf").exists()
    f.write_bytes(data[:5])
    with pytest.raises(ModelFormatError, match="truncated"):
        open_source(hf)


def test_quantized_gguf_is_not_a_source(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf", weight_type=QT.Q4_0)
    with pytest.raises(UnsupportedModelError, match="already quantized"):
        quantize_model(tm.path, tmp_path / "o.gguf", preset="Q8_0")


def test_to_hf_refuses_existing_folder_and_leaves_nothing_on_error(tmp_path):
    tm = make_tiny_model(tmp_path / "tiny.gguf")
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        gguf_to_hf(tm.path, tmp_path / "exists")

    class Stop:
        def raise_if_cancelled(self) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gguf_to_hf(tm.path, tmp_path / "new", cancel=Stop())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "tiny.gguf"]


def test_cli_convert_both_ways(tmp_path, capsys):
    tm = make_tiny_model(tmp_path / "tiny.gguf", arch="qwen2")
    assert cli_main(["convert", str(tm.path), "--to-hf", str(tmp_path / "hf"), "--dtype", "f32"]) == 0
    assert (
        cli_main(["convert", str(tmp_path / "hf"), "-o", str(tmp_path / "back.gguf"), "--dtype", "f32"]) == 0
    )
    g = open_gguf(tmp_path / "back.gguf")
    for name, w in tm.weights.items():
        t = g.tensors[name]
        np.testing.assert_array_equal(t.data.view(np.float32).reshape(w.shape), w, err_msg=name)
    shutil.rmtree(tmp_path / "hf")
