"""The ``lowbit`` command. With no arguments it starts the desktop app."""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import LowbitError


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF model file")
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: physical cores)")
    p.add_argument("--ctx", type=int, default=None, help="context length in tokens")


def _add_sampling_options(p: argparse.ArgumentParser, *, temperature: float) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default: 256)")
    p.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=None)


def _sampling(args: argparse.Namespace) -> Any:
    from .sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
    )


def build_parser() -> argparse.ArgumentParser:
    from .cli_eval import add_kv_option

    parser = argparse.ArgumentParser(
        prog="lowbit", description="Run quantized language models locally. Without a command: the app."
    )
    sub = parser.add_subparsers(dest="command")

    g = sub.add_parser("generate", help="complete a prompt")
    _add_model_options(g)
    add_kv_option(g)
    g.add_argument("--prompt", required=True, help="the prompt text")
    g.add_argument(
        "--chat", action="store_true", help="send the prompt as a user message via the chat template"
    )
    _add_sampling_options(g, temperature=0.0)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")

    c = sub.add_parser("chat", help="interactive multi-turn chat")
    _add_model_options(c)
    add_kv_option(c)
    c.add_argument("--system", default=None, help="system prompt")
    _add_sampling_options(c, temperature=0.7)

    lg = sub.add_parser("logits", help="save the logits of every position of a text (teacher forcing)")
    _add_model_options(lg)
    lg.add_argument("--text-file", required=True, type=Path)
    lg.add_argument("--max-tokens", type=int, default=None, help="use at most this many tokens of the text")
    lg.add_argument("--out", required=True, type=Path, help="output .npy, float32 [tokens, vocab]")
    lg.add_argument("--tokens-out", type=Path, default=None, help="write the token ids as JSON")

    q = sub.add_parser("quantize", help="quantize a full-precision model to GGUF")
    q.add_argument("src", help="Hugging Face model folder, or an F32/F16/BF16 GGUF")
    q.add_argument("--type", required=True, dest="preset", help="preset: " + ", ".join(_presets()))
    q.add_argument("--method", choices=["rtn", "imatrix", "gptq"], default="rtn", help="default: rtn")
    q.add_argument("--calibration", type=Path, default=None, help="calibration text (default: built-in)")
    q.add_argument("--budget", default=None, help="size budget for mixed precision, e.g. 90MiB or 4.5bpw")
    q.add_argument("-o", "--output", required=True, type=Path, help="the GGUF file to write")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--force", action="store_true", help="replace the output if it exists")
    q.add_argument("--json", action="store_true", help="print the result as JSON")

    e = sub.add_parser("estimate", help="size and estimated quality loss of each preset, before quantizing")
    e.add_argument("src", help="Hugging Face model folder, or an F32/F16/BF16 GGUF")
    e.add_argument("--presets", nargs="+", default=None, metavar="PRESET", help="default: every preset")
    e.add_argument("--method", choices=["rtn", "imatrix", "gptq"], default="rtn", help="default: rtn")
    e.add_argument("--calibration", type=Path, default=None, help="calibration text (default: built-in)")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true", help="print the table as JSON")

    cv = sub.add_parser("convert", help="convert between Hugging Face folders and GGUF")
    cv.add_argument("src", help="Hugging Face folder (to GGUF) or GGUF file (with --to-hf)")
    cv.add_argument("--to-hf", type=Path, default=None, metavar="DIR", help="write a Hugging Face folder")
    cv.add_argument("--dtype", choices=["bf16", "f16", "f32"], default=None, help="weight type written")
    cv.add_argument("-o", "--output", type=Path, default=None, help="the GGUF file to write")

    from .cli_bench import add_bench_parser
    from .cli_eval import add_eval_parser
    from .cli_models import add_models_parsers

    add_eval_parser(sub)
    add_bench_parser(sub)
    add_models_parsers(sub)
    a = sub.add_parser("app", help="start the desktop app")
    a.add_argument("model", nargs="?", default=None, help="a GGUF model to open in chat")

    sc = sub.add_parser("self-check", help="check that this installation works, then exit")
    sc.add_argument("model", nargs="?", default=None, help="a GGUF model: load it and generate tokens")
    sc.add_argument("--tokens", type=int, default=16, help="tokens to generate (default: 16)")
    sc.add_argument("--threads", type=int, default=None)
    sc.add_argument("--gui", action="store_true", help="also open the main window and close it")
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _presets() -> list[str]:
    from .quantize import PRESETS

    return list(PRESETS)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `lowbit FILE.gguf` (how a file manager opens a model) starts the app on it
    if len(argv) == 1 and argv[0].lower().endswith(".gguf"):
        argv = ["app", argv[0]]
    if not argv:
        # straight to the window: the full parser imports the quantizer to list presets
        from lowbit.app.main import run_app

        return run_app()
    args = build_parser().parse_args(argv)
    if args.command in (None, "app"):
        from lowbit.app.main import run_app

        return run_app(model=getattr(args, "model", None))
    try:
        if args.command == "self-check":
            return cmd_self_check(args)
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "chat":
            return cmd_chat(args)
        if args.command == "logits":
            return cmd_logits(args)
        if args.command == "quantize":
            return cmd_quantize(args)
        if args.command == "estimate":
            return cmd_estimate(args)
        if args.command == "convert":
            return cmd_convert(args)
        if args.command == "eval":
            from .cli_eval import cmd_eval

            return cmd_eval(args)
        if args.command == "bench":
            from .cli_bench import cmd_bench

            return cmd_bench(args)
        if args.command in ("search", "download", "models", "login"):
            from . import cli_models

            return getattr(cli_models, f"cmd_{args.command}")(args)
    except LowbitError as e:
        print(f"lowbit: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"lowbit: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_self_check(args: argparse.Namespace) -> int:
    from .selfcheck import environment, generate_check

    report: dict[str, Any] = environment()
    if not args.json:
        print(", ".join(f"{k}: {v}" for k, v in report.items()))
    if args.model:
        gen = generate_check(args.model, args.tokens, n_threads=args.threads)
        report["generate"] = gen
        if not args.json:
            print(f"generated {len(gen['tokens'])} tokens at {gen['decode_tps']} tok/s: {gen['text']!r}")
    if args.gui:
        from lowbit.app.main import self_check_gui

        try:
            report["gui"] = self_check_gui()
        except RuntimeError as e:
            print(f"lowbit: {e}", file=sys.stderr)
            return 1
        if not args.json:
            print(f"window shown {report['gui']['shown_s']} s after start, closed cleanly")
    if args.json:
        print(json.dumps(report))
    else:
        print("self-check passed")
    return 0


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _load(args: argparse.Namespace, **extra: Any) -> Any:
    from .model import Model

    return Model.load(
        args.model,
        n_ctx=extra.get("n_ctx", args.ctx),
        n_threads=args.threads,
        kv_type=args.kv_type,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine import Engine, GenerationDone, TokenEvent

    params = _sampling(args)
    t0 = time.perf_counter()
    model = _load(args)
    load_s = time.perf_counter() - t0
    rss_load = _rss_mib()
    engine = Engine(model)
    if args.chat:
        ids = engine.encode_prompt(engine.render_chat([{"role": "user", "content": args.prompt}]))
    else:
        ids = engine.encode_prompt(args.prompt)
    out_tokens: list[int] = []
    stats = None
    for ev in engine.generate(ids, params=params, max_tokens=args.max_tokens):
        if isinstance(ev, TokenEvent):
            if ev.token_id >= 0:
                out_tokens.append(ev.token_id)
            if not args.json:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
        elif isinstance(ev, GenerationDone):
            stats = ev.stats
    assert stats is not None
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(args.model),
                    "text": stats.text,
                    "prompt_tokens": stats.prompt_tokens,
                    "generated_tokens": stats.generated_tokens,
                    "tokens": out_tokens,
                    "finish_reason": stats.finish_reason,
                    "ttft_s": round(stats.ttft_s, 4),
                    "prompt_tps": round(stats.prompt_tps, 2),
                    "decode_tps": round(stats.decode_tps, 2),
                    "load_s": round(load_s, 3),
                    "rss_after_load_mib": round(rss_load, 1),
                    "rss_mib": round(_rss_mib(), 1),
                    "n_threads": model.n_threads,
                    "kv_type": model.kv_type,
                }
            )
        )
    else:
        print()
        print(
            f"[{stats.generated_tokens} tokens, first after {stats.ttft_s:.2f} s, "
            f"{stats.decode_tps:.1f} tok/s, {stats.finish_reason}]",
            file=sys.stderr,
        )
    model.close()
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .engine import TokenEvent
    from .worker import Worker

    params = _sampling(args)
    worker = Worker()
    try:
        print(f"Loading {args.model} ...", file=sys.stderr)
        model = worker.load_model(
            args.model, n_ctx=args.ctx, n_threads=args.threads, kv_type=args.kv_type
        ).result()
        if model.chat_template is None:
            print("lowbit: this model has no chat template; use 'lowbit generate' instead", file=sys.stderr)
            return 1
        messages: list[dict[str, str]] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        print(
            "Type a message. Ctrl-C stops a reply; Ctrl-D or /exit quits; /reset starts over.",
            file=sys.stderr,
        )
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 0
            if line.strip() in ("/exit", "/quit"):
                return 0
            if line.strip() == "/reset":
                messages = [m for m in messages if m["role"] == "system"]
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            events: queue.Queue[Any] = queue.Queue()
            job = worker.generate(
                messages=list(messages), params=params, max_tokens=args.max_tokens, on_event=events.put
            )
            reply: list[str] = []
            while True:
                try:
                    try:
                        ev = events.get(timeout=0.05)
                    except queue.Empty:
                        if job.done:
                            # drain what is left, then stop
                            while not events.empty():
                                ev = events.get_nowait()
                                if isinstance(ev, TokenEvent):
                                    reply.append(ev.text)
                                    sys.stdout.write(ev.text)
                            break
                        continue
                    if isinstance(ev, TokenEvent):
                        reply.append(ev.text)
                        sys.stdout.write(ev.text)
                        sys.stdout.flush()
                except KeyboardInterrupt:
                    job.cancel()
            print()
            try:
                stats = job.result()
            except LowbitError as e:
                print(f"lowbit: {e}", file=sys.stderr)
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": "".join(reply)})
            note = " (stopped)" if stats.finish_reason == "cancelled" else ""
            if stats.finish_reason == "context":
                note = " (context full: /reset to start over)"
            print(
                f"[first token {stats.ttft_s:.2f} s, {stats.decode_tps:.1f} tok/s, "
                f"{stats.generated_tokens} tokens{note}]",
                file=sys.stderr,
            )
    finally:
        worker.shutdown()


