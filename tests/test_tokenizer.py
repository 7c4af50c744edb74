"""Tokenizer tests, each against an independent reference.

* gpt2 (byte-level BPE): SmolLM2's vocabulary, compared with a ``tokenizers`` pipeline
  assembled here exactly as SmolLM2's published tokenizer.json defines it.
* llama (SentencePiece): a tiny BPE model trained here with ``sentencepiece``, whose own
  encoder and decoder are the reference.
"""

from __future__ import annotations

import io
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from lowbit.core.errors import TokenizerError
from lowbit.core.tokenizer import (
    TOKEN_BYTE,
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNKNOWN,
    TOKEN_UNUSED,
    Tokenizer,
)

pytest_plugins = ("tests._gguf_meta",)

# SmolLM2's tokenizer.json lists these 17 added tokens, all special, as ids 0..16.
SMOLLM2_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
]

TEXTS = [
    "Hello, world! It's a test; we'll see what they've done.",
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x  # 12345\n"
    "    return total / len(xs)\n",
    "\tTabs\tand\r\nCRLF line endings\r\n",
    "Numbers: 12345, 3.14159, 1e-9, 0xFF, 2024-06-01",
    "Emoji 😀👍🏽🇫🇷 and 👨‍👩‍👧 family",
    "中文字符 日本語のテキスト 한국어 текст Ελληνικά العربية",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and trailing spaces   ",
    "\n\n\nnewlines first\n\n",
    "Ünïcödé ñ ß ø å — “quotes” … ½",
    "",
    " ",
    "a",
]

STREAM_TEXT = "Grüße 😀👍🏽 漢字かな 한국어 🇯🇵 naïve café — ½ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"


# --------------------------------------------------------------------------- gpt2


@pytest.fixture(scope="module")
def smollm2(smollm2_metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_metadata: dict[str, Any]) -> tokenizers.Tokenizer:
    """SmolLM2's tokenizer as its tokenizer.json assembles it, from the same vocabulary."""
    tokens = smollm2_metadata["tokenizer.ggml.tokens"]
    assert tokens[: len(SMOLLM2_SPECIAL)] == SMOLLM2_SPECIAL
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ")) for m in smollm2_metadata["tokenizer.ggml.merges"]]
    ref = tokenizers.Tokenizer(models.BPE(vocab, merges))
    ref.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    ref.decoder = decoders.ByteLevel()
    ref.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SMOLLM2_SPECIAL])
    return ref


@pytest.mark.parametrize("text", TEXTS)
def test_gpt2_encode_matches_reference(smollm2: Tokenizer, smollm2_reference, text: str) -> None:
    ids = smollm2.encode(text)
    assert ids == smollm2_reference.encode(text, add_special_tokens=False).ids
    assert smollm2.decode(ids) == text
    assert smollm2.decode(ids) == smollm2_reference.decode(ids, skip_special_tokens=False)


def test_gpt2_encode_long_mixed_text(smollm2: Tokenizer, smollm2_reference) -> None:
    text = "\n".join(TEXTS) * 3
    ids = smollm2.encode(text)
    assert ids == smollm2_reference.encode(text, add_special_tokens=False).ids
    assert smollm2.decode(ids) == text


def test_gpt2_smollm2_special_ids(smollm2: Tokenizer) -> None:
    assert smollm2.vocab_size == 49152
    assert smollm2.bos_id == 1 and smollm2.token_text(1) == "<|im_start|>"
    assert smollm2.eos_id == 2 and smollm2.token_text(2) == "<|im_end|>"
    assert smollm2.add_bos is False  # tokenizer.ggml.add_bos_token = false
    assert smollm2.eog_ids == frozenset({0, 2})  # <|endoftext|> and <|im_end|>
    assert smollm2.token_type(0) == TOKEN_CONTROL


def test_gpt2_special_tokens_parsed_only_when_asked(smollm2: Tokenizer) -> None:
    text = "<|im_start|>user\nhi<|im_end|>"
    parsed = smollm2.encode(text)
    assert parsed[0] == 1 and parsed[-1] == 2
    assert parsed.count(1) == 1 and parsed.count(2) == 1
    literal = smollm2.encode(text, parse_special=False)
    assert 1 not in literal and 2 not in literal
    assert len(literal) > len(parsed)
    assert smollm2.decode(literal) == text


def test_gpt2_bos_added_once(smollm2: Tokenizer) -> None:
    assert smollm2.encode("hi", add_bos=True)[0] == 1
    assert smollm2.encode("hi")[0] != 1
    starts_with_bos = smollm2.encode("<|im_start|>hi", add_bos=True)
    assert starts_with_bos[:2] != [1, 1] and starts_with_bos[0] == 1
    assert smollm2.encode("", add_bos=True) == [1]


