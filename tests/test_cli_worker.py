"""The command line and the core worker, on tiny models and on SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from lowbit.core.cli import main
from lowbit.core.engine import Engine, GenerationDone, TokenEvent
from lowbit.core.errors import CancelledError
from lowbit.core.model import Model, perplexity
from lowbit.core.sampling import SamplingParams
from lowbit.core.worker import Worker
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.gguf", weight_type=QT.Q4_0).path


def test_generate_json(tiny_path: Path, capsys) -> None:
    rc = main(["generate", str(tiny_path), "--prompt", "hello there", "--max-tokens", "5", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["generated_tokens"] <= 5 and len(out["tokens"]) == out["generated_tokens"] - (
        out["finish_reason"] == "stop"
    )
    for key in ("text", "prompt_tokens", "ttft_s", "decode_tps", "finish_reason"):
        assert key in out
    # greedy decoding is reproducible and equals the engine's own greedy run
    with Model.load(tiny_path, n_threads=1) as m:
        ids = m.tokenizer.encode("hello there")
        logits = m.forward(ids, 0)
        assert out["tokens"][0] == int(logits.argmax())


def test_generate_reports_errors_without_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_text("nope")
    assert main(["generate", str(bad), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert "not a GGUF file" in err and "Traceback" not in err


def test_logits_command_matches_model(tiny_path: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 3)
    out, toks = tmp_path / "l.npy", tmp_path / "t.json"
    assert (
        main(
            ["logits", str(tiny_path), "--text-file", str(text), "--out", str(out), "--tokens-out", str(toks)]
        )
        == 0
    )
    logits = np.load(out)
    ids = json.loads(toks.read_text())
    assert logits.shape == (len(ids), 288) and logits.dtype == np.float32
    with Model.load(tiny_path, n_ctx=len(ids), n_threads=1) as m:
        assert ids == m.tokenizer.encode(text.read_text(), parse_special=False)
        ref = m.forward(ids, 0, logits_all=True)
    np.testing.assert_array_equal(logits, ref)
    # --max-tokens truncates
    assert (
        main(["logits", str(tiny_path), "--text-file", str(text), "--max-tokens", "7", "--out", str(out)])
        == 0
    )
    assert np.load(out).shape == (7, 288)


def test_seeded_sampling_repeats(tiny_path: Path) -> None:
    def run(seed: int) -> list[int]:
        with Model.load(tiny_path, n_threads=1) as m:
            # a hot temperature: the tiny random model's distributions are very peaked
            params = SamplingParams(temperature=20.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
            evs = Engine(m).generate([1, 2, 3], params=params, max_tokens=12, stop_ids=frozenset())
            return [e.token_id for e in evs if isinstance(e, TokenEvent) and e.token_id >= 0]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_worker_streams_and_cancels(tiny_path: Path) -> None:
    w = Worker()
    try:
        w.load_model(tiny_path, n_ctx=2048, n_threads=1).result(timeout=30)
        tokens: list[TokenEvent] = []
        started = threading.Event()

        def on_event(ev: TokenEvent) -> None:
            tokens.append(ev)
            started.set()

        job = w.generate(tokens=[1, 2, 3], max_tokens=2000, on_event=on_event)
        assert started.wait(30)
        job.cancel()
        stats = job.result(timeout=30)
        assert stats.finish_reason == "cancelled"
        assert stats.generated_tokens < 2000
        assert len(tokens) >= 1
        # a job cancelled before it starts never runs
        blocker = w.submit(
            "block", lambda ctx: ctx.cancel.raise_if_cancelled() or threading.Event().wait(0.2)
        )
        queued = w.generate(tokens=[1], max_tokens=5)
        queued.cancel()
        blocker.result(timeout=10)
        with pytest.raises(CancelledError):
            queued.result(timeout=10)
    finally:
        assert w.shutdown(timeout=10)


def test_cancel_interrupts_long_prompt(tiny_path: Path) -> None:
    """Cancel reaches into the C forward pass (checked between layers)."""
    with Model.load(tiny_path, n_ctx=4096, n_batch=64, n_threads=1) as m:
        timer = threading.Timer(0.01, m.cancel)
        timer.start()
        with pytest.raises(CancelledError):
            for _ in range(50):  # keep the model busy until the timer fires
                m.forward(list(np.arange(4000) % 200), 0)
        timer.join()
        assert m.n_past < 4000
        m.forward([1, 2], 0)  # usable afterwards


def test_smollm2_greedy_generation_and_perplexity(smollm2_model: Model) -> None:
    engine = Engine(smollm2_model)
    prompt = engine.encode_prompt("The capital of France is")
    events = list(engine.generate(prompt, max_tokens=8))
    stats = events[-1]
    assert isinstance(stats, GenerationDone)
    assert "Paris" in stats.stats.text
    # a real text is far more predictable than chance (49152 tokens)
    ids = smollm2_model.tokenizer.encode(
        "The sun rises in the east and sets in the west. Water boils at one hundred degrees Celsius."
    )
    smollm2_model.reset()
    ppl = perplexity(smollm2_model.forward(ids, 0, logits_all=True), ids)
    assert 1.5 < ppl < 100


@pytest.mark.slow
def test_generate_command_in_fresh_process(smollm2_gguf: Path) -> None:
    env = dict(os.environ)
    r = subprocess.run(
        [sys.executable, "-m", "lowbit.core.cli", "generate", str(smollm2_gguf), "--prompt",
         "Once upon a time", "--max-tokens", "16", "--json", "--threads", "2"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    out = json.loads(r.stdout)
    assert out["generated_tokens"] == 16 and out["decode_tps"] > 0
