"""Refit and check the instant quality estimate on SmolLM2-135M-Instruct (a benchmark, not a test).

    python -m tests.bench_estimate [--threads 2] [--chunks 6] [--ctx 256]

Quantizes the full-precision model (the test model dequantized to F32) to every
preset in round-to-nearest mode, measures each with the evaluator, and prints
per preset the summed weight noise, the share of ffn_down weights that meet
8-bit activations, the measured KLD, the estimate with the shipped constants,
and the constants fitted anew with their rank correlation.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from lowbit.core.convert import gguf_to_hf
from lowbit.core.estimate import FIT_A, FIT_B, FIT_FLOOR, estimate, fit_noise_model, kld_from_noise
from lowbit.core.evaluate import EvalSettings, evaluate
from lowbit.core.quantize import QUANT_PRESETS, quantize_model

from .conftest import fetch_smollm2


def _spearman(x: list[float], y: list[float]) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=6)
    ap.add_argument("--ctx", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hf = gguf_to_hf(fetch_smollm2(), tmp / "hf", dtype="bf16")
        f32 = quantize_model(hf, tmp / "f32.gguf", preset="F32").path
        est = estimate(f32, QUANT_PRESETS, n_threads=args.threads)
        files = [
            quantize_model(f32, tmp / f"{p}.gguf", preset=p, n_threads=args.threads).path
            for p in QUANT_PRESETS
        ]
        settings = EvalSettings(n_ctx=args.ctx, n_chunks=args.chunks, spread=True)
        rep = evaluate(f32, files, settings=settings, n_threads=args.threads, cache_dir=tmp / "cache")
    noise = [e.noise for e in est]
    kld = [c.kld_mean for c in rep.candidates]
    share = [e.act8_share for e in est]
    floor, a, b = fit_noise_model(noise, kld, share)
    refits = [kld_from_noise(e.noise, e.act8_share, floor=floor, a=a, b=b) for e in est]
    print(f"{'preset':8} {'noise S':>9} {'8-bit r':>8} {'KLD':>9} {'±':>8} {'estimate':>9} {'refit':>9}")
    for p, e, c, refit in zip(QUANT_PRESETS, est, rep.candidates, refits, strict=True):
        print(
            f"{p:8} {e.noise:9.5f} {e.act8_share:8.3f} {c.kld_mean:9.5f} {c.kld_stderr:8.5f} "
            f"{e.kld_estimate:9.5f} {refit:9.5f}"
        )
    shipped = [e.kld_estimate for e in est]
    log_err = float(np.sqrt(np.mean((np.log(shipped) - np.log(kld)) ** 2)))
    print(
        f"shipped: floor {FIT_FLOOR} a {FIT_A} b {FIT_B}; "
        f"Spearman {_spearman(shipped, kld):.3f}, log RMS {log_err:.3f}"
    )
    refit_err = float(np.sqrt(np.mean((np.log(refits) - np.log(kld)) ** 2)))
    print(
        f"refit:   floor {floor:.4f} a {a:.4f} b {b:.4f}; "
        f"Spearman {_spearman(refits, kld):.3f}, log RMS {refit_err:.3f}"
    )


if __name__ == "__main__":
    main()
