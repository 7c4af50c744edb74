"""``lowbit bench``: prompt and decode speed, memory and the memory-bandwidth roofline.

Progress goes to stderr, results to stdout (a table, or one JSON object with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .cli_eval import add_kv_option, nonnegative_int, positive_int
from .errors import CancelledError, LowbitError

if TYPE_CHECKING:
    from .bench import BenchResult


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command to the ``lowbit`` parser's subcommands.

    Args:
        sub: The object returned by ``ArgumentParser.add_subparsers``.
    """
    p = sub.add_parser(
        "bench",
        help="measure prompt and decode speed, peak memory and the memory roofline",
        description=(
            "Run llama-bench's two tests, each from the same cache (empty, or holding --depth "
            "tokens): a fixed prompt in one call (pp), and greedy decoding one token per call (tg). "
            "Report tokens per second, time to first token, peak resident memory, and decode speed "
            "as a share of what the machine's measured memory bandwidth allows for the bytes of "
            "weights each token reads."
        ),
    )
    p.add_argument("model", help="GGUF model file")
    p.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="threads (default: physical cores)"
    )
    p.add_argument(
        "--prompt-tokens", type=positive_int, default=512, metavar="N", help="prompt length (default: 512)"
    )
    p.add_argument(
        "--gen-tokens", type=positive_int, default=128, metavar="N", help="tokens to decode (default: 128)"
    )
    p.add_argument(
        "--depth",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="tokens in the cache before each test, as llama-bench's -d (default: 0)",
    )
    p.add_argument(
        "--reps", type=positive_int, default=1, metavar="N", help="repetitions, medians shown (default: 1)"
    )
    add_kv_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _table(r: BenchResult) -> str:
    isa = f", {r.isa}" if r.isa else ""
    head = f"{r.model}: {r.type}, {r.file_mib:.1f} MiB, {r.threads} thread(s){isa}, {r.kv_type} KV cache"
    at = f" @ d{r.depth}" if r.depth else ""  # llama-bench's label
    rows = [
        (f"prompt (pp{r.prompt_tokens}{at})", f"{r.prompt_tps:.1f}", "tok/s"),
        (f"decode (tg{r.gen_tokens}{at})", f"{r.decode_tps:.1f}", "tok/s"),
        ("time to first token", f"{r.ttft_s:.3f}", "s"),
        ("peak resident memory", f"{r.peak_rss_mib:.1f}", "MiB"),
        ("weights read per token", f"{r.bytes_per_token / 2**20:.1f}", "MiB"),
        ("memory bandwidth", f"{r.bandwidth_gbs:.1f}", "GB/s"),
        ("decode vs roofline", f"{r.roofline_pct:.1f}", "%"),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    return "\n".join([head, *(f"  {a:<{w0}}  {b:>{w1}} {c}" for a, b, c in rows)])


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``lowbit bench``.

    Args:
        args: Parsed arguments of the ``bench`` command.

    Returns:
        0 on success; 1 on a Lowbit error and 2 on another bad value or OS error (one
        line on stderr each); 130 when interrupted.
    """
    from .bench import benchmark
    from .progress_bar import ProgressBar

    bar = ProgressBar(sys.stderr)
    try:
        result = benchmark(
            args.model,
            n_threads=args.threads,
            prompt_tokens=args.prompt_tokens,
            gen_tokens=args.gen_tokens,
            reps=args.reps,
            progress=bar,
            kv_type=args.kv_type,
            depth=args.depth,
        )
    except (KeyboardInterrupt, CancelledError):
        bar.close()
        print("lowbit bench: cancelled", file=sys.stderr)
        return 130
    except LowbitError as e:
        bar.close()
        print(f"lowbit bench: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        bar.close()
        print(f"lowbit bench: error: {e}", file=sys.stderr)
        return 2
    bar.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(_table(result))
    return 0
