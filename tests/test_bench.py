"""``lowbit bench`` on tiny models: the report's keys and arithmetic, and its errors. No timings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.bench import (
    benchmark,
    decode_bytes_per_token,
    measure_bandwidth,
    synthetic_prompt,
    time_pp_tg,
)
from lowbit.core.cli import main
from lowbit.core.gguf_file import open_gguf
from lowbit.core.model import Model
from tests.tiny_models import make_tiny_model

# Small enough that a run takes well under a second on a tiny model.
FAST = ["--threads", "1", "--prompt-tokens", "24", "--gen-tokens", "4"]


@pytest.fixture(scope="module")
def tied_path(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("b") / "tied.gguf", weight_type=QT.Q4_0).path


@pytest.fixture(scope="module")
def untied_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("b") / "untied.gguf"
    return make_tiny_model(path, weight_type=QT.Q8_0, embd_type=QT.F16, tied=False, arch="qwen2").path


def reader_bytes_per_token(path: Path) -> int:
    """What a decode step reads, from the ``gguf`` package's own reader: every tensor whole,
    except one row of the token embedding when a separate output matrix exists."""
    r = gguf.GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in r.tensors}
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    total = sum(sizes.values())
    if "output.weight" in sizes:
        n_rows = int(embd.shape[1])
        total -= sizes["token_embd.weight"] - sizes["token_embd.weight"] // n_rows
    return total


def run_json(args: list[str], capsys) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one object: anything else fails to parse


def test_json_has_the_keys_with_sane_values(tied_path: Path, capsys) -> None:
    d = run_json([str(tied_path), *FAST], capsys)
    for key in ("prompt_tps", "decode_tps", "ttft_s", "peak_rss_mib", "bandwidth_gbs", "roofline_pct"):
        assert isinstance(d[key], float) and math.isfinite(d[key]) and d[key] > 0, key
    assert isinstance(d["bytes_per_token"], int) and d["bytes_per_token"] > 0
    # the share of the bound, from the other fields (a model this small sits in the CPU's
    # caches, where main-memory bandwidth does not bound it, so it may pass 100)
    want = 100 * d["bytes_per_token"] * d["decode_tps"] / (d["bandwidth_gbs"] * 1e9)
    assert d["roofline_pct"] == pytest.approx(want, rel=0.01, abs=0.01)
    assert d["model"] == tied_path.name and d["type"] == "Q4_0"
    assert (d["threads"], d["prompt_tokens"], d["gen_tokens"]) == (1, 24, 4)
    assert d["isa"] is None or isinstance(d["isa"], str)
    # the process holds at least the model file's weights and the interpreter
    assert d["peak_rss_mib"] > tied_path.stat().st_size / 2**20


def test_table_output(tied_path: Path, capsys) -> None:
    assert main(["bench", str(tied_path), *FAST]) == 0
    out = capsys.readouterr().out
    for label in ("prompt (pp24)", "decode (tg4)", "time to first token", "roofline", "GB/s", "MiB"):
        assert label in out


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_bytes_per_token_matches_the_gguf_reader(which: str, tied_path: Path, untied_path: Path) -> None:
    path = tied_path if which == "tied" else untied_path
    assert decode_bytes_per_token(open_gguf(path)) == reader_bytes_per_token(path)


def test_untied_embedding_counts_one_row(untied_path: Path) -> None:
    gf = open_gguf(untied_path)
    embd = gf.tensors["token_embd.weight"]
    everything = sum(t.nbytes for t in gf.tensors.values())
    assert decode_bytes_per_token(gf) == everything - embd.nbytes + embd.nbytes // embd.shape[1]


@pytest.mark.slow
def test_bytes_per_token_on_smollm2(smollm2_gguf: Path) -> None:
    assert decode_bytes_per_token(open_gguf(smollm2_gguf)) == reader_bytes_per_token(smollm2_gguf)


def test_report_is_consistent(untied_path: Path, capsys) -> None:
    r = benchmark(untied_path, n_threads=1, prompt_tokens=16, gen_tokens=3, reps=2)
    assert r.bytes_per_token == reader_bytes_per_token(untied_path)
    assert r.roofline_pct == pytest.approx(100 * r.bytes_per_token * r.decode_tps / (r.bandwidth_gbs * 1e9))
    # the JSON's rounded numbers still agree with each other
    d = run_json([str(untied_path), *FAST], capsys)
    expected = 100 * d["bytes_per_token"] * d["decode_tps"] / (d["bandwidth_gbs"] * 1e9)
    assert d["roofline_pct"] == pytest.approx(expected, rel=1e-2, abs=0.01)


def test_given_bandwidth_is_used(tied_path: Path) -> None:
    r = benchmark(tied_path, n_threads=1, prompt_tokens=8, gen_tokens=2, bandwidth_gbs=10.0)
    assert r.bandwidth_gbs == 10.0
    assert r.roofline_pct == pytest.approx(100 * r.bytes_per_token * r.decode_tps / 10e9)


def test_bandwidth_is_positive() -> None:
    assert 0 < measure_bandwidth(2, buffer_mib=16, repeats=2) < 1e4
    with pytest.raises(ValueError):
        measure_bandwidth(0)


def test_synthetic_prompt_is_fixed_and_valid(tied_path: Path) -> None:
    with Model.load(tied_path, n_threads=1, n_ctx=64) as m:
        a = synthetic_prompt(m.tokenizer, 700)
        assert a == synthetic_prompt(m.tokenizer, 700)
        assert len(a) == 700 and all(0 <= t < m.tokenizer.vocab_size for t in a)
        assert synthetic_prompt(m.tokenizer, 5) == a[:5]


def test_missing_file(tmp_path: Path, capsys) -> None:
    assert main(["bench", str(tmp_path / "nope.gguf"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


def test_not_a_gguf_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a model" * 10)
    assert main(["bench", str(bad), *FAST]) == 1
    assert "not a GGUF file" in capsys.readouterr().err


def test_truncated_file(tied_path: Path, tmp_path: Path, capsys) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tied_path.read_bytes()[: tied_path.stat().st_size // 2])
    assert main(["bench", str(cut), *FAST]) == 1
    assert "truncated" in capsys.readouterr().err


def test_depth_and_test_larger_than_the_context(tied_path: Path, capsys) -> None:
    # the tiny models are trained for 2048 tokens; the tests are separate, so 2000 + 48 fits
    ok = ["bench", str(tied_path), "--threads", "1", "--prompt-tokens", "2000", "--gen-tokens", "48"]
    assert main([*ok, "--json"]) == 0
    capsys.readouterr()
    rc = main(
        ["bench", str(tied_path), *FAST[:2], "--depth", "2000", "--prompt-tokens", "49", "--gen-tokens", "3"]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "2000 tokens of depth + 49 prompt tokens = 2049" in err and "context of 2048" in err
    assert "Traceback" not in err


class _Recorder:
    """A stand-in engine that logs each call (tokens, position, first token) and returns
    logits whose greedy choice is the position, so the token fed back is checkable too."""

    def __init__(self, n_vocab: int) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (n_tokens, pos, first token)
        self.n_vocab = n_vocab

    def logits(self, pos: int) -> np.ndarray:
        x = np.zeros(self.n_vocab, dtype=np.float32)
        x[pos % self.n_vocab] = 1.0
        return x

    def prefill(self, ids, pos: int) -> np.ndarray:
        self.calls.append((len(ids), pos, int(ids[0])))
        return self.logits(pos + len(ids))

    def step(self, tok: int, pos: int) -> np.ndarray:
        self.calls.append((1, pos, tok))
        return self.logits(pos + 1)


@pytest.mark.parametrize("depth", [0, 5])
def test_tests_run_as_llama_bench_runs_them(depth: int) -> None:
    """pp and tg each start from the cache at the depth (llama-bench's pp512 and tg128,
    or with -d): decoding does not continue after the prompt."""
    eng = _Recorder(n_vocab=100)
    prompt = [7, 8, 9]
    t = time_pp_tg(eng.prefill, eng.step, prompt, 4, pos=depth)
    want = [(3, depth, 7)]  # the prompt, after the depth
    # decoding from the depth, the first token the prompt's greedy choice
    want += [(1, depth + i, depth + 3 if i == 0 else depth + i) for i in range(4)]
    assert eng.calls == want
    assert (t.prompt_tokens, t.gen_tokens) == (3, 4)
    assert 0 <= t.prompt_s <= t.ttft_s


def test_depth_is_filled_once_and_kept(tied_path: Path, monkeypatch) -> None:
    """The depth's tokens are written once, at position 0, after the warm-up; every
    repetition's tests then start at the depth, and nothing writes below it again."""
    calls: list[tuple[int, int]] = []
    forward = Model.forward

    def recording(self, tokens, pos, **kw):
        calls.append((len(tokens), pos))
        return forward(self, tokens, pos, **kw)

    monkeypatch.setattr(Model, "forward", recording)
    benchmark(tied_path, n_threads=1, prompt_tokens=6, gen_tokens=2, reps=2, bandwidth_gbs=1.0, depth=9)
    warm_up = [(6, 0), (1, 0)]
    rep = [(6, 9), (1, 9), (1, 10)]
    assert calls == [*warm_up, (9, 0), *rep, *rep]


