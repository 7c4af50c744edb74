"""Quick-preview benchmark: six presets of SmolLM2-135M-Instruct, quantization included.

    python -m tests.bench_preview [--threads 2] [--presets Q8_0,Q6_K,...] [--full]

Times :func:`lowbit.core.preview.preview` from the full-precision GGUF (the test
model dequantized to F32), twice: with the reference cache empty, then with it
filled (the wizard's second look at a model). Prints the table of every preset
with its instant estimate beside the measurement, and the time against the
target of 60 s. ``--full`` also measures every preset in full mode.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from lowbit.core.convert import gguf_to_hf
from lowbit.core.estimate import estimate
from lowbit.core.evaluate import FULL, EvalSettings
from lowbit.core.preview import preview
from lowbit.core.quantize import QUANT_PRESETS, quantize_model

from .conftest import fetch_smollm2

SIX = "Q8_0,Q6_K,Q5_K_M,Q4_K_M,Q4_0,Q3_K_M"
TARGET_S = 60.0


def _table(title: str, presets: list[str], report, est: dict) -> None:
    print(title)
    print(
        f"{'preset':8} {'MiB':>6} {'bpw':>5} {'KLD':>8} {'±':>7} {'p99':>7} {'top %':>6} {'PPL':>7} "
        f"{'est. KLD':>9}"
    )
    for p, c in zip(presets, report.candidates, strict=True):
        print(
            f"{p:8} {c.size_mib:6.1f} {c.bpw:5.2f} {c.kld_mean:8.5f} {c.kld_stderr:7.5f} {c.kld_p99:7.4f} "
            f"{c.same_top_pct:6.2f} {c.ppl:7.3f} {est[p].kld_estimate:9.5f}"
        )
    print(
        f"reference PPL {report.candidates[0].ppl_ref:.3f}; 'est.' is the instant estimate, not a measurement"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default=SIX)
    ap.add_argument("--full", action="store_true", help="also every preset in full mode")
    args = ap.parse_args()
    presets = args.presets.split(",")

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hf = gguf_to_hf(fetch_smollm2(), tmp / "hf", dtype="bf16")
        f32 = quantize_model(hf, tmp / "f32.gguf", preset="F32").path
        t = time.perf_counter()
        est = {e.preset: e for e in estimate(f32, QUANT_PRESETS, n_threads=args.threads)}
        print(f"instant estimate of {len(QUANT_PRESETS)} presets: {time.perf_counter() - t:.1f} s")
        for label in ("empty reference cache", "reference cached"):
            t = time.perf_counter()
            res = preview(f32, presets, n_threads=args.threads, cache_dir=tmp / "cache")
            dt = time.perf_counter() - t
            mark = "ok" if dt <= TARGET_S else "MISS"
            _table(
                f"quick preview, {label}: {dt:.1f} s (quantizing {res.quantize_seconds:.1f} s), "
                f"target {TARGET_S:.0f} s: {mark}",
                presets,
                res.report,
                est,
            )
        if args.full:
            settings: EvalSettings = FULL
            res = preview(
                f32, QUANT_PRESETS, settings=settings, n_threads=args.threads, cache_dir=tmp / "cache"
            )
            _table("full mode, every preset", QUANT_PRESETS, res.report, est)


if __name__ == "__main__":
    main()
