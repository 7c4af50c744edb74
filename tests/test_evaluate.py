"""The accuracy evaluator (KL divergence & co. against a reference) and ``lowbit eval``.

Expected values are computed here from the definitions, with numpy, on the full logits of
both models; the evaluator must agree with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core import evaluate as ev
from lowbit.core.cli_eval import add_eval_parser, cmd_eval
from lowbit.core.engine import CancelToken
from lowbit.core.errors import CancelledError, EvaluationError, ModelNotFoundError
from lowbit.core.gguf_file import open_gguf
from lowbit.core.model import Model, log_softmax
from lowbit.core.worker import Worker
from tests.tiny_models import make_tiny_model, rewrite_gguf

WORDS = (
    "the of and to in is was he for it with as his on be at by had are but from or have an they which "
    "one you were her all she there would their we him been has when who will more no if out so said"
).split()


def word_text(n_words: int, seed: int = 0) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, n_words))


TEXT = word_text(70)  # 262 tokens with the tiny models' vocabulary: 8 chunks of 32 and a rest
SMALL = ev.EvalSettings(n_ctx=32, top_k=512)  # k above the tiny vocabulary (288): exact KLD


def _perturb(name: str, std: float, seed: int = 1):
    rng = np.random.default_rng(seed)

    def fn(t):
        data = np.array(t.data)
        if t.name == name:
            data = data + (rng.standard_normal(data.shape) * std).astype(np.float32)
        return data, t.tensor_type

    return fn


def _same(t):
    return t.data, t.tensor_type


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny F32 reference with an untied output (soft distributions) and variants of it."""
    d = tmp_path_factory.mktemp("eval-models")
    ref = make_tiny_model(d / "ref.gguf", tied=False).path
    out = {"ref": ref}
    rewrite_gguf(ref, d / "cand.gguf", _perturb("output.weight", 0.01))
    out["cand"] = d / "cand.gguf"
    bos = {"tokenizer.ggml.add_bos_token": True}
    rewrite_gguf(ref, d / "ref_bos.gguf", _same, kv=bos)
    rewrite_gguf(out["cand"], d / "cand_bos.gguf", _same, kv=bos)
    out["ref_bos"], out["cand_bos"] = d / "ref_bos.gguf", d / "cand_bos.gguf"
    tokens = [str(t) for t in open_gguf(ref).metadata["tokenizer.ggml.tokens"]]
    tokens[100] = "something else"
    rewrite_gguf(ref, d / "other_vocab.gguf", _same, kv={"tokenizer.ggml.tokens": tokens})
    out["other_vocab"] = d / "other_vocab.gguf"
    return out


@pytest.fixture()
def forward_calls(monkeypatch) -> Counter[str]:
    """Counts Model.forward calls per model file name."""
    calls: Counter[str] = Counter()
    original = Model.forward

    def counting(self, tokens, pos, **kw):
        calls[self.path.name] += 1
        return original(self, tokens, pos, **kw)

    monkeypatch.setattr(Model, "forward", counting)
    return calls


def _run(models, cands, tmp_path: Path, settings: ev.EvalSettings = SMALL, **kw) -> ev.EvalReport:
    kw.setdefault("text", TEXT)
    return ev.evaluate(
        models["ref"] if "ref" not in kw else kw.pop("ref"),
        [models[c] if isinstance(c, str) else c for c in cands],
        settings=settings,
        n_threads=1,
        cache_dir=tmp_path / "cache",
        **kw,
    )


# -- the definition ---------------------------------------------------------------------------


def _mean_err(x: np.ndarray) -> tuple[float, float]:
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(len(x)))