def test_depth_is_reported(tied_path: Path, capsys) -> None:
    d = run_json([str(tied_path), *FAST, "--depth", "9"], capsys)
    assert d["depth"] == 9 and d["prompt_tokens"] == 24
    assert run_json([str(tied_path), *FAST], capsys)["depth"] == 0
    assert main(["bench", str(tied_path), *FAST, "--depth", "9"]) == 0
    out = capsys.readouterr().out
    assert "prompt (pp24 @ d9)" in out and "decode (tg4 @ d9)" in out


@pytest.mark.parametrize(
    "bad",
    [
        ["--threads", "0"],
        ["--prompt-tokens", "0"],
        ["--gen-tokens", "-3"],
        ["--reps", "x"],
        ["--depth", "-1"],
    ],
)
def test_bad_arguments_exit_2(tied_path: Path, bad: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["bench", str(tied_path), *bad])
    assert e.value.code == 2
    assert "bench" in capsys.readouterr().err


def test_bad_counts_in_the_library(tied_path: Path) -> None:
    with pytest.raises(ValueError):
        benchmark(tied_path, gen_tokens=0)
    with pytest.raises(ValueError):
        benchmark(tied_path, depth=-1)


def test_isa_is_optional(monkeypatch) -> None:
    from lowbit.core import bench, native

    monkeypatch.setattr(native, "isa", lambda: "avx2", raising=False)
    assert bench.native_isa() == "avx2"

    def missing() -> str:
        raise AttributeError("the built library lacks lb_isa")

    monkeypatch.setattr(native, "isa", missing, raising=False)
    assert bench.native_isa() is None