def cmd_logits(args: argparse.Namespace) -> int:
    import numpy as np

    from .gguf_file import open_gguf
    from .model import Model, read_hparams
    from .tokenizer import Tokenizer

    text = args.text_file.read_text(encoding="utf-8")
    gf = open_gguf(args.model)
    # The context is sized to the text, so tokenize before creating the model.
    ids = Tokenizer.from_gguf_metadata(gf.metadata).encode(text, parse_special=False)
    n_train = read_hparams(gf).n_ctx_train
    if args.max_tokens is not None:
        ids = ids[: args.max_tokens]
    if len(ids) < 2:
        raise ValueError(f"{args.text_file} gives {len(ids)} tokens; at least 2 are needed")
    if len(ids) > n_train:
        print(
            f"lowbit: note: {len(ids)} tokens exceed the model's training context of {n_train}",
            file=sys.stderr,
        )
    model = Model.load(gf, n_ctx=max(8, len(ids)), n_threads=args.threads)
    logits = model.forward(ids, 0, logits_all=True)
    model.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, logits)
    if args.tokens_out is not None:
        args.tokens_out.write_text(json.dumps(ids), encoding="utf-8")
    print(f"{len(ids)} tokens x {logits.shape[1]} logits -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _interruptible(fn: Any) -> int:
    """Run a long job with a progress bar; Ctrl-C cancels it cleanly (no partial output)."""
    from .engine import CancelToken
    from .errors import CancelledError
    from .progress_bar import ProgressBar

    bar = ProgressBar()
    cancel = CancelToken()
    try:
        result = fn(bar, cancel)
    except (KeyboardInterrupt, CancelledError):
        bar.close()
        print("lowbit: cancelled; nothing was written", file=sys.stderr)
        return 130
    bar.close()
    return result


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import quantize_model

    def run(bar: Any, cancel: Any) -> int:
        r = quantize_model(
            args.src,
            args.output,
            preset=args.preset,
            method=args.method,
            calibration=args.calibration,
            budget=args.budget,
            n_threads=args.threads,
            progress=bar,
            cancel=cancel,
            overwrite=args.force,
        )
        info = {
            "file": str(r.path),
            "preset": r.preset,
            "method": r.method,
            "size_mib": round(r.file_bytes / 2**20, 3),
            "bpw": round(r.bpw, 4),
            "types": r.type_counts,
            "seconds": round(r.seconds, 3),
            "calibration_tokens": r.calibration_tokens,
        }
        if args.json:
            print(json.dumps(info))
        else:
            types = ", ".join(f"{k} x{v}" for k, v in sorted(r.type_counts.items()))
            size = f"{info['size_mib']:.1f} MiB, {r.bpw:.2f} bits/weight"
            print(f"wrote {r.path} ({size}) in {r.seconds:.1f} s")
            print(f"tensor types: {types}")
        return 0

    return _interruptible(run)


def cmd_estimate(args: argparse.Namespace) -> int:
    from .estimate import estimate
    from .quantize import QUANT_PRESETS

    def run(bar: Any, cancel: Any) -> int:
        rows = estimate(
            args.src,
            args.presets or QUANT_PRESETS,
            method=args.method,
            calibration=args.calibration,
            n_threads=args.threads,
            progress=bar,
            cancel=cancel,
        )
        bar.close()
        if args.json:
            print(
                json.dumps({"estimate": True, "method": args.method, "presets": [r.to_dict() for r in rows]})
            )
            return 0
        print(f"{'preset':8} {'weights MiB':>11} {'bits/w':>7} {'est. KLD':>9}")
        for r in rows:
            print(f"{r.preset:8} {r.data_bytes / 2**20:11.1f} {r.bpw:7.2f} {r.kld_estimate:9.4f}")
        print("KLD values are estimates from weight error; `lowbit eval` measures them.")
        return 0

    return _interruptible(run)


def cmd_convert(args: argparse.Namespace) -> int:
    if args.to_hf is not None:
        from .convert import gguf_to_hf

        def run(bar: Any, cancel: Any) -> int:
            out = gguf_to_hf(args.src, args.to_hf, dtype=args.dtype or "bf16", progress=bar, cancel=cancel)
            print(f"wrote {out}")
            return 0

        return _interruptible(run)
    if args.output is None:
        print("lowbit convert: give -o OUT.gguf (to GGUF) or --to-hf DIR", file=sys.stderr)
        return 2
    from .quantize import quantize_model

    def run_gguf(bar: Any, cancel: Any) -> int:
        preset = (args.dtype or "f16").upper()
        r = quantize_model(args.src, args.output, preset=preset, progress=bar, cancel=cancel)
        print(f"wrote {r.path} ({r.file_bytes / 2**20:.1f} MiB, {preset})")
        return 0

    return _interruptible(run_gguf)
