"""Quantizer benchmark against llama.cpp (llama-cpp-python), measured in the same run.

    python -m tests.bench_quantize [--threads 2] [--presets Q4_K_M,Q8_0,...] [--chunks N] [--noise F]

1. Speed: SmolLM2-135M-Instruct from full precision (the same F32 GGUF for both) to
   Q4_K_M in round-to-nearest mode, best of three, Lowbit vs ``llama_model_quantize``.
2. Quality: for each preset, llama.cpp's quantization (no importance matrix) and
   Lowbit's calibrated one (``imatrix``), both from the same BF16 source, scored by
   Lowbit's evaluator against the full-precision model on the built-in evaluation
   text: size, mean KLD, same-top-token %.

The full-precision source is the test model dequantized (see DESIGN.md): its weights
lie on a Q4_1 grid, so llama.cpp's Q4_1 of it is nearly lossless by construction.
``--noise F`` adds Gaussian noise of F times each matrix row's standard deviation to
the source (seeded), which takes its weights off that grid, as a real full-precision
model's are; both quantizers and the reference then use the noisy source.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.core.convert import gguf_to_hf
from lowbit.core.evaluate import EvalSettings, evaluate
from lowbit.core.quantize import QUANT_PRESETS, quantize_model

from . import llama_peer
from .conftest import fetch_smollm2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default=",".join(QUANT_PRESETS))
    ap.add_argument("--chunks", type=int, default=8, help="512-token chunks of the evaluation text")
    ap.add_argument("--method", default="imatrix")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--noise", type=float, default=0.0, help="source noise, times each row's std")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        hf = gguf_to_hf(fetch_smollm2(), tmp / "hf", dtype="f32" if args.noise else "bf16")
        if args.noise:
            _add_noise(hf, args.noise)
        f32 = tmp / "f32.gguf"
        quantize_model(hf, f32, preset="F32")

        if not args.skip_speed:
            ours, theirs = [], []
            for _ in range(3):
                t = time.perf_counter()
                quantize_model(f32, tmp / "l.gguf", preset="Q4_K_M", n_threads=args.threads, overwrite=True)
                ours.append(time.perf_counter() - t)
                t = time.perf_counter()
                llama_peer.quantize(f32, tmp / "p.gguf", "Q4_K_M", n_threads=args.threads)
                theirs.append(time.perf_counter() - t)
            print(
                f"Q4_K_M rtn, {args.threads} threads: Lowbit {min(ours):.2f} s, "
                f"llama.cpp {min(theirs):.2f} s, ratio {min(ours) / min(theirs):.2f}"
            )

        settings = EvalSettings(n_ctx=512, n_chunks=args.chunks, spread=True)
        rows = []
        for preset in args.presets.split(","):
            lc = tmp / f"llama-{preset}.gguf"
            lb = tmp / f"lowbit-{preset}.gguf"
            llama_peer.quantize(f32, lc, preset, n_threads=args.threads)
            t = time.perf_counter()
            quantize_model(hf, lb, preset=preset, method=args.method, n_threads=args.threads)
            dt = time.perf_counter() - t
            rep = evaluate(f32, [lc, lb], settings=settings, n_threads=args.threads, cache_dir=tmp / "cache")
            a, b = rep.candidates
            rows.append((preset, a, b, dt))
            gain = 100 * (1 - b.kld_mean / a.kld_mean) if a.kld_mean > 0 else float("nan")
            print(
                f"{preset:7} llama.cpp {a.size_mib:7.2f} MiB KLD {a.kld_mean:.5f}±{a.kld_stderr:.5f} "
                f"top {a.same_top_pct:5.2f}% | Lowbit {b.size_mib:7.2f} MiB "
                f"KLD {b.kld_mean:.5f}±{b.kld_stderr:.5f} top {b.same_top_pct:5.2f}% | "
                f"KLD {gain:+.0f}% lower | quantize {dt:.1f} s",
                flush=True,
            )
            lc.unlink()
            lb.unlink()


def _add_noise(hf: Path, scale: float) -> None:
    """Add seeded Gaussian noise, scale times each row's std, to the folder's F32 matrices."""
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    for f in sorted(hf.glob("*.safetensors")):
        tensors = load_file(f)
        for name, v in tensors.items():
            if v.ndim == 2:
                noise = rng.standard_normal(v.shape).astype(np.float32) * v.std(axis=1, keepdims=True)
                tensors[name] = v + np.float32(scale) * noise
        save_file(tensors, f, metadata={"format": "pt"})


if __name__ == "__main__":
    main()
