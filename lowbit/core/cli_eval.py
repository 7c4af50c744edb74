"""``lowbit eval``: compare quantized models with their full-precision reference.

Progress goes to stderr, results to stdout (a table, or one JSON object with ``--json``).
Heavy modules are imported when the command runs, so that building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .errors import CancelledError, LowbitError


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is {'not positive' if least == 1 else 'negative'}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    return _whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: a whole number of at least 0."""
    return _whole_number(text, 0)


def add_kv_option(p: argparse.ArgumentParser) -> None:
    """--kv-type, shared by generate, chat and bench."""
    p.add_argument(
        "--kv-type",
        choices=["f16", "q8_0"],
        default="f16",
        type=str.lower,
        help="KV cache type: q8_0 takes about half the memory of f16 (default: f16)",
    )


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command to the ``lowbit`` parser's subcommands.

    Args:
        sub: The object returned by ``ArgumentParser.add_subparsers``.
    """
    p = sub.add_parser(
        "eval",
        help="measure how far quantized models are from their reference (KL divergence)",
        description=(
            "Compare candidate GGUF files with the full-precision reference on a text, with the "
            "metrics of llama.cpp's llama-perplexity --kl-divergence: mean KL divergence, its 99th "
            "percentile, how often the most probable token is the same, and perplexity. The "
            "reference's predictions are cached, so later runs only evaluate the candidates."
        ),
    )
    p.add_argument(
        "--reference",
        required=True,
        type=Path,
        metavar="REF",
        help="the full-precision model: a GGUF (F32, F16 or BF16) or a Hugging Face folder",
    )
    p.add_argument("candidates", nargs="+", type=Path, metavar="CAND", help="GGUF files to compare")
    p.add_argument(
        "--text-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="UTF-8 evaluation text (default: built-in)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a quick preview on a few hundred tokens (default: every chunk of 512 tokens)",
    )
    p.add_argument("--ctx", type=positive_int, default=None, metavar="N", help="tokens per chunk")
    p.add_argument(
        "--chunks", type=positive_int, default=None, metavar="N", help="evaluate at most this many chunks"
    )
    p.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="threads (default: physical cores)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="reference cache folder (default: the user cache)",
    )


class _ProgressBar:
    """A one-line progress bar with ETA on a terminal; elsewhere a line per step (file)."""

    def __init__(self, stream: TextIO, width: int = 24) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._start: tuple[float, float] | None = None  # (time, done) of the first counted report
        self._shown = 0
        self._step = ""

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if p.total is None:
            line = p.message
        else:
            # Rate from the model work only: opening and hashing files before it would skew it.
            if self._start is None:
                self._start = (now, p.done)
            t0, d0 = self._start
            frac = min(1.0, p.done / p.total) if p.total else 1.0
            bar = "#" * round(frac * self.width)
            eta = ""
            if p.done > d0:
                eta = "  ETA " + _duration((now - t0) / (p.done - d0) * (p.total - p.done))
            line = f"[{bar:<{self.width}}] {100 * frac:3.0f}%  {p.message}{eta}"
        if self.tty:
            pad = max(0, self._shown - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._shown = len(line)
        else:  # a log gets one line per file worked on, not one per chunk
            step = p.message.split(": chunk")[0]
            if step == self._step and p.done != p.total:
                return
            self._step = step
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = 0


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _table(report: Any) -> str:
    rows = [
        (
            "file",
            "MiB",
            "bpw",
            "KLD mean ± err",
            "KLD p99",
            "same top % ± err",
            "PPL (change)",
        )
    ]
    for c in report.candidates:
        ppl_err = 100 * c.ppl_ratio * c.ln_ppl_ratio_stderr  # of the change, from that of ln(ratio)
        rows.append(
            (
                Path(c.file).name,
                f"{c.size_mib:.1f}",
                f"{c.bpw:.2f}",
                f"{c.kld_mean:.5f} ± {c.kld_stderr:.5f}",
                f"{c.kld_p99:.4f}",
                f"{c.same_top_pct:.2f} ± {c.same_top_stderr:.2f}",
                f"{c.ppl:.3f} ({100 * (c.ppl_ratio - 1):+.2f} ± {ppl_err:.2f}%)",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
    ref = Path(report.reference).name
    head = (
        f"reference: {ref} ({report.reference_size_bytes / 2**20:.1f} MiB, {report.reference_bpw:.2f} bpw), "
        f"PPL {report.ppl_ref:.3f} ± {report.ppl_ref_stderr:.3f}\n"
        f"text: {report.text}; {report.n_chunks} chunk(s) of {report.n_ctx} tokens, "
        f"{report.n_tokens} tokens scored\n"
    )
    return head + "\n" + "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run ``lowbit eval``.

    Args:
        args: Parsed arguments of the ``eval`` command.

    Returns:
        0 on success; 1 on a Lowbit error and 2 on another bad value or OS error (one
        line on stderr each); 130 when interrupted.
    """
    from .evaluate import FULL, QUICK
    from .worker import Worker

    try:
        base = QUICK if args.quick else FULL
        settings = dataclasses.replace(
            base,
            n_ctx=args.ctx or base.n_ctx,
            n_chunks=args.chunks if args.chunks is not None else base.n_chunks,
        )
        bar = _ProgressBar(sys.stderr)
        worker = Worker(name="lowbit-eval")
        try:
            job = worker.evaluate(
                args.reference,
                list(args.candidates),
                text_file=args.text_file,
                settings=settings,
                n_threads=args.threads,
                cache_dir=args.cache_dir,
                on_progress=bar,
            )
            try:
                while not job.done:  # a sleep loop, not a blocking wait, so that Ctrl-C gets through
                    time.sleep(0.05)
            except KeyboardInterrupt:
                job.cancel()
            try:
                report = job.result()
            except CancelledError:
                report = None
            finally:
                bar.close()
        finally:
            worker.shutdown()
        if report is None:
            print("lowbit eval: cancelled", file=sys.stderr)
            return 130
    except LowbitError as e:
        print(f"lowbit eval: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # e.g. an unreadable file: exit 2, as the other commands do
        print(f"lowbit eval: error: {e}", file=sys.stderr)
        return 2
    if report.reference_bpw < 15:
        print(
            f"lowbit eval: note: the reference holds quantized weights ({report.reference_bpw:.2f} bits per "
            "weight); the numbers measure the distance to it, not to the original model",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(_table(report))
    return 0
