"""Text <-> token ids for GGUF models and Hugging Face tokenizer folders.

Encoding runs on the Rust ``tokenizers`` library, set up to behave like llama.cpp for the
two GGUF vocabulary kinds Lowbit supports:

* ``gpt2``: byte-level BPE whose pre-tokenizer regexes are chosen by ``tokenizer.ggml.pre``;
* ``llama``: a SentencePiece vocabulary, run as BPE with merges derived from the piece
  scores, byte fallback to ``<0xXX>`` pieces and the "▁" whitespace convention.

Decoding is done here, from a per-token table of bytes, so that :meth:`Tokenizer.decode`
and :class:`StreamDecoder` always agree, byte for byte.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from lowbit.core.errors import TokenizerError

__all__ = [
    "TOKEN_BYTE",
    "TOKEN_CONTROL",
    "TOKEN_NORMAL",
    "TOKEN_UNKNOWN",
    "TOKEN_UNUSED",
    "TOKEN_USER_DEFINED",
    "StreamDecoder",
    "Tokenizer",
]

log = logging.getLogger(__name__)

# GGUF token types (tokenizer.ggml.token_type), the same codes as SentencePiece's.
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

# Texts of tokens that end a turn or a generation in common chat formats.
_EOG_TEXTS = frozenset(
    {
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|endoftext|>",
        "<|end|>",
        "</s>",
        "<end_of_turn>",
        "<|eom_id|>",
        "<|END_OF_TURN_TOKEN|>",
        "<｜end▁of▁sentence｜>",
        "<|return|>",
    }
)

# Pre-tokenizer regexes, applied in order like llama.cpp's regex lists (facts taken
# from the models' published tokenizer.json files).
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_RE = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _PreTok:
    """How one ``tokenizer.ggml.pre`` family splits text, and its llama.cpp defaults."""

    regexes: tuple[str, ...]
    ignore_merges: bool = False
    add_bos: bool = False


_GPT2 = _PreTok((_GPT2_RE,))
_LLAMA3 = _PreTok((_LLAMA3_RE,), ignore_merges=True, add_bos=True)
_QWEN2 = _PreTok((_QWEN2_RE,))
_DIGITS_THEN_GPT2 = _PreTok((r"\p{N}", _GPT2_RE))
_TEKKEN = _PreTok((_TEKKEN_RE,), ignore_merges=True, add_bos=True)
_GPT4O = _PreTok((_GPT4O_RE,))

_PRE_TOKENIZERS: dict[str, _PreTok] = {
    **dict.fromkeys(("default", "gpt2", "gpt-2", "phi-2", "olmo", "mpt", "jais", "roberta-bpe"), _GPT2),
    **dict.fromkeys(("llama3", "llama-bpe", "llama-v3", "falcon3", "dbrx", "smaug-bpe"), _LLAMA3),
    **dict.fromkeys(("qwen2", "stablelm2", "megrez", "deepseek-r1-qwen"), _QWEN2),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"), _DIGITS_THEN_GPT2),
    **dict.fromkeys(("tekken", "mistral", "pixtral"), _TEKKEN),
    "gpt-4o": _GPT4O,
}

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_chars() -> dict[str, int]:
    """The GPT-2 byte-level alphabet, character -> byte it stands for.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes are moved to
    U+0100 and up, in byte order, so that no vocabulary entry contains whitespace or
    control characters.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if chr(b) not in table)
    for n, b in enumerate(shifted):
        table[chr(0x100 + n)] = b
    return table


_BYTE_LEVEL_CHARS = _byte_level_chars()


def _byte_level_bytes(token: str) -> bytes:
    # A character outside the alphabet would be a malformed vocabulary entry; keep it
    # as its UTF-8 rather than dropping it silently.
    out = bytearray()
    for ch in token:
        b = _BYTE_LEVEL_CHARS.get(ch)
        if b is None:
            out += ch.encode("utf-8")
        else:
            out.append(b)
    return bytes(out)


