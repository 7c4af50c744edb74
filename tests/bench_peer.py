"""Lowbit against llama.cpp (llama-cpp-python) on the same GGUF files, in the same run.

    python -m tests.bench_peer [--threads 2] [--files Q4_0 Q8_0 ...] [--reps N] [--gen-tokens N]
                               [--prompt-tokens 512] [--json]

Files: SmolLM2-135M-Instruct at Q8_0, Q4_0, Q4_1, Q4_K_M and IQ4_NL. Q4_1 is the test model;
the others are llama.cpp's own quantizations (``llama_model_quantize``, no importance matrix)
of an F32 copy decoded from it, made once and kept in the test cache.

How it is measured:

- Each engine runs in its own process per file, driven over a pipe, and the two take
  turns (the order alternates every repetition); the idle one waits on its pipe, so the
  timed engine has the cores to itself, and neither engine's thread pool meets the other's.
- Both are driven by the same Python loop (``lowbit.core.bench.time_generation``) with the
  same prompt ids and thread count: the prompt as one call from an empty cache (Lowbit's
  ``Model.forward``; llama.cpp's ``Llama.eval`` with n_batch = n_ubatch >= the prompt, so
  one ``llama_decode``), then greedy decoding with one call per token (``Model.forward``
  of one token; ``Llama.eval([tok])``), the next token chosen by argmax in numpy for both.
  Each process warms up first (a short prompt and one token, which pages the weights in).
  The speeds shown are medians over the repetitions.
- Peak RSS is ``ru_maxrss`` of that engine's process after all its repetitions: the Python
  interpreter, the libraries it imported (numpy; Lowbit's model code, tokenizer and the
  ``gguf`` package; or ``llama_cpp``), the weights it touched through the file mapping, its
  KV cache and buffers. Nothing is subtracted. The JSON also gives each process's peak
  before it imported its engine (``base_rss_mib``).

Targets, shown as pass/miss next to the ratios Lowbit / llama.cpp: decode >= 1.3 at Q4_0
and Q8_0 and >= 1.0 elsewhere, prompt >= 1.0, peak RSS <= 1.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ENGINES = ("lowbit", "llama.cpp")
FILES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K_M", "IQ4_NL")
DECODE_TARGET = {"Q4_0": 1.3, "Q8_0": 1.3}  # others: 1.0
PROMPT_TARGET = 1.0
RSS_TARGET = 1.1  # at most llama.cpp's peak plus 10%
STEM = "SmolLM2-135M-Instruct"


# -- the files -----------------------------------------------------------------


def f32_copy(src: Path, dst: Path) -> Path:
    """src with every tensor decoded to F32: the full-precision source for llama.cpp's quantizer."""
    if dst.exists():
        return dst
    import gguf
    from gguf import GGMLQuantizationType as QT

    from .tiny_models import rewrite_gguf

    def decode(t: gguf.ReaderTensor) -> tuple[Any, QT]:
        shape = tuple(int(d) for d in reversed(t.shape))
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype("float32"), QT.F32

    part = dst.with_suffix(".incomplete")
    try:
        rewrite_gguf(src, part, decode, kv={"general.file_type": 0})  # LLAMA_FTYPE_ALL_F32
        part.replace(dst)
    finally:
        part.unlink(missing_ok=True)
    return dst


def model_files(names: list[str], threads: int) -> dict[str, Path]:
    """The benchmark's files by type name, made and cached on first use."""
    from . import llama_peer
    from .conftest import fetch_smollm2, test_cache_dir

    src = fetch_smollm2()
    cache = test_cache_dir()
    out: dict[str, Path] = {}
    for name in names:
        if name == "Q4_1":
            out[name] = src
            continue
        dst = cache / f"{STEM}.llamacpp-{name}.gguf"
        if not dst.exists():
            print(f"making {dst.name} with llama.cpp's quantizer", file=sys.stderr)
            f32 = f32_copy(src, cache / f"{STEM}.F32.gguf")
            part = dst.with_suffix(".incomplete")
            try:
                llama_peer.quantize(f32, part, name, n_threads=threads)
                part.replace(dst)
            finally:
                part.unlink(missing_ok=True)
        out[name] = dst
    return out