def test_gpt2_decode_skip_special(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>")
    assert smollm2.decode(ids, skip_special=True) == "user\nhi"


def _check_stream(tok: Tokenizer, ids: list[int], *, expect_holding: bool) -> None:
    dec = tok.stream_decoder()
    chunks = [dec.push(i) for i in ids]
    chunks.append(dec.flush())
    for chunk in chunks:
        assert "\ufffd" not in chunk
        chunk.encode("utf-8")  # a lone surrogate would fail here
    assert "".join(chunks) == tok.decode(ids)
    if expect_holding:
        # Some token ended inside a character, so that push had to hold bytes back.
        assert "" in chunks[:-1]


def test_gpt2_stream_never_splits_characters(smollm2: Tokenizer) -> None:
    ids = smollm2.encode(STREAM_TEXT)
    _check_stream(smollm2, ids, expect_holding=True)
    assert smollm2.decode(ids) == STREAM_TEXT


def test_stream_flush_reports_incomplete_tail(smollm2: Tokenizer) -> None:
    # "ð" is the byte-level entry for byte 0xF0, the lead byte of a four-byte sequence.
    lead = next(i for i in range(smollm2.vocab_size) if smollm2.token_text(i) == "ð")
    dec = smollm2.stream_decoder()
    assert dec.push(lead) == ""
    assert dec.flush() == "\ufffd"
    assert smollm2.decode([lead]) == "\ufffd"
    # The decoder starts over after a flush.
    assert "".join(dec.push(i) for i in smollm2.encode("ok")) + dec.flush() == "ok"


def test_gpt2_pre_tokenizer_families_build(smollm2_metadata: dict[str, Any]) -> None:
    text = "Hello World's 1234567 \n\n  x"
    for pre in ("gpt2", "llama-bpe", "qwen2", "tekken", "gpt-4o", "starcoder"):
        tok = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": pre})
        assert tok.decode(tok.encode(text)) == text


def test_gpt2_llama3_regex_groups_digits_in_threes(smollm2_metadata: dict[str, Any]) -> None:
    tok = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "llama-bpe"})
    pieces = [tok.decode([i]) for i in tok.encode("1234567", add_bos=False)]
    # \p{N}{1,3} never lets a piece cross a group of three digits.
    assert "".join(pieces) == "1234567"
    assert all(len(p) <= 3 for p in pieces)
    smol = Tokenizer.from_gguf_metadata(smollm2_metadata)
    assert [smol.decode([i]) for i in smol.encode("1234567")] == list("1234567")


def test_unknown_pre_tokenizer_falls_back_with_warning(
    smollm2_metadata: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="lowbit.core.tokenizer"):
        tok = Tokenizer.from_gguf_metadata({**smollm2_metadata, "tokenizer.ggml.pre": "no-such-pre"})
    assert "no-such-pre" in caplog.text
    assert tok.decode(tok.encode("fall back 123")) == "fall back 123"


