"""One thread's speed of each weight type's row-by-row dot-product kernel, on every path.

    python -m tests.bench_kernels [--types Q4_K Q6_K ...] [--n 1536] [--rows 511] [--reps 200]

Times ``lb_vec_dot``: one input row against ``rows`` weight rows of ``n`` values (SmolLM2's
ffn_down by default), the kernel a decoding step runs on matrices that are not repacked.
The row count is odd so that no type takes the repacked 8-row kernels. The weights
(about 0.5 MB) stay in the L2 cache, so the time is the kernel's own work, not memory's:
printed as nanoseconds per 256 weights and GB/s of weights, the best of
``reps`` calls, for each path the CPU has. The input's encoding is part of each call
and small beside the rows.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lowbit.core import native
from lowbit.core.quants import quantize_rows
from tests.test_kernels_isa import PATHS, QUANT_TYPES
from tests.test_quants import vec_dot


def best_seconds(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="+", default=[t.name for t in QUANT_TYPES])
    ap.add_argument("--n", type=int, default=1536, help="values per row (a multiple of 256)")
    ap.add_argument("--rows", type=int, default=511)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()

    before = native.isa()
    paths = []
    for p in PATHS:
        try:
            native.set_isa(p)
            paths.append(p)
        except native.NativeError:
            pass
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.n).astype(np.float32)
    src = rng.standard_normal((args.rows, args.n)).astype(np.float32)
    print(f"{args.rows} rows of {args.n}, one thread, best of {args.reps} calls: ns per 256 weights (GB/s)")
    print(f"{'type':8}" + "".join(f"{p:>20}" for p in paths))
    by_name = {t.name: t for t in QUANT_TYPES}
    for name in args.types:
        t = by_name[name]
        w = quantize_rows(int(t), src)
        cells = []
        for p in paths:
            native.set_isa(p)
            vec_dot(int(t), w, args.rows, x)  # warm the caches
            s = best_seconds(lambda w=w, t=t: vec_dot(int(t), w, args.rows, x), args.reps)
            ns = s * 1e9 / (args.rows * args.n / 256)
            cells.append(f"{ns:9.1f} ({w.nbytes / s / 1e9:5.1f})")
        print(f"{name:8}" + "".join(f"{c:>20}" for c in cells))
    native.set_isa(before)


if __name__ == "__main__":
    main()