# -- the engine processes ----------------------------------------------------------


def _serve(engine: str, path: str, threads: int, n_ctx: int, n_batch: int) -> None:
    """The engine process: load the model, then answer requests read from stdin."""
    from lowbit.core.bench import peak_rss_mib, time_generation

    # Replies go to the original stdout; anything the C libraries print goes to stderr.
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    base_rss = peak_rss_mib()
    if engine == "lowbit":
        from lowbit.core.model import Model

        model = Model.load(path, n_ctx=max(8, n_ctx), n_threads=threads)

        def prefill(ids: Any) -> Any:
            return model.forward(ids, 0)

        def step(tok: int, pos: int) -> Any:
            return model.forward([tok], pos)

    else:
        from .llama_peer import _quiet, deny_amx

        deny_amx()  # before llama.cpp starts a thread (see llama_peer)
        import llama_cpp
        import numpy as np

        with _quiet():
            llm = llama_cpp.Llama(
                model_path=path,
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                verbose=False,
            )
        n_vocab = llm.n_vocab()

        def last_logits() -> Any:  # a view: Llama.eval keeps no logits unless logits_all
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))

        def prefill(ids: Any) -> Any:
            llm.reset()  # the next eval drops the cache from position 0
            llm.eval(ids)
            return last_logits()

        def step(tok: int, pos: int) -> Any:
            llm.eval([tok])
            return last_logits()

    replies.write(json.dumps({"base_rss_mib": base_rss}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "run":
            t = time_generation(prefill, step, req["prompt"], req["gen"], n_real=req["n_real"])
            reply: dict[str, Any] = asdict(t) | {"prompt_tps": t.prompt_tps, "decode_tps": t.decode_tps}
        else:
            reply = {"peak_rss_mib": peak_rss_mib()}
        replies.write(json.dumps(reply) + "\n")


class EngineProcess:
    """One engine with one model, in a child process of its own."""

    def __init__(self, engine: str, path: Path, threads: int, n_ctx: int, n_batch: int) -> None:
        self.engine = engine
        cmd = [
            sys.executable, "-m", "tests.bench_peer", "--serve", engine, str(path),
            "--threads", str(threads), "--ctx", str(n_ctx), "--batch", str(n_batch),
        ]  # fmt: skip
        root = Path(__file__).resolve().parent.parent
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
        self.base_rss_mib = float(self._read()["base_rss_mib"])

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.engine} process ended with status {self.proc.wait()}")
        return json.loads(line)

    def call(self, **req: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the comparison ----------------------------------------------------------------


def bench_file(name: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from lowbit.core.bench import decode_bytes_per_token, synthetic_prompt
    from lowbit.core.gguf_file import open_gguf
    from lowbit.core.tokenizer import Tokenizer

    gf = open_gguf(path)
    tok = Tokenizer.from_gguf_metadata(gf.metadata)
    prompt = synthetic_prompt(tok, args.prompt_tokens)
    n_ctx = args.prompt_tokens + args.gen_tokens
    n_batch = max(512, args.prompt_tokens)
    procs: dict[str, EngineProcess] = {}
    try:
        for engine in ENGINES:
            procs[engine] = EngineProcess(engine, path, args.threads, n_ctx, n_batch)
        for p in procs.values():  # warm-up
            p.call(op="run", prompt=prompt[:16], gen=1, n_real=tok.vocab_size)
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        for rep in range(args.reps):
            for engine in ENGINES if rep % 2 == 0 else ENGINES[::-1]:
                print(f"{name}: {engine}, repetition {rep + 1} of {args.reps}", file=sys.stderr)
                runs[engine].append(
                    procs[engine].call(op="run", prompt=prompt, gen=args.gen_tokens, n_real=tok.vocab_size)
                )
        peaks = {e: float(procs[e].call(op="rss")["peak_rss_mib"]) for e in ENGINES}
    finally:
        for p in procs.values():
            p.close()

    engines = {}
    for e in ENGINES:
        engines[e] = {
            "decode_tps": statistics.median(r["decode_tps"] for r in runs[e]),
            "prompt_tps": statistics.median(r["prompt_tps"] for r in runs[e]),
            "ttft_s": statistics.median(r["ttft_s"] for r in runs[e]),
            "peak_rss_mib": peaks[e],
            "base_rss_mib": procs[e].base_rss_mib,
            "decode_tps_runs": [r["decode_tps"] for r in runs[e]],
            "prompt_tps_runs": [r["prompt_tps"] for r in runs[e]],
        }
    lb, lc = engines["lowbit"], engines["llama.cpp"]
    ratios = {
        "decode": lb["decode_tps"] / lc["decode_tps"],
        "prompt": lb["prompt_tps"] / lc["prompt_tps"],
        "rss": lb["peak_rss_mib"] / lc["peak_rss_mib"],
    }
    targets = {"decode": DECODE_TARGET.get(name, 1.0), "prompt": PROMPT_TARGET, "rss": RSS_TARGET}
    return {
        "file": path.name,
        "type": name,
        "file_mib": path.stat().st_size / 2**20,
        "tensor_types": dict(gf.type_counts()),
        "bytes_per_token": decode_bytes_per_token(gf),
        "lowbit": lb,
        "llama.cpp": lc,
        "ratios": ratios,
        "targets": targets,
        "pass": {
            "decode": ratios["decode"] >= targets["decode"],
            "prompt": ratios["prompt"] >= targets["prompt"],
            "rss": ratios["rss"] <= targets["rss"],
        },
    }


def _load_average() -> float | None:
    # Other work on the machine skews every number; the load says how much there was.
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def table(rows: list[dict[str, Any]], args: argparse.Namespace, load: list[float | None]) -> str:
    busy = "" if None in load else f"; load average {load[0]:.1f} before, {load[1]:.1f} after"
    lines = [
        f"{STEM}, {args.threads} threads, pp{args.prompt_tokens} / tg{args.gen_tokens}, "
        f"median of {args.reps} repetition(s){busy}",
        "ratio = Lowbit / llama.cpp",
        "",
        f"{'file':<8}{'measure':<14}{'Lowbit':>10}{'llama.cpp':>11}{'ratio':>8}  target",
    ]
    for r in rows:
        lb, lc = r["lowbit"], r["llama.cpp"]
        for i, (label, key, kind, fmt) in enumerate(
            (
                ("decode tok/s", "decode_tps", "decode", ".1f"),
                (f"pp{args.prompt_tokens} tok/s", "prompt_tps", "prompt", ".1f"),
                ("peak RSS MiB", "peak_rss_mib", "rss", ".1f"),
            )
        ):
            sign = "<=" if kind == "rss" else ">="
            mark = "pass" if r["pass"][kind] else "miss"
            lines.append(
                f"{r['type'] if i == 0 else '':<8}{label:<14}{lb[key]:>10{fmt}}{lc[key]:>11{fmt}}"
                f"{r['ratios'][kind]:>8.2f}  {sign} {r['targets'][kind]:.2f} {mark}"
            )
    lines += [
        "",
        "peak RSS: each engine's own process after all its runs (interpreter, libraries, mapped",
        "weights touched, KV cache, buffers), nothing subtracted.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Lowbit vs llama.cpp on the same GGUF files")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--files", nargs="+", choices=FILES, default=list(FILES), metavar="TYPE")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; medians are shown")
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--serve", nargs=2, metavar=("ENGINE", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--ctx", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        _serve(args.serve[0], args.serve[1], args.threads, args.ctx, args.batch)
        return
    if min(args.threads, args.reps, args.gen_tokens, args.prompt_tokens) < 1:
        ap.error("--threads, --reps, --gen-tokens and --prompt-tokens must be positive")
    files = model_files(args.files, args.threads)
    load = [_load_average()]
    rows = [bench_file(name, path, args) for name, path in files.items()]
    load.append(_load_average())
    if args.json:
        settings = {k: getattr(args, k) for k in ("threads", "reps", "gen_tokens", "prompt_tokens")}
        print(json.dumps(settings | {"load_average": load, "files": rows}, indent=2))
    else:
        print(table(rows, args, load))


if __name__ == "__main__":
    main()