def expected(ref: Path, cand: Path, text: str, n_ctx: int) -> dict[str, float]:
    """The metrics from their definitions: full vocabulary, llama.cpp's chunks, second halves."""
    with Model.load(ref, n_ctx=n_ctx, n_threads=1) as mp, Model.load(cand, n_ctx=n_ctx, n_threads=1) as mq:
        tok = mp.tokenizer
        ids = tok.encode(text, parse_special=False)
        assert len(ids) % n_ctx, "the text should leave a partial chunk, which is dropped"
        kld, same, nll_p, nll_q, dp = [], [], [], [], []
        for c in range(len(ids) // n_ctx):
            chunk = list(ids[c * n_ctx : (c + 1) * n_ctx])
            if tok.add_bos:
                chunk[0] = tok.bos_id
            lp = log_softmax(mp.forward(chunk, 0, logits_all=True))
            lq = log_softmax(mq.forward(chunk, 0, logits_all=True))
            for j in range(n_ctx // 2, n_ctx - 1):
                y = chunk[j + 1]
                kld.append(float(np.sum(np.exp(lp[j]) * (lp[j] - lq[j]))))
                same.append(bool(lp[j].argmax() == lq[j].argmax()))
                nll_p.append(-lp[j][y])
                nll_q.append(-lq[j][y])
                dp.append(math.exp(lq[j][y]) - math.exp(lp[j][y]))
    kld_a, same_a, nll_p_a, nll_q_a = map(np.asarray, (kld, same, nll_p, nll_q))
    n = len(kld_a)
    p_same = float(same_a.mean())
    ms, ms_err = _mean_err(np.asarray(dp) ** 2)
    return {
        "n_tokens": n,
        "n_chunks": len(ids) // n_ctx,
        "kld_mean": _mean_err(kld_a)[0],
        "kld_stderr": _mean_err(kld_a)[1],
        "kld_p99": float(np.percentile(kld_a, 99)),
        "same_top_pct": 100 * p_same,
        "same_top_stderr": 100 * math.sqrt(p_same * (1 - p_same) / (n - 1)),
        "ppl": math.exp(nll_q_a.mean()),
        "ppl_ref": math.exp(nll_p_a.mean()),
        "ln_ppl_ratio_stderr": _mean_err(nll_q_a - nll_p_a)[1],
        "rms_dp_pct": 100 * math.sqrt(ms),
        "rms_dp_stderr": 100 * 0.5 / math.sqrt(ms) * ms_err,
    }


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_matches_the_definition(models, tmp_path: Path, bos: bool) -> None:
    ref, cand = (models["ref_bos"], models["cand_bos"]) if bos else (models["ref"], models["cand"])
    report = _run(models, [cand], tmp_path, ref=ref)
    want = expected(ref, cand, TEXT, SMALL.n_ctx)
    got = report.candidates[0]
    assert report.n_chunks == want["n_chunks"] > 1
    assert got.n_tokens == report.n_tokens == want["n_tokens"] == want["n_chunks"] * (SMALL.n_ctx // 2 - 1)
    # the reference's top-k log-probabilities are stored as float32: KLD to ~1e-7
    for key in ("kld_mean", "kld_stderr", "kld_p99"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
    assert 0 < got.same_top_pct < 100, "the perturbation should change some top tokens"
    for key in ("same_top_pct", "same_top_stderr", "ppl", "ppl_ref", "ln_ppl_ratio_stderr"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9), key
    for key in ("rms_dp_pct", "rms_dp_stderr"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-6), key
    assert got.ppl_ratio == pytest.approx(got.ppl / got.ppl_ref, rel=1e-12)
    assert report.ppl_ref == pytest.approx(want["ppl_ref"], rel=1e-9)


def test_a_file_against_itself(models, tmp_path: Path) -> None:
    got = _run(models, ["ref"], tmp_path).candidates[0]
    assert abs(got.kld_mean) < 1e-6 and abs(got.kld_p99) < 1e-6 and abs(got.kld_max) < 1e-6
    assert got.same_top_pct == 100 and got.same_top_stderr == 0
    assert got.ppl == pytest.approx(got.ppl_ref, rel=1e-12) and got.ln_ppl_ratio == pytest.approx(
        0, abs=1e-12
    )
    assert got.rms_dp_pct == pytest.approx(0, abs=1e-9)


def test_top_k_bound_and_tail_estimate(models, tmp_path: Path) -> None:
    exact = _run(models, ["cand"], tmp_path).candidates[0]
    few = {"n_ctx": 32, "top_k": 8}
    bound = _run(models, ["cand"], tmp_path, settings=ev.EvalSettings(**few, tail_samples=0)).candidates[0]
    est = _run(models, ["cand"], tmp_path, settings=ev.EvalSettings(**few, tail_samples=64)).candidates[0]
    assert 0 < bound.kld_mean < exact.kld_mean  # merging the tail into one outcome loses divergence
    assert bound.kld_mean < est.kld_mean
    assert abs(est.kld_mean - exact.kld_mean) < 0.2 * (exact.kld_mean - bound.kld_mean)
    # everything else does not depend on how the distributions are stored
    for r in (bound, est):
        for key in ("same_top_pct", "ppl", "ppl_ref", "rms_dp_pct"):
            assert getattr(r, key) == pytest.approx(getattr(exact, key), rel=1e-12), key


def test_chunking_rule() -> None:
    toks = list(range(10, 30))  # 20 tokens
    chunks = ev.chunk_tokens(toks, n_ctx=6)
    assert chunks.tolist() == [toks[0:6], toks[6:12], toks[12:18]]  # the last 2 tokens are dropped
    assert ev.chunk_tokens(toks, n_ctx=6, bos_id=1).tolist() == [
        [1, *toks[1:6]],
        [1, *toks[7:12]],
        [1, *toks[13:18]],
    ]
    assert ev.chunk_tokens(toks, n_ctx=6, n_chunks=2).tolist() == [toks[0:6], toks[6:12]]
    spread = ev.chunk_tokens(list(range(45)), n_ctx=4, n_chunks=3, spread=True)
    assert spread.tolist() == [[0, 1, 2, 3], [20, 21, 22, 23], [40, 41, 42, 43]]  # chunks 0, 5, 10 of 11
    # n_ctx 6: positions 3 and 4 are scored, predicting tokens 4 and 5 of each chunk
    assert ev.scored_targets(chunks).tolist() == [14, 15, 20, 21, 26, 27]


# -- the cache ------------------------------------------------------------------------------


def test_cache_is_used_and_rebuilt_when_inputs_change(models, tmp_path: Path, forward_calls) -> None:
    first = _run(models, ["cand"], tmp_path)
    assert not first.reference_cached and forward_calls["ref.gguf"] > 0 and forward_calls["cand.gguf"] > 0
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

    forward_calls.clear()
    again = _run(models, ["cand"], tmp_path)
    assert again.reference_cached and forward_calls["ref.gguf"] == 0 and forward_calls["cand.gguf"] > 0
    assert again.to_dict() == {**first.to_dict(), "reference_cached": True}

    changes = {
        "n_ctx": {"settings": ev.EvalSettings(n_ctx=16, top_k=512)},
        "n_chunks": {"settings": ev.EvalSettings(n_ctx=32, n_chunks=2, top_k=512)},
        "top_k": {"settings": ev.EvalSettings(n_ctx=32, top_k=64)},
        "tail_samples": {"settings": ev.EvalSettings(n_ctx=32, top_k=64, tail_samples=8)},
        "text": {"text": word_text(70, seed=5)},
    }
    for what, kw in changes.items():
        forward_calls.clear()
        assert not _run(models, ["cand"], tmp_path, **kw).reference_cached, what
        assert forward_calls["ref.gguf"] > 0, what

    # the same path with other weights is another model
    ref2 = tmp_path / "ref.gguf"
    shutil.copy(models["ref"], ref2)
    assert _run(models, ["cand"], tmp_path, ref=ref2).reference_cached  # same bytes, same entry
    rewrite_gguf(models["ref"], ref2, _perturb("blk.0.ffn_up.weight", 0.01))
    forward_calls.clear()
    assert not _run(models, ["cand"], tmp_path, ref=ref2).reference_cached
    assert forward_calls["ref.gguf"] > 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong shape"])
def test_damaged_cache_is_a_miss(models, tmp_path: Path, forward_calls, damage: str) -> None:
    first = _run(models, ["cand"], tmp_path)
    (path,) = (tmp_path / "cache").glob("*.npz")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not a zip" * 100)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # a whole file whose arrays do not fit the key
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["top_logp"] = arrays["top_logp"][:-1]
        with path.open("wb") as f:
            np.savez(f, **arrays)
    forward_calls.clear()
    again = _run(models, ["cand"], tmp_path)
    assert not again.reference_cached and forward_calls["ref.gguf"] > 0
    assert again.candidates == first.candidates
    forward_calls.clear()
    assert _run(models, ["cand"], tmp_path).reference_cached  # rewritten whole
    assert forward_calls["ref.gguf"] == 0


def test_cancel_stops_within_a_chunk_and_writes_nothing(models, tmp_path: Path, forward_calls, monkeypatch):
    cancel = CancelToken()
    interrupted: list[str] = []
    original_cancel = Model.cancel

    def recording_cancel(self):
        interrupted.append(self.path.name)
        original_cancel(self)

    monkeypatch.setattr(Model, "cancel", recording_cancel)

    def progress(stage, done, total, message):
        if stage == "reference" and done == 1:
            cancel.cancel()

    with pytest.raises(CancelledError):
        _run(models, ["cand"], tmp_path, progress=progress, cancel=cancel)
    assert forward_calls["ref.gguf"] == 2  # the two halves of the first chunk, nothing after
    assert forward_calls["cand.gguf"] == 0
    assert interrupted == ["ref.gguf"]  # a running forward pass would have been stopped too
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

    # cancelled among the candidates: the finished reference pass is kept, whole
    cancel = CancelToken()

    def progress2(stage, done, total, message):
        if stage == "candidate" and done > 0:
            cancel.cancel()

    with pytest.raises(CancelledError):
        _run(models, ["cand"], tmp_path, progress=progress2, cancel=cancel)
    assert _run(models, ["cand"], tmp_path).reference_cached


def test_worker_runs_and_cancels_evaluations(models, tmp_path: Path) -> None:
    worker = Worker()
    try:
        events = []
        job = worker.evaluate(
            models["ref"], [models["cand"]], text=TEXT, settings=SMALL, n_threads=1,
            cache_dir=tmp_path, on_progress=events.append,
        )  # fmt: skip
        report = job.result(timeout=60)
        assert report.candidates[0].file == str(models["cand"])
        assert events[-1].done == events[-1].total and events[-1].job == "evaluate"
        job = worker.evaluate(
            models["ref"], [models["cand"]], text=TEXT, settings=SMALL, n_threads=1, use_cache=False,
            on_progress=lambda p: p.done and worker.cancel_current(),
        )  # fmt: skip
        with pytest.raises(CancelledError):
            job.result(timeout=60)
    finally:
        worker.shutdown()


# -- bad input ------------------------------------------------------------------------------


def test_bad_input_is_refused_before_running(models, tmp_path: Path, forward_calls) -> None:
    with pytest.raises(EvaluationError, match="empty"):
        _run(models, ["cand"], tmp_path, text="")
    with Model.load(models["ref"], n_ctx=32) as m:
        n_tokens = len(m.tokenizer.encode("a few words"))
    with pytest.raises(EvaluationError, match=rf"only {n_tokens} tokens.* at least 32"):
        _run(models, ["cand"], tmp_path, text="a few words")
    with pytest.raises(EvaluationError, match=r"different vocabularies \(token 100"):
        _run(models, ["cand", "other_vocab"], tmp_path)
    with pytest.raises(ModelNotFoundError, match="reference model not found"):
        _run(models, ["cand"], tmp_path, ref=tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match=r"candidate model not found.*missing"):
        _run(models, ["cand", tmp_path / "missing.gguf"], tmp_path)
    with pytest.raises(EvaluationError, match="no candidate"):
        _run(models, [], tmp_path)
    with pytest.raises(EvaluationError, match="text file not found"):
        _run(models, ["cand"], tmp_path, text=None, text_file=tmp_path / "none.txt")
    assert sum(forward_calls.values()) == 0
    for bad in ({"n_ctx": 4}, {"n_chunks": 0}, {"top_k": 0}, {"tail_samples": -1}):
        with pytest.raises(EvaluationError):
            ev.EvalSettings(**bad)


def test_vocabulary_size_mismatch(models, tmp_path: Path) -> None:
    small = make_tiny_model(tmp_path / "m.gguf", tied=False)
    n = small.n_vocab - 10  # the last tokens are unused ones

    def cut_vocab(t):  # a model with 10 fewer rows in its embedding and output
        data = np.array(t.data)
        if t.name in ("token_embd.weight", "output.weight"):
            data = data[:n]
        return data, t.tensor_type

    tokens = [str(x) for x in open_gguf(small.path).metadata["tokenizer.ggml.tokens"]]
    types = [int(x) for x in open_gguf(small.path).metadata["tokenizer.ggml.token_type"]]
    rewrite_gguf(
        small.path,
        tmp_path / "cut.gguf",
        cut_vocab,
        kv={"tokenizer.ggml.tokens": tokens[:n], "tokenizer.ggml.token_type": types[:n]},
    )
    with pytest.raises(EvaluationError, match=rf"vocabulary of {n} tokens.* {small.n_vocab}"):
        _run(models, [tmp_path / "cut.gguf"], tmp_path)


def test_texts(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("héllo wörld", encoding="utf-8")
    assert ev.load_text(f) == ev.EvalText("héllo wörld", str(f))
    f.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(EvaluationError, match="not UTF-8"):
        ev.load_text(f)
    from importlib import resources

    builtin = resources.files("lowbit.resources").joinpath("texts", "eval.txt")
    if builtin.is_file():
        assert ev.load_text() == ev.EvalText(builtin.read_text(encoding="utf-8"), "built-in")
    else:
        with pytest.raises(EvaluationError, match="built-in"):
            ev.load_text()


def test_file_hash_follows_the_content(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"a" * 100_000)
    assert ev.file_sha256(f) == hashlib.sha256(b"a" * 100_000).hexdigest()
    f.write_bytes(b"b" * 100_000)  # same size, rewritten in place
    assert ev.file_sha256(f) == hashlib.sha256(b"b" * 100_000).hexdigest()
    with pytest.raises(ModelNotFoundError):
        ev.file_sha256(tmp_path / "none")


# -- the command ----------------------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lowbit")
    add_eval_parser(parser.add_subparsers(dest="command"))
    return cmd_eval(parser.parse_args(["eval", *map(str, argv)]))


REQUIRED_KEYS = {
    "file",
    "size_mib",
    "bpw",
    "kld_mean",
    "kld_stderr",
    "kld_p99",
    "same_top_pct",
    "ppl",
    "ppl_ref",
}
EXTRA_KEYS = {"same_top_stderr", "ppl_ratio", "rms_dp_pct", "n_tokens"}


def test_cli_json_matches_the_library(models, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    argv = ["--reference", models["ref"], models["cand"], models["ref"], "--text-file", text, "--ctx", 32]
    argv += ["--threads", 1, "--json", "--cache-dir", tmp_path / "c"]
    assert _cli(argv) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert "Reference ref.gguf" in captured.err  # progress goes to stderr

    lib = ev.evaluate(
        models["ref"], [models["cand"], models["ref"]], text_file=text,
        settings=ev.EvalSettings(n_ctx=32), n_threads=1, cache_dir=tmp_path / "c",
    ).to_dict()  # fmt: skip
    assert {"reference", "text", "n_ctx", "n_chunks", "n_tokens"} <= out.keys()
    assert (out["reference"], out["text"], out["n_ctx"]) == (str(models["ref"]), str(text), 32)
    assert out["n_chunks"] == lib["n_chunks"] and out["n_tokens"] == lib["n_tokens"]
    assert len(out["candidates"]) == 2
    for got, want in zip(out["candidates"], lib["candidates"], strict=True):
        assert REQUIRED_KEYS | EXTRA_KEYS <= got.keys()
        assert got["file"] == want["file"]
        for key in (REQUIRED_KEYS | EXTRA_KEYS) - {"file"}:
            assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert got["bpw"] == 32.0  # every tensor of the tiny models is F32
        assert got["size_mib"] == round(Path(got["file"]).stat().st_size / 2**20, 3)
    assert out["candidates"][1]["kld_mean"] == pytest.approx(0, abs=1e-6)


def test_cli_quick_table(models, tmp_path: Path, capsys) -> None:
    text = tmp_path / "t.txt"
    text.write_text(word_text(300), encoding="utf-8")
    argv = ["--reference", models["ref"], models["cand"], "--text-file", text, "--quick", "--threads", 1]
    assert _cli([*argv, "--cache-dir", tmp_path / "c", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["n_ctx"], out["n_chunks"]) == (ev.QUICK.n_ctx, ev.QUICK.n_chunks)
    assert _cli([*argv, "--cache-dir", tmp_path / "c"]) == 0
    table = capsys.readouterr().out
    c = out["candidates"][0]
    assert "cand.gguf" in table and f"{c['kld_mean']:.5f} ± {c['kld_stderr']:.5f}" in table
    assert f"{c['same_top_pct']:.2f} ± {c['same_top_stderr']:.2f}" in table


def test_cli_errors_are_one_line(models, tmp_path: Path, capsys) -> None:
    assert _cli(["--reference", tmp_path / "none.gguf", models["cand"], "--cache-dir", tmp_path]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lowbit eval: error: reference model not found") and "Traceback" not in "".join(
        err
    )
    assert _cli(["--reference", models["ref"], models["other_vocab"], "--cache-dir", tmp_path]) == 1
    assert "different vocabularies" in capsys.readouterr().err


# -- a real model ------------------------------------------------------------------------------

ENGLISH = (
    "The harbour town woke slowly that morning. Fishing boats rocked against the quay while gulls "
    "argued over the remains of yesterday's catch, and the baker at the corner had already sold "
    "half of his bread to sailors who wanted something warm before going out. Mara walked down the "
    "hill with her notebook, counting the boats as she always did, because her grandfather had told "
    "her that a harbour tells you its mood through the number of vessels that stay at home. Today "
    "only three remained, which meant the weather would hold. She bought a roll, sat on the low wall "
    "by the lighthouse and began to write: the wind from the west, the tide turning at eleven, the "
    "ferry late again. Nothing in her notes was important to anyone but her, and that was exactly "
    "why she kept them. Years later, when the town had changed beyond recognition, those pages were "
    "the only record of how ordinary days had once looked."
)


@pytest.mark.slow
def test_smollm2_against_the_full_vocabulary(smollm2_gguf: Path, tmp_path: Path) -> None:
    # a candidate: a tenth of the 4-bit weights of every ffn_down flipped in their lowest bit
    rng = np.random.default_rng(0)

    def flip(t):
        data = np.array(t.data)
        if t.tensor_type == QT.Q4_1 and ".ffn_down." in t.name:
            blocks = data.reshape(-1, 20)  # Q4_1: fp16 scale and minimum, then 16 bytes of nibbles
            blocks[:, 4:] ^= (rng.random(blocks[:, 4:].shape) < 0.1).astype(np.uint8)
        return data, t.tensor_type

    cand = tmp_path / "cand.gguf"
    rewrite_gguf(smollm2_gguf, cand, flip)
    n_ctx = 128
    settings = ev.EvalSettings(n_ctx=n_ctx, n_chunks=1)  # the default k and tail draws
    got = ev.evaluate(
        smollm2_gguf, [cand], text=ENGLISH, settings=settings, n_threads=2, cache_dir=tmp_path
    ).candidates[0]

    mp = Model.load(smollm2_gguf, n_ctx=n_ctx, n_threads=2)
    mq = Model.load(cand, n_ctx=n_ctx, n_threads=2)
    with mp, mq:
        ids = mp.tokenizer.encode(ENGLISH, parse_special=False)[:n_ctx]
        assert len(ids) == n_ctx
        if mp.tokenizer.add_bos:
            ids[0] = mp.tokenizer.bos_id
        logits_p = mp.forward(ids, 0, logits_all=True)[n_ctx // 2 : n_ctx - 1]
        logits_q = mq.forward(ids, 0, logits_all=True)[n_ctx // 2 : n_ctx - 1]
    targets = np.asarray(ids[n_ctx // 2 + 1 :])
    lp, lq = log_softmax(logits_p), log_softmax(logits_q)
    full = (np.exp(lp) * (lp - lq)).sum(axis=1)  # over all 49152 tokens
    assert got.n_tokens == len(full)
    assert got.kld_mean == pytest.approx(full.mean(), rel=0.03)
    assert 0.005 < full.mean() < 1  # a real but moderate difference

    # the bound alone, from the same logits, is below every token's divergence, and well below
    scores = ev.token_scores(
        ev.reference_dist(logits_p, targets, top_k=64, tail_samples=64), logits_q, targets
    )
    assert scores.kld.mean() == pytest.approx(got.kld_mean, rel=1e-6)
    assert (scores.kld_bound <= full + 1e-6).all()
    assert scores.kld_bound.mean() < 0.95 * full.mean()

    rows = np.arange(len(targets))
    assert got.ppl == pytest.approx(math.exp(-lq[rows, targets].mean()), rel=1e-9)
    assert got.ppl_ref == pytest.approx(math.exp(-lp[rows, targets].mean()), rel=1e-9)
    assert got.same_top_pct == pytest.approx(100 * np.mean(lp.argmax(1) == lq.argmax(1)))