def _spm_bytes(token: str, token_type: int) -> bytes:
    if token_type == TOKEN_BYTE:
        m = _BYTE_TOKEN.fullmatch(token)
        if m:
            return bytes((int(m.group(1), 16),))
    if token_type == TOKEN_CONTROL:
        return token.encode("utf-8")
    return token.replace("▁", " ").encode("utf-8")


class Tokenizer:
    """Encodes text to token ids and decodes them back.

    Build one with :meth:`from_gguf_metadata` or :meth:`from_hf_file`. It is safe to use
    from several threads.

    Attributes:
        vocab_size: Number of token ids (one more than the largest id).
        bos_id: Beginning-of-sequence token, or None when the model has none.
        eos_id: End-of-sequence token, or None.
        add_bos: Whether :meth:`encode` prepends ``bos_id`` by default.
        eog_ids: Every id that ends a generation (eos, end-of-turn and the like).
        chat_template: The model's Jinja chat template, or None.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        tokens: Sequence[str],
        token_types: Sequence[int],
        pieces: Sequence[bytes],
        strip_leading_space: bool,
        bos_id: int | None,
        eos_id: int | None,
        add_bos: bool,
        extra_eog_ids: Iterable[int] = (),
        chat_template: str | None = None,
    ) -> None:
        """Wrap a configured ``tokenizers.Tokenizer``; use the ``from_*`` constructors instead.

        Args:
            backend: The encoder, with special and user-defined tokens already added.
            tokens: Vocabulary entry of every id.
            token_types: GGUF token type of every id.
            pieces: Bytes that every id decodes to.
            strip_leading_space: Drop one leading space of decoded text (SentencePiece's
                dummy prefix).
            bos_id: Beginning-of-sequence id or None.
            eos_id: End-of-sequence id or None.
            add_bos: Default for :meth:`encode`'s ``add_bos``.
            extra_eog_ids: End-of-generation ids besides eos and the well-known texts.
            chat_template: Jinja chat template shipped with the model, or None.

        Raises:
            TokenizerError: The per-token lists differ in length.
        """
        n = len(tokens)
        if len(token_types) != n or len(pieces) != n:
            raise TokenizerError(
                f"tokenizer tables disagree: {n} tokens, {len(token_types)} types, {len(pieces)} pieces"
            )
        self._backend = backend
        self._tokens = list(tokens)
        self._types = list(token_types)
        self._pieces = list(pieces)
        self._strip_leading_space = strip_leading_space
        # encode_special_tokens is a setting of the backend, so flipping it for one call
        # must not race with another thread's call.
        self._lock = threading.Lock()
        self.vocab_size = n
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = add_bos
        self.chat_template = chat_template
        eog = {i for i in (eos_id, *extra_eog_ids) if i is not None and 0 <= i < n}
        eog.update(
            i
            for i, (text, kind) in enumerate(zip(self._tokens, self._types, strict=True))
            if kind in (TOKEN_CONTROL, TOKEN_USER_DEFINED) and text in _EOG_TEXTS
        )
        self.eog_ids: frozenset[int] = frozenset(eog)

    # ----------------------------------------------------------------- builders

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        """Build the tokenizer described by a GGUF file's ``tokenizer.*`` keys.

        Args:
            meta: The file's metadata as plain values (``GGUFFile.metadata``).

        Returns:
            A ready tokenizer.

        Raises:
            TokenizerError: The vocabulary is missing, a per-token list has the wrong length,
                the merges do not fit the vocabulary, or ``tokenizer.ggml.model`` is not
                ``gpt2`` or ``llama``.
        """
        model = meta.get("tokenizer.ggml.model")
        tokens = meta.get("tokenizer.ggml.tokens")
        if model in (None, "none", "no_vocab") or not tokens:
            raise TokenizerError("the model has no vocabulary (tokenizer.ggml.tokens is missing or empty)")
        if model not in ("gpt2", "llama"):
            raise TokenizerError(f"unsupported tokenizer model {model!r} (Lowbit reads 'gpt2' and 'llama')")
        tokens = [str(t) for t in tokens]
        n = len(tokens)
        types = _per_token(meta, "tokenizer.ggml.token_type", n)
        if types is None:
            types = [TOKEN_BYTE if _BYTE_TOKEN.fullmatch(t) else TOKEN_NORMAL for t in tokens]
        types = [int(t) for t in types]

        def special_id(key: str) -> int | None:
            value = meta.get(key)
            if value is None:
                return None
            if not 0 <= int(value) < n:
                log.warning("ignoring %s = %s: outside the vocabulary of %d tokens", key, value, n)
                return None
            return int(value)

        # A duplicated entry (llama.cpp refuses those) keeps its first id for encoding.
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)

        if model == "gpt2":
            pre_name = str(meta.get("tokenizer.ggml.pre") or "default")
            backend, pieces, add_bos_default = _build_gpt2(meta, tokens, types, vocab, pre_name)
            strip = False
        else:
            scores = _per_token(meta, "tokenizer.ggml.scores", n)
            if scores is None:
                # Pieces of a SentencePiece BPE vocabulary are stored best first.
                scores = [-float(i) for i in range(n)]
            add_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
            unk_id = special_id("tokenizer.ggml.unknown_token_id")
            backend, pieces = _build_spm(tokens, types, [float(s) for s in scores], vocab, unk_id, add_prefix)
            strip = add_prefix
            add_bos_default = True
        _add_special_tokens(backend, tokens, types)

        bos_id = special_id("tokenizer.ggml.bos_token_id")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
        if add_bos and bos_id is None:
            log.warning("the model asks for a BOS token but names none; not adding one")
            add_bos = False
        extra = (special_id("tokenizer.ggml.eot_token_id"), special_id("tokenizer.ggml.eom_token_id"))
        return cls(
            backend,
            tokens=tokens,
            token_types=types,
            pieces=pieces,
            strip_leading_space=strip,
            bos_id=bos_id,
            eos_id=special_id("tokenizer.ggml.eos_token_id"),
            add_bos=add_bos,
            extra_eog_ids=[i for i in extra if i is not None],
            chat_template=meta.get("tokenizer.chat_template"),
        )

    @classmethod
    def from_hf_file(cls, tokenizer_json: Path, tokenizer_config: Path | None = None) -> Tokenizer:
        """Load a Hugging Face ``tokenizer.json``, with its ``tokenizer_config.json`` if given.

        Without a config, BOS is taken from the tokenizer's own post-processor (if it adds
        one), and EOS stays unknown; the well-known end-of-turn texts still count as EOG.

        Args:
            tokenizer_json: Path of ``tokenizer.json``.
            tokenizer_config: Path of ``tokenizer_config.json``; it supplies ``bos_token``,
                ``eos_token``, ``add_bos_token`` and ``chat_template``.

        Returns:
            A ready tokenizer.

        Raises:
            TokenizerError: A file is missing, is not valid JSON, or does not describe a
                tokenizer.
        """
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_json))
        except Exception as exc:  # the Rust side raises a bare Exception
            raise TokenizerError(f"cannot load {tokenizer_json}: {exc}") from exc
        config: dict[str, Any] = {}
        if tokenizer_config is not None:
            try:
                config = json.loads(Path(tokenizer_config).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise TokenizerError(f"cannot read {tokenizer_config}: {exc}") from exc
            if not isinstance(config, dict):
                raise TokenizerError(f"{tokenizer_config} does not hold a JSON object")

        added = backend.get_added_tokens_decoder()
        n = max([backend.get_vocab_size(with_added_tokens=True) - 1, *added]) + 1
        tokens = [backend.id_to_token(i) or "" for i in range(n)]
        types = [TOKEN_NORMAL] * n
        for i, tok in added.items():
            types[i] = TOKEN_CONTROL if tok.special else TOKEN_USER_DEFINED
        decoder_spec = json.loads(backend.to_str()).get("decoder") or {}
        pieces, strip = _hf_pieces(backend, decoder_spec, tokens, types)

        def config_id(key: str) -> int | None:
            value = config.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            return backend.token_to_id(value) if isinstance(value, str) else None

        # What the post-processor adds around a text tells the model's BOS habit.
        probe = backend.encode("", add_special_tokens=True).ids
        auto_bos = probe[0] if probe and types[probe[0]] == TOKEN_CONTROL else None
        bos_id = config_id("bos_token") if "bos_token" in config else auto_bos
        add_bos = bool(config.get("add_bos_token", auto_bos is not None and auto_bos == bos_id))
        if add_bos and bos_id is None:
            add_bos = False
        return cls(
            backend,
            tokens=tokens,
            token_types=types,
            pieces=pieces,
            strip_leading_space=strip,
            bos_id=bos_id,
            eos_id=config_id("eos_token"),
            add_bos=add_bos,
            chat_template=_config_template(config.get("chat_template")),
        )

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (do not change its settings)."""
        return self._backend

    @property
    def tokens(self) -> list[str]:
        """Vocabulary entry of every id (a copy)."""
        return list(self._tokens)

    @property
    def token_types(self) -> list[int]:
        """GGUF token type of every id (a copy)."""
        return list(self._types)

    @property
    def strip_leading_space(self) -> bool:
        """Whether decoding drops SentencePiece's dummy-prefix space."""
        return self._strip_leading_space

    def save_hf(self, path: str | Path) -> None:
        """Write the tokenizer as a Hugging Face ``tokenizer.json``.

        A tokenizer built from GGUF metadata decodes through its own byte table, so a
        decoder that gives the same text is attached to the saved copy.
        """
        backend = tokenizers.Tokenizer.from_str(self._backend.to_str())
        if backend.decoder is None:
            if backend.normalizer is not None:  # SentencePiece: "▁" is a space, <0xNN> a byte
                steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
                if self._strip_leading_space:
                    steps.append(decoders.Strip(" ", 1, 0))
                backend.decoder = decoders.Sequence(steps)
            else:
                backend.decoder = decoders.ByteLevel()
        backend.save(str(path))

    # ----------------------------------------------------------------- queries

    def token_text(self, token_id: int) -> str:
        """The vocabulary entry of a token, as stored (``Ġthe``, ``▁the``, ``<|im_end|>``...).

        Args:
            token_id: A token id.

        Returns:
            The entry; use :meth:`decode` for the text the token stands for.

        Raises:
            TokenizerError: ``token_id`` is outside the vocabulary.
        """
        self._check_id(token_id)
        return self._tokens[token_id]

    def token_type(self, token_id: int) -> int:
        """The GGUF token type of a token (``TOKEN_NORMAL``, ``TOKEN_CONTROL``...).

        Args:
            token_id: A token id.

        Returns:
            The type code.

        Raises:
            TokenizerError: ``token_id`` is outside the vocabulary.
        """
        self._check_id(token_id)
        return self._types[token_id]

    def encode(self, text: str, *, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        """Turn text into token ids.

        Args:
            text: The text.
            add_bos: Prepend the BOS token; None uses the model's own setting. A BOS the text
                already starts with (as a parsed special token) is not doubled.
            parse_special: Match control tokens such as ``<|im_start|>`` written in the text
                as single tokens. When False they are tokenized as plain text (user-defined
                tokens are still matched, as in llama.cpp).

        Returns:
            The token ids.

        Raises:
            TokenizerError: The text could not be tokenized.
        """
        try:
            with self._lock:
                self._backend.encode_special_tokens = not parse_special
                ids = self._backend.encode(text, add_special_tokens=False).ids
        except Exception as exc:  # the Rust side raises a bare Exception
            raise TokenizerError(f"cannot tokenize the text: {exc}") from exc
        if add_bos is None:
            add_bos = self.add_bos
        if add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Turn token ids back into text.

        Args:
            ids: Token ids.
            skip_special: Leave out control tokens (BOS, EOS, ``<|im_start|>``...).

        Returns:
            The text; bytes that do not form valid UTF-8 become U+FFFD.

        Raises:
            TokenizerError: An id is outside the vocabulary.
        """
        data = b"".join(self._piece(i, skip_special) for i in ids)
        if self._strip_leading_space and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, *, skip_special: bool = False) -> StreamDecoder:
        """A decoder for tokens that arrive one at a time.

        Args:
            skip_special: Leave out control tokens, as in :meth:`decode`.

        Returns:
            A new :class:`StreamDecoder`.
        """
        return StreamDecoder(self, skip_special=skip_special)

    # ----------------------------------------------------------------- internals

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})")

    def _piece(self, token_id: int, skip_special: bool) -> bytes:
        self._check_id(token_id)
        if skip_special and self._types[token_id] == TOKEN_CONTROL:
            return b""
        return self._pieces[token_id]


class StreamDecoder:
    """Decodes a token stream to text without ever emitting half a character.

    Bytes that end in an incomplete UTF-8 sequence (a multibyte character split across
    byte-level or ``<0xXX>`` tokens) are held until the rest arrives. Joining every
    :meth:`push` result and the final :meth:`flush` gives exactly ``decode(ids)``.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False) -> None:
        """Start an empty stream.

        Args:
            tokenizer: The tokenizer whose ids will be pushed.
            skip_special: Leave out control tokens.
        """
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True

    def push(self, token_id: int) -> str:
        """Add one token.

        Args:
            token_id: The next token id.

        Returns:
            The text completed by this token, possibly empty.

        Raises:
            TokenizerError: ``token_id`` is outside the vocabulary.
        """
        data = self._tokenizer._piece(token_id, self._skip_special)
        if self._at_start and data:
            # Mirrors decode(): only the very first byte of the whole text can be stripped.
            self._at_start = False
            if self._tokenizer._strip_leading_space and data.startswith(b" "):
                data = data[1:]
        return self._utf8.decode(data)

    def flush(self) -> str:
        """End the stream and return what was held back.

        Returns:
            The remaining text, with U+FFFD for an incomplete sequence left at the end.
            The decoder is then ready for a new stream.
        """
        rest = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._at_start = True
        return rest