def test_from_hf_file_matches_gguf(tmp_path: Path, smollm2: Tokenizer, smollm2_reference) -> None:
    smollm2_reference.save(str(tmp_path / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"},
        "add_bos_token": False,
        "chat_template": "{{ messages[0]['content'] }}",
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    hf = Tokenizer.from_hf_file(tmp_path / "tokenizer.json", tmp_path / "tokenizer_config.json")
    assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.add_bos) == (49152, 1, 2, False)
    assert hf.eog_ids == smollm2.eog_ids
    assert hf.chat_template == config["chat_template"]
    for text in TEXTS:
        ids = hf.encode(text)
        assert ids == smollm2.encode(text)
        assert hf.decode(ids) == text
    _check_stream(hf, hf.encode(STREAM_TEXT), expect_holding=True)

    bare = Tokenizer.from_hf_file(tmp_path / "tokenizer.json")
    assert bare.eos_id is None and bare.chat_template is None
    assert 2 in bare.eog_ids  # <|im_end|> is known by its text


def test_from_hf_file_missing(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot load"):
        Tokenizer.from_hf_file(tmp_path / "nope.json")


# --------------------------------------------------------------------------- bad input


def test_missing_vocabulary() -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.ggml\.tokens"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "gpt2"})
    with pytest.raises(TokenizerError, match="no vocabulary"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": []})


def test_unknown_tokenizer_model() -> None:
    meta = {"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["[CLS]", "a"]}
    with pytest.raises(TokenizerError, match="'bert'"):
        Tokenizer.from_gguf_metadata(meta)


@pytest.mark.parametrize("key", ["tokenizer.ggml.token_type", "tokenizer.ggml.scores"])
def test_length_mismatch(key: str) -> None:
    meta: dict[str, Any] = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": ["<unk>", "a", "b"],
        "tokenizer.ggml.scores": [0.0, -1.0, -2.0],
        "tokenizer.ggml.token_type": [TOKEN_UNKNOWN, TOKEN_NORMAL, TOKEN_NORMAL],
    }
    meta[key] = meta[key][:2]
    with pytest.raises(TokenizerError, match="2 entries but the vocabulary has 3"):
        Tokenizer.from_gguf_metadata(meta)


def test_gpt2_needs_valid_merges(smollm2_metadata: dict[str, Any]) -> None:
    meta = dict(smollm2_metadata)
    del meta["tokenizer.ggml.merges"]
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf_metadata(meta)
    meta["tokenizer.ggml.merges"] = ["Ġ t", "nosuchtoken x"]
    with pytest.raises(TokenizerError, match="merges"):
        Tokenizer.from_gguf_metadata(meta)


def test_out_of_range_ids(smollm2: Tokenizer) -> None:
    for bad in (-1, smollm2.vocab_size, 10**9):
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            smollm2.decode([5, bad])
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            smollm2.stream_decoder().push(bad)
        with pytest.raises(TokenizerError, match="outside the vocabulary"):
            smollm2.token_text(bad)


# --------------------------------------------------------------------------- llama / SentencePiece

_WORDS = (
    "the quick brown fox jumps over a lazy dog while tiny models learn byte pairs from "
    "sentences about tokens pieces scores merges vocabulary language python numbers"
).split()


def _training_lines() -> list[str]:
    rng = random.Random(7)
    lines = []
    for _ in range(3000):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", "!", "?", ",", ":"]))
    lines += ["Numbers 0 1 2 3 4 5 6 7 8 9 (a+b)*c = d; x_y-z [k] {v} 'q' \"w\" #@%&/"] * 20
    return lines


def _train(add_dummy_prefix: bool) -> Any:
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece is the reference for the llama path")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()),
        model_writer=model,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        character_coverage=1.0,
        # GGUF carries no normalization rules; llama.cpp only applies the "▁" convention.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=add_dummy_prefix,
        control_symbols=["<|im_start|>", "<|im_end|>"],
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def _gguf_metadata(sp: Any, *, add_space_prefix: bool) -> dict[str, Any]:
    """Metadata as llama.cpp's converter writes it for a SentencePiece model."""
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(TOKEN_UNKNOWN)
        elif sp.is_control(i):
            types.append(TOKEN_CONTROL)
        elif sp.is_unused(i):
            types.append(TOKEN_UNUSED)
        elif sp.is_byte(i):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    n = sp.get_piece_size()
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(),
        "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


@pytest.fixture(scope="module", params=[True, False], ids=["space-prefix", "no-space-prefix"])
def spm_pair(request: pytest.FixtureRequest) -> tuple[Any, Tokenizer]:
    sp = _train(request.param)
    return sp, Tokenizer.from_gguf_metadata(_gguf_metadata(sp, add_space_prefix=request.param))


SPM_TEXTS = [
    "the quick brown fox",
    "The lazy dog learns tokens.",
    "thequickbrownfoxjumps",
    "  two leading spaces and  double  spaces ",
    "line one\nline two\n\n\ttabbed",
    # Characters the model never saw: byte fallback.
    "naïve café € ½ — 😀 漢字 한국어",
    "Numbers 12345 and 3.14 (x+y)*z",
    "",
    " ",
    "x",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_spm_encode_matches_sentencepiece(spm_pair: tuple[Any, Tokenizer], text: str) -> None:
    sp, tok = spm_pair
    ids = tok.encode(text, add_bos=False)
    assert ids == sp.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(ids) == sp.decode(ids)


def test_spm_uses_byte_fallback(spm_pair: tuple[Any, Tokenizer]) -> None:
    sp, tok = spm_pair
    ids = tok.encode("€", add_bos=False)
    assert [tok.token_text(i) for i in ids if tok.token_type(i) == TOKEN_BYTE] == [
        "<0xE2>",
        "<0x82>",
        "<0xAC>",
    ]
    assert ids == sp.encode("€")


def test_spm_random_strings_match_sentencepiece(spm_pair: tuple[Any, Tokenizer]) -> None:
    sp, tok = spm_pair
    rng = random.Random(11)
    alphabet = "abcdefghijklmnopqrstuvwxyzTQ   ,.!?'0123456789é€😀漢\n\t"
    for _ in range(1500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        if rng.random() < 0.5:
            text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 5))) + text
        ids = tok.encode(text, add_bos=False)
        assert ids == sp.encode(text), text
        assert tok.decode(ids) == text


def test_spm_special_tokens_and_bos(spm_pair: tuple[Any, Tokenizer]) -> None:
    sp, tok = spm_pair
    assert tok.add_bos is True  # the default for SentencePiece vocabularies
    assert tok.bos_id == sp.bos_id() and tok.eos_id == sp.eos_id()
    assert sp.eos_id() in tok.eog_ids
    ids = tok.encode("the fox")
    assert ids == [sp.bos_id(), *sp.encode("the fox")]
    assert tok.encode("<s>the fox") == ids  # the BOS written in the text is not doubled
    start, end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
    chat = tok.encode("<|im_start|>the fox<|im_end|>", add_bos=False)
    assert chat[0] == start and chat[-1] == end
    assert end in tok.eog_ids
    assert tok.decode(chat, skip_special=True).strip() == "the fox"
    assert start not in tok.encode("<|im_start|>", add_bos=False, parse_special=False)


def test_spm_stream_never_splits_characters(spm_pair: tuple[Any, Tokenizer]) -> None:
    _, tok = spm_pair
    ids = tok.encode("the fox 😀 says 漢字 and € twice: 😀€", add_bos=True)
    _check_stream(tok, ids, expect_holding=True)