# --------------------------------------------------------------------- helpers


def _per_token(meta: Mapping[str, Any], key: str, n: int) -> list[Any] | None:
    values = meta.get(key)
    if values is None:
        return None
    if len(values) != n:
        raise TokenizerError(f"{key} has {len(values)} entries but the vocabulary has {n} tokens")
    return list(values)


def _build_gpt2(
    meta: Mapping[str, Any], tokens: list[str], types: list[int], vocab: dict[str, int], pre_name: str
) -> tuple[tokenizers.Tokenizer, list[bytes], bool]:
    raw_merges = meta.get("tokenizer.ggml.merges")
    if not raw_merges:
        raise TokenizerError("a 'gpt2' tokenizer needs tokenizer.ggml.merges, which is missing")
    merges = []
    for m in raw_merges:
        # Search from 1 so that a merge whose left part is a lone space still splits right.
        cut = m.find(" ", 1)
        if cut < 0:
            raise TokenizerError(f"malformed merge {m!r} in tokenizer.ggml.merges")
        merges.append((m[:cut], m[cut + 1 :]))
    pre = _PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        log.warning("unknown pre-tokenizer %r; splitting text with GPT-2's regex", pre_name)
        pre = _GPT2
    try:
        model = models.BPE(vocab, merges, ignore_merges=pre.ignore_merges)
    except Exception as exc:  # the Rust side raises a bare Exception
        raise TokenizerError(f"the merges do not fit the vocabulary: {exc}") from exc
    backend = tokenizers.Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    # Control and user-defined entries are stored as plain text by the GGUF converter.
    pieces = [
        t.encode("utf-8") if k in (TOKEN_CONTROL, TOKEN_USER_DEFINED) else _byte_level_bytes(t)
        for t, k in zip(tokens, types, strict=True)
    ]
    return backend, pieces, pre.add_bos


def _build_spm(
    tokens: list[str],
    types: list[int],
    scores: list[float],
    vocab: dict[str, int],
    unk_id: int | None,
    add_prefix: bool,
) -> tuple[tokenizers.Tokenizer, list[bytes]]:
    # SentencePiece BPE merges the adjacent pair whose concatenation is the
    # highest-scoring normal piece. A BPE merge list ranked by that score, with every
    # way of splitting each piece into two known pieces, reproduces it.
    normal = {t: i for t, i in vocab.items() if types[i] == TOKEN_NORMAL}
    ranked = sorted(normal.values(), key=lambda i: (-scores[i], i))
    merges = []
    for i in ranked:
        piece = tokens[i]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                merges.append((left, right))
    if unk_id is None:
        unk_id = next((i for i, k in enumerate(types) if k == TOKEN_UNKNOWN), None)
    byte_fallback = any(k == TOKEN_BYTE for k in types)
    try:
        model = models.BPE(
            vocab,
            merges,
            unk_token=tokens[unk_id] if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    except Exception as exc:  # the Rust side raises a bare Exception
        raise TokenizerError(f"cannot build the SentencePiece vocabulary: {exc}") from exc
    backend = tokenizers.Tokenizer(model)
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "▁")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence(steps)
    pieces = [_spm_bytes(t, k) for t, k in zip(tokens, types, strict=True)]
    return backend, pieces


def _add_special_tokens(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    control = [t for t, k in zip(tokens, types, strict=True) if k == TOKEN_CONTROL and t]
    user = [t for t, k in zip(tokens, types, strict=True) if k == TOKEN_USER_DEFINED and t]
    # normalized=False: match the raw text, before the "▁" or byte-level rewriting.
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _hf_pieces(
    backend: tokenizers.Tokenizer, decoder: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tuple[list[bytes], bool]:
    """Per-token bytes for a Hugging Face tokenizer, from the kind of its decoder."""
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    kinds = {p.get("type") for p in parts}
    added = (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    if "ByteLevel" in kinds:
        return [
            t.encode("utf-8") if k in added else _byte_level_bytes(t)
            for t, k in zip(tokens, types, strict=True)
        ], False
    if "Metaspace" in kinds or ("Replace" in kinds and "ByteFallback" in kinds):
        meta = next((p for p in parts if p.get("type") == "Metaspace"), None)
        if meta is not None:
            strip = meta.get("prepend_scheme", "always") != "never" and meta.get("add_prefix_space", True)
        else:
            strip = any(p.get("type") == "Strip" and p.get("start", 0) > 0 for p in parts)
        byte_fallback = "ByteFallback" in kinds
        pieces = []
        for t, k in zip(tokens, types, strict=True):
            if byte_fallback and k == TOKEN_NORMAL and _BYTE_TOKEN.fullmatch(t):
                k = TOKEN_BYTE
            # Like the Replace decoder, user-defined tokens get their "▁" turned to spaces too.
            pieces.append(_spm_bytes(t, k))
        return pieces, bool(strip)
    log.warning("unfamiliar decoder %s; decoding token by token", sorted(k for k in kinds if k))
    return [backend.decode([i], skip_special_tokens=False).encode("utf-8") for i in range(len(tokens))], False


def _config_template(value: Any) -> str | None:
    # Older configs hold a list of named templates; "default" is the chat one.
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default", next(iter(named.values()), None))
    return value if isinstance(value, str) else None
